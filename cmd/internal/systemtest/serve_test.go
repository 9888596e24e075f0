package systemtest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/metricstest"
	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// hostWeb serves Body(N) at /bytes/N on 127.0.0.1, standing for a
// service on the host that the egress policy lets peers reach.
func hostWeb(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/bytes/"))
		if err != nil || n < 0 {
			fmt.Fprint(w, "host service")
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Write(peersite.Body(n))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// TestServeWithWireGuardGoClient: a wireguard-go client, with its own
// netstack and no TUN, connects to the wgbore serve binary over UDP on
// 127.0.0.1 and reaches through it a host service that [Egress] allows,
// a host UDP echo, and is refused at once where the policy says no.
func TestServeWithWireGuardGoClient(t *testing.T) {
	serverKey, _ := protocol.GeneratePrivateKey()
	port := int(wgtest.FreeLoopbackUDPPort(t))
	web := hostWeb(t)
	tcpEcho, udpEcho := hostEcho(t)
	// A listener on 127.0.0.2, which the policy does not allow: the test
	// proves refusal by policy, not by a closed port.
	denied, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2 on this host's loopback: %v", err)
	}
	defer denied.Close()

	// The client is a wireguard-go device with its own netstack, routing
	// everything to the server. Its key is chosen first: the server must
	// know it before the client's first handshake.
	clientKey, _ := protocol.GeneratePrivateKey()
	conf := fmt.Sprintf(`[Interface]
PrivateKey = %s
Address = 10.0.0.1/24
ListenPort = %d

[Peer]
PublicKey = %s
AllowedIPs = 10.0.0.2/32, fd00::2/128

[Egress]
Allow = 127.0.0.1/32

[TCPServerTunnel]
ListenPort = 8080
Target = %s
`, serverKey.Base64(), port, clientKey.PublicKey(), tcpEcho)
	d := startServeDaemon(t, WriteFile(t, t.TempDir(), "server.conf", conf))
	client := peersite.StartClient(t, serverKey.PublicKey(), peersite.Options{
		PrivateKey: clientKey,
		Endpoint:   fmt.Sprintf("127.0.0.1:%d", port),
	})

	t.Run("64 MiB from a host service allowed by Egress", func(t *testing.T) {
		const size = 64 << 20
		hc := &http.Client{Transport: &http.Transport{DialContext: client.DialContext}, Timeout: 5 * time.Minute}
		defer hc.CloseIdleConnections()
		res, err := hc.Get("http://" + web + "/bytes/" + strconv.Itoa(size))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		h := sha256.New()
		n, err := io.Copy(h, res.Body)
		want := sha256.Sum256(peersite.Body(size))
		if err != nil || n != size || string(h.Sum(nil)) != string(want[:]) {
			t.Fatalf("got %d bytes (%v), sha256 match %v", n, err, string(h.Sum(nil)) == string(want[:]))
		}
	})
	t.Run("host service at the server's tunnel address", func(t *testing.T) {
		_, webPort, _ := net.SplitHostPort(web)
		hc := &http.Client{Transport: &http.Transport{DialContext: client.DialContext}, Timeout: time.Minute}
		defer hc.CloseIdleConnections()
		res, err := hc.Get("http://10.0.0.1:" + webPort + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil || string(body) != "host service" {
			t.Fatalf("got %q, %v", body, err)
		}
	})
	t.Run("UDP echo on the host", func(t *testing.T) {
		udpEchoThrough(t, func() (net.Conn, error) {
			return client.DialContext(context.Background(), "udp", udpEcho)
		})
	})
	t.Run("TCPServerTunnel in serve mode", func(t *testing.T) {
		EchoThrough(t, func() (net.Conn, error) { return client.DialContext(context.Background(), "tcp", "10.0.0.1:8080") }, 256<<10)
	})
	t.Run("denied destination refused at once", func(t *testing.T) {
		// 10.9.9.9:8080 shares its port with the server tunnel: the
		// tunnel's listener must not catch flows to other hosts.
		for _, target := range []string{denied.Addr().String(), "10.9.9.9:80", "10.9.9.9:8080", "169.254.169.254:80"} {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			start := time.Now()
			c, err := client.DialContext(ctx, "tcp", target)
			timedOut := ctx.Err() != nil
			cancel()
			if err == nil {
				c.Close()
				t.Fatalf("%s: connected; the egress policy should refuse it", target)
			}
			if timedOut || !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("%s: %v after %v; want connection refused (a reset), not a timeout", target, err, time.Since(start))
			}
		}
	})
	if !d.logged("wgbore is up") {
		t.Fatal("no start-up summary")
	}
}

// TestDemoConfigsAsTwoProcesses: the files demo -write-configs writes run
// as separate serve and up processes, and curl through the client's
// SOCKS5 reaches a service on the server host's loopback, which the
// server's [Egress] allows, at the server's tunnel address.
func TestDemoConfigsAsTwoProcesses(t *testing.T) {
	NeedTool(t, "curl")
	dir := t.TempDir()
	if code, out, errOut := runWgbore(t, "demo", "-write-configs", dir, "-socks", "127.0.0.1:0", "-http", "127.0.0.1:0"); code != exitOK {
		t.Fatalf("demo -write-configs: exit %d: %s %s", code, out, errOut)
	}
	serverConf := filepath.Join(dir, "server.conf")
	f, err := os.OpenFile(serverConf, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(f, "\n[Egress]\nAllow = 127.0.0.1/32\n")
	f.Close()
	// The host service, at the server's tunnel address as server.conf
	// gives it.
	server, err := config.Load(serverConf, config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	web := hostWeb(t)
	_, webPort, _ := net.SplitHostPort(web)
	web = net.JoinHostPort(server.Interface.Addresses[0].Addr().String(), webPort)

	startServeDaemon(t, serverConf)
	client := startDaemon(t, filepath.Join(dir, "client.conf"))
	if h := fmt.Sprint(client.summary["handshakes"]); h != "1/1" {
		t.Fatalf("the client's summary says handshakes %s, want 1/1", h)
	}
	if out := mustCurl(t, "--socks5-hostname", client.addr(t, "socks5 ", 0), "http://"+web+"/"); out != "host service" {
		t.Fatalf("through the tunnel to the host service: %q", out)
	}
	if out := mustCurl(t, "-x", "http://"+client.addr(t, "http ", 0), "http://"+web+"/bytes/100000"); out != string(peersite.Body(100000)) {
		t.Fatalf("through the HTTP proxy: %d bytes that differ", len(out))
	}
}

// TestServeFlowCaps: serve refuses a peer's flow past MaxFlowsPerPeer at
// once, keeps the open ones, and counts both per peer in its metrics.
func TestServeFlowCaps(t *testing.T) {
	tcpEcho, _ := hostEcho(t)
	_, echoPort, _ := net.SplitHostPort(tcpEcho)
	serverKey, _ := protocol.GeneratePrivateKey()
	clientKey, _ := protocol.GeneratePrivateKey()
	port := int(wgtest.FreeLoopbackUDPPort(t))
	conf := WriteFile(t, t.TempDir(), "server.conf", serveConf(serverKey, port, clientKey.PublicKey(), "MaxFlowsPerPeer = 2\n"))
	d := startServeDaemon(t, conf, "-metrics", "127.0.0.1:0")
	h := metricstest.Remote("http://" + strings.TrimSuffix(d.addr(t, "metrics http://", 0), "/metrics"))
	client := peersite.StartClient(t, serverKey.PublicKey(), peersite.Options{
		PrivateKey: clientKey,
		Endpoint:   fmt.Sprintf("127.0.0.1:%d", port),
	})
	dial := func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return client.DialContext(ctx, "tcp", "10.0.0.1:"+echoPort)
	}
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for range 2 {
		c, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	if c, err := dial(); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("third flow: %v, want connection refused at once", err)
	}
	for i, c := range open {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("ok")); err != nil {
			t.Fatalf("open flow %d: %v", i, err)
		}
		if got, err := io.ReadAll(io.LimitReader(c, 2)); err != nil || string(got) != "ok" {
			t.Fatalf("open flow %d: %q, %v", i, got, err)
		}
	}
	fams, _ := metricstest.Parse(t, h)
	peer := clientKey.PublicKey().String()
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"wgbore_peer_flows", []string{"peer", peer}, 2},
		{"wgbore_peer_flows_refused_total", []string{"peer", peer, "reason", "peer_limit"}, 1},
		{"wgbore_peer_flows_refused_total", []string{"peer", peer, "reason", "server_limit"}, 0},
		{"wgbore_peer_flows_refused_total", []string{"peer", peer, "reason", "memory"}, 0},
	} {
		if got := metricstest.Value(t, fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}
