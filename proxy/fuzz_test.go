package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// FuzzSOCKSUDPHeader feeds arbitrary datagrams to the parser of client
// datagrams, which reads bytes any local process can send to a relay. It
// must never panic, must hand back a payload that is the datagram's tail,
// and what it accepts with an address must survive being written back.
func FuzzSOCKSUDPHeader(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 127, 0, 0, 1, 0, 53, 'q'})
	f.Add([]byte{0, 0, 0, 3, 4, 'a', '.', 'b', 'c', 0, 53})
	f.Add([]byte{0, 0, 1, 1, 127, 0, 0, 1, 0, 53})
	f.Fuzz(func(t *testing.T, datagram []byte) {
		target, payload, err := parseSOCKSUDPHeader(datagram)
		if err != nil {
			return
		}
		if !bytes.HasSuffix(datagram, payload) || len(payload) > len(datagram)-8 {
			t.Fatalf("payload %x is not the tail of %x after a header", payload, datagram)
		}
		if target.port == 0 {
			t.Fatal("accepted port 0")
		}
		if target.name != nil {
			if len(target.name) == 0 || target.addr.IsValid() {
				t.Fatalf("name target %q with address %v", target.name, target.addr)
			}
			return
		}
		buf := make([]byte, socksUDPMaxHeader+len(payload))
		copy(buf[socksUDPMaxHeader:], payload)
		start := putSOCKSUDPHeader(buf, socksUDPMaxHeader, netip.AddrPortFrom(target.addr, target.port))
		again, p2, err := parseSOCKSUDPHeader(buf[start:])
		if err != nil || again.addr != target.addr || again.port != target.port || !bytes.Equal(p2, payload) {
			t.Fatalf("%x parsed as %v:%d, written back and parsed as %v:%d (%v)", datagram, target.addr, target.port, again.addr, again.port, err)
		}
	})
}

// fuzzRefusingNetwork resolves every name to 127.0.0.1 and refuses every
// dial at once, so a fuzzed request exercises the proxy's parsing and
// error paths without reaching anything, and each iteration stays fast.
type fuzzRefusingNetwork struct{}

func (fuzzRefusingNetwork) DialContext(_ context.Context, network, address string) (net.Conn, error) {
	return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
}

func (fuzzRefusingNetwork) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
}

// fuzzHTTPAnswerBound is how long a fuzzed request may keep its
// connection: every request the proxy gets is complete (the client has
// half-closed), and every dial fails at once, so anything slower is a
// hang.
const fuzzHTTPAnswerBound = 3 * time.Second

// FuzzHTTPRequest sends arbitrary bytes as a request to a running HTTP
// proxy, with and without authentication. The proxy must not panic, and
// must answer (with HTTP) or close the connection within
// fuzzHTTPAnswerBound.
func FuzzHTTPRequest(f *testing.F) {
	f.Add([]byte("GET http://tunnel.test/ HTTP/1.1\r\nHost: tunnel.test\r\n\r\n"), false)
	f.Add([]byte("CONNECT tunnel.test:443 HTTP/1.1\r\nHost: tunnel.test:443\r\n\r\n"), true)

	var logs socksLogBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	start := func(cfg HTTPConfig) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			f.Fatal(err)
		}
		cfg.Logger = logger
		// A half-closed client ends its handshake at once; the timeout
		// is only a backstop for the proxy's own mistakes.
		cfg.HandshakeTimeout = fuzzHTTPAnswerBound / 2
		p := NewHTTP(fuzzRefusingNetwork{}, cfg)
		go p.Serve(l)
		f.Cleanup(func() { p.Close() })
		return l.Addr().String()
	}
	open := start(HTTPConfig{})
	authed := start(HTTPConfig{Username: "u", Password: "p"})

	f.Fuzz(func(t *testing.T, request []byte, withAuth bool) {
		addr := open
		if withAuth {
			addr = authed
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(fuzzHTTPAnswerBound))
		// The proxy may answer before it has read everything, so the
		// request is written alongside reading the answer.
		written := make(chan struct{})
		go func() {
			defer close(written)
			c.Write(request)
			c.(*net.TCPConn).CloseWrite()
		}()
		answer, err := io.ReadAll(c)
		<-written
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("request %q: neither answered nor closed within %v (got %q)", request, fuzzHTTPAnswerBound, answer)
		}
		if len(answer) > 0 && !bytes.HasPrefix(answer, []byte("HTTP/1.")) {
			t.Fatalf("request %q: answer is not HTTP: %q", request, answer)
		}
		// A panic logged after this check, by a goroutine of this input,
		// is found by the next input's check.
		if out := logs.take(); strings.Contains(out, "panic") {
			t.Fatalf("request %q (or the input before it): the proxy panicked:\n%s", request, out)
		}
	})
}
