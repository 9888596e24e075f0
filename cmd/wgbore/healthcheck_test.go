package main

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/wgbore/wgbore/cmd/internal/service"
	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/protocol"
)

// TestHealthcheckCommand points healthcheck at a running service's
// endpoints: /healthz answers, /readyz does not while CheckAlive has no
// answer, and what is not there is not.
func TestHealthcheckCommand(t *testing.T) {
	key, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	text := "[Interface]\nPrivateKey = " + key.Base64() + "\nAddress = 10.0.0.1/32\nCheckAlive = 10.0.0.2\n\n[Metrics]\nBindAddress = 127.0.0.1:0\n"
	cfg, err := config.Parse("wg0.conf", []byte(text), config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := service.Check(cfg, "wg0.conf")
	if err != nil {
		t.Fatal(err)
	}
	svc, err := service.Start(context.Background(), p, service.Options{
		Logger: slog.New(slog.DiscardHandler), ListenAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Shutdown(context.Background()) })
	base := strings.TrimSuffix(svc.ListenAddr("metrics "), "/metrics")

	for _, tc := range []struct {
		args     []string
		code     int
		out, err string
	}{
		{[]string{"-url", base + "/healthz"}, exitOK, "ok", ""},
		{[]string{"-url", base + "/readyz"}, exitFailure, "", "503 Service Unavailable: {\"ready\":false"},
		{[]string{"-url", base + "/nothing"}, exitFailure, "", "404"},
		{[]string{"-url", "http://127.0.0.1:1/healthz", "-timeout", "2s"}, exitFailure, "", "127.0.0.1:1"},
		{[]string{"-url", "::bad"}, exitFailure, "", "bad -url"},
		{[]string{"extra"}, exitUsage, "", "unexpected argument"},
	} {
		var stdout, stderr strings.Builder
		e := &env{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr}
		code := run(context.Background(), e, append([]string{"healthcheck"}, tc.args...))
		if code != tc.code || !strings.Contains(stdout.String(), tc.out) || !strings.Contains(stderr.String(), tc.err) {
			t.Errorf("healthcheck %q = %d, stdout %q, stderr %q; want %d, %q, %q",
				tc.args, code, stdout.String(), stderr.String(), tc.code, tc.out, tc.err)
		}
	}
}
