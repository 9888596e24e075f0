package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	xproxy "golang.org/x/net/proxy"

	"github.com/wgbore/wgbore/proxy/relay"
)

// socksNetwork stands in for the tunnel: it dials loopback addresses
// only and resolves names from its own table. A name that reaches the
// host's resolver, or an attempt to dial a name rather than an address,
// fails, so a test that passes proves the proxy kept both on the Network.
type socksNetwork struct {
	hosts map[string][]netip.Addr
	// notify, when set, watches each connection dialed, so that it can
	// notify as the tunnel's connections do.
	notify *relay.Poller

	mu      sync.Mutex
	lookups []string
}

func (n *socksNetwork) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("socksNetwork: refusing to dial %q: not a loopback address", address)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, address)
	if err != nil || n.notify == nil {
		return c, err
	}
	if w := n.notify.Watch(c); w != nil {
		return w, nil
	}
	c.Close()
	return nil, fmt.Errorf("socksNetwork: cannot watch the connection to %s", address)
}

func (n *socksNetwork) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	n.mu.Lock()
	n.lookups = append(n.lookups, host)
	n.mu.Unlock()
	if addrs, ok := n.hosts[host]; ok {
		return addrs, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func (n *socksNetwork) lookedUp() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.lookups...)
}

func newSOCKSNetwork() *socksNetwork {
	return &socksNetwork{hosts: map[string][]netip.Addr{
		// .test is reserved (RFC 2606): only the table knows it.
		"tunnel.test":  {netip.MustParseAddr("127.0.0.1")},
		"tunnel6.test": {netip.MustParseAddr("::1")},
		// The first address has no listener on the backend's port, so
		// reaching the backend proves the dial falls through to the next.
		"multi.test": {netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.1")},
	}}
}

// startSOCKS5 serves a SOCKS5 server on a loopback port and closes it when
// the test ends, checking that Serve then returns nil.
func startSOCKS5(t *testing.T, nw Network, cfg SOCKS5Config) (*SOCKS5, string, <-chan error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewSOCKS5(nw, cfg)
	served := serveInBackground(t, func() error { return s.Serve(l) }, s.Close)
	return s, l.Addr().String(), served
}

// startSOCKSBackend serves "hello <path>" over HTTP on the given loopback
// address ("127.0.0.1:0" or "[::1]:0") and returns its port.
func startSOCKSBackend(t *testing.T, listenAddr string) string {
	t.Helper()
	l, err := net.Listen("tcp", listenAddr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", listenAddr, err)
	}
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.URL.Path)
	}))
	ts.Listener.Close()
	ts.Listener = l
	ts.Start()
	t.Cleanup(ts.Close)
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// socksCurl runs the real curl, isolated from the user's .curlrc and proxy
// environment, and returns its output.
func socksCurl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	path, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed; the curl end-to-end tests need it (CI installs it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args = append([]string{"-q", "--silent", "--show-error", "--fail", "--max-time", "10"}, args...)
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustSOCKSCurl(t *testing.T, want string, args ...string) {
	t.Helper()
	out, err := socksCurl(t, args...)
	if err != nil {
		t.Fatalf("curl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if out != want {
		t.Fatalf("curl %s = %q, want %q", strings.Join(args, " "), out, want)
	}
}

func TestSOCKS5CurlResolvesNamesOnTheNetwork(t *testing.T) {
	nw := newSOCKSNetwork()
	_, proxyAddr, _ := startSOCKS5(t, nw, SOCKS5Config{})
	port := startSOCKSBackend(t, "127.0.0.1:0")

	mustSOCKSCurl(t, "hello /name", "--socks5-hostname", proxyAddr, "http://tunnel.test:"+port+"/name")
	mustSOCKSCurl(t, "hello /fallback", "--socks5-hostname", proxyAddr, "http://multi.test:"+port+"/fallback")

	// localhost resolves on any host, but not on this Network: the host's
	// resolver must not be asked.
	if out, err := socksCurl(t, "--socks5-hostname", proxyAddr, "http://localhost:"+port+"/"); err == nil {
		t.Fatalf("curl to a name the Network does not know succeeded: %q", out)
	}

	got := nw.lookedUp()
	want := []string{"tunnel.test", "multi.test", "localhost"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("Network lookups = %q, want %q", got, want)
	}
}

func TestSOCKS5CurlIPLiteral(t *testing.T) {
	nw := newSOCKSNetwork()
	_, proxyAddr, _ := startSOCKS5(t, nw, SOCKS5Config{})
	port := startSOCKSBackend(t, "127.0.0.1:0")

	mustSOCKSCurl(t, "hello /v4", "--socks5", proxyAddr, "http://127.0.0.1:"+port+"/v4")
	mustSOCKSCurl(t, "hello /v4h", "--socks5-hostname", proxyAddr, "http://127.0.0.1:"+port+"/v4h")
	if got := nw.lookedUp(); len(got) != 0 {
		t.Fatalf("an IP literal was looked up: %q", got)
	}
}

func TestSOCKS5CurlIPv6(t *testing.T) {
	nw := newSOCKSNetwork()
	_, proxyAddr, _ := startSOCKS5(t, nw, SOCKS5Config{})
	port := startSOCKSBackend(t, "[::1]:0") // skips if ::1 is unavailable

	mustSOCKSCurl(t, "hello /v6", "--socks5", proxyAddr, "http://[::1]:"+port+"/v6")
	mustSOCKSCurl(t, "hello /v6h", "--socks5-hostname", proxyAddr, "http://[::1]:"+port+"/v6h")
	mustSOCKSCurl(t, "hello /v6name", "--socks5-hostname", proxyAddr, "http://tunnel6.test:"+port+"/v6name")
}

func TestSOCKS5CurlAuth(t *testing.T) {
	_, proxyAddr, _ := startSOCKS5(t, newSOCKSNetwork(), SOCKS5Config{Username: "u", Password: "p"})
	port := startSOCKSBackend(t, "127.0.0.1:0")
	target := "http://tunnel.test:" + port + "/auth"

	mustSOCKSCurl(t, "hello /auth", "--socks5-hostname", proxyAddr, "--proxy-user", "u:p", target)

	for _, creds := range []string{"u:wrong", "wrong:p", "u:", "u:pp"} {
		out, err := socksCurl(t, "--socks5-hostname", proxyAddr, "--proxy-user", creds, target)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() == 0 {
			t.Fatalf("curl with %q: err = %v, want a non-zero exit\n%s", creds, err, out)
		}
	}
	if out, err := socksCurl(t, "--socks5-hostname", proxyAddr, target); err == nil {
		t.Fatalf("curl without credentials succeeded: %q", out)
	}

	// The server survived the failures.
	mustSOCKSCurl(t, "hello /auth", "--socks5-hostname", proxyAddr, "--proxy-user", "u:p", target)
}

// socksHTTPClient returns an HTTP client that reaches everything through
// the SOCKS5 server at proxyAddr, handing it names unresolved.
func socksHTTPClient(t *testing.T, proxyAddr string, auth *xproxy.Auth) *http.Client {
	t.Helper()
	d, err := xproxy.SOCKS5("tcp", proxyAddr, auth, xproxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{DialContext: d.(xproxy.ContextDialer).DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func socksGet(c *http.Client, rawURL string) (string, error) {
	resp, err := c.Get(rawURL)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

// socksLogBuffer collects log output written from the server's goroutines.
type socksLogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *socksLogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *socksLogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// take returns what was logged since the last take and empties the
// buffer, so a fuzz target that checks the log after every input scans
// each line once instead of the whole history each time.
func (b *socksLogBuffer) take() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.buf.String()
	b.buf.Reset()
	return out
}

func TestSOCKS5GoClient(t *testing.T) {
	var logs socksLogBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	_, proxyAddr, _ := startSOCKS5(t, newSOCKSNetwork(), SOCKS5Config{Username: "user", Password: "secret", Logger: logger})
	port := startSOCKSBackend(t, "127.0.0.1:0")

	c := socksHTTPClient(t, proxyAddr, &xproxy.Auth{User: "user", Password: "secret"})
	for _, u := range []string{
		"http://tunnel.test:" + port + "/go",
		"http://127.0.0.1:" + port + "/go",
		"http://multi.test:" + port + "/go",
	} {
		body, err := socksGet(c, u)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		if body != "hello /go" {
			t.Fatalf("GET %s = %q, want %q", u, body, "hello /go")
		}
	}

	for _, u := range []string{
		"http://nowhere.test:" + port + "/", // unknown to the Network
		"http://localhost:" + port + "/",    // known only to the host
	} {
		if body, err := socksGet(c, u); err == nil {
			t.Fatalf("GET %s through the proxy succeeded: %q", u, body)
		}
	}

	bad := socksHTTPClient(t, proxyAddr, &xproxy.Auth{User: "user", Password: "hunter2-wrong"})
	if body, err := socksGet(bad, "http://tunnel.test:"+port+"/"); err == nil {
		t.Fatalf("GET with a wrong password succeeded: %q", body)
	}
	if body, err := socksGet(c, "http://tunnel.test:"+port+"/again"); err != nil || body != "hello /again" {
		t.Fatalf("GET after a failed login = %q, %v", body, err)
	}

	// The failed login was logged, without either password.
	out := logs.String()
	if !strings.Contains(out, "authentication failed") {
		t.Errorf("no debug log for the failed login:\n%s", out)
	}
	for _, secret := range []string{"hunter2", "secret"} {
		if strings.Contains(out, secret) {
			t.Errorf("log contains a password %q:\n%s", secret, out)
		}
	}
}

// socksRequest performs a no-auth handshake and sends one request for
// cmd to 127.0.0.1:port, returning the reply code.
func socksRequest(t *testing.T, proxyAddr string, cmd byte, port uint16) byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte{5, 1, 0}); err != nil {
		t.Fatal(err)
	}
	method := make([]byte, 2)
	if _, err := io.ReadFull(c, method); err != nil || method[0] != 5 || method[1] != 0 {
		t.Fatalf("method selection = %v, %v", method, err)
	}
	if _, err := c.Write([]byte{5, cmd, 0, 1, 127, 0, 0, 1, byte(port >> 8), byte(port)}); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 10)
	if _, err := io.ReadFull(c, reply); err != nil {
		t.Fatalf("reading reply: %v", err)
	}
	return reply[1]
}

func TestSOCKS5RefusesBindAndAssociate(t *testing.T) {
	const commandNotSupported = 7
	// BIND is refused even when the Network could carry datagrams.
	_, udpProxy, _ := startSOCKS5(t, newSOCKSUDPNetwork("127.0.0.1:0"), SOCKS5Config{})
	if got := socksRequest(t, udpProxy, 2, 9); got != commandNotSupported {
		t.Errorf("BIND reply = %d, want %d (command not supported)", got, commandNotSupported)
	}
	// ASSOCIATE needs the Network's ListenPacket; without it, the host's
	// own sockets must not stand in.
	_, tcpProxy, _ := startSOCKS5(t, newSOCKSNetwork(), SOCKS5Config{})
	for _, cmd := range []byte{2, 3} {
		if got := socksRequest(t, tcpProxy, cmd, 9); got != commandNotSupported {
			t.Errorf("command %d on a Network without datagrams: reply = %d, want %d (command not supported)", cmd, got, commandNotSupported)
		}
	}
}

func TestSOCKS5CredentialsCompareBothFields(t *testing.T) {
	creds := newSOCKSCredentials("user", "secret", slog.New(slog.DiscardHandler))
	for _, tc := range []struct {
		user, pass string
		want       bool
	}{
		{"user", "secret", true},
		{"user", "Secret", false},
		{"user", "secret!", false},
		{"user", "", false},
		{"User", "secret", false},
		{"", "", false},
		{"secret", "user", false},
	} {
		if got := creds.Valid(tc.user, tc.pass, "127.0.0.1:1"); got != tc.want {
			t.Errorf("Valid(%q, %q) = %v, want %v", tc.user, tc.pass, got, tc.want)
		}
	}
}

func TestSOCKS5ServeAfterClose(t *testing.T) {
	s := NewSOCKS5(newSOCKSNetwork(), SOCKS5Config{})
	s.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(l); err != nil {
		t.Fatalf("Serve after Close = %v, want nil", err)
	}
	if _, err := l.Accept(); err == nil {
		t.Fatal("Serve after Close left the listener open")
	}
}

func TestSOCKS5CloseEndsRelaysInFlight(t *testing.T) {
	// An echo backend, so the relay stays open as long as the client
	// keeps its end.
	port := startTCPEcho(t)
	baseline := runtime.NumGoroutine()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewSOCKS5(newSOCKSNetwork(), SOCKS5Config{})
	// Workers that wait longer than the check below: Close must end them.
	s.workers.idleFor = time.Hour
	served := serveInBackground(t, func() error { return s.Serve(l) }, s.Close)

	d, err := xproxy.SOCKS5("tcp", l.Addr().String(), nil, xproxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for range 3 {
		c, err := d.Dial("tcp", "tunnel.test:"+port)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		socksPing(t, c)
		conns = append(conns, c)
	}
	// A client still in the handshake must be ended too.
	idle, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()

	mustHaveGoroutines(t, socksCode...)
	closeWithin(t, s.Close, socksCode...)
	waitServed(t, served)

	// Close waited for the server's goroutines; one may still be
	// returning past its Done.
	waitNoGoroutines(t, "Close", socksCode...)
	for _, c := range append(conns, idle) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatalf("client connection still open after Close (read %d bytes)", n)
		}
	}

	// The backend's per-connection goroutines end once the relays have
	// closed their targets; give the runtime a moment to reap them.
	waitGoroutineCount(t, baseline)
}

// closedByServerWithin reads c until the server closes it and returns how
// long that took, failing the test when it is still open after limit.
func closedByServerWithin(t *testing.T, c net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", limit)
	}
	return time.Since(start)
}

