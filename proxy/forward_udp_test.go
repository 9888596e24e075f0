package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// forwardUDPEcho is a UDP echo server on loopback that remembers the
// source address of every datagram, so a test can tell the forwarder's
// sessions apart by their upstream ports.
type forwardUDPEcho struct {
	pc *net.UDPConn

	mu   sync.Mutex
	last netip.AddrPort
	seen map[netip.AddrPort]bool // a map, so a benchmark's echoes do not allocate
}

func startForwardUDPEcho(t testing.TB, addr string) *forwardUDPEcho {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	e := &forwardUDPEcho{pc: pc.(*net.UDPConn), seen: make(map[netip.AddrPort]bool)}
	done := make(chan struct{})
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, udpBufferSize)
		for {
			n, from, err := e.pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			e.mu.Lock()
			e.last = from
			e.seen[from] = true
			e.mu.Unlock()
			e.pc.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return e
}

func (e *forwardUDPEcho) addr() string { return e.pc.LocalAddr().String() }

// lastSource returns the source of the latest datagram.
func (e *forwardUDPEcho) lastSource() netip.AddrPort {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.last
}

func (e *forwardUDPEcho) distinctSources() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.seen)
}

// startUDPForwarder serves a forwarder to target on a fresh loopback
// PacketConn and closes it when the test ends, checking that Serve then
// returns nil.
func startUDPForwarder(t testing.TB, listenAddr, target string, cfg UDPForwardConfig) (*UDPForwarder, string, <-chan error) {
	t.Helper()
	pc, err := net.ListenPacket("udp", listenAddr)
	if err != nil {
		t.Fatal(err)
	}
	f := NewUDPForwarder(forwardDial, target, cfg)
	served := serveInBackground(t, func() error { return f.Serve(pc) }, f.Close)
	return f, pc.LocalAddr().String(), served
}

// forwardUDPClient is a connected UDP socket, one client of a forwarder.
func forwardUDPClient(t testing.TB, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UDPConn)
}

// forwardUDPExchange sends msg and expects it back. Loopback does not
// lose datagrams under test load, so one try is enough.
func forwardUDPExchange(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != msg {
		t.Fatalf("echo = %q, %v; want %q", buf[:n], err, msg)
	}
}

