package proxy

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wgbore/wgbore/proxy/relay"
)

// httpTunnelName is a name only httpTestNetwork knows: if the host resolver
// were asked, it would fail.
const httpTunnelName = "tunnel.test"

// httpTestNetwork stands in for the tunnel. It dials 127.0.0.1 only, and
// only by address, so a request for a name works only if the proxy asked
// this network's LookupNetIP.
type httpTestNetwork struct {
	names   map[string]netip.Addr
	lookups atomic.Int64
	dials   atomic.Int64
	// notify, when set, watches each connection dialed, so that it can
	// notify as the tunnel's connections do.
	notify *relay.Poller
}

func newHTTPTestNetwork() *httpTestNetwork {
	return &httpTestNetwork{names: map[string]netip.Addr{httpTunnelName: netip.MustParseAddr("127.0.0.1")}}
}

func (n *httpTestNetwork) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("loopback network: %q is not an address; names must be resolved through LookupNetIP", address)
	}
	if ap.Addr() != netip.MustParseAddr("127.0.0.1") {
		return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.EHOSTUNREACH}
	}
	n.dials.Add(1)
	var d net.Dialer
	c, err := d.DialContext(ctx, network, address)
	if err != nil || n.notify == nil {
		return c, err
	}
	if w := n.notify.Watch(c); w != nil {
		return w, nil
	}
	c.Close()
	return nil, fmt.Errorf("loopback network: cannot watch the connection to %s", address)
}

func (n *httpTestNetwork) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	n.lookups.Add(1)
	if a, ok := n.names[host]; ok {
		return []netip.Addr{a}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// httpTimeoutNetwork fails every dial the way a tunnel without a handshake
// does: by timing out.
type httpTimeoutNetwork struct{ httpTestNetwork }

type httpTimeoutError struct{}

func (httpTimeoutError) Error() string   { return "i/o timeout" }
func (httpTimeoutError) Timeout() bool   { return true }
func (httpTimeoutError) Temporary() bool { return true }

func (n *httpTimeoutNetwork) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return nil, &net.OpError{Op: "dial", Net: network, Err: httpTimeoutError{}}
}

// startHTTPProxy serves an HTTP proxy on a loopback port and closes it when
// the test ends, checking that Serve then returns nil.
func startHTTPProxy(t *testing.T, nw Network, cfg HTTPConfig) (*HTTP, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := NewHTTP(nw, cfg)
	serveInBackground(t, func() error { return p.Serve(l) }, p.Close)
	return p, l.Addr().String()
}

// origin is a web server reachable only as tunnel.test:port.
type httpOrigin struct {
	srv  *httptest.Server
	port string
}

// tunnelURL is the origin's URL as a client of the proxy names it.
func (o *httpOrigin) tunnelURL(path string) string {
	scheme := "http"
	if o.srv.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(httpTunnelName, o.port) + path
}

const httpOriginGreeting = "hello from the far side of the tunnel\n"

func httpOriginHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/path", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-Origin", "yes")
		io.WriteString(w, httpOriginGreeting)
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "%s %s %d", r.Method, hex.EncodeToString(h.Sum(nil)), n)
	})
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Origin-Hop")
		w.Header().Set("X-Origin-Hop", "must not reach the client")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Origin-End", "kept")
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(r.Header)
	})
	mux.HandleFunc("/teapot", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	})
	return mux
}