// socksEchoThrough opens a CONNECT relay to the echo at port and checks it
// carries a round trip.
func socksEchoThrough(t *testing.T, proxyAddr, port string) net.Conn {
	t.Helper()
	d, err := xproxy.SOCKS5("tcp", proxyAddr, nil, xproxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	socksPing(t, c)
	return c
}

func socksPing(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	echo := make([]byte, 4)
	if _, err := io.ReadFull(c, echo); err != nil || string(echo) != "ping" {
		t.Fatalf("echo through the relay = %q, %v", echo, err)
	}
	c.SetDeadline(time.Time{})
}

func TestSOCKS5HandshakeTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	_, proxyAddr, _ := startSOCKS5(t, newSOCKSNetwork(), SOCKS5Config{HandshakeTimeout: timeout, Username: "u", Password: "p"})
	for _, tc := range []struct {
		name    string
		partial []byte
	}{
		{"silent", nil},
		{"half a greeting", []byte{5, 2}},
		{"half a login", []byte{5, 1, 2, 1, 1, 'u'}},
		{"half a request", []byte{5, 1, 2, 1, 1, 'u', 1, 'p', 5, 1, 0, 1, 127}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", proxyAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			mustWrite(t, c, tc.partial)
			if took := closedByServerWithin(t, c, 5*time.Second); took < timeout*3/4 {
				t.Fatalf("closed after %v, before the %v handshake timeout", took, timeout)
			}
		})
	}

	// A relay, once running, is not bound by the handshake timeout.
	port := startTCPEcho(t)
	d, _ := xproxy.SOCKS5("tcp", proxyAddr, &xproxy.Auth{User: "u", Password: "p"}, xproxy.Direct)
	c, err := d.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(2 * timeout)
	socksPing(t, c)
}

