package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// forwardDial stands in for the tunnel's DialContext: a plain dialer that
// refuses anything but a loopback address, so no test can reach beyond
// the machine.
func forwardDial(ctx context.Context, network, address string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("forwardDial: refusing %q: not a loopback address", address)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

// forwardListen listens on a loopback address, skipping the test when the
// address family is missing (IPv6 in some containers).
func forwardListen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// forwardCountBytes reads its conn to EOF, which only comes through a
// relay if half-closes pass, then answers with the count.
func forwardCountBytes(c net.Conn) {
	n, _ := io.Copy(io.Discard, c)
	fmt.Fprintf(c, "got %d", n)
}

// startTCPForwarder serves a forwarder to target on a fresh loopback
// listener and closes it when the test ends, checking that Serve then
// returns nil.
func startTCPForwarder(t testing.TB, listenAddr, target string, cfg ForwardConfig) (*TCPForwarder, string, <-chan error) {
	t.Helper()
	l, err := net.Listen("tcp", listenAddr)
	if err != nil {
		t.Fatal(err)
	}
	f := NewTCPForwarder(forwardDial, target, cfg)
	served := serveInBackground(t, func() error { return f.Serve(l) }, f.Close)
	return f, l.Addr().String(), served
}

func forwardDialClient(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c.(*net.TCPConn)
}

// forwardExchange writes msg and expects it echoed back.
func forwardExchange(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo = %q, %v; want %q", got, err, msg)
	}
}

// forwardNoGoroutinesLeft fails the test unless the forwarders' goroutines
// are gone. Close and ServeSTDIO wait for every goroutine they start,
// and each one's Done is its last deferred call, so one still present
// must be running its return; one that is blocked was not waited for,
// and fails the test at once.
func forwardNoGoroutinesLeft(t testing.TB, after string) {
	t.Helper()
	for _, g := range proxyGoroutines(forwardCode...) {
		if !strings.Contains(g, " [runnable") && !strings.Contains(g, " [running") {
			t.Fatalf("goroutine blocked after %s:\n%s", after, g)
		}
	}
	waitNoGoroutines(t, after, forwardCode...)
}

// forwardLog collects log output written from the forwarders' goroutines.
type forwardLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *forwardLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *forwardLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *forwardLog) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestTCPForwarderRelaysBothWays(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			const size = 4 << 20
			up, down := make([]byte, size), make([]byte, size)
			rand.Read(up)
			rand.Read(down)

			// The backend sends its payload while it reads the client's,
			// so both directions are full at once.
			received := make(chan [sha256.Size]byte, 1)
			target := serveTCP(t, net.JoinHostPort(host, "0"), func(c net.Conn) {
				sent := make(chan struct{})
				go func() {
					defer close(sent)
					c.Write(down)
					c.(*net.TCPConn).CloseWrite()
				}()
				h := sha256.New()
				io.Copy(h, c)
				<-sent
				received <- [sha256.Size]byte(h.Sum(nil))
			})
			_, addr, _ := startTCPForwarder(t, net.JoinHostPort(host, "0"), target, ForwardConfig{IdleTimeout: time.Minute})

			c := forwardDialClient(t, addr)
			go func() {
				c.Write(up)
				c.CloseWrite()
			}()
			h := sha256.New()
			if _, err := io.Copy(h, c); err != nil {
				t.Fatal(err)
			}
			if got, want := [sha256.Size]byte(h.Sum(nil)), sha256.Sum256(down); got != want {
				t.Errorf("backend to client: sha256 %x, want %x", got, want)
			}
			select {
			case got := <-received:
				if want := sha256.Sum256(up); got != want {
					t.Errorf("client to backend: sha256 %x, want %x", got, want)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("backend never saw the end of the client's stream")
			}
		})
	}
}

func TestTCPForwarderHalfClose(t *testing.T) {
	target := serveTCP(t, "127.0.0.1:0", forwardCountBytes)
	_, addr, _ := startTCPForwarder(t, "127.0.0.1:0", target, ForwardConfig{})
	c := forwardDialClient(t, addr)
	io.WriteString(c, "twelve bytes")
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "got 12" {
		t.Fatalf("backend answered %q, want %q", got, "got 12")
	}
}

