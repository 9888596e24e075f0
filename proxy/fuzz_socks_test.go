package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// fuzzSOCKSBound is how long one fuzzed connection may take. Its client
// has sent everything and then ended its stream, and the network
// answers at once, so anything slower is a hang.
const fuzzSOCKSBound = 2 * time.Second

// fuzzSOCKSResolved is where fuzzSOCKSNetwork resolves every name.
var fuzzSOCKSResolved = netip.MustParseAddr("127.0.0.1")

// memConn is a client connection held in memory: reads return the
// fuzzed input and then the end of the stream, as from a client that
// sent it all and half-closed; writes are kept. A loopback socket or a
// net.Pipe would cost a fuzz iteration far more (net.Pipe, having no
// half-close, would also leave a short input's server waiting for its
// deadline), and the server cannot tell it from a socket.
type memConn struct {
	mu       sync.Mutex
	in       *bytes.Reader
	out      bytes.Buffer
	closed   bool
	deadline time.Time
}

func (c *memConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.in.Read(b)
}

func (c *memConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.out.Write(b)
}

func (c *memConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return nil
}

// CloseWrite keeps a relay from closing the whole connection when the
// target's side ends first, which would cut the other direction short.
func (c *memConn) CloseWrite() error { return nil }

func (c *memConn) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1080}
}

func (c *memConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}

func (c *memConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return nil
}
func (c *memConn) SetReadDeadline(t time.Time) error  { return c.SetDeadline(t) }
func (c *memConn) SetWriteDeadline(t time.Time) error { return c.SetDeadline(t) }

// written returns what the server sent.
func (c *memConn) written() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.out.Bytes())
}

// fuzzSOCKSNetwork resolves every name to fuzzSOCKSResolved and records
// each dial, answering it with a target that takes what the relay sends
// and ends its own stream at once.
type fuzzSOCKSNetwork struct {
	mu      sync.Mutex
	dialed  []string
	targets []*memConn
}

func (n *fuzzSOCKSNetwork) DialContext(_ context.Context, network, address string) (net.Conn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dialed = append(n.dialed, address)
	target := &memConn{in: bytes.NewReader(nil)}
	n.targets = append(n.targets, target)
	return target, nil
}

func (n *fuzzSOCKSNetwork) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	return []netip.Addr{fuzzSOCKSResolved}, nil
}

// take returns the dials since the last take and the targets they got.
func (n *fuzzSOCKSNetwork) take() ([]string, []*memConn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	d, t := n.dialed, n.targets
	n.dialed, n.targets = nil, nil
	return d, t
}

// fuzzSOCKSCredentials are the login of the authenticating server.
const fuzzSOCKSUser, fuzzSOCKSPass = "u", "p"

// expectSOCKSConnect reads in as the client that sent it meant it, apart
// from the server: it reports whether in is a complete CONNECT that logs
// in as the server wants (method 0 offered to the open server; method 2
// and the right username and password to the other), names a target (an
// IPv4 or IPv6 address, or a name that is not empty) and so must be
// dialed; the address the dial must be for (names resolve to
// fuzzSOCKSResolved); and the bytes that follow the request, which the
// target must get.
func expectSOCKSConnect(in []byte, withAuth bool) (target netip.AddrPort, rest []byte, ok bool) {
	// take returns the next n bytes of in, or ok false when it is short.
	take := func(n int) ([]byte, bool) {
		if len(in) < n {
			return nil, false
		}
		b := in[:n]
		in = in[n:]
		return b, true
	}
	greeting, ok := take(2)
	if !ok || greeting[0] != 5 {
		return target, nil, false
	}
	methods, ok := take(int(greeting[1]))
	if !ok {
		return target, nil, false
	}
	if !withAuth {
		if bytes.IndexByte(methods, 0) < 0 {
			return target, nil, false
		}
	} else {
		if bytes.IndexByte(methods, 2) < 0 {
			return target, nil, false
		}
		head, ok := take(2)
		if !ok || head[0] != 1 {
			return target, nil, false
		}
		user, ok := take(int(head[1]))
		if !ok {
			return target, nil, false
		}
		plen, ok := take(1)
		if !ok {
			return target, nil, false
		}
		pass, ok := take(int(plen[0]))
		if !ok || string(user) != fuzzSOCKSUser || string(pass) != fuzzSOCKSPass {
			return target, nil, false
		}
	}
	req, ok := take(4)
	if !ok || req[0] != 5 || req[1] != 1 {
		return target, nil, false
	}
	var addr netip.Addr
	switch req[3] {
	case 1:
		a, ok := take(4)
		if !ok {
			return target, nil, false
		}
		addr = netip.AddrFrom4([4]byte(a))
	case 4:
		a, ok := take(16)
		if !ok {
			return target, nil, false
		}
		addr = netip.AddrFrom16([16]byte(a)).Unmap()
	case 3:
		n, ok := take(1)
		if !ok || n[0] == 0 {
			return target, nil, false
		}
		if _, ok := take(int(n[0])); !ok {
			return target, nil, false
		}
		addr = fuzzSOCKSResolved
	default:
		return target, nil, false
	}
	port, ok := take(2)
	if !ok {
		return target, nil, false
	}
	return netip.AddrPortFrom(addr, binary.BigEndian.Uint16(port)), in, true
}

