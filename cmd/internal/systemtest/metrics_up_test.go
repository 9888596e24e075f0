package systemtest

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/metricstest"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// TestMetricsAgainstUp is the acceptance of the metrics endpoint, on the
// wgbore binary and a wireguard-go peer: /metrics parses with the
// Prometheus parser and its counters move with traffic through the
// SOCKS5 proxy; /readyz flips to 503 when the peer goes away and back
// to 200 when it returns; wgbore healthcheck, the image's probe, agrees.
func TestMetricsAgainstUp(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the engine to give up on the peer's old session: about 15 s")
	}
	NeedTool(t, "curl")
	ours, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	conf := site.WGQuick(ours, "[Socks5]\nBindAddress = 127.0.0.1:0\n\n[Metrics]\nBindAddress = 127.0.0.1:1\n")
	conf = strings.Replace(conf, "[Peer]", "CheckAlive = 10.0.0.2\nCheckAliveInterval = 1\n\n[Peer]", 1)
	path := WriteFile(t, t.TempDir(), "wg0.conf", conf)
	// -metrics beats [Metrics], whose port 1 would not bind.
	d := startDaemon(t, path, "-metrics", "127.0.0.1:0")
	socks := d.addr(t, "socks5 ", 0)
	base := "http://" + strings.TrimSuffix(d.addr(t, "metrics http://", 0), "/metrics")
	h := metricstest.Remote(base)
	peer := []string{"peer", site.PublicKey.String()}

	before, _ := metricstest.Parse(t, h)
	rx0 := metricstest.Value(t, before, "wgbore_peer_receive_bytes_total", peer...)
	const size = 1 << 20
	if out := mustCurl(t, "--max-time", "20", "--socks5-hostname", socks, fmt.Sprintf("http://10.0.0.2/bytes/%d", size)); len(out) != size {
		t.Fatalf("download through SOCKS5: %d bytes", len(out))
	}
	after, body := metricstest.Parse(t, h)
	if rx := metricstest.Value(t, after, "wgbore_peer_receive_bytes_total", peer...); rx-rx0 < size {
		t.Errorf("receive bytes moved by %v over a %d-byte download", rx-rx0, size)
	}
	if n := metricstest.Value(t, after, "wgbore_listener_connections_total", "kind", "socks5", "addr", socks); n < 1 {
		t.Errorf("socks5 connections total = %v after a download", n)
	}
	if hs := metricstest.Value(t, after, "wgbore_peer_last_handshake_seconds", peer...); hs < float64(time.Now().Add(-time.Hour).Unix()) {
		t.Errorf("last handshake = %v", hs)
	}
	metricstest.Value(t, after, "wgbore_dropped_packets_total", "reason", "replay")
	metricstest.Value(t, after, "go_goroutines")
	if strings.Contains(body, ours.Base64()) {
		t.Fatal("the private key is in /metrics")
	}

	healthcheck := func(url string) int {
		out, err := exec.Command(wgboreBinary(t), "healthcheck", "-url", url).CombinedOutput()
		if err != nil {
			t.Logf("healthcheck %s: %v: %s", url, err, out)
		}
		return exitCode(err)
	}
	metricstest.WaitReady(t, h, true, 20*time.Second, "peer up")
	if code := healthcheck(base + "/readyz"); code != 0 {
		t.Fatalf("healthcheck of a ready tunnel: exit %d", code)
	}
	if err := site.Device.Down(); err != nil {
		t.Fatal(err)
	}
	metricstest.WaitReady(t, h, false, 20*time.Second, "peer gone")
	if r := metricstest.Readyz(t, h); len(r.Reasons) == 0 || !strings.Contains(strings.Join(r.Reasons, " "), "10.0.0.2") {
		t.Errorf("503 without a reason naming the target: %+v", r)
	}
	if code := healthcheck(base + "/readyz"); code != 1 {
		t.Errorf("healthcheck of an unready tunnel: exit %d, want 1", code)
	}
	if code := healthcheck(base + "/healthz"); code != 0 {
		t.Errorf("liveness while the peer is gone: exit %d, want 0", code)
	}
	if err := site.Device.Up(); err != nil {
		t.Fatal(err)
	}
	metricstest.WaitReady(t, h, true, 60*time.Second, "peer back")
}