func startHTTPOrigin(t *testing.T, tlsOn bool) *httpOrigin {
	t.Helper()
	srv := httptest.NewUnstartedServer(httpOriginHandler())
	if tlsOn {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return &httpOrigin{srv: srv, port: port}
}

// httpProxyClient is an ordinary net/http client configured to use the proxy,
// trusting o's certificate for the name tunnel.test is not.
func httpProxyClient(t *testing.T, proxyAddr string, user *url.Userinfo, o *httpOrigin) *http.Client {
	t.Helper()
	pu := &url.URL{Scheme: "http", Host: proxyAddr, User: user}
	tr := &http.Transport{Proxy: http.ProxyURL(pu)}
	if o != nil && o.srv.TLS != nil {
		tr.TLSClientConfig = &tls.Config{
			RootCAs:    o.srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs,
			ServerName: "example.com", // httptest's certificate is for it
		}
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func readHTTPBody(t *testing.T, res *http.Response) string {
	t.Helper()
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestHTTPHostResolverIsNotUsed(t *testing.T) {
	if _, err := net.DefaultResolver.LookupNetIP(context.Background(), "ip", httpTunnelName); err == nil {
		t.Skipf("the host resolves %s; this test needs a name only the tunnel knows", httpTunnelName)
	}
	nw := newHTTPTestNetwork()
	o := startHTTPOrigin(t, false)
	_, addr := startHTTPProxy(t, nw, HTTPConfig{})
	res, err := httpProxyClient(t, addr, nil, o).Get(o.tunnelURL("/path"))
	if err != nil {
		t.Fatal(err)
	}
	if body := readHTTPBody(t, res); body != httpOriginGreeting {
		t.Fatalf("body %q, want %q", body, httpOriginGreeting)
	}
	if nw.lookups.Load() == 0 {
		t.Error("the network's LookupNetIP was never asked")
	}
}

func TestHTTPGoClientForwardAndConnect(t *testing.T) {
	for _, tlsOn := range []bool{false, true} {
		name := "absolute-form"
		if tlsOn {
			name = "CONNECT"
		}
		t.Run(name, func(t *testing.T) {
			o := startHTTPOrigin(t, tlsOn)
			_, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{Username: "u", Password: "p"})
			c := httpProxyClient(t, addr, url.UserPassword("u", "p"), o)

			res, err := c.Get(o.tunnelURL("/path"))
			if err != nil {
				t.Fatal(err)
			}
			if body := readHTTPBody(t, res); res.StatusCode != 200 || body != httpOriginGreeting {
				t.Fatalf("GET: %s %q", res.Status, body)
			}
			if got := res.Header.Get("X-Origin"); got != "yes" {
				t.Errorf("X-Origin = %q, want the origin's header kept", got)
			}

			payload := make([]byte, 1<<20)
			rand.Read(payload)
			sum := sha256.Sum256(payload)
			res, err = c.Post(o.tunnelURL("/upload"), "application/octet-stream", strings.NewReader(string(payload)))
			if err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf("POST %x %d", sum, len(payload))
			if body := readHTTPBody(t, res); body != want {
				t.Fatalf("POST: %s %q, want %q", res.Status, body, want)
			}

			res, err = c.Get(o.tunnelURL("/teapot"))
			if err != nil {
				t.Fatal(err)
			}
			readHTTPBody(t, res)
			if res.StatusCode != http.StatusTeapot {
				t.Errorf("status %d, want the origin's %d", res.StatusCode, http.StatusTeapot)
			}
		})
	}
}

func TestHTTPMethods(t *testing.T) {
	o := startHTTPOrigin(t, false)
	_, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{})
	c := httpProxyClient(t, addr, nil, o)
	for _, method := range []string{"GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"} {
		req, _ := http.NewRequest(method, o.tunnelURL("/upload"), strings.NewReader("body"))
		res, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		want := fmt.Sprintf("%s %x 4", method, sha256.Sum256([]byte("body")))
		if body := readHTTPBody(t, res); body != want {
			t.Errorf("%s: %q, want %q", method, body, want)
		}
	}
	req, _ := http.NewRequest("HEAD", o.tunnelURL("/path"), nil)
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if body := readHTTPBody(t, res); res.StatusCode != 200 || body != "" || res.ContentLength != int64(len(httpOriginGreeting)) {
		t.Errorf("HEAD: %s, body %q, length %d", res.Status, body, res.ContentLength)
	}
}

// rawHTTPProxyRequest writes req to the proxy as is and reads one response.
func rawHTTPProxyRequest(t *testing.T, proxyAddr, req string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	return res, readHTTPBody(t, res)
}

func TestHTTPHopByHopHeadersStripped(t *testing.T) {
	o := startHTTPOrigin(t, false)
	_, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{Username: "u", Password: "p"})
	creds := base64.StdEncoding.EncodeToString([]byte("u:p"))
	res, body := rawHTTPProxyRequest(t, addr, "GET "+o.tunnelURL("/headers")+" HTTP/1.1\r\n"+
		"Host: "+net.JoinHostPort(httpTunnelName, o.port)+"\r\n"+
		"Proxy-Authorization: Basic "+creds+"\r\n"+
		"Proxy-Connection: keep-alive\r\n"+
		"Connection: keep-alive, X-Client-Hop\r\n"+
		"X-Client-Hop: must not reach the origin\r\n"+
		"Keep-Alive: timeout=5\r\n"+
		"TE: trailers\r\n"+
		"Upgrade: h2c\r\n"+
		"X-End-To-End: kept\r\n"+
		"\r\n")
	if res.StatusCode != 200 {
		t.Fatalf("status %s: %s", res.Status, body)
	}
	var seen http.Header
	if err := json.Unmarshal([]byte(body), &seen); err != nil {
		t.Fatalf("origin's answer %q: %v", body, err)
	}
	for _, k := range []string{"Proxy-Authorization", "Proxy-Connection", "Connection", "X-Client-Hop", "Keep-Alive", "Te", "Upgrade", "User-Agent", "Via", "X-Forwarded-For", "Forwarded", "Accept-Encoding"} {
		if v, ok := seen[k]; ok {
			t.Errorf("origin saw %s: %q", k, v)
		}
	}
	if got := seen.Get("X-End-To-End"); got != "kept" {
		t.Errorf("origin saw X-End-To-End %q, want kept", got)
	}
	for _, k := range []string{"X-Origin-Hop", "Keep-Alive"} {
		if v, ok := res.Header[k]; ok {
			t.Errorf("client saw %s: %q", k, v)
		}
	}
	if got := res.Header.Get("X-Origin-End"); got != "kept" {
		t.Errorf("client saw X-Origin-End %q, want kept", got)
	}
}

func TestHTTPOriginFormRefused(t *testing.T) {
	_, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{})
	res, body := rawHTTPProxyRequest(t, addr, "GET /path HTTP/1.1\r\nHost: "+httpTunnelName+"\r\n\r\n")
	if res.StatusCode != http.StatusBadRequest {
		t.Fatalf("status %s (%q), want 400", res.Status, body)
	}
}

