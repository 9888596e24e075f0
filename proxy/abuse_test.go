package proxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Tests of what a hostile or broken client can do to the proxies, end to
// end against real loopback listeners. Behaviours other tests already
// prove are not repeated here: TestHTTPAuth (407 for absolute-form GET
// without or with wrong credentials, CONNECT without),
// TestHTTPMalformedRequests (431 for a huge header, 400 for differing
// Content-Lengths, 501 for an unknown coding, no dial for any of them),
// TestSOCKS5UDPDropsOtherSenders (another port of the client's host),
// TestSOCKS5HandshakeTimeout and TestHTTPHandshakeTimeout (clients that
// stall).

// countingNetwork is socksNetwork that counts what the proxy asks of it,
// so a test can prove a rejected client got nothing out of the tunnel.
type countingNetwork struct {
	*socksNetwork
	dials, lookups atomic.Int64
}

func newCountingNetwork() *countingNetwork {
	return &countingNetwork{socksNetwork: newSOCKSNetwork()}
}

func (n *countingNetwork) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	n.dials.Add(1)
	return n.socksNetwork.DialContext(ctx, network, address)
}

func (n *countingNetwork) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	n.lookups.Add(1)
	return n.socksNetwork.LookupNetIP(ctx, network, host)
}

// answerUntilClosed writes b to a new connection to addr in one piece,
// without half-closing (so closing is the server's own decision), and
// returns all the server sends until it closes. It fails the test when
// the connection is still open after 5 s.
func answerUntilClosed(t *testing.T, addr string, b []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	mustWrite(t, c, b)
	answer, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %x (answered %x)", b, answer)
	}
	// A reset closes too: the server may have left bytes unread.
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("reading the answer: %v", err)
	}
	return answer
}

func TestSOCKS5AuthFailureClosesBeforeAnyDial(t *testing.T) {
	nw := newCountingNetwork()
	_, proxyAddr, _ := startSOCKS5(t, nw, SOCKS5Config{Username: "u", Password: "p"})
	port := startTCPEcho(t)
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	portBytes := []byte{byte(p >> 8), byte(p)}

	login := func(user, pass string) []byte {
		b := append([]byte{1, byte(len(user))}, user...)
		return append(append(b, byte(len(pass))), pass...)
	}
	// Each client sends its CONNECT right behind the rest, as a client
	// that does not wait for answers would: none of it may get through.
	connectIP := append([]byte{5, 1, 0, 1, 127, 0, 0, 1}, portBytes...)
	connectName := append([]byte{5, 1, 0, 3, 11, 't', 'u', 'n', 'n', 'e', 'l', '.', 't', 'e', 's', 't'}, portBytes...)
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	for _, tc := range []struct {
		name       string
		send, want []byte
	}{
		// RFC 1928: no acceptable method is answered with 0xFF, after
		// which the client must close; the server closes too.
		{"only NO AUTH offered", cat([]byte{5, 1, 0}, connectIP), []byte{5, 0xff}},
		{"NO AUTH and GSSAPI offered", cat([]byte{5, 2, 0, 1}, connectName), []byte{5, 0xff}},
		// RFC 1929: a status other than 0 means the server must close.
		{"wrong password", cat([]byte{5, 1, 2}, login("u", "wrong"), connectIP), []byte{5, 2, 1, 1}},
		{"wrong username", cat([]byte{5, 1, 2}, login("user", "p"), connectName), []byte{5, 2, 1, 1}},
		{"password of another length", cat([]byte{5, 1, 2}, login("u", "pp"), connectIP), []byte{5, 2, 1, 1}},
		// Chose username/password, then skipped the login: the request
		// is not a login (version 5, not 1).
		{"login skipped", cat([]byte{5, 1, 2}, connectIP), []byte{5, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := answerUntilClosed(t, proxyAddr, tc.send); string(got) != string(tc.want) {
				t.Fatalf("answer %x, want %x and the connection closed", got, tc.want)
			}
		})
	}
	if d, l := nw.dials.Load(), nw.lookups.Load(); d != 0 || l != 0 {
		t.Fatalf("%d dials and %d lookups for clients that failed to log in, want none", d, l)
	}

	// The same bytes with the right login do reach the network, so the
	// counts above could have caught a leak.
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	mustWrite(t, c, cat([]byte{5, 1, 2}, login("u", "p"), connectIP, []byte("ping")))
	reply := make([]byte, 2+2+10+4)
	if _, err := io.ReadFull(c, reply); err != nil {
		t.Fatalf("answer to a good login: %x, %v", reply, err)
	}
	if string(reply[:4]) != "\x05\x02\x01\x00" || reply[5] != 0 || string(reply[14:]) != "ping" {
		t.Fatalf("answer to a good login and CONNECT: %x", reply)
	}
	if d := nw.dials.Load(); d != 1 {
		t.Fatalf("%d dials after one good CONNECT, want 1", d)
	}
}

