package systemtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// hostEcho runs a TCP and a UDP echo server on 127.0.0.1, standing for a
// service on the host that a server tunnel exposes to the peer.
func hostEcho(t testing.TB) (tcpAddr, udpAddr string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveConns(t, l, func(c net.Conn) { io.Copy(c, c) })
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udpDone := make(chan struct{})
	go func() {
		defer close(udpDone)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-udpDone })
	return l.Addr().String(), pc.LocalAddr().String()
}

// serveConns runs handle on each connection l accepts, closing the
// connection after it, until the test ends and closes l.
func serveConns(tb testing.TB, l net.Listener, handle func(net.Conn)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handle(c) }()
		}
	}()
	tb.Cleanup(func() { l.Close(); <-done })
}

// curlRun runs curl with no proxy environment and no ~/.curlrc and
// returns stdout, stderr and the exit code.
func curlRun(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, NeedTool(t, "curl"), append([]string{"-q", "-sS", "--max-time", "60"}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("curl: %v", err)
	}
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

func mustCurl(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := curlRun(t, args...)
	if code != 0 {
		t.Fatalf("curl %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// e2eSetup is a wireguard-go peer site and a running wgbore binary with
// every kind of listener pointed at it.
type e2eSetup struct {
	site *peersite.Site
	d    *daemon
	dir  string
	key  protocol.PrivateKey
}

const e2eSections = `[Socks5]
BindAddress = 127.0.0.1:0

[Socks5]
BindAddress = 127.0.0.1:0
Username = alice
Password = wonder land

[http]
BindAddress = 127.0.0.1:0
Username = user
Password = pass

[TCPClientTunnel]
BindAddress = 127.0.0.1:0
Target = 10.0.0.2:7

[TCPServerTunnel]
ListenPort = 8080
Target = %s

[UDPProxyTunnel]
BindAddress = 127.0.0.1:0
Target = 10.0.0.2:7
InactivityTimeout = 30

[UDPServerTunnel]
ListenPort = 5300
Target = %s
`

func startE2E(t *testing.T) *e2eSetup {
	t.Helper()
	ours, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	tcpEcho, udpEcho := hostEcho(t)
	dir := t.TempDir()
	conf := WriteFile(t, dir, "wg0.conf", site.WGQuick(ours, fmt.Sprintf(e2eSections, tcpEcho, udpEcho)))
	d := startDaemon(t, conf)
	if h := fmt.Sprint(d.summary["handshakes"]); h != "1/1" {
		t.Fatalf("summary says handshakes %s, want 1/1: %v", h, d.summary)
	}
	return &e2eSetup{site: site, d: d, dir: dir, key: ours}
}

func TestEndToEnd(t *testing.T) {
	NeedTool(t, "curl")
	e := startE2E(t)
	socks := e.d.addr(t, "socks5 ", 0)
	socksAuth := e.d.addr(t, "socks5 ", 1)
	httpProxy := e.d.addr(t, "http ", 0)

	// Whatever the subtests do, and at debug level, no secret is logged.
	defer func() {
		log := e.d.log()
		for _, secret := range []string{e.key.Base64(), "wonder land", "user:pass", "dXNlcjpwYXNz"} {
			if strings.Contains(log, secret) {
				t.Errorf("the log contains a secret (%q)", secret)
			}
		}
	}()
	t.Run("socks5-hostname by IP", func(t *testing.T) {
		out := mustCurl(t, "--socks5-hostname", socks, "http://10.0.0.2/bytes/300000")
		if !bytes.Equal([]byte(out), peersite.Body(300000)) {
			t.Fatalf("got %d bytes that differ from what the site sent", len(out))
		}
	})
	t.Run("socks5-hostname by name the peer's DNS resolves", func(t *testing.T) {
		out := mustCurl(t, "--socks5-hostname", socks, "http://site.tunnel.test/bytes/1000")
		if !bytes.Equal([]byte(out), peersite.Body(1000)) {
			t.Fatal("body differs")
		}
		if asked := strings.Join(e.site.DNS.Asked(), " "); !strings.Contains(asked, "site.tunnel.test") {
			t.Fatalf("the site's DNS was not asked for the name (asked: %s)", asked)
		}
	})
	t.Run("socks5 IPv6 target", func(t *testing.T) {
		if out := mustCurl(t, "--socks5-hostname", socks, "http://[fd00::2]/bytes/10"); out != string(peersite.Body(10)) {
			t.Fatalf("got %q", out)
		}
	})
	t.Run("socks5 authentication", func(t *testing.T) {
		if out := mustCurl(t, "--socks5-hostname", socksAuth, "--proxy-user", "alice:wonder land", "http://10.0.0.2/echo"); out != "GET " {
			t.Fatalf("got %q", out)
		}
		out, _, code := curlRun(t, "--socks5-hostname", socksAuth, "--proxy-user", "alice:wrong", "http://10.0.0.2/echo")
		if code == 0 || out != "" {
			t.Fatalf("wrong SOCKS password: exit %d, body %q; want a failure", code, out)
		}
		if _, _, code := curlRun(t, "--socks5-hostname", socksAuth, "http://10.0.0.2/echo"); code == 0 {
			t.Fatal("no SOCKS credentials: curl succeeded")
		}
	})
	t.Run("http GET", func(t *testing.T) {
		out := mustCurl(t, "-x", "http://user:pass@"+httpProxy, "http://10.0.0.2/bytes/200000")
		if !bytes.Equal([]byte(out), peersite.Body(200000)) {
			t.Fatal("body differs")
		}
	})
	t.Run("http POST 10 MiB", func(t *testing.T) {
		body := make([]byte, 10<<20)
		rand.Read(body)
		f := WriteFile(t, t.TempDir(), "body", string(body))
		want := fmt.Sprintf("%s %d", sha256Hex(body), len(body))
		if out := mustCurl(t, "-x", "http://user:pass@"+httpProxy, "--data-binary", "@"+f, "http://10.0.0.2/sha256"); out != want {
			t.Fatalf("site saw %q, want %q", out, want)
		}
		// The same body chunked, through the absolute-form path.
		if out := mustCurl(t, "-x", "http://user:pass@"+httpProxy, "-H", "Transfer-Encoding: chunked", "--data-binary", "@"+f, "http://10.0.0.2/sha256"); out != want {
			t.Fatalf("chunked: site saw %q, want %q", out, want)
		}
	})
	t.Run("http every method", func(t *testing.T) {
		for _, m := range []string{"PUT", "DELETE", "PATCH", "OPTIONS"} {
			if out := mustCurl(t, "-x", "http://user:pass@"+httpProxy, "-X", m, "--data-binary", "x", "http://10.0.0.2/echo"); out != m+" x" {
				t.Fatalf("%s: got %q", m, out)
			}
		}
	})
	t.Run("http CONNECT tunnel", func(t *testing.T) {
		out := mustCurl(t, "-p", "-x", "http://user:pass@"+httpProxy, "-X", "PUT", "--data-binary", "through", "http://10.0.0.2/echo")
		if out != "PUT through" {
			t.Fatalf("got %q", out)
		}
	})
	t.Run("http wrong password gets 407", func(t *testing.T) {
		// A refused CONNECT is reported in http_connect, not http_code.
		for _, tc := range []struct{ flag, status string }{{"-G", "%{http_code}"}, {"-p", "%{http_connect}"}} {
			out, _, _ := curlRun(t, tc.flag, "-o", "/dev/null", "-w", tc.status, "-x", "http://user:nope@"+httpProxy, "http://10.0.0.2/echo")
			if out != "407" {
				t.Fatalf("wrong password with %s: status %q, want 407", tc.flag, out)
			}
		}
	})
	t.Run("Go net/http through the http proxy", func(t *testing.T) {
		pu, _ := url.Parse("http://user:pass@" + httpProxy)
		client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}, Timeout: 60 * time.Second}
		defer client.CloseIdleConnections()
		res, err := client.Post("http://site.tunnel.test/sha256", "application/octet-stream", bytes.NewReader(peersite.Body(1<<20)))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if want := fmt.Sprintf("%s %d", sha256Hex(peersite.Body(1<<20)), 1<<20); string(got) != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	})
	t.Run("TCPClientTunnel", func(t *testing.T) {
		EchoThrough(t, func() (net.Conn, error) { return net.Dial("tcp", e.d.addr(t, "tcp ", 0)) }, 1<<20)
	})
	t.Run("TCPServerTunnel", func(t *testing.T) {
		EchoThrough(t, func() (net.Conn, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			return e.site.Net.DialContext(ctx, "tcp", "10.0.0.1:8080")
		}, 1<<20)
	})
	t.Run("UDPProxyTunnel", func(t *testing.T) {
		udpEchoThrough(t, func() (net.Conn, error) { return net.Dial("udp", e.d.addr(t, "udp ", 0)) })
	})
	t.Run("UDPServerTunnel", func(t *testing.T) {
		udpEchoThrough(t, func() (net.Conn, error) {
			return e.site.Net.DialUDPAddrPort(netip.AddrPort{}, netip.MustParseAddrPort("10.0.0.1:5300"))
		})
	})
	t.Run("SOCKS5 UDP ASSOCIATE", func(t *testing.T) {
		c := socksAssociate(t, socks)
		if !c.relay.Addr().IsLoopback() {
			t.Fatalf("relay bound to %v, want the loopback address the client used", c.relay)
		}
		src, resp := c.exchange(t, netip.MustParseAddrPort("10.0.0.2:53"), dnsQuery(t, "site.tunnel.test."))
		if src != netip.MustParseAddrPort("10.0.0.2:53") {
			t.Fatalf("DNS answer from %v", src)
		}
		if got := dnsAnswerA(t, resp); len(got) != 1 || got[0] != peersite.TheirV4 {
			t.Fatalf("DNS through the relay answered %v", got)
		}
		_, echo := c.exchange(t, netip.MustParseAddrPort("10.0.0.2:7"), []byte("datagram through socks"))
		if string(echo) != "datagram through socks" {
			t.Fatalf("echo %q", echo)
		}
		// Another local socket is not the associated client: its
		// datagram is dropped, and nothing comes back to it.
		spoof, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer spoof.Close()
		c.send(t, spoof, netip.MustParseAddrPort("10.0.0.2:7"), []byte("spoofed"))
		if _, got, ok := socksRecv(spoof, time.Second); ok {
			t.Fatalf("the spoofing socket got %q back", got)
		}
		if _, got, ok := socksRecv(c.sock, 500*time.Millisecond); ok {
			t.Fatalf("the spoofed datagram was relayed: the client got %q", got)
		}
		// Closing the control connection ends the association: within
		// a few seconds, the relay stops answering for good.
		c.ctrl.Close()
		deadline := time.Now().Add(10 * time.Second)
		for {
			c.send(t, c.sock, netip.MustParseAddrPort("10.0.0.2:7"), []byte("after close"))
			if _, _, ok := socksRecv(c.sock, time.Second); !ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the relay still answers 10s after its control connection closed")
			}
		}
	})
}

// udpEchoThrough sends datagrams through a UDP forwarder to an echo
// server, retrying a lost first one.
func udpEchoThrough(t *testing.T, dial func() (net.Conn, error)) {
	t.Helper()
	c, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 2048)
	for i := range 5 {
		msg := fmt.Sprintf("datagram %d", i)
		for attempt := 0; ; attempt++ {
			c.Write([]byte(msg))
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := c.Read(buf)
			if err == nil {
				if string(buf[:n]) != msg {
					t.Fatalf("echo %q, want %q", buf[:n], msg)
				}
				break
			}
			if attempt == 5 {
				t.Fatalf("no echo of %q: %v", msg, err)
			}
		}
	}
}