func TestSOCKS5MaxConnections(t *testing.T) {
	s, proxyAddr, _ := startSOCKS5(t, newSOCKSNetwork(), SOCKS5Config{MaxConnections: 1})
	first, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	mustWrite(t, first, []byte{5, 1, 0})
	if _, err := io.ReadFull(first, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}

	// The second client is refused at once, in SOCKS terms: general
	// failure to its request, and the connection closed.
	second, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	mustWrite(t, second, []byte{5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 2, 0, 80})
	second.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(second)
	if want := []byte{5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0}; !bytes.Equal(got, want) || err != nil {
		t.Fatalf("second client past MaxConnections 1 got % x (%v), want % x and the connection closed", got, err, want)
	}
	// One that can only authenticate hears that no method is acceptable.
	third, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	mustWrite(t, third, []byte{5, 1, 2})
	third.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, _ := io.ReadAll(third); !bytes.Equal(got, []byte{5, 0xff}) {
		t.Fatalf("user/password-only client past the cap got % x, want 05 ff", got)
	}
	if st := s.Stats(); st.Refused != 2 || st.Active != 1 {
		t.Fatalf("Stats = %+v, want 2 refused and 1 active", st)
	}

	first.Close()
	waitStats(t, "the first client gone", s.Stats, ConnStats{Active: 0, Total: 1, Refused: 2})
	fourth, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer fourth.Close()
	mustWrite(t, fourth, []byte{5, 1, 0})
	fourth.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got := make([]byte, 2); func() error { _, err := io.ReadFull(fourth, got); return err }() != nil || got[1] != 0 {
		t.Fatalf("a client once a slot freed was not served: % x", got)
	}
}