func TestHTTPAuth(t *testing.T) {
	o := startHTTPOrigin(t, false)
	_, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{Username: "user", Password: "secret"})
	for _, user := range []*url.Userinfo{nil, url.UserPassword("user", "wrong"), url.UserPassword("wrong", "secret"), url.UserPassword("user", "secretX")} {
		res, err := httpProxyClient(t, addr, user, o).Get(o.tunnelURL("/path"))
		if err != nil {
			t.Fatal(err)
		}
		readHTTPBody(t, res)
		if res.StatusCode != http.StatusProxyAuthRequired {
			t.Errorf("%v: status %s, want 407", user, res.Status)
		}
		if got := res.Header.Get("Proxy-Authenticate"); got != `Basic realm="wgbore"` {
			t.Errorf("%v: Proxy-Authenticate %q", user, got)
		}
	}
	res, body := rawHTTPProxyRequest(t, addr, "CONNECT "+net.JoinHostPort(httpTunnelName, o.port)+" HTTP/1.1\r\nHost: x\r\n\r\n")
	if res.StatusCode != http.StatusProxyAuthRequired {
		t.Errorf("CONNECT without credentials: %s %q, want 407", res.Status, body)
	}
}

// httpClosedPort returns a loopback port nothing listens on.
func httpClosedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	return port
}

func TestHTTPDialFailures(t *testing.T) {
	port := httpClosedPort(t)
	_, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{})
	_, timeoutAddr := startHTTPProxy(t, &httpTimeoutNetwork{*newHTTPTestNetwork()}, HTTPConfig{})
	target := net.JoinHostPort(httpTunnelName, port)
	cases := []struct {
		name, proxy, req string
		status           int
		reason           string
	}{
		{"CONNECT refused", addr, "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n", 502, "connection refused"},
		{"GET refused", addr, "GET http://" + target + "/ HTTP/1.1\r\nHost: " + target + "\r\n\r\n", 502, "connection refused"},
		{"unknown name", addr, "CONNECT nowhere.test:80 HTTP/1.1\r\nHost: nowhere.test:80\r\n\r\n", 502, "no such host"},
		{"CONNECT timeout", timeoutAddr, "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n", 504, "timed out"},
		{"GET timeout", timeoutAddr, "GET http://" + target + "/ HTTP/1.1\r\nHost: " + target + "\r\n\r\n", 504, "timed out"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, body := rawHTTPProxyRequest(t, tc.proxy, tc.req)
			if res.StatusCode != tc.status {
				t.Errorf("status %s, want %d", res.Status, tc.status)
			}
			if strings.Count(body, "\n") != 1 || !strings.Contains(body, tc.reason) {
				t.Errorf("body %q, want one line saying %q", body, tc.reason)
			}
		})
	}
}

// startHTTPHalfCloseServer accepts one conn at a time, reads it to EOF and
// only then answers with how many bytes it got: it works only if the
// client's half-close travels through the tunnel.
func startHTTPHalfCloseServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				fmt.Fprintf(c, "got %d", n)
			}()
		}
	}()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// httpConnectTunnel opens a CONNECT tunnel through the proxy to target.
func httpConnectTunnel(t *testing.T, proxyAddr, target string) (*net.TCPConn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 {
		t.Fatalf("CONNECT: %s", res.Status)
	}
	return c.(*net.TCPConn), br
}

