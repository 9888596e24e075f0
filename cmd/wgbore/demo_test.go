package main

import (
	"strings"
	"testing"
)

// TestDemoCheck runs `wgbore demo -check` in-process: a request through
// each of the client's proxies to the page inside the server's tunnel.
func TestDemoCheck(t *testing.T) {
	code, out, errOut := runCLI(t, "", "demo", "-check")
	if code != exitOK || strings.Count(out, "ok ") != 2 || !strings.Contains(out, "Hello from inside the WireGuard tunnel") {
		t.Fatalf("demo -check: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
}