// A connection that Admit turns away is refused as one past the cap is,
// and the connections already open keep working.
func TestSOCKS5Admit(t *testing.T) {
	port := startTCPEcho(t)
	var full atomic.Bool
	s, proxyAddr, _ := startSOCKS5(t, newSOCKSNetwork(), SOCKS5Config{Admit: func() bool { return !full.Load() }})
	open := socksEchoThrough(t, proxyAddr, port)

	full.Store(true)
	refused, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer refused.Close()
	mustWrite(t, refused, []byte{5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 2, 0, 80})
	refused.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(refused)
	if want := []byte{5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0}; !bytes.Equal(got, want) || err != nil {
		t.Fatalf("client refused by Admit got % x (%v), want % x and the connection closed", got, err, want)
	}
	socksPing(t, open)
	if st := s.Stats(); st.Refused != 1 || st.Active != 1 {
		t.Fatalf("Stats = %+v, want 1 refused and 1 active", st)
	}

	full.Store(false)
	socksPing(t, socksEchoThrough(t, proxyAddr, port))
}

// TestSOCKS5ShutdownWaitsForRelays, for a relay on its serving goroutine
// and for one handed over.
func TestSOCKS5ShutdownWaitsForRelays(t *testing.T) {
	t.Run("serving", func(t *testing.T) {
		s, proxyAddr, _ := startSOCKS5(t, newSOCKSNetwork(), SOCKS5Config{})
		checkSOCKS5ShutdownWaits(t, s, proxyAddr)
	})
	t.Run("handed over", func(t *testing.T) {
		s, proxyAddr := startHandingOverSOCKS5(t, SOCKS5Config{}, 0)
		checkSOCKS5ShutdownWaits(t, s, proxyAddr)
	})
}