// FuzzSOCKSRequest sends arbitrary bytes as a whole client connection
// (greeting, login, request) to a SOCKS5 server, with and without
// authentication. The server must not panic or hang, must dial only for
// a complete, logged-in CONNECT with a target, and then only that
// target, which must get exactly the bytes that followed the request.
func FuzzSOCKSRequest(f *testing.F) {
	login := []byte{1, 1, 'u', 1, 'p'}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	f.Add(cat([]byte{5, 1, 0}, []byte{5, 1, 0, 1, 127, 0, 0, 1, 0, 80}, []byte("GET / HTTP/1.0\r\n\r\n")), false)
	f.Add(cat([]byte{5, 1, 0}, []byte{5, 1, 0, 3, 11}, []byte("tunnel.test"), []byte{1, 187}), false)
	f.Add(cat([]byte{5, 1, 0}, []byte{5, 1, 0, 4}, net.IPv6loopback, []byte{0, 22}, []byte("SSH-2.0-x\r\n")), false)
	f.Add(cat([]byte{5, 2, 0, 2}, []byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0}), false)
	f.Add(cat([]byte{5, 1, 0}, []byte{5, 2, 0, 1, 127, 0, 0, 1, 0, 80}), false)
	f.Add(cat([]byte{5, 1, 2}, login, []byte{5, 1, 0, 1, 127, 0, 0, 1, 0, 80}, []byte("early")), true)
	f.Add(cat([]byte{5, 1, 2}, login, []byte{5, 1, 0, 3, 0, 0, 80}), true)
	f.Add(cat([]byte{5, 1, 2}, []byte{1, 1, 'u', 5}, []byte("wrong"), []byte{5, 1, 0, 1, 127, 0, 0, 1, 0, 80}), true)
	f.Add(cat([]byte{5, 1, 0}, []byte{5, 1, 0, 1, 127, 0, 0, 1, 0, 80}), true)

	// The server does not recover panics, so one ends the fuzzing run
	// with its stack: there is no log to watch, and logging nothing
	// keeps iterations fast.
	logger := slog.New(slog.DiscardHandler)
	nw := &fuzzSOCKSNetwork{}
	open := NewSOCKS5(nw, SOCKS5Config{Logger: logger, HandshakeTimeout: fuzzSOCKSBound})
	authed := NewSOCKS5(nw, SOCKS5Config{Logger: logger, HandshakeTimeout: fuzzSOCKSBound, Username: fuzzSOCKSUser, Password: fuzzSOCKSPass})
	f.Cleanup(func() {
		open.Close()
		authed.Close()
	})

	f.Fuzz(func(t *testing.T, in []byte, withAuth bool) {
		s := open
		if withAuth {
			s = authed
		}
		client := &memConn{in: bytes.NewReader(in)}
		served := make(chan struct{})
		go func() {
			defer close(served)
			s.serveConn(client)
		}()
		timer := time.NewTimer(fuzzSOCKSBound)
		defer timer.Stop()
		select {
		case <-served:
		case <-timer.C:
			// Closing the client ends a relay; the rest is a hang.
			client.Close()
			t.Fatalf("input %x: not served within %v", in, fuzzSOCKSBound)
		}

		dialed, targets := nw.take()
		want, rest, valid := expectSOCKSConnect(in, withAuth)
		switch {
		case !valid && len(dialed) > 0:
			t.Fatalf("input %x (auth %v): dialed %q for what is not a logged-in CONNECT", in, withAuth, dialed)
		case valid && len(dialed) != 1:
			t.Fatalf("input %x (auth %v): dialed %q, want %v once", in, withAuth, dialed, want)
		case valid:
			got, err := netip.ParseAddrPort(dialed[0])
			if err != nil || netip.AddrPortFrom(got.Addr().Unmap(), got.Port()) != want {
				t.Fatalf("input %x: dialed %q, want %v", in, dialed[0], want)
			}
			if sent := targets[0].written(); !bytes.Equal(sent, rest) {
				t.Fatalf("input %x: the target got %x, want the %x after the request", in, sent, rest)
			}
		}
		if out := client.written(); len(out) > 0 && out[0] != 5 {
			t.Fatalf("input %x: answer %x is not SOCKS5", in, out)
		}
	})
}