func TestGracefulShutdown(t *testing.T) {
	e := startE2E(t)
	fwd := e.d.addr(t, "tcp ", 0)
	c, err := net.Dial("tcp", fwd)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 5)
	c.Write([]byte("first"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "first" {
		t.Fatalf("before the signal: %q %v", buf, err)
	}

	e.d.cmd.Process.Signal(os.Interrupt)
	deadline := time.Now().Add(10 * time.Second)
	for !e.d.logged("signal received: shutting down") {
		if time.Now().After(deadline) {
			t.Fatalf("no shutdown logged; log:\n%s", e.d.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// New connections are refused, while the open one still works. The
	// log line comes just before the listeners close, and the kernel
	// completes a dial that reaches a listener still open, so a dial
	// right after it may yet connect: wait for the refusal.
	deadline = time.Now().Add(10 * time.Second)
	for {
		nc, err := net.DialTimeout("tcp", fwd, time.Second)
		if err != nil {
			break
		}
		nc.Close()
		if time.Now().After(deadline) {
			t.Fatal("new connections still accepted 10s after the signal")
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.Write([]byte("again"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "again" {
		t.Fatalf("during the grace period: %q %v", buf, err)
	}
	c.Close()
	select {
	case <-e.d.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("still running 15s after its last connection closed; log:\n%s", e.d.log())
	}
	if e.d.code != exitOK || !e.d.logged("stopped") {
		t.Fatalf("exit %d; log:\n%s", e.d.code, e.d.log())
	}
}

func TestGraceEndsHeldConnections(t *testing.T) {
	ours, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	conf := WriteFile(t, t.TempDir(), "wg0.conf", site.WGQuick(ours, "[TCPClientTunnel]\nBindAddress = 127.0.0.1:0\nTarget = 10.0.0.2:7\n"))
	d := startDaemon(t, conf, "-grace", "300ms")
	c, err := net.Dial("tcp", d.addr(t, "tcp ", 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	io.ReadFull(c, make([]byte, 1))
	d.cmd.Process.Signal(os.Interrupt)
	// The connection stays open, so only the grace period ends it.
	if _, err := io.ReadAll(c); err != nil {
		t.Logf("held connection ended with %v", err)
	}
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("a held connection kept wgbore up past its 300ms grace; log:\n%s", d.log())
	}
	if d.code != exitOK {
		t.Fatalf("exit %d", d.code)
	}
}

func TestStartFailures(t *testing.T) {
	ours, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	conf := WriteFile(t, dir, "busy.conf", site.WGQuick(ours, "[Socks5]\nBindAddress = "+busy.Addr().String()+"\n"))
	out, err := exec.Command(wgboreBinary(t), "up", "-c", conf).CombinedOutput()
	if code := exitCode(err); code != exitFailure || !strings.Contains(string(out), "address already in use") {
		t.Fatalf("port in use: exit %d, output:\n%s", code, out)
	}

	bad := WriteFile(t, dir, "bad.conf", "[Interface]\nPrivateKey = "+ours.Base64()+"\nAddress = 10.0.0.1/32\n[Socks5]\nBindAddress = nowhere\n")
	out, err = exec.Command(wgboreBinary(t), "up", "-c", bad).CombinedOutput()
	if code := exitCode(err); code != exitUsage || !strings.Contains(string(out), filepath.Base(bad)+":5: BindAddress:") {
		t.Fatalf("bad config: exit %d, output:\n%s", code, out)
	}
	if strings.Contains(string(out), ours.Base64()) {
		t.Fatal("the private key reached the output")
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// TestSignalEndsKeyCommands: only `up` catches SIGINT and SIGTERM for a
// graceful shutdown. Any other command, such as a pubkey waiting on a
// terminal, must die of them as every other tool does.
func TestSignalEndsKeyCommands(t *testing.T) {
	cmd := exec.Command(wgboreBinary(t), "pubkey")
	stdin, err := cmd.StdinPipe() // held open: pubkey waits for EOF
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// Give main time to reach its Read, past any signal set-up; a
	// signal sent earlier would meet the default action and prove
	// nothing.
	time.Sleep(500 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
			t.Fatalf("pubkey ended with %v; want death by SIGTERM", err)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatal("wgbore pubkey ignored SIGTERM for 10s")
	}
}