func checkSOCKS5ShutdownWaits(t *testing.T, s *SOCKS5, proxyAddr string) {
	t.Helper()
	port := startTCPEcho(t)
	relay := socksEchoThrough(t, proxyAddr, port)
	idle, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	// Let the server accept the idle client before shutting down: it
	// tracks the relay's client and target, and then the idle client.
	for s.count() < 3 {
		time.Sleep(time.Millisecond)
	}

	// The client still in its handshake is let go at once (startSOCKS5
	// checks Serve returned nil).
	checkShutdownWaits(t, s.Shutdown, proxyAddr, idle, relay, func() { socksPing(t, relay) }, socksCode...)
}

func TestSOCKS5ShutdownDeadline(t *testing.T) {
	port := startTCPEcho(t)
	s, proxyAddr, _ := startSOCKS5(t, newSOCKSUDPNetwork("127.0.0.1:0"), SOCKS5Config{})
	relay := socksEchoThrough(t, proxyAddr, port)
	assoc := mustSOCKSAssociate(t, proxyAddr, "127.0.0.1", socksUDPClientOptions{})

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want the context's deadline", err)
	}
	closedByServerWithin(t, relay, 5*time.Second)
	closedByServerWithin(t, assoc.control, 5*time.Second)
	waitNoGoroutines(t, "Shutdown", socksCode...)
}

func TestSOCKS5MalformedRequests(t *testing.T) {
	var logs socksLogBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	nw := newSOCKSNetwork()
	s, proxyAddr, _ := startSOCKS5(t, nw, SOCKS5Config{Logger: logger})
	authServer, authAddr, _ := startSOCKS5(t, nw, SOCKS5Config{Logger: logger, Username: "u", Password: "p"})

	noAuth := []byte{5, 1, 0}
	chose := []byte{5, 0}
	reply := func(code byte) []byte { return []byte{5, code, 0, 1, 0, 0, 0, 0, 0, 0} }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, tc := range []struct {
		name       string
		proxy      string
		send, want []byte
	}{
		{"SOCKS4 request", proxyAddr, []byte{4, 1, 0, 80, 127, 0, 0, 1, 0}, nil},
		{"HTTP request", proxyAddr, []byte("GET / HTTP/1.1\r\n\r\n"), nil},
		{"zero methods", proxyAddr, []byte{5, 0}, []byte{5, 0xff}},
		{"no acceptable method", proxyAddr, []byte{5, 1, 2}, []byte{5, 0xff}},
		{"truncated greeting", proxyAddr, []byte{5, 3, 0}, nil},
		{"greeting only", proxyAddr, noAuth, chose},
		{"truncated request", proxyAddr, cat(noAuth, []byte{5, 1, 0, 1, 127, 0}), chose},
		{"request with wrong version", proxyAddr, cat(noAuth, []byte{4, 1, 0, 1, 127, 0, 0, 1, 0, 80}), chose},
		{"bad ATYP", proxyAddr, cat(noAuth, []byte{5, 1, 0, 9, 127, 0, 0, 1, 0, 80}), cat(chose, reply(8))},
		{"domain length 0", proxyAddr, cat(noAuth, []byte{5, 1, 0, 3, 0, 0, 80}), cat(chose, reply(4))},
		{"domain cut short", proxyAddr, cat(noAuth, []byte{5, 1, 0, 3, 50, 'a', 'b'}), chose},
		{"unknown command", proxyAddr, cat(noAuth, []byte{5, 9, 0, 1, 127, 0, 0, 1, 0, 80}), cat(chose, reply(7))},
		{"login with wrong version", authAddr, []byte{5, 1, 2, 2, 1, 'u', 1, 'p'}, []byte{5, 2}},
		{"login cut short", authAddr, []byte{5, 1, 2, 1, 5, 'u'}, []byte{5, 2}},
		{"empty login", authAddr, []byte{5, 1, 2, 1, 0, 0}, []byte{5, 2, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := exchangeRaw(t, tc.proxy, tc.send); !bytes.Equal(got, tc.want) {
				t.Fatalf("answer %x, want %x", got, tc.want)
			}
		})
	}

	// The empty name went nowhere: neither resolved nor dialed as the
	// Network's own address.
	if got := nw.lookedUp(); len(got) != 0 {
		t.Errorf("Network lookups = %q, want none", got)
	}
	s.Close()
	authServer.Close()
	waitNoGoroutines(t, "Close", socksCode...)
	if out := logs.String(); strings.Contains(out, "panic") {
		t.Fatalf("the server panicked:\n%s", out)
	}
}

