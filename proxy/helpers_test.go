package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgbore/wgbore/proxy/relay"
)

// Markers for proxyGoroutines: a substring of some frame in the stack of
// every goroutine each server starts, so a leak check sees all of them
// and none of the test's own.
var (
	forwardCode = []string{
		"wgbore/proxy.(*TCPForwarder)", "wgbore/proxy.(*UDPForwarder)", "wgbore/proxy.(*udpPort)",
		"wgbore/proxy.ServeSTDIO", "wgbore/proxy.sendSTDIO",
	}
	// A worker waiting for its next connection shows only its own loop.
	socksCode = []string{
		"wgbore/proxy.(*SOCKS5)", "wgbore/proxy.(*socksAssociation)", "wgbore/proxy.(*workers)",
	}
	// socksAssociationCode narrows socksCode to UDP ASSOCIATE's relays.
	socksAssociationCode = []string{"wgbore/proxy.(*socksAssociation)", "wgbore/proxy.(*SOCKS5).associate"}
	httpCode             = []string{"wgbore/proxy.(*HTTP)", "wgbore/proxy/relay.OneWay"}
)

// proxyGoroutines returns the stacks of the goroutines that have any of
// markers in their stack.
func proxyGoroutines(markers ...string) []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var ours []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, m := range markers {
			if strings.Contains(g, m) {
				ours = append(ours, g)
				break
			}
		}
	}
	return ours
}

// waitNoGoroutines fails the test unless the goroutines named by markers
// are gone within 5 s of after (a Close, a Shutdown). It polls rather
// than looking once: Close and Shutdown wait for their goroutines'
// WaitGroup, but a goroutine may still be returning just past its Done,
// and Serve's own goroutine is not waited for at all.
func waitNoGoroutines(t testing.TB, after string, markers ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := proxyGoroutines(markers...)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines left after %s:\n%s", after, strings.Join(left, "\n\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// mustHaveGoroutines fails the test unless some goroutine named by
// markers is running: without one, a leak check after Close would pass
// whatever Close did.
func mustHaveGoroutines(t testing.TB, markers ...string) {
	t.Helper()
	if len(proxyGoroutines(markers...)) == 0 {
		t.Fatal("no goroutines of the server found before Close: the leak check would prove nothing")
	}
}

// closeWithin calls closeFn and returns its error, failing the test with
// the stacks of the goroutines named by markers when it has not returned
// after 10 s: a Close that hangs shows what it is waiting for.
func closeWithin(t testing.TB, closeFn func() error, markers ...string) error {
	t.Helper()
	closed := make(chan error, 1)
	go func() { closed <- closeFn() }()
	select {
	case err := <-closed:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("Close did not return; still running:\n%s", strings.Join(proxyGoroutines(markers...), "\n\n"))
		return nil
	}
}

// checkShutdownWaits checks what a graceful Shutdown owes its clients:
// it lets the idle one go at once and stops accepting on addr, but waits
// while relay still carries a round trip (ping), and returns nil, with
// every goroutine named by markers gone, once relay is closed.
func checkShutdownWaits(t *testing.T, shutdown func(context.Context) error, addr string, idle, relay net.Conn, ping func(), markers ...string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- shutdown(context.Background()) }()

	closedByServerWithin(t, idle, 5*time.Second)
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("the listener still accepts during Shutdown")
	}
	ping()
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a relay still open", err)
	case <-time.After(100 * time.Millisecond):
	}

	relay.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last relay ended")
	}
	waitNoGoroutines(t, "Shutdown", markers...)
}

// waitGoroutineCount waits for the number of goroutines to fall back to
// baseline: a backend's goroutines end shortly after the server closes
// their conns, with nothing to wait on.
func waitGoroutineCount(t testing.TB, baseline int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > baseline && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseline {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines, baseline %d:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
	}
}

// serveInBackground runs serve on its own goroutine and, when the test
// ends, calls closeFn and checks that serve then returned nil. The channel
// yields serve's error and is then closed, so a test may wait on it too,
// with waitServed, before the cleanup does.
func serveInBackground(t testing.TB, serve, closeFn func() error) <-chan error {
	served := make(chan error, 1)
	go func() {
		served <- serve()
		close(served)
	}()
	t.Cleanup(func() {
		closeFn()
		waitServed(t, served)
	})
	return served
}

// waitServed checks that a Serve has returned nil; a closed channel means
// an earlier call already did.
func waitServed(t testing.TB, served <-chan error) {
	t.Helper()
	select {
	case err, ok := <-served:
		if ok && err != nil {
			t.Errorf("Serve after Close = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Serve did not return after Close")
	}
}

// exchangeRaw sends b to the server at addr, half-closes, and returns
// all it answers, failing the test unless the server closes within 5 s.
func exchangeRaw(t testing.TB, addr string, b []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	// The server may answer and close before reading all of a long
	// request, so writing must not hold up reading.
	go func() {
		c.Write(b)
		c.(*net.TCPConn).CloseWrite()
	}()
	answer, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %q (answered %q)", b[:min(len(b), 64)], answer)
	}
	return answer
}

// serveTCP runs a backend on a loopback listener: handle gets each
// accepted conn in its own goroutine and the conn is closed after it.
// The test's cleanup closes the listener and waits for every handler.
func serveTCP(t testing.TB, addr string, handle func(net.Conn)) string {
	t.Helper()
	l := forwardListen(t, "tcp", addr)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return l.Addr().String()
}

// echoConn, as serveTCP's handle, sends back whatever it reads.
func echoConn(c net.Conn) { io.Copy(c, c) }

// startTCPEcho serves a TCP echo on loopback and returns its port.
func startTCPEcho(t testing.TB) string {
	t.Helper()
	_, port, _ := net.SplitHostPort(serveTCP(t, "127.0.0.1:0", echoConn))
	return port
}

// handOverFixture gives a test of handed-over relays a poller for its
// Network's connections, so that they notify as the tunnel's do, and a
// loopback listener for the proxy. It skips where there is no poller.
func handOverFixture(t *testing.T) (*relay.Poller, net.Listener) {
	t.Helper()
	p, err := relay.NewPoller()
	if err != nil {
		t.Skipf("no poller on this platform (%v): each relay keeps its goroutine", err)
	}
	t.Cleanup(func() { p.Close() }) // after the proxy's Close
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return p, l
}