// TestHTTPConnectWrongCredentials adds to TestHTTPAuth the one case it
// leaves out: CONNECT with credentials that are there but wrong.
func TestHTTPConnectWrongCredentials(t *testing.T) {
	nw := newHTTPTestNetwork()
	_, addr := startHTTPProxy(t, nw, HTTPConfig{Username: "user", Password: "secret"})
	target := net.JoinHostPort(httpTunnelName, startTCPEcho(t))
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, creds := range []string{"user:wrong", "wrong:secret", "user:secretX", "user:"} {
		res, body := rawHTTPProxyRequest(t, addr, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n"+
			"Proxy-Authorization: Basic "+b64(creds)+"\r\n\r\n")
		if res.StatusCode != http.StatusProxyAuthRequired {
			t.Errorf("CONNECT as %q: %s %q, want 407", creds, res.Status, body)
		}
	}
	if n := nw.dials.Load(); n != 0 {
		t.Fatalf("%d dials for CONNECTs with wrong credentials, want none", n)
	}
	// The right credentials do dial, so the count could have caught one.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	mustWrite(t, c, []byte("CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n"+
		"Proxy-Authorization: Basic "+b64("user:secret")+"\r\n\r\n"))
	res, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil || res.StatusCode != http.StatusOK || nw.dials.Load() != 1 {
		t.Fatalf("CONNECT with the right credentials: %v, %v, %d dials", res, err, nw.dials.Load())
	}
}

// spoofFrom sends a client datagram for target to relay from a socket on
// from, as another local process could, and reports whether the relay
// answered it.
func spoofFrom(t *testing.T, from netip.Addr, relay, target netip.AddrPort, payload []byte) (answered bool) {
	t.Helper()
	spoofer, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(from, 0)))
	if err != nil {
		t.Skipf("cannot bind %v: %v", from, err)
	}
	defer spoofer.Close()
	if _, err := spoofer.WriteToUDPAddrPort(socksUDPDatagram(target, payload), relay); err != nil {
		t.Fatal(err)
	}
	spoofer.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	_, _, err = spoofer.ReadFromUDPAddrPort(make([]byte, 1024))
	return err == nil
}