// TestSOCKS5CloseEndsRefusals: a client past MaxConnections that never
// sends its greeting holds a refusal goroutine until refuseTimeout;
// Close cuts it short and leaves nothing behind.
func TestSOCKS5CloseEndsRefusals(t *testing.T) {
	s, proxyAddr, _ := startSOCKS5(t, newSOCKSNetwork(), SOCKS5Config{MaxConnections: 1})
	first, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	waitStats(t, "the first client accepted", s.Stats, ConnStats{Active: 1, Total: 1})
	silent, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	waitStats(t, "the silent client refused", s.Stats, ConnStats{Active: 1, Total: 1, Refused: 1})
	mustHaveGoroutines(t, "proxy.(*limitListener).refuseConn")
	start := time.Now()
	if err := closeWithin(t, s.Close, "proxy.(*limitListener)"); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took >= refuseTimeout {
		t.Fatalf("Close took %v: it waited out the refusal instead of ending it", took)
	}
	waitNoGoroutines(t, "Close", "proxy.(*limitListener)")
	closedByServerWithin(t, silent, time.Second)
}

// TestSOCKS5CloseEndsHalfClosedRelay: the client has sent all it will
// (half-close) and the target, like a tunnel peer that went away, never
// answers or closes. Close must still end the relay and return; it used
// to close only the client and wait for ever on the target's side.
func TestSOCKS5CloseEndsHalfClosedRelay(t *testing.T) {
	hold := make(chan struct{})
	defer close(hold)
	target := serveTCP(t, "127.0.0.1:0", func(c net.Conn) {
		io.Copy(io.Discard, c) // reads the half-close, then says nothing
		<-hold
	})
	_, port, _ := net.SplitHostPort(target)
	s, proxyAddr, _ := startSOCKS5(t, newSOCKSNetwork(), SOCKS5Config{})
	c := socksEchoThrough(t, proxyAddr, startTCPEcho(t))
	c.Close()
	d, err := xproxy.SOCKS5("tcp", proxyAddr, nil, xproxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	silent, err := d.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silent.(*net.TCPConn).CloseWrite()
	time.Sleep(50 * time.Millisecond) // the relay passes the half-close on
	mustHaveGoroutines(t, socksCode...)
	if err := closeWithin(t, s.Close, socksCode...); err != nil {
		t.Fatal(err)
	}
	waitNoGoroutines(t, "Close", socksCode...)
}

// startHandingOverSOCKS5 serves a SOCKS5 server whose Network's
// connections notify, as the tunnel's do, and which hands relays over
// from its from-th connection on.
func startHandingOverSOCKS5(t *testing.T, cfg SOCKS5Config, from uint64) (*SOCKS5, string) {
	t.Helper()
	nw := newSOCKSNetwork()
	var l net.Listener
	nw.notify, l = handOverFixture(t)
	s := NewSOCKS5(nw, cfg)
	s.relays.from = from
	serveInBackground(t, func() error { return s.Serve(l) }, s.Close)
	return s, l.Addr().String()
}

// socksRelayCode is what a connection's relay runs on: its serving
// goroutine, the relay's copies (not the accept loop or the poller).
var socksRelayCode = []string{"wgbore/proxy.(*SOCKS5).serveConn",
	"wgbore/proxy/relay.(*notifiedCopy)", "wgbore/proxy/relay.OneWay", "wgbore/proxy/relay.Both"}

// TestSOCKS5IdleRelayHoldsNoGoroutine: a relay handed over holds no
// goroutine while idle. It still carries bytes both ways, passes a
// half-close on (the target answers after the client's end), gives its
// slot back when it ends, and ends on Close.
func TestSOCKS5IdleRelayHoldsNoGoroutine(t *testing.T) {
	const max = 3
	s, proxyAddr := startHandingOverSOCKS5(t, SOCKS5Config{MaxConnections: max}, 0)
	port := startTCPEcho(t)
	var conns []net.Conn
	for range max {
		conns = append(conns, socksEchoThrough(t, proxyAddr, port))
	}
	waitNoGoroutines(t, "the relays went idle", socksRelayCode...)
	for _, c := range conns {
		socksPing(t, c)
	}

	// The target answers only once the client has said all it will.
	_, answerPort, _ := net.SplitHostPort(serveTCP(t, "127.0.0.1:0", func(c net.Conn) {
		got, _ := io.ReadAll(c)
		c.Write(append([]byte("got "), got...))
	}))
	conns[0].Close()
	waitForSlot(t, s, max)
	d, err := xproxy.SOCKS5("tcp", proxyAddr, nil, xproxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	half, err := d.Dial("tcp", "127.0.0.1:"+answerPort)
	if err != nil {
		t.Fatal(err)
	}
	half.SetDeadline(time.Now().Add(10 * time.Second))
	half.Write([]byte("all"))
	half.(*net.TCPConn).CloseWrite()
	if got, err := io.ReadAll(half); err != nil || string(got) != "got all" {
		t.Fatalf("after the half-close: %q, %v; want the answer and the end", got, err)
	}
	half.Close()

	// Its slot comes back once the relay has ended.
	waitForSlot(t, s, max)
	conns[0] = socksEchoThrough(t, proxyAddr, port)
	waitNoGoroutines(t, "the new relay went idle", socksRelayCode...)

	if err := closeWithin(t, s.Close, socksRelayCode...); err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		closedByServerWithin(t, c, 5*time.Second)
	}
	waitNoGoroutines(t, "Close", append(socksRelayCode, socksCode...)...)
	if st := s.Stats(); st.Active != 0 {
		t.Errorf("%d connections still counted active after Close", st.Active)
	}
}

// waitForSlot waits until fewer than max connections are active: a
// relay handed over ends, and gives its slot back, on a goroutine of its
// own.
func waitForSlot(t *testing.T, s *SOCKS5, max uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().Active >= max {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections active, at the cap of %d, after one ended", s.Stats().Active, max)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSOCKS5HandsOverFromThreshold: below the hand-over threshold a
// relay stays on its serving goroutine, whose setup and hops cost less
// CPU than the poller's while its memory hardly counts; from it on,
// relays are handed over.
func TestSOCKS5HandsOverFromThreshold(t *testing.T) {
	_, proxyAddr := startHandingOverSOCKS5(t, SOCKS5Config{}, 2)
	port := startTCPEcho(t)
	serving := func() int { return len(proxyGoroutines("wgbore/proxy.(*SOCKS5).serveConn")) }
	first := socksEchoThrough(t, proxyAddr, port)
	time.Sleep(20 * time.Millisecond)
	if n := serving(); n != 1 {
		t.Fatalf("%d serving goroutines with one relay, below the threshold; want 1", n)
	}
	second := socksEchoThrough(t, proxyAddr, port)
	time.Sleep(20 * time.Millisecond)
	if n := serving(); n != 1 {
		t.Fatalf("%d serving goroutines after the second relay, at the threshold; want 1 (the second handed over)", n)
	}
	socksPing(t, first)
	socksPing(t, second)
}

// TestSOCKS5RefusesUnknownCommandUnresolved: a command the server does
// not serve is refused at once, its name never looked up in the tunnel.
func TestSOCKS5RefusesUnknownCommandUnresolved(t *testing.T) {
	nw := newSOCKSNetwork()
	_, addr, _ := startSOCKS5(t, nw, SOCKS5Config{})
	name := "tunnel.test"
	for _, cmd := range []byte{2, 3, 0xf0} {
		req := append([]byte{5, 1, 0, 5, cmd, 0, 3, byte(len(name))}, name...)
		got := exchangeRaw(t, addr, append(req, 0, 80))
		if len(got) < 4 || got[3] != 7 {
			t.Errorf("command %#x: answers %v, want the method and reply 7 (command not supported)", cmd, got)
		}
	}
	if l := nw.lookedUp(); len(l) != 0 {
		t.Errorf("looked up %v for commands that are refused", l)
	}
}

// TestSOCKS5HandshakeReaderGivenBack: the reader a handshake is read
// through goes back to its pool once a CONNECT's relay starts, and after
// a failed dial, a refused command or a malformed greeting, so that an
// open relay holds none.
func TestSOCKS5HandshakeReaderGivenBack(t *testing.T) {
	s, addr, _ := startSOCKS5(t, newSOCKSNetwork(), SOCKS5Config{})
	echoPort, _ := strconv.Atoi(startTCPEcho(t))
	// A port that was just listened on and closed has no listener.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	noListener := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	given := func(when string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for s.readers.out.Load() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d handshake readers not given back", when, s.readers.out.Load())
			}
			time.Sleep(time.Millisecond)
		}
	}

	// The greeting, the request and the first bytes in one write: the
	// reader has buffered the bytes, and they still reach the target.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	req := []byte{5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, byte(echoPort >> 8), byte(echoPort)}
	if _, err := c.Write(append(req, "early"...)); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 2+10+len("early"))
	if _, err := io.ReadFull(c, reply); err != nil || reply[3] != 0 || string(reply[12:]) != "early" {
		t.Fatalf("reply and echo = %v, %v", reply, err)
	}
	given("relay open")
	socksPing(t, c)

	if got := socksRequest(t, addr, 1, noListener); got == 0 {
		t.Fatal("CONNECT to a port with no listener succeeded")
	}
	given("failed dial")
	if got := socksRequest(t, addr, 2, noListener); got != 7 {
		t.Fatalf("BIND reply = %d, want 7", got)
	}
	given("refused command")
	exchangeRaw(t, addr, []byte{4, 1, 0})
	given("malformed greeting")
}