// The forwarder serves both directions of the tunnel with the same code;
// this is the TCPServerTunnel shape: the listener is the "tunnel's" and
// the dial the host's.
func TestTCPForwarderServerTunnelShape(t *testing.T) {
	target := serveTCP(t, "127.0.0.1:0", echoConn)
	tunnelSide := forwardListen(t, "tcp", "127.0.0.1:0")
	f := NewTCPForwarder((&net.Dialer{}).DialContext, target, ForwardConfig{})
	serveInBackground(t, func() error { return f.Serve(tunnelSide) }, f.Close)
	forwardExchange(t, forwardDialClient(t, tunnelSide.Addr().String()), "through the server side")
}

func TestTCPForwarderIdleTimeout(t *testing.T) {
	const idle = 150 * time.Millisecond
	backendEOF := make(chan struct{}, 2)
	target := serveTCP(t, "127.0.0.1:0", func(c net.Conn) {
		io.Copy(c, c)
		backendEOF <- struct{}{}
	})
	_, addr, _ := startTCPForwarder(t, "127.0.0.1:0", target, ForwardConfig{IdleTimeout: idle})

	// Traffic well inside the timeout keeps a relay open past it.
	busy := forwardDialClient(t, addr)
	for end := time.Now().Add(3 * idle); time.Now().Before(end); {
		forwardExchange(t, busy, "ping")
		time.Sleep(idle / 8)
	}

	// A silent relay is closed at both ends.
	quiet := forwardDialClient(t, addr)
	forwardExchange(t, quiet, "once")
	quiet.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := quiet.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("idle relay still open 10 s after its 150 ms timeout")
	}
	if err == nil {
		t.Fatalf("read %d bytes from an idle relay, want it closed", n)
	}
	select {
	case <-backendEOF:
	case <-time.After(10 * time.Second):
		t.Fatal("backend side of the idle relay was not closed")
	}
}

func TestTCPForwarderMaxConnections(t *testing.T) {
	var accepted atomic.Int32
	target := serveTCP(t, "127.0.0.1:0", func(c net.Conn) {
		accepted.Add(1)
		io.Copy(c, c)
	})
	_, addr, _ := startTCPForwarder(t, "127.0.0.1:0", target, ForwardConfig{MaxConnections: 2})

	first := forwardDialClient(t, addr)
	forwardExchange(t, first, "one")
	forwardExchange(t, forwardDialClient(t, addr), "two")

	// A third connection while two relays are open is closed at once,
	// never reaching the backend.
	third := forwardDialClient(t, addr)
	third.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := third.Read(make([]byte, 5)); err != io.EOF {
		t.Fatalf("third client past a cap of 2: %d bytes, %v; want the connection closed", n, err)
	}
	if n := accepted.Load(); n != 2 {
		t.Fatalf("backend accepted %d connections past a cap of 2", n)
	}

	first.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := forwardDialClient(t, addr)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, 4)
		if _, err := io.WriteString(c, "four"); err == nil {
			if _, err := io.ReadFull(c, got); err == nil && string(got) == "four" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no client served once a slot freed")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTCPForwarderDialFailure(t *testing.T) {
	closed := forwardListen(t, "tcp", "127.0.0.1:0")
	target := closed.Addr().String()
	closed.Close()

	var logs forwardLog
	_, addr, _ := startTCPForwarder(t, "127.0.0.1:0", target, ForwardConfig{Logger: logs.logger()})
	for range 2 { // the forwarder survives a failure and serves the next client
		c := forwardDialClient(t, addr)
		c.SetReadDeadline(time.Now().Add(40 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("client of an unreachable target: read %d bytes, %v; want a clean EOF", n, err)
		}
	}
	if out := logs.String(); !strings.Contains(out, "cannot reach target") || !strings.Contains(out, target) {
		t.Fatalf("log does not name the failed target %s:\n%s", target, out)
	}
}

func TestTCPForwarderCloseEndsRelaysInFlight(t *testing.T) {
	target := serveTCP(t, "127.0.0.1:0", echoConn)
	baseline := runtime.NumGoroutine()

	l := forwardListen(t, "tcp", "127.0.0.1:0")
	f := NewTCPForwarder(forwardDial, target, ForwardConfig{IdleTimeout: time.Minute})
	served := serveInBackground(t, func() error { return f.Serve(l) }, f.Close)

	var conns []net.Conn
	for i := range 3 {
		c := forwardDialClient(t, l.Addr().String())
		forwardExchange(t, c, fmt.Sprint("relay ", i))
		conns = append(conns, c)
	}
	mustHaveGoroutines(t, forwardCode...)
	closeWithin(t, f.Close, forwardCode...)
	waitServed(t, served)
	forwardNoGoroutinesLeft(t, "Close")
	for _, c := range conns {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatalf("client connection still open after Close (read %d bytes)", n)
		}
	}
	waitGoroutineCount(t, baseline)
}

