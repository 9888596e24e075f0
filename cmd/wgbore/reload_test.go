package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/systemtest"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// TestReloadInProcess reloads inside the test binary, so the race
// detector watches a reload against running listeners, CheckAlive and
// the summary. A forwarder whose target changes keeps its address: the
// old one is closed before the new one binds.
func TestReloadInProcess(t *testing.T) {
	ours, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fwd := l.Addr().String()
	l.Close()
	body := func(target, alive string) string {
		conf := site.WGQuick(ours, "[TCPClientTunnel]\nBindAddress = "+fwd+"\nTarget = "+target+"\n")
		return strings.Replace(conf, "[Peer]", "CheckAlive = "+alive+"\nCheckAliveInterval = 1\n\n[Peer]", 1)
	}
	dir := t.TempDir()
	path := systemtest.WriteFile(t, dir, "wg0.conf", body("10.0.0.2:7", "10.0.0.2"))

	p := runInProcess(t, "up", "-c", path)
	waitForLog(t, &p.stderr, `msg="wgbore is up"`)
	waitForLog(t, &p.stderr, `msg="check alive: answering" addr=10.0.0.2`)
	systemtest.EchoThrough(t, func() (net.Conn, error) { return net.Dial("tcp", fwd) }, 64<<10)

	// The forwarder now points at the site's HTTP server, on the same
	// address; CheckAlive pings an address nobody has; the metrics
	// endpoint starts; the MTU and memory budget changes cannot be
	// applied live and are reported.
	conf := body("10.0.0.2:80", "10.0.0.99")
	conf = strings.Replace(conf, "[Peer]", "MTU = 1380\nMemoryLimit = 64MiB\n\n[Peer]", 1) + "\n[Metrics]\nBindAddress = 127.0.0.1:0\n"
	systemtest.WriteFile(t, dir, "wg0.conf", conf)
	p.hangups <- syscall.SIGHUP
	waitForLog(t, &p.stderr, `msg=reloaded changes=4 kept=2 failed=0`)
	waitForLog(t, &p.stderr, `msg="reload: metrics http://127.0.0.1:`)
	waitForLog(t, &p.stderr, `msg="reload: [Interface] MTU changed: that takes a restart; still running with the old value"`)
	waitForLog(t, &p.stderr, `msg="reload: [Interface] MemoryLimit changed: that takes a restart; still running with the old value"`)
	waitForLog(t, &p.stderr, `msg="check alive: not answering" addr=10.0.0.99`)
	c, err := net.Dial("tcp", fwd)
	if err != nil {
		t.Fatalf("the changed forwarder does not listen on its address again: %v", err)
	}
	fmt.Fprintf(c, "GET /echo HTTP/1.0\r\nHost: x\r\n\r\n")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("through the changed forwarder: %v", err)
	}
	resp.Body.Close()
	c.Close()

	// The same file again changes nothing, and says so: the two changes
	// that take a restart are still pending.
	p.hangups <- syscall.SIGHUP
	waitForLog(t, &p.stderr, `msg=reloaded changes=0 kept=2 failed=0`)

	p.signals <- os.Interrupt
	p.exit(t, exitOK, 30*time.Second, "up did not return after the signal")
}