func waitUDPSessions(t testing.TB, f *UDPForwarder, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for f.sessionCount() != want {
		if time.Now().After(deadline) {
			t.Fatalf("forwarder holds %d sessions, want %d", f.sessionCount(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestUDPForwarderKeepsClientsApart(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			echo := startForwardUDPEcho(t, net.JoinHostPort(host, "0"))
			_, addr, _ := startUDPForwarder(t, net.JoinHostPort(host, "0"), echo.addr(), UDPForwardConfig{})

			var wg sync.WaitGroup
			errs := make(chan error, 2)
			for _, name := range []string{"alice", "bob"} {
				c := forwardUDPClient(t, addr)
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, 2048)
					for i := range 100 {
						msg := fmt.Sprintf("%s %d", name, i)
						c.Write([]byte(msg))
						c.SetReadDeadline(time.Now().Add(10 * time.Second))
						n, err := c.Read(buf)
						if err != nil || string(buf[:n]) != msg {
							errs <- fmt.Errorf("%s: reply %q, %v; want %q", name, buf[:n], err, msg)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if n := echo.distinctSources(); n != 2 {
				t.Errorf("upstream saw %d source addresses for 2 clients, want 2", n)
			}
		})
	}
}

func TestUDPForwarderLargeDatagram(t *testing.T) {
	echo := startForwardUDPEcho(t, "127.0.0.1:0")
	_, addr, _ := startUDPForwarder(t, "127.0.0.1:0", echo.addr(), UDPForwardConfig{})
	c := forwardUDPClient(t, addr)
	msg := bytes.Repeat([]byte("0123456789abcdef"), 4000) // 64,000 bytes
	if _, err := c.Write(msg); err != nil {
		t.Skipf("loopback refuses a %d-byte datagram: %v", len(msg), err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, udpBufferSize)
	n, err := c.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], msg) {
		t.Fatalf("large datagram came back as %d bytes, %v; want %d intact", n, err, len(msg))
	}
}

func TestUDPForwarderSessionExpiry(t *testing.T) {
	const timeout = 100 * time.Millisecond
	echo := startForwardUDPEcho(t, "127.0.0.1:0")
	f, addr, _ := startUDPForwarder(t, "127.0.0.1:0", echo.addr(), UDPForwardConfig{InactivityTimeout: timeout})
	c := forwardUDPClient(t, addr)

	// Traffic well inside the timeout keeps the session, and so its
	// upstream port.
	forwardUDPExchange(t, c, "first")
	first := echo.lastSource()
	for end := time.Now().Add(3 * timeout); time.Now().Before(end); {
		forwardUDPExchange(t, c, "busy")
		time.Sleep(timeout / 8)
	}
	if got := echo.lastSource(); got != first {
		t.Fatalf("an active session moved from upstream port %v to %v", first, got)
	}

	// Once quiet, the session ends; the next datagram opens a new
	// upstream conn, which the target sees from another port.
	waitUDPSessions(t, f, 0)
	forwardUDPExchange(t, c, "again")
	if got := echo.lastSource(); got == first {
		t.Fatalf("after expiry the target still sees port %v; want a new upstream conn", got)
	}
}

// TestUDPForwarderOneWayTraffic: datagrams one way alone, to a target
// that never answers, keep a session past the timeout.
func TestUDPForwarderOneWayTraffic(t *testing.T) {
	const timeout = 100 * time.Millisecond
	sink, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	f, addr, _ := startUDPForwarder(t, "127.0.0.1:0", sink.LocalAddr().String(), UDPForwardConfig{InactivityTimeout: timeout})
	c := forwardUDPClient(t, addr)
	for end := time.Now().Add(3 * timeout); time.Now().Before(end); time.Sleep(timeout / 8) {
		if _, err := c.Write([]byte("one way")); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(end.Add(-2 * timeout)) {
			if n := f.sessionCount(); n != 1 {
				t.Fatalf("%d sessions while the client sends, want 1", n)
			}
		}
	}
	waitUDPSessions(t, f, 0)
}

func TestUDPForwarderMaxSessions(t *testing.T) {
	echo := startForwardUDPEcho(t, "127.0.0.1:0")
	var logs forwardLog
	f, addr, _ := startUDPForwarder(t, "127.0.0.1:0", echo.addr(), UDPForwardConfig{
		InactivityTimeout: 200 * time.Millisecond,
		MaxSessions:       1,
		Logger:            logs.logger(),
	})
	first := forwardUDPClient(t, addr)
	forwardUDPExchange(t, first, "first")

	second := forwardUDPClient(t, addr)
	second.Write([]byte("second"))
	second.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := second.Read(make([]byte, 64)); err == nil {
		t.Fatalf("second client got %d bytes past a cap of 1", n)
	}
	if !strings.Contains(logs.String(), "session cap reached") {
		t.Errorf("no log line for the dropped client:\n%s", logs.String())
	}

	// The first session expires and frees the slot.
	waitUDPSessions(t, f, 0)
	forwardUDPExchange(t, second, "second")
}

func TestUDPForwarderDialFailure(t *testing.T) {
	var dials atomic.Int32
	refuse := func(context.Context, string, string) (net.Conn, error) {
		dials.Add(1)
		return nil, errors.New("no route through the tunnel")
	}
	var logs forwardLog
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := NewUDPForwarder(refuse, "192.0.2.1:53", UDPForwardConfig{Logger: logs.logger()})
	serveInBackground(t, func() error { return f.Serve(pc) }, f.Close)

	c := forwardUDPClient(t, pc.LocalAddr().String())
	for want := int32(1); want <= 2; want++ {
		c.Write([]byte("query"))
		for deadline := time.Now().Add(10 * time.Second); dials.Load() < want; {
			if time.Now().After(deadline) {
				t.Fatalf("%d dials, want %d: a failed session must not block its client", dials.Load(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
		waitUDPSessions(t, f, 0)
	}
	if out := logs.String(); !strings.Contains(out, "cannot reach target") || !strings.Contains(out, "192.0.2.1:53") {
		t.Fatalf("log does not name the failed target:\n%s", out)
	}
}

func TestUDPForwarderCloseLeaksNothing(t *testing.T) {
	echo := startForwardUDPEcho(t, "127.0.0.1:0")
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := NewUDPForwarder(forwardDial, echo.addr(), UDPForwardConfig{InactivityTimeout: time.Minute})
	served := serveInBackground(t, func() error { return f.Serve(pc) }, f.Close)
	for i := range 3 {
		forwardUDPExchange(t, forwardUDPClient(t, pc.LocalAddr().String()), fmt.Sprint("client ", i))
	}
	mustHaveGoroutines(t, forwardCode...)
	closeWithin(t, f.Close, forwardCode...)
	waitServed(t, served)
	forwardNoGoroutinesLeft(t, "Close")
	if err := f.Serve(pc); err != nil {
		t.Fatalf("Serve after Close = %v, want nil", err)
	}
}

func BenchmarkUDPForwarder(b *testing.B) {
	echo := startForwardUDPEcho(b, "127.0.0.1:0")
	_, addr, _ := startUDPForwarder(b, "127.0.0.1:0", echo.addr(), UDPForwardConfig{InactivityTimeout: time.Minute})
	c := forwardUDPClient(b, addr)
	msg := make([]byte, 1200) // a QUIC-sized datagram
	buf := make([]byte, 2048)
	// The first exchange opens the session, outside the measurement.
	forwardUDPExchange(b, c, "warm up")
	c.SetReadDeadline(time.Time{})
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// forwardPlainPacketConn hides *net.UDPConn's AddrPort methods, as a
// tunnel's PacketConn lacks them, so the forwarder takes its net.Addr
// path.
type forwardPlainPacketConn struct{ net.PacketConn }

func TestUDPForwarderPlainPacketConn(t *testing.T) {
	echo := startForwardUDPEcho(t, "127.0.0.1:0")
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := NewUDPForwarder(forwardDial, echo.addr(), UDPForwardConfig{})
	serveInBackground(t, func() error { return f.Serve(forwardPlainPacketConn{pc}) }, f.Close)
	for _, name := range []string{"alice", "bob"} {
		c := forwardUDPClient(t, pc.LocalAddr().String())
		for i := range 3 {
			forwardUDPExchange(t, c, fmt.Sprint(name, " ", i))
		}
	}
	if n := echo.distinctSources(); n != 2 {
		t.Errorf("upstream saw %d source addresses for 2 clients, want 2", n)
	}
}

// TestUDPForwarderShutdown: during Shutdown a session that keeps talking
// is served while a new client gets nothing; Shutdown returns once the
// sessions fall quiet, even with no InactivityTimeout, and a Shutdown
// whose context ends first closes everything.
func TestUDPForwarderShutdown(t *testing.T) {
	echo := startForwardUDPEcho(t, "127.0.0.1:0")
	f, addr, served := startUDPForwarder(t, "127.0.0.1:0", echo.addr(), UDPForwardConfig{})
	old := forwardUDPClient(t, addr)
	forwardUDPExchange(t, old, "before")

	done := make(chan error, 1)
	go func() { done <- f.Shutdown(context.Background()) }()
	// The newcomer comes once Shutdown has begun: before that the
	// forwarder rightly serves it.
	for begun := time.Now(); !f.draining.Load(); time.Sleep(time.Millisecond) {
		if time.Since(begun) > 10*time.Second {
			t.Fatal("Shutdown has not begun after 10 s")
		}
	}
	newcomer := forwardUDPClient(t, addr)
	newcomer.Write([]byte("let me in"))
	newcomer.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := newcomer.Read(make([]byte, 64)); err == nil {
		t.Fatalf("a new client was served during Shutdown (%d bytes)", n)
	}
	// Talking for several quiet periods keeps the session, and Shutdown
	// waiting.
	for end := time.Now().Add(4 * udpDrainQuiet); time.Now().Before(end); {
		forwardUDPExchange(t, old, "during")
		select {
		case err := <-done:
			t.Fatalf("Shutdown returned (%v) while its session was talking", err)
		case <-time.After(udpDrainQuiet / 5):
		}
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown = %v after its session fell quiet; want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the session fell quiet")
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve = %v after Shutdown", err)
	}

	// A session that never falls quiet is ended by the context.
	f2, addr2, _ := startUDPForwarder(t, "127.0.0.1:0", echo.addr(), UDPForwardConfig{})
	chatty := forwardUDPClient(t, addr2)
	forwardUDPExchange(t, chatty, "held")
	stop := make(chan struct{})
	talking := make(chan struct{})
	go func() {
		defer close(talking)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				chatty.Write([]byte("still here"))
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*udpDrainQuiet)
	defer cancel()
	err := f2.Shutdown(ctx)
	close(stop)
	<-talking
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v; want the context's deadline", err)
	}
	if n := f2.sessionCount(); n != 0 {
		t.Fatalf("%d sessions left after Shutdown", n)
	}
}