// TestSOCKS5UDPDropsAndCountsForeignSources goes past
// TestSOCKS5UDPDropsOtherSenders: a sender on another loopback address
// is dropped too, and every drop is counted in the association's tally.
func TestSOCKS5UDPDropsAndCountsForeignSources(t *testing.T) {
	echo := startSOCKSUDPEcho(t, "127.0.0.1:0")
	var logs socksLogBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	_, proxyAddr, _ := startSOCKS5(t, newSOCKSUDPNetwork("127.0.0.1:0"), SOCKS5Config{Logger: logger})
	c := mustSOCKSAssociate(t, proxyAddr, "127.0.0.1", socksUDPClientOptions{})
	if _, got := c.exchange(t, socksUDPDatagram(echo.addrPort(), []byte("mine"))); string(got) != "mine" {
		t.Fatalf("echo = %q", got)
	}

	otherHost := []byte("from 127.0.0.2")
	if spoofFrom(t, netip.MustParseAddr("127.0.0.2"), c.relay, echo.addrPort(), otherHost) {
		t.Error("the relay answered a datagram from 127.0.0.2")
	}
	otherPort := []byte("from another port")
	if spoofFrom(t, netip.MustParseAddr("127.0.0.1"), c.relay, echo.addrPort(), otherPort) {
		t.Error("the relay answered a datagram from another port")
	}
	if _, got := c.exchange(t, socksUDPDatagram(echo.addrPort(), []byte("still mine"))); string(got) != "still mine" {
		t.Fatalf("echo after the spoofs = %q", got)
	}
	for _, p := range [][]byte{otherHost, otherPort} {
		if echo.saw(p) {
			t.Errorf("the target got %q, which the relay should have dropped", p)
		}
	}
	if !regexp.MustCompile(`udp datagram dropped.* from=127\.0\.0\.2:\d+ reason="not the associated client"`).MatchString(logs.String()) {
		t.Errorf("no drop logged for 127.0.0.2:\n%s", logs.String())
	}

	// The tally is logged when the association ends.
	c.control.Close()
	ended := regexp.MustCompile(`udp association ended.* dropped=(\d+)`)
	deadline := time.Now().Add(5 * time.Second)
	for !ended.MatchString(logs.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("association did not end after its control connection closed:\n%s", logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := ended.FindStringSubmatch(logs.String())[1]; got != "2" {
		t.Fatalf("association counted %s drops, want 2:\n%s", got, logs.String())
	}
}

// smugglingOrigin is a web server that records every request it gets,
// with the framing it saw, so a test can tell what the proxy forwarded.
type smugglingOrigin struct {
	port string
	mu   sync.Mutex
	seen []string
}

func startSmugglingOrigin(t *testing.T) *smugglingOrigin {
	t.Helper()
	o := &smugglingOrigin{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		o.mu.Lock()
		o.seen = append(o.seen, fmt.Sprintf("%s %s CL=%q TE=%q body=%q", r.Method, r.URL.Path, r.Header.Values("Content-Length"), r.TransferEncoding, body))
		o.mu.Unlock()
		io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	_, o.port, _ = net.SplitHostPort(srv.Listener.Addr().String())
	return o
}

func (o *smugglingOrigin) requests() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.seen...)
}

// TestHTTPSmuggling sends requests whose framing a client-side hop and
// the proxy could read differently, each carrying a second request where
// one reading puts the body's end. The proxy must answer once and close:
// the smuggled request must never be parsed, nor reach the origin.
func TestHTTPSmuggling(t *testing.T) {
	o := startSmugglingOrigin(t)
	_, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{})
	host := net.JoinHostPort(httpTunnelName, o.port)
	smuggled := "GET http://" + host + "/smuggled HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
	head := func(headers string) string {
		return "POST http://" + host + "/first HTTP/1.1\r\nHost: " + host + "\r\n" + headers + "\r\n"
	}
	chunkedThenSmuggled := "0\r\n\r\n" + smuggled

	for _, tc := range []struct {
		name   string
		req    string
		status int
		// forwarded is what the origin must have seen, if anything.
		forwarded string
	}{
		{
			// RFC 9112, section 6.1: Transfer-Encoding wins, and the
			// connection is closed after the answer. A hop that went by
			// Content-Length sent the smuggled request as body.
			name:      "Content-Length and chunked",
			req:       head(fmt.Sprintf("Content-Length: %d\r\nTransfer-Encoding: chunked\r\n", len(chunkedThenSmuggled))) + chunkedThenSmuggled,
			status:    200,
			forwarded: `POST /first CL=[] TE=["chunked"] body=""`,
		},
		{
			name:      "chunked and Content-Length",
			req:       head(fmt.Sprintf("Transfer-Encoding: chunked\r\nContent-Length: %d\r\n", len(chunkedThenSmuggled))) + chunkedThenSmuggled,
			status:    200,
			forwarded: `POST /first CL=[] TE=["chunked"] body=""`,
		},
		{
			// The other way round: a hop that went by chunked sees an
			// empty body, and then the smuggled request.
			name:   "chunked, identity",
			req:    head("Content-Length: 5\r\nTransfer-Encoding: chunked, identity\r\n") + "0\r\n\r\n" + smuggled,
			status: http.StatusNotImplemented,
		},
		{
			name:   "identity, chunked",
			req:    head("Transfer-Encoding: identity, chunked\r\n") + "0\r\n\r\n" + smuggled,
			status: http.StatusNotImplemented,
		},
		{
			name:   "gzip, chunked",
			req:    head("Transfer-Encoding: gzip, chunked\r\n") + "0\r\n\r\n" + smuggled,
			status: http.StatusNotImplemented,
		},
		{
			name:   "Transfer-Encoding twice",
			req:    head("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n") + "0\r\n\r\n" + smuggled,
			status: http.StatusNotImplemented,
		},
		{
			name:   "Content-Length twice, differing",
			req:    head(fmt.Sprintf("Content-Length: 0\r\nContent-Length: %d\r\n", len(smuggled))) + smuggled,
			status: http.StatusBadRequest,
		},
		{
			name:   "Content-Length as a list",
			req:    head(fmt.Sprintf("Content-Length: 0, %d\r\n", len(smuggled))) + smuggled,
			status: http.StatusBadRequest,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(o.requests())
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			// Not half-closed: the proxy must close of its own accord.
			mustWrite(t, c, []byte(tc.req))
			br := bufio.NewReader(c)
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			readHTTPBody(t, res)
			if res.StatusCode != tc.status {
				t.Fatalf("status %s, want %d", res.Status, tc.status)
			}
			rest, err := io.ReadAll(br)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the connection stayed open after the answer (then sent %q)", rest)
			}
			if len(rest) > 0 {
				t.Fatalf("a second answer followed: %q", rest)
			}
			got := o.requests()[before:]
			switch {
			case tc.forwarded == "" && len(got) > 0:
				t.Fatalf("the origin saw %q, want nothing", got)
			case tc.forwarded != "" && (len(got) != 1 || got[0] != tc.forwarded):
				t.Fatalf("the origin saw %q, want only %q", got, tc.forwarded)
			}
		})
	}
}