func TestHTTPConnectHalfClose(t *testing.T) {
	port := startHTTPHalfCloseServer(t)
	_, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{})
	c, br := httpConnectTunnel(t, addr, net.JoinHostPort(httpTunnelName, port))
	io.WriteString(c, "twelve bytes")
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "got 12" {
		t.Fatalf("server answered %q, want %q", got, "got 12")
	}
}

func TestHTTPCloseEndsTunnels(t *testing.T) {
	// An echo server the tunnel can reach; its own goroutines end when the
	// proxy closes its side.
	port := startTCPEcho(t)
	baseline := runtime.NumGoroutine()

	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := NewHTTP(newHTTPTestNetwork(), HTTPConfig{})
	served := serveInBackground(t, func() error { return p.Serve(pl) }, p.Close)

	c, br := httpConnectTunnel(t, pl.Addr().String(), net.JoinHostPort(httpTunnelName, port))
	io.WriteString(c, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo through the tunnel: %q, %v", buf, err)
	}
	// A second client that is idle, between requests.
	idle, err := net.Dial("tcp", pl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()

	if err := closeWithin(t, p.Close, httpCode...); err != nil {
		t.Fatal(err)
	}
	waitServed(t, served)
	if _, err := br.ReadByte(); err == nil {
		t.Error("the tunnel still carries data after Close")
	}
	c.Close()
	idle.Close()

	waitGoroutineCount(t, baseline)
}

// curl tests: the real client users point at the proxy.

func httpCurlPath(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed; the curl tests need it (CI installs it)")
	}
	return path
}

// runHTTPCurl runs curl with no environment proxies and no ~/.curlrc, and
// returns what it printed and its exit code.
func runHTTPCurl(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, httpCurlPath(t), append([]string{"-q", "-sS", "--max-time", "30"}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("curl: %v", err)
		}
		code = ee.ExitCode()
		t.Logf("curl %s: exit %d: %s", strings.Join(args, " "), code, stderr.String())
	}
	return string(out), code
}

func TestHTTPCurl(t *testing.T) {
	httpCurlPath(t)
	o := startHTTPOrigin(t, false)
	tlsOrigin := startHTTPOrigin(t, true)
	_, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{})
	proxyURL := "http://" + addr

	t.Run("GET", func(t *testing.T) {
		out, code := runHTTPCurl(t, "-x", proxyURL, o.tunnelURL("/path"))
		if code != 0 || out != httpOriginGreeting {
			t.Fatalf("exit %d, body %q", code, out)
		}
	})
	t.Run("POST 4MiB", func(t *testing.T) {
		payload := make([]byte, 4<<20)
		rand.Read(payload)
		file := filepath.Join(t.TempDir(), "payload")
		if err := os.WriteFile(file, payload, 0o600); err != nil {
			t.Fatal(err)
		}
		out, code := runHTTPCurl(t, "-x", proxyURL, "-X", "POST", "--data-binary", "@"+file, o.tunnelURL("/upload"))
		want := fmt.Sprintf("POST %x %d", sha256.Sum256(payload), len(payload))
		if code != 0 || out != want {
			t.Fatalf("exit %d, origin said %q, want %q", code, out, want)
		}
	})
	t.Run("HEAD", func(t *testing.T) {
		out, code := runHTTPCurl(t, "-x", proxyURL, "-I", "-o", "/dev/null", "-w", "%{http_code} %header{content-length}", o.tunnelURL("/path"))
		want := "200 " + strconv.Itoa(len(httpOriginGreeting))
		if code != 0 || out != want {
			t.Fatalf("exit %d, %q, want %q", code, out, want)
		}
	})
	t.Run("CONNECT", func(t *testing.T) {
		out, code := runHTTPCurl(t, "-p", "-x", proxyURL, o.tunnelURL("/path"))
		if code != 0 || out != httpOriginGreeting {
			t.Fatalf("exit %d, body %q", code, out)
		}
	})
	t.Run("HTTPS through CONNECT", func(t *testing.T) {
		out, code := runHTTPCurl(t, "-k", "-x", proxyURL, tlsOrigin.tunnelURL("/path"))
		if code != 0 || out != httpOriginGreeting {
			t.Fatalf("exit %d, body %q", code, out)
		}
	})
}