// TestSOCKS5LongestLogin: a login of the longest name and password the
// protocol allows, sent with the greeting, the request and the first
// bytes in one write, is more than the handshake's reader holds at once
// and is read whole all the same.
func TestSOCKS5LongestLogin(t *testing.T) {
	user, pass := strings.Repeat("u", 255), strings.Repeat("p", 255)
	_, addr, _ := startSOCKS5(t, newSOCKSNetwork(), SOCKS5Config{Username: user, Password: pass})
	port, _ := strconv.Atoi(startTCPEcho(t))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := []byte{5, 1, 2, 1, 255}
	msg = append(msg, user...)
	msg = append(msg, 255)
	msg = append(msg, pass...)
	msg = append(msg, 5, 1, 0, 1, 127, 0, 0, 1, byte(port>>8), byte(port))
	if _, err := c.Write(append(msg, "early"...)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 2+2+10+len("early"))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("answers %v: %v", got, err)
	}
	if !bytes.Equal(got[:4], []byte{5, 2, 1, 0}) || got[5] != 0 || string(got[14:]) != "early" {
		t.Fatalf("answers = %v, want method 2, login accepted, success and the echo", got)
	}
}

// BenchmarkSOCKS5Connect serves one CONNECT per iteration, from the
// greeting to a round trip through the relay and the close: its B/op,
// which counts the client's and the target's side too, is mostly what a
// connection's set-up leaves for the collector, which a burst of new
// connections piles up before the next collection.
func BenchmarkSOCKS5Connect(b *testing.B) {
	port := startTCPEcho(b)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := NewSOCKS5(newSOCKSNetwork(), SOCKS5Config{})
	serveInBackground(b, func() error { return s.Serve(l) }, s.Close)
	req := []byte{5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 0}
	p, _ := strconv.Atoi(port)
	binary.BigEndian.PutUint16(req[len(req)-2:], uint16(p))
	reply := make([]byte, 2+10+4)
	b.ReportAllocs()
	for b.Loop() {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(append(req, "ping"...)); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, reply); err != nil {
			b.Fatal(err)
		}
		if reply[1] != 0 || reply[3] != 0 || string(reply[12:]) != "ping" {
			b.Fatalf("reply %v", reply)
		}
		c.Close()
	}
}