// TestHTTPChunkedUploadStillWorks checks the price of closing after a
// Transfer-Encoding is only the connection: the body gets through.
func TestHTTPChunkedUploadStillWorks(t *testing.T) {
	o := startSmugglingOrigin(t)
	_, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{})
	host := net.JoinHostPort(httpTunnelName, o.port)
	res, body := rawHTTPProxyRequest(t, addr, "POST http://"+host+"/up HTTP/1.1\r\nHost: "+host+"\r\n"+
		"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
	if res.StatusCode != 200 || body != "ok" || !res.Close {
		t.Fatalf("chunked upload: %s %q, close %v; want 200 ok and Connection: close", res.Status, body, res.Close)
	}
	if got := o.requests(); len(got) != 1 || !strings.HasSuffix(got[0], `body="hello world"`) {
		t.Fatalf("origin saw %q", got)
	}
}

// trickle writes b to c one byte every interval until it has all been
// sent or a write fails, as a slowloris client does. The test's cleanup
// closes c and waits for it.
func trickle(t *testing.T, c net.Conn, b []byte, interval time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range b {
			if _, err := c.Write(b[i : i+1]); err != nil {
				return
			}
			time.Sleep(interval)
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
	})
}

// slowlorisTimeout is the handshake timeout of the slowloris tests:
// short, so they take well under a second each, and still far above the
// 20 ms between two bytes.
const slowlorisTimeout = 300 * time.Millisecond

func TestHTTPSlowlorisHeaderFreesSlot(t *testing.T) {
	p, addr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{HandshakeTimeout: slowlorisTimeout, MaxConnections: 1})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	// Every byte arrives well within any per-read timeout; only a bound
	// on the whole header stops it. 500 bytes take 10 s.
	trickle(t, c, []byte("GET http://tunnel.test/ HTTP/1.1\r\nHost: tunnel.test\r\nX-Slow: "+strings.Repeat("a", 500)), 20*time.Millisecond)
	waitStats(t, "slowloris connected", p.Stats, ConnStats{Active: 1, Total: 1})
	if took := closedByServerWithin(t, c, 5*time.Second); took > 4*slowlorisTimeout {
		t.Fatalf("closed after %v, want about the %v handshake timeout", took, slowlorisTimeout)
	}
	waitStats(t, "slowloris dropped", p.Stats, ConnStats{Active: 0, Total: 1})

	// With MaxConnections 1, a client served now proves the slot is
	// free, not just uncounted.
	res, _ := rawHTTPProxyRequest(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if res.StatusCode != http.StatusBadRequest {
		t.Fatalf("next client: %s, want 400 for origin-form", res.Status)
	}
}

func TestSOCKS5SlowlorisFreesSlots(t *testing.T) {
	s, addr, _ := startSOCKS5(t, newSOCKSNetwork(), SOCKS5Config{HandshakeTimeout: slowlorisTimeout, Username: "u", Password: "p", MaxConnections: 2})
	// One client announces 255 methods and sends them one by one (5 s
	// of them); the other stops halfway through its greeting.
	trickler, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	greeting := append([]byte{5, 255}, make([]byte, 255)...)
	greeting[len(greeting)-1] = 2
	trickle(t, trickler, greeting, 20*time.Millisecond)
	staller, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer staller.Close()
	mustWrite(t, staller, []byte{5, 3, 0})
	waitStats(t, "both connected", s.Stats, ConnStats{Active: 2, Total: 2})

	for _, c := range []net.Conn{trickler, staller} {
		if took := closedByServerWithin(t, c, 5*time.Second); took > 4*slowlorisTimeout {
			t.Fatalf("closed after %v, want about the %v handshake timeout", took, slowlorisTimeout)
		}
	}
	waitStats(t, "both dropped", s.Stats, ConnStats{Active: 0, Total: 2})

	// Both slots are free again: two clients are served at once.
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		mustWrite(t, c, []byte{5, 1, 2})
		method := make([]byte, 2)
		if _, err := io.ReadFull(c, method); err != nil || method[1] != 2 {
			t.Fatalf("client after the slowloris not served: %x, %v", method, err)
		}
	}
}