func TestHTTPCurlAuth(t *testing.T) {
	httpCurlPath(t)
	o := startHTTPOrigin(t, false)
	_, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{Username: "u", Password: "p"})
	proxyURL := "http://" + addr

	out, code := runHTTPCurl(t, "-x", proxyURL, "--proxy-user", "u:p", o.tunnelURL("/path"))
	if code != 0 || out != httpOriginGreeting {
		t.Fatalf("right password: exit %d, body %q", code, out)
	}
	out, code = runHTTPCurl(t, "-p", "-x", proxyURL, "--proxy-user", "u:p", o.tunnelURL("/path"))
	if code != 0 || out != httpOriginGreeting {
		t.Fatalf("right password, CONNECT: exit %d, body %q", code, out)
	}
	out, code = runHTTPCurl(t, "-x", proxyURL, "--proxy-user", "u:wrong", "-o", "/dev/null", "-w", "%{http_code}", o.tunnelURL("/path"))
	if code != 0 || out != "407" {
		t.Fatalf("wrong password: exit %d, status %q, want 407", code, out)
	}
	_, code = runHTTPCurl(t, "-p", "-x", proxyURL, "--proxy-user", "u:wrong", o.tunnelURL("/path"))
	if code != 56 {
		t.Fatalf("wrong password, CONNECT: exit %d, want 56", code)
	}
}

// TestHTTPStreamsResponses shows a response piece reaches the client while
// the origin is still writing the rest: the proxy does not buffer bodies.
func TestHTTPStreamsResponses(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "second\n")
	}))
	defer srv.Close()
	defer close(release)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	_, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{})

	res, err := httpProxyClient(t, addr, nil, nil).Get("http://" + net.JoinHostPort(httpTunnelName, port) + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	line, err := bufio.NewReader(res.Body).ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first piece: %q, %v", line, err)
	}
}

// httpTestCert makes a self-signed ECDSA certificate for 127.0.0.1 and
// tunnel.test, so one certificate serves both the proxy and an origin
// behind it. It returns the certificate, a pool that trusts it, and a PEM
// file of it for curl.
func httpTestCert(t *testing.T) (tls.Certificate, *x509.CertPool, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "wgbore test proxy"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{httpTunnelName},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	file := filepath.Join(t.TempDir(), "proxy.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, file
}

// startHTTPSOrigin serves httpOriginHandler over TLS with cert.
func startHTTPSOrigin(t *testing.T, cert tls.Certificate) *httpOrigin {
	t.Helper()
	srv := httptest.NewUnstartedServer(httpOriginHandler())
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return &httpOrigin{srv: srv, port: port}
}

func TestHTTPOverTLSCurl(t *testing.T) {
	httpCurlPath(t)
	cert, _, certFile := httpTestCert(t)
	o := startHTTPOrigin(t, false)
	tlsOrigin := startHTTPSOrigin(t, cert)
	_, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{
		Username: "u", Password: "p",
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}},
	})
	proxy := []string{"-x", "https://" + addr, "--proxy-cacert", certFile, "--proxy-user", "u:p"}

	for _, tc := range []struct {
		name string
		args []string
	}{
		{"GET", []string{o.tunnelURL("/path")}},
		{"CONNECT", []string{"-p", o.tunnelURL("/path")}},
		{"HTTPS through CONNECT", []string{"--cacert", certFile, tlsOrigin.tunnelURL("/path")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := runHTTPCurl(t, append(append([]string{}, proxy...), tc.args...)...)
			if code != 0 || out != httpOriginGreeting {
				t.Fatalf("exit %d, body %q", code, out)
			}
		})
	}
	t.Run("untrusted proxy certificate", func(t *testing.T) {
		// Without --proxy-cacert curl must refuse the proxy: the test
		// would otherwise pass over plain HTTP just as well.
		_, code := runHTTPCurl(t, "-x", "https://"+addr, "--proxy-user", "u:p", o.tunnelURL("/path"))
		if code == 0 {
			t.Fatal("curl trusted a self-signed proxy certificate")
		}
	})
	t.Run("proxy-insecure", func(t *testing.T) {
		out, code := runHTTPCurl(t, "-x", "https://"+addr, "--proxy-insecure", "--proxy-user", "u:p", o.tunnelURL("/path"))
		if code != 0 || out != httpOriginGreeting {
			t.Fatalf("exit %d, body %q", code, out)
		}
	})
}