func TestTCPForwarderShutdownWaitsForRelay(t *testing.T) {
	target := serveTCP(t, "127.0.0.1:0", forwardCountBytes)
	f, addr, served := startTCPForwarder(t, "127.0.0.1:0", target, ForwardConfig{})
	c := forwardDialClient(t, addr)
	io.WriteString(c, "before")
	// The relay must be running before Shutdown, or Shutdown could
	// rightly close the listener with the connection still unaccepted.
	for deadline := time.Now().Add(10 * time.Second); f.count() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("relay never started")
		}
		time.Sleep(5 * time.Millisecond)
	}

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		shut <- f.Shutdown(ctx)
	}()
	waitServed(t, served)
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a relay still open", err)
	case <-time.After(100 * time.Millisecond):
	}
	if c2, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
		c2.Close()
		t.Fatal("listener still accepting after Shutdown")
	}

	io.WriteString(c, " after")
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "got 12" {
		t.Fatalf("relay during Shutdown answered %q, %v; want %q", got, err, "got 12")
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Fatalf("Shutdown = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the last relay finished")
	}
	forwardNoGoroutinesLeft(t, "Shutdown")
}

func TestTCPForwarderShutdownDeadlineCloses(t *testing.T) {
	target := serveTCP(t, "127.0.0.1:0", echoConn)
	f, addr, _ := startTCPForwarder(t, "127.0.0.1:0", target, ForwardConfig{})
	c := forwardDialClient(t, addr)
	forwardExchange(t, c, "open")

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := f.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown past its deadline = %v, want DeadlineExceeded", err)
	}
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("relay still open after Shutdown gave up (read %d bytes)", n)
	}
	forwardNoGoroutinesLeft(t, "Shutdown")
}

func TestTCPForwarderServeAfterClose(t *testing.T) {
	f := NewTCPForwarder(forwardDial, "127.0.0.1:1", ForwardConfig{})
	f.Close()
	l := forwardListen(t, "tcp", "127.0.0.1:0")
	if err := f.Serve(l); err != nil {
		t.Fatalf("Serve after Close = %v, want nil", err)
	}
	if c, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second); err == nil {
		c.Close()
		t.Fatal("Serve after Close left the listener open")
	}
}

func BenchmarkTCPForwarder(b *testing.B) {
	target := serveTCP(b, "127.0.0.1:0", func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "%d", n)
	})
	for _, tc := range []struct {
		name string
		idle time.Duration
	}{{"plain", 0}, {"idle-timeout", time.Minute}} {
		b.Run(tc.name, func(b *testing.B) {
			_, addr, _ := startTCPForwarder(b, "127.0.0.1:0", target, ForwardConfig{IdleTimeout: tc.idle})
			c := forwardDialClient(b, addr)
			chunk := make([]byte, 128<<10)
			b.SetBytes(int64(len(chunk)))
			b.ReportAllocs()
			sent := 0
			for b.Loop() {
				if _, err := c.Write(chunk); err != nil {
					b.Fatal(err)
				}
				sent += len(chunk)
			}
			c.CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || string(got) != fmt.Sprint(sent) {
				b.Fatalf("backend got %q bytes, %v; want %d", got, err, sent)
			}
		})
	}
}