func TestHTTPOverTLSGoClient(t *testing.T) {
	cert, pool, _ := httpTestCert(t)
	o := startHTTPOrigin(t, false)
	tlsOrigin := startHTTPSOrigin(t, cert)
	_, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})

	// The Transport uses TLSClientConfig for the proxy and for origins
	// reached through CONNECT alike; the one certificate covers both.
	tr := &http.Transport{
		Proxy:           http.ProxyURL(&url.URL{Scheme: "https", Host: addr}),
		TLSClientConfig: &tls.Config{RootCAs: pool},
	}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	for _, u := range []string{o.tunnelURL("/path"), tlsOrigin.tunnelURL("/path")} {
		res, err := c.Get(u)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		if body := readHTTPBody(t, res); res.StatusCode != 200 || body != httpOriginGreeting {
			t.Fatalf("GET %s: %s %q", u, res.Status, body)
		}
		if res.ProtoMajor != 1 {
			t.Errorf("GET %s: %s, want HTTP/1.1 to the proxy", u, res.Proto)
		}
	}

	// A client speaking plain HTTP to the TLS port is not served: net/http
	// ends the failed handshake (with a 400 only for requests it
	// recognises, which absolute-form ones are not).
	plain, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	plain.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(plain, "GET "+o.tunnelURL("/path")+" HTTP/1.1\r\nHost: x\r\n\r\n")
	answer, err := io.ReadAll(plain) // the server may reset rather than close
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("plain HTTP to the TLS proxy: the connection was left open")
	}
	if strings.Contains(string(answer), httpOriginGreeting) {
		t.Fatalf("plain HTTP to the TLS proxy: %q", answer)
	}
}

func TestHTTPHandshakeTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	cert, _, _ := httpTestCert(t)
	_, plainAddr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{HandshakeTimeout: timeout})
	_, tlsAddr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{
		HandshakeTimeout: timeout,
		TLS:              &tls.Config{Certificates: []tls.Certificate{cert}},
	})
	for _, tc := range []struct {
		name, addr, partial string
	}{
		{"silent", plainAddr, ""},
		{"half a request line", plainAddr, "CONNECT tunnel.te"},
		{"half a header", plainAddr, "GET http://tunnel.test/ HTTP/1.1\r\nHost: tunnel.test\r\nX-Slow: "},
		{"TLS silent", tlsAddr, ""},
		{"half a TLS ClientHello", tlsAddr, "\x16\x03\x01\x02\x00\x01"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", tc.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, tc.partial)
			if took := closedByServerWithin(t, c, 5*time.Second); took < timeout*3/4 {
				t.Fatalf("closed after %v, before the %v handshake timeout", took, timeout)
			}
		})
	}
}

func TestHTTPIdleTimeoutIsSet(t *testing.T) {
	// A keep-alive client that sends nothing more must not hold its slot
	// forever; net/http would otherwise fall back to ReadTimeout (none).
	if got := NewHTTP(newHTTPTestNetwork(), HTTPConfig{}).srv.IdleTimeout; got <= 0 {
		t.Fatalf("IdleTimeout = %v, want a bound", got)
	}
}

func TestHTTPMaxConnections(t *testing.T) {
	o := startHTTPOrigin(t, false)
	_, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{MaxConnections: 1})
	req := "GET " + o.tunnelURL("/path") + " HTTP/1.1\r\nHost: " + httpTunnelName + "\r\n\r\n"

	first, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	io.WriteString(first, req)
	first.SetReadDeadline(time.Now().Add(5 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(first), nil)
	if err != nil {
		t.Fatal(err)
	}
	readHTTPBody(t, res)

	// The first client keeps its connection alive, so the second is
	// refused: 503 with Retry-After, and the connection closed.
	second, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	io.WriteString(second, req)
	second.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(second)
	res, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("second client past MaxConnections 1: %v", err)
	}
	readHTTPBody(t, res)
	if res.StatusCode != http.StatusServiceUnavailable || res.Header.Get("Retry-After") == "" {
		t.Fatalf("second client past MaxConnections 1: %s, Retry-After %q", res.Status, res.Header.Get("Retry-After"))
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("the refused connection stayed open: %v", err)
	}
	first.Close()
	third, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	// The first client's slot frees when the server notices it left.
	deadline := time.Now().Add(5 * time.Second)
	for {
		io.WriteString(third, req)
		third.SetReadDeadline(time.Now().Add(5 * time.Second))
		res, err = http.ReadResponse(bufio.NewReader(third), nil)
		if err == nil && res.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no client served once the first left: %v", err)
		}
		third.Close()
		time.Sleep(20 * time.Millisecond)
		if third, err = net.Dial("tcp", addr); err != nil {
			t.Fatal(err)
		}
	}
	if body := readHTTPBody(t, res); body != httpOriginGreeting {
		t.Fatalf("third client got %q", body)
	}
}

func httpTunnelPing(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo through the tunnel: %q, %v", buf, err)
	}
}

// TestHTTPShutdownWaitsForTunnels, for a tunnel on its handler's
// goroutine and for one handed over.
func TestHTTPShutdownWaitsForTunnels(t *testing.T) {
	t.Run("serving", func(t *testing.T) {
		p, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{})
		checkHTTPShutdownWaits(t, p, addr)
	})
	t.Run("handed over", func(t *testing.T) {
		p, addr := startHandingOverHTTP(t, HTTPConfig{}, 0)
		checkHTTPShutdownWaits(t, p, addr)
	})
}

func checkHTTPShutdownWaits(t *testing.T, p *HTTP, addr string) {
	t.Helper()
	o := startHTTPOrigin(t, false)
	port := startTCPEcho(t)
	tunnel, br := httpConnectTunnel(t, addr, net.JoinHostPort(httpTunnelName, port))
	httpTunnelPing(t, tunnel, br)

	// A keep-alive client between requests.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	io.WriteString(idle, "GET "+o.tunnelURL("/path")+" HTTP/1.1\r\nHost: "+httpTunnelName+"\r\n\r\n")
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(idle), nil)
	if err != nil {
		t.Fatal(err)
	}
	readHTTPBody(t, res)

	// The whole response has been read, so nothing is left buffered
	// and the idle client is let go at once.
	checkShutdownWaits(t, p.Shutdown, addr, idle, tunnel, func() { httpTunnelPing(t, tunnel, br) }, httpCode...)
}

func TestHTTPShutdownDeadline(t *testing.T) {
	port := startTCPEcho(t)
	p, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{})
	tunnel, br := httpConnectTunnel(t, addr, net.JoinHostPort(httpTunnelName, port))
	httpTunnelPing(t, tunnel, br)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := p.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want the context's deadline", err)
	}
	tunnel.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("the tunnel still carries data after Shutdown gave up")
	}
	waitNoGoroutines(t, "Shutdown", httpCode...)
}

// httpExchangeRaw sends raw to the proxy, half-closes, and returns the
// first response, failing unless the proxy answers and closes within a
// few seconds.
func httpExchangeRaw(t *testing.T, proxyAddr, raw string) *http.Response {
	t.Helper()
	answer := exchangeRaw(t, proxyAddr, []byte(raw))
	res, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(answer))), nil)
	if err != nil {
		t.Fatalf("no response (%v): %q", err, answer)
	}
	return res
}

func TestHTTPMalformedRequests(t *testing.T) {
	var logs socksLogBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	nw := newHTTPTestNetwork()
	p, addr := startHTTPProxy(t, nw, HTTPConfig{Logger: logger})
	pa, authAddr := startHTTPProxy(t, nw, HTTPConfig{Logger: logger, Username: "u", Password: "p"})
	b64 := base64.StdEncoding.EncodeToString
	get := func(headers string) string {
		return "GET http://tunnel.test/ HTTP/1.1\r\nHost: tunnel.test\r\n" + headers + "\r\n"
	}

	for _, tc := range []struct {
		name, proxy, req string
		status           int
	}{
		{"garbage request line", addr, "\x00\x01\x02 garbage\r\n\r\n", 400},
		{"request line without version", addr, "GET http://tunnel.test/\r\n\r\n", 400},
		{"unknown HTTP version", addr, "GET http://tunnel.test/ HTTP/9.9\r\nHost: tunnel.test\r\n\r\n", 505},
		{"missing Host", addr, "GET http://tunnel.test/ HTTP/1.1\r\n\r\n", 400},
		{"huge header", addr, get("X-Big: " + strings.Repeat("a", 2<<20) + "\r\n"), 431},
		{"Content-Length not a number", addr, get("Content-Length: abc\r\n"), 400},
		{"Content-Length negative", addr, get("Content-Length: -1\r\n"), 400},
		{"Content-Length twice, differing", addr, get("Content-Length: 1\r\nContent-Length: 2\r\n"), 400},
		{"unknown Transfer-Encoding", addr, get("Transfer-Encoding: gzip\r\n"), 501},
		{"CONNECT without port", addr, "CONNECT tunnel.test HTTP/1.1\r\nHost: tunnel.test\r\n\r\n", 400},
		{"CONNECT without host", addr, "CONNECT :443 HTTP/1.1\r\nHost: :443\r\n\r\n", 400},
		{"CONNECT to port 0", addr, "CONNECT tunnel.test:0 HTTP/1.1\r\nHost: tunnel.test:0\r\n\r\n", 400},
		{"CONNECT to a bad port", addr, "CONNECT tunnel.test:99999 HTTP/1.1\r\nHost: tunnel.test:99999\r\n\r\n", 400},
		{"ftp scheme", addr, "GET ftp://tunnel.test/file HTTP/1.1\r\nHost: tunnel.test\r\n\r\n", 400},
		{"absolute-form without host", addr, "GET http:///path HTTP/1.1\r\nHost: tunnel.test\r\n\r\n", 400},
		{"bad base64 credentials", authAddr, get("Proxy-Authorization: Basic !!!not-base64\r\n"), 407},
		{"credentials without colon", authAddr, get("Proxy-Authorization: Basic " + b64([]byte("up")) + "\r\n"), 407},
		{"credentials of another scheme", authAddr, get("Proxy-Authorization: Bearer " + b64([]byte("u:p")) + "\r\n"), 407},
		{"empty credentials", authAddr, get("Proxy-Authorization: Basic\r\n"), 407},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := httpExchangeRaw(t, tc.proxy, tc.req)
			if res.StatusCode != tc.status {
				t.Fatalf("status %s, want %d", res.Status, tc.status)
			}
		})
	}
	if n := nw.dials.Load(); n != 0 {
		t.Errorf("%d dials for malformed requests, want none", n)
	}
	p.Close()
	pa.Close()
	waitNoGoroutines(t, "Close", httpCode...)
	if out := logs.String(); strings.Contains(out, "panic") {
		t.Fatalf("the proxy panicked:\n%s", out)
	}
}

// startHandingOverHTTP serves an HTTP proxy whose Network's connections
// notify, as the tunnel's do, and which hands tunnels over from its
// from-th connection on.
func startHandingOverHTTP(t *testing.T, cfg HTTPConfig, from uint64) (*HTTP, string) {
	t.Helper()
	nw := newHTTPTestNetwork()
	var l net.Listener
	nw.notify, l = handOverFixture(t)
	proxy := NewHTTP(nw, cfg)
	proxy.relays.from = from
	serveInBackground(t, func() error { return proxy.Serve(l) }, proxy.Close)
	return proxy, l.Addr().String()
}

// TestHTTPConnectIdleTunnelHoldsNoGoroutine: once handed over, a CONNECT
// tunnel holds no goroutine while idle; it still carries bytes both ways,
// passes a half-close on, gives its slot back when it ends, and ends on
// Close.
func TestHTTPConnectIdleTunnelHoldsNoGoroutine(t *testing.T) {
	const max = 3
	proxy, addr := startHandingOverHTTP(t, HTTPConfig{MaxConnections: max}, 0)
	tunnelCode := []string{"net/http.(*conn).serve", "wgbore/proxy.(*HTTP).serveConnect",
		"wgbore/proxy/relay.(*notifiedCopy)", "wgbore/proxy/relay.OneWay", "wgbore/proxy/relay.Both"}

	echo := net.JoinHostPort(httpTunnelName, startTCPEcho(t))
	type tunnel struct {
		c  *net.TCPConn
		br *bufio.Reader
	}
	var tunnels []tunnel
	for range max - 1 {
		c, br := httpConnectTunnel(t, addr, echo)
		httpTunnelPing(t, c, br)
		tunnels = append(tunnels, tunnel{c, br})
	}
	waitNoGoroutines(t, "the tunnels went idle", tunnelCode...)
	for _, tn := range tunnels {
		httpTunnelPing(t, tn.c, tn.br)
	}

	// A half-close through a tunnel handed over: the server answers only
	// after the client's end.
	c, br := httpConnectTunnel(t, addr, net.JoinHostPort(httpTunnelName, startHTTPHalfCloseServer(t)))
	io.WriteString(c, "twelve bytes")
	c.CloseWrite()
	if got, err := io.ReadAll(br); err != nil || string(got) != "got 12" {
		t.Fatalf("after the half-close: %q, %v", got, err)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for proxy.Stats().Active >= max {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections active after a tunnel ended", proxy.Stats().Active)
		}
		time.Sleep(5 * time.Millisecond)
	}
	c, br = httpConnectTunnel(t, addr, echo)
	httpTunnelPing(t, c, br)
	tunnels = append(tunnels, tunnel{c, br})

	if err := closeWithin(t, proxy.Close, tunnelCode...); err != nil {
		t.Fatal(err)
	}
	for _, tn := range tunnels {
		closedByServerWithin(t, tn.c, 5*time.Second)
	}
	waitNoGoroutines(t, "Close", append(tunnelCode, httpCode...)...)
	if st := proxy.Stats(); st.Active != 0 {
		t.Errorf("%d connections still counted active after Close", st.Active)
	}
}
