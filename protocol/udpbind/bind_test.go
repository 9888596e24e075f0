package udpbind

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The tests only ever bind and send to these two addresses.
var (
	udpTestLoop4 = netip.MustParseAddr("127.0.0.1")
	udpTestLoop6 = netip.MustParseAddr("::1")
)

// udpTestNeedLoopback skips the test when a is ::1 and the host has no IPv6
// loopback; IPv4 loopback is assumed to exist everywhere.
func udpTestNeedLoopback(t testing.TB, a netip.Addr) {
	t.Helper()
	if a.Is4() {
		return
	}
	c, err := net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 0)))
	if err != nil {
		t.Skipf("skipping: this host has no IPv6 loopback (cannot bind [::1]:0: %v)", err)
	}
	c.Close()
}

// receiveFunc is protocol.ReceiveFunc, which this package does not import.
type receiveFunc = func(bufs [][]byte, sizes []int, eps []netip.AddrPort) (int, error)

// udpTestListen opens a bind on the default path and closes it when the
// test ends.
func udpTestListen(t testing.TB, cfg Config) *Bind {
	t.Helper()
	return udpTestListenWith(t, Listen, cfg)
}

// udpTestListenWith is udpTestListen with the constructor given.
func udpTestListenWith(t testing.TB, listen func(Config) (*Bind, error), cfg Config) *Bind {
	t.Helper()
	for _, a := range cfg.Addrs {
		udpTestNeedLoopback(t, a)
	}
	b, err := listen(cfg)
	if err != nil {
		t.Fatalf("Listen(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { b.Close() })
	// A lost datagram must fail the test, not hang it.
	udpTestDeadline(t, b, time.Now().Add(20*time.Second))
	return b
}

func udpTestDeadline(t testing.TB, b *Bind, d time.Time) {
	t.Helper()
	for _, s := range b.socks {
		if err := s.conn.SetReadDeadline(d); err != nil {
			t.Fatalf("SetReadDeadline: %v", err)
		}
	}
}

// udpTestConstructors are the two paths: on Linux the batched one and
// the portable one, elsewhere the portable one twice.
var udpTestConstructors = []struct {
	name   string
	listen func(Config) (*Bind, error)
}{{"default", Listen}, {"portable", ListenPortable}}

// udpTestEachPath runs f once per path; open opens a bind on that path
// as udpTestListen does.
func udpTestEachPath(t *testing.T, f func(t *testing.T, open func(testing.TB, Config) *Bind)) {
	for _, c := range udpTestConstructors {
		t.Run(c.name, func(t *testing.T) {
			f(t, func(t testing.TB, cfg Config) *Bind {
				t.Helper()
				b := udpTestListenWith(t, c.listen, cfg)
				if c.name == "portable" && b.Path() != "portable" {
					t.Fatal("ListenPortable opened the batched path")
				}
				return b
			})
		})
	}
}

// udpTestPayload is deterministic per size, so a receiver can check a
// datagram's bytes knowing only its length.
func udpTestPayload(size int) []byte {
	p := make([]byte, size)
	for i := range p {
		p[i] = byte(size*31 + i*7)
	}
	return p
}

type udpTestDatagram struct {
	data []byte
	from netip.AddrPort
}

// udpTestReceive calls recv until want datagrams have arrived.
func udpTestReceive(t testing.TB, recv receiveFunc, slots, bufSize, want int) []udpTestDatagram {
	t.Helper()
	bufs := make([][]byte, slots)
	for i := range bufs {
		bufs[i] = make([]byte, bufSize)
	}
	sizes := make([]int, slots)
	eps := make([]netip.AddrPort, slots)
	var got []udpTestDatagram
	for len(got) < want {
		n, err := recv(bufs, sizes, eps)
		if err != nil {
			t.Fatalf("receive after %d of %d datagrams: %v", len(got), want, err)
		}
		if n < 1 || n > slots {
			t.Fatalf("receive returned n=%d with %d slots", n, slots)
		}
		for i := range n {
			got = append(got, udpTestDatagram{bytes.Clone(bufs[i][:sizes[i]]), eps[i]})
		}
	}
	if len(got) > want {
		t.Fatalf("received %d datagrams, want %d", len(got), want)
	}
	return got
}

func TestRoundTrip(t *testing.T) {
	udpTestEachPath(t, func(t *testing.T, open func(testing.TB, Config) *Bind) {
		sizes := []int{1, 2, 20, 32, 92, 148, 500, 1280, 1420, 1500, 4000, 8900}
		for _, addr := range []netip.Addr{udpTestLoop4, udpTestLoop6} {
			for _, batch := range []int{0, 1, 5} {
				t.Run(fmt.Sprintf("%v/batch=%d", addr, batch), func(t *testing.T) {
					cfg := Config{Addrs: []netip.Addr{addr}, BatchSize: batch}
					a := open(t, cfg)
					b := open(t, cfg)

					wantBatch := batch
					if wantBatch == 0 {
						wantBatch = 64
					}
					if got := b.BatchSize(); got != wantBatch {
						t.Fatalf("BatchSize() = %d, want %d", got, wantBatch)
					}
					if got := len(b.Receivers()); got != 1 {
						t.Fatalf("%d receivers for one address, want 1", got)
					}
					from := a.LocalAddrs()[0]
					if from.Addr() != addr || from.Port() != a.Port() {
						t.Fatalf("sender LocalAddrs()[0] = %v, want %v port %d", from, addr, a.Port())
					}

					bufs := make([][]byte, len(sizes))
					for i, n := range sizes {
						bufs[i] = udpTestPayload(n)
					}
					to := netip.AddrPortFrom(addr, b.Port())
					if err := a.Send(bufs, to); err != nil {
						t.Fatalf("Send: %v", err)
					}

					got := udpTestReceive(t, b.Receivers()[0], b.BatchSize(), 9000, len(sizes))
					seen := make(map[int]bool)
					for _, d := range got {
						if d.from != from {
							t.Errorf("datagram of %d bytes came from %v, want %v", len(d.data), d.from, from)
						}
						if !bytes.Equal(d.data, udpTestPayload(len(d.data))) {
							t.Errorf("datagram of %d bytes has the wrong contents", len(d.data))
						}
						seen[len(d.data)] = true
					}
					for _, n := range sizes {
						if !seen[n] {
							t.Errorf("the %d-byte datagram never arrived", n)
						}
					}
				})
			}
		}
	})
}

func TestDualLoopback(t *testing.T) {
	udpTestEachPath(t, func(t *testing.T, open func(testing.TB, Config) *Bind) {
		udpTestNeedLoopback(t, udpTestLoop6)
		cfg := Config{Addrs: []netip.Addr{udpTestLoop4, udpTestLoop6}}
		a := open(t, cfg)
		b := open(t, cfg)

		if got := len(b.Receivers()); got != 2 {
			t.Fatalf("%d receivers for two addresses, want 2", got)
		}
		for i, addr := range []netip.Addr{udpTestLoop4, udpTestLoop6} {
			payload := udpTestPayload(100 + i)
			if err := a.Send([][]byte{payload}, netip.AddrPortFrom(addr, b.Port())); err != nil {
				t.Fatalf("Send to %v: %v", addr, err)
			}
			got := udpTestReceive(t, b.Receivers()[i], 4, 2000, 1)
			if want := netip.AddrPortFrom(addr, a.Port()); got[0].from != want {
				t.Errorf("datagram to %v came from %v, want %v", addr, got[0].from, want)
			}
			if !bytes.Equal(got[0].data, payload) {
				t.Errorf("datagram to %v has the wrong contents", addr)
			}
		}

		// A 4in6 endpoint is an IPv4 peer: it must leave through the IPv4
		// socket and be reported back unmapped.
		mapped := netip.AddrPortFrom(netip.AddrFrom16(udpTestLoop4.As16()), b.Port())
		if err := a.Send([][]byte{udpTestPayload(7)}, mapped); err != nil {
			t.Fatalf("Send to %v: %v", mapped, err)
		}
		got := udpTestReceive(t, b.Receivers()[0], 4, 2000, 1)
		if want := netip.AddrPortFrom(udpTestLoop4, a.Port()); got[0].from != want {
			t.Errorf("datagram sent to %v came from %v, want %v", mapped, got[0].from, want)
		}
	})
}

// TestSourceAddrs sends from plain sockets, independent of the bind's
// own send path, and checks that every datagram of a batch reports exactly
// the socket it came from.
func TestSourceAddrs(t *testing.T) {
	udpTestEachPath(t, func(t *testing.T, open func(testing.TB, Config) *Bind) {
		for _, addr := range []netip.Addr{udpTestLoop4, udpTestLoop6} {
			t.Run(addr.String(), func(t *testing.T) {
				b := open(t, Config{Addrs: []netip.Addr{addr}})
				network := "udp4"
				if addr.Is6() {
					network = "udp6"
				}
				to := netip.AddrPortFrom(addr, b.Port())

				const senders = 3
				want := make(map[int]netip.AddrPort)
				for i := range senders {
					c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					size := 40 + i
					want[size] = c.LocalAddr().(*net.UDPAddr).AddrPort()
					if _, err := c.WriteToUDPAddrPort(udpTestPayload(size), to); err != nil {
						t.Fatalf("WriteToUDPAddrPort: %v", err)
					}
				}

				for _, d := range udpTestReceive(t, b.Receivers()[0], 8, 2000, senders) {
					from, ok := want[len(d.data)]
					if !ok || !bytes.Equal(d.data, udpTestPayload(len(d.data))) {
						t.Errorf("unexpected %d-byte datagram from %v", len(d.data), d.from)
						continue
					}
					delete(want, len(d.data))
					if d.from != from {
						t.Errorf("datagram from %v reported as coming from %v", from, d.from)
					}
					if d.from.Addr().Is4() != addr.Is4() || d.from.Addr().Is4In6() || d.from.Addr().Zone() != "" {
						t.Errorf("source %v is not a plain %s address", d.from, network)
					}
				}
			})
		}
	})
}

func TestPortZeroPicksPort(t *testing.T) {
	addrs := []netip.Addr{udpTestLoop4}
	if c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback}); err == nil {
		c.Close()
		addrs = append(addrs, udpTestLoop6)
	} else {
		t.Logf("no IPv6 loopback, checking 127.0.0.1 only: %v", err)
	}
	b := udpTestListen(t, Config{Addrs: addrs})
	if b.Port() == 0 {
		t.Fatal("Port() = 0 after listening on port 0")
	}
	locals := b.LocalAddrs()
	if len(locals) != len(addrs) {
		t.Fatalf("LocalAddrs() = %v, want one per address in %v", locals, addrs)
	}
	for i, ap := range locals {
		if ap.Addr() != addrs[i] || ap.Port() != b.Port() {
			t.Errorf("LocalAddrs()[%d] = %v, want %v port %d", i, ap, addrs[i], b.Port())
		}
	}
}

func TestFixedPort(t *testing.T) {
	probe := udpTestListen(t, Config{Addrs: []netip.Addr{udpTestLoop4}})
	port := probe.Port()
	probe.Close()

	b, err := Listen(Config{Port: port, Addrs: []netip.Addr{udpTestLoop4}})
	if err != nil {
		t.Skipf("port %d was taken again before the test could reuse it: %v", port, err)
	}
	defer b.Close()
	if b.Port() != port {
		t.Fatalf("Port() = %d, want %d", b.Port(), port)
	}
	// The port is now ours, so a second bind on it must fail clearly.
	if b2, err := Listen(Config{Port: port, Addrs: []netip.Addr{udpTestLoop4}}); err == nil {
		b2.Close()
		t.Fatal("second Listen on a taken port succeeded")
	} else if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("second Listen on a taken port: %v, want EADDRINUSE", err)
	}
}

func TestBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{BatchSize: -1, Addrs: []netip.Addr{udpTestLoop4}},
		{Addrs: []netip.Addr{{}}},
	} {
		if b, err := Listen(cfg); err == nil {
			b.Close()
			t.Errorf("Listen(%+v) succeeded", cfg)
		} else {
			t.Logf("Listen(%+v): %v", cfg, err)
		}
	}
}

// udpTestFakeListen stands in for net.ListenUDP: it binds loopback whenever
// asked for a wildcard (so the wildcard logic is tested without opening a
// port to the network) and fails where fail says so.
type udpTestFakeListen struct {
	fail func(call int, network string, laddr *net.UDPAddr) error

	mu    sync.Mutex
	calls int
	conns []*net.UDPConn
}

func (f *udpTestFakeListen) listen(network string, laddr *net.UDPAddr) (hostConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if err := f.fail(f.calls, network, laddr); err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: laddr, Err: err}
	}
	ap := laddr.AddrPort()
	if ap.Addr().IsUnspecified() {
		lo := udpTestLoop4
		if network == "udp6" {
			lo = udpTestLoop6
		}
		ap = netip.AddrPortFrom(lo, ap.Port())
	}
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return nil, err
	}
	f.conns = append(f.conns, c)
	return c, nil
}

// closeAll is the test's own cleanup; it also reports how many of the
// sockets the fake handed out were still open.
func (f *udpTestFakeListen) closeAll() (open int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		if c.SetDeadline(time.Time{}) == nil {
			open++
		}
		c.Close()
	}
	return open
}

func TestFamilyMissing(t *testing.T) {
	noV6 := func(_ int, network string, _ *net.UDPAddr) error {
		if network == "udp6" {
			return os.NewSyscallError("socket", syscall.EAFNOSUPPORT)
		}
		return nil
	}

	t.Run("wildcard keeps IPv4", func(t *testing.T) {
		f := &udpTestFakeListen{fail: noV6}
		defer f.closeAll()
		b, err := listen(Config{}, f.listen, newPortable)
		if err != nil {
			t.Fatalf("listen without IPv6: %v", err)
		}
		defer b.Close()
		locals := b.LocalAddrs()
		if len(locals) != 1 || !locals[0].Addr().Is4() {
			t.Fatalf("LocalAddrs() = %v, want just the IPv4 socket", locals)
		}
		err = b.Send([][]byte{{1}}, netip.AddrPortFrom(udpTestLoop6, 9))
		if want := "udp send to [::1]:9: no IPv6 socket"; err == nil || err.Error() != want {
			t.Fatalf("Send to ::1 without an IPv6 socket: %v, want %q", err, want)
		}
	})

	t.Run("wildcard keeps IPv6", func(t *testing.T) {
		udpTestNeedLoopback(t, udpTestLoop6)
		f := &udpTestFakeListen{fail: func(_ int, network string, _ *net.UDPAddr) error {
			if network == "udp4" {
				return os.NewSyscallError("socket", syscall.EAFNOSUPPORT)
			}
			return nil
		}}
		defer f.closeAll()
		b, err := listen(Config{}, f.listen, newPortable)
		if err != nil {
			t.Fatalf("listen without IPv4: %v", err)
		}
		defer b.Close()
		if locals := b.LocalAddrs(); len(locals) != 1 || !locals[0].Addr().Is6() || b.Port() == 0 {
			t.Fatalf("LocalAddrs() = %v, Port() = %d; want just an IPv6 socket on a real port", locals, b.Port())
		}
		err = b.Send([][]byte{{1}}, netip.AddrPortFrom(udpTestLoop4, 9))
		if want := "udp send to 127.0.0.1:9: no IPv4 socket"; err == nil || err.Error() != want {
			t.Fatalf("Send to 127.0.0.1 without an IPv4 socket: %v, want %q", err, want)
		}
	})

	t.Run("neither family", func(t *testing.T) {
		f := &udpTestFakeListen{fail: func(int, string, *net.UDPAddr) error {
			return os.NewSyscallError("socket", syscall.EAFNOSUPPORT)
		}}
		defer f.closeAll()
		b, err := listen(Config{}, f.listen, newPortable)
		if err == nil {
			b.Close()
			t.Fatal("listen succeeded with no address family")
		}
		if !errors.Is(err, syscall.EAFNOSUPPORT) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("error %q should wrap EAFNOSUPPORT and fit on one line", err)
		}
	})

	t.Run("explicit address is required", func(t *testing.T) {
		f := &udpTestFakeListen{fail: noV6}
		b, err := listen(Config{Addrs: []netip.Addr{udpTestLoop4, udpTestLoop6}}, f.listen, newPortable)
		if err == nil {
			b.Close()
			t.Fatal("listen succeeded although an explicit address could not be bound")
		}
		if open := f.closeAll(); open != 0 {
			t.Fatalf("%d sockets left open after a failed listen", open)
		}
	})
}

func TestPortRetry(t *testing.T) {
	inUse := os.NewSyscallError("bind", syscall.EADDRINUSE)

	t.Run("picked port taken for IPv6", func(t *testing.T) {
		udpTestNeedLoopback(t, udpTestLoop6)
		f := &udpTestFakeListen{fail: func(call int, network string, _ *net.UDPAddr) error {
			if call == 2 && network == "udp6" {
				return inUse
			}
			return nil
		}}
		defer f.closeAll()
		b, err := listen(Config{}, f.listen, newPortable)
		if err != nil {
			t.Fatalf("listen with one collision: %v", err)
		}
		if f.calls != 4 {
			t.Errorf("%d listen calls, want 4 (v4, v6 collides, v4, v6)", f.calls)
		}
		locals := b.LocalAddrs()
		if len(locals) != 2 || locals[0].Port() != b.Port() || locals[1].Port() != b.Port() {
			t.Errorf("LocalAddrs() = %v, want two sockets on port %d", locals, b.Port())
		}
		b.Close()
		if open := f.closeAll(); open != 0 {
			t.Fatalf("%d sockets left open after Close", open)
		}
	})

	t.Run("gives up", func(t *testing.T) {
		f := &udpTestFakeListen{fail: func(_ int, network string, _ *net.UDPAddr) error {
			if network == "udp6" {
				return inUse
			}
			return nil
		}}
		b, err := listen(Config{}, f.listen, newPortable)
		if err == nil {
			b.Close()
			t.Fatal("listen succeeded although IPv6 never had the port")
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("error %v should wrap EADDRINUSE", err)
		}
		if want := 2 * udpPortAttempts; f.calls != want {
			t.Errorf("%d listen calls, want %d", f.calls, want)
		}
		if open := f.closeAll(); open != 0 {
			t.Fatalf("%d sockets left open after a failed listen", open)
		}
	})

	t.Run("fixed port is not retried", func(t *testing.T) {
		probe, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		port := probe.LocalAddr().(*net.UDPAddr).AddrPort().Port()
		probe.Close()
		f := &udpTestFakeListen{fail: func(_ int, network string, _ *net.UDPAddr) error {
			if network == "udp6" {
				return inUse
			}
			return nil
		}}
		b, err := listen(Config{Port: port}, f.listen, newPortable)
		if err == nil {
			b.Close()
			t.Fatal("listen succeeded although IPv6 never had the port")
		}
		if f.calls != 2 {
			t.Errorf("%d listen calls for a fixed port, want 2", f.calls)
		}
		f.closeAll()
	})
}

func TestCloseUnblocksReceivers(t *testing.T) {
	udpTestEachPath(t, func(t *testing.T, open func(testing.TB, Config) *Bind) {
		addrs := []netip.Addr{udpTestLoop4}
		if c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback}); err == nil {
			c.Close()
			addrs = append(addrs, udpTestLoop6)
		}
		b := open(t, Config{Addrs: addrs})

		recvs := b.Receivers()
		errs := make(chan error, len(recvs))
		for _, recv := range recvs {
			go func() {
				bufs := [][]byte{make([]byte, 1500)}
				_, err := recv(bufs, make([]int, 1), make([]netip.AddrPort, 1))
				errs <- err
			}()
		}
		// Give the receivers time to block in recvmmsg; a receiver that has not
		// got there yet must see the same error anyway.
		time.Sleep(50 * time.Millisecond)
		if err := b.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		for range recvs {
			select {
			case err := <-errs:
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("blocked receiver returned %v, want net.ErrClosed", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Close did not unblock a receiver")
			}
		}

		if err := b.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		for _, recv := range append(recvs, b.Receivers()...) {
			_, err := recv([][]byte{make([]byte, 10)}, make([]int, 1), make([]netip.AddrPort, 1))
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("receive after Close: %v, want net.ErrClosed", err)
			}
		}
		err := b.Send([][]byte{{1}}, netip.AddrPortFrom(udpTestLoop4, 9))
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Send after Close: %v, want net.ErrClosed", err)
		}
	})
}

func TestSendWithoutFamily(t *testing.T) {
	udpTestEachPath(t, func(t *testing.T, open func(testing.TB, Config) *Bind) {
		b4 := open(t, Config{Addrs: []netip.Addr{udpTestLoop4}})
		err := b4.Send([][]byte{{1}}, netip.AddrPortFrom(udpTestLoop6, 9))
		if want := "udp send to [::1]:9: no IPv6 socket"; err == nil || err.Error() != want {
			t.Errorf("IPv4-only bind sending to ::1: %v, want %q", err, want)
		}
		if err := b4.Send([][]byte{{1}}, netip.AddrPort{}); err == nil {
			t.Error("Send to the zero AddrPort succeeded")
		}
		if err := b4.Send(nil, netip.AddrPortFrom(udpTestLoop6, 9)); err != nil {
			t.Errorf("Send of no datagrams: %v", err)
		}

		b6 := open(t, Config{Addrs: []netip.Addr{udpTestLoop6}})
		err = b6.Send([][]byte{{1}}, netip.AddrPortFrom(udpTestLoop4, 9))
		if want := "udp send to 127.0.0.1:9: no IPv4 socket"; err == nil || err.Error() != want {
			t.Errorf("IPv6-only bind sending to 127.0.0.1: %v, want %q", err, want)
		}
	})
}

func TestDropsTruncated(t *testing.T) {
	udpTestEachPath(t, func(t *testing.T, open func(testing.TB, Config) *Bind) {
		cfg := Config{Addrs: []netip.Addr{udpTestLoop4}}
		a := open(t, cfg)
		b := open(t, cfg)

		const slot = 100
		sizes := []int{200, 50, 300, 101, 60, 100}
		bufs := make([][]byte, len(sizes))
		for i, n := range sizes {
			bufs[i] = udpTestPayload(n)
		}
		if err := a.Send(bufs, netip.AddrPortFrom(udpTestLoop4, b.Port())); err != nil {
			t.Fatalf("Send: %v", err)
		}
		got := udpTestReceive(t, b.Receivers()[0], len(sizes), slot, 3)
		for i, want := range []int{50, 60, 100} {
			if len(got[i].data) != want || !bytes.Equal(got[i].data, udpTestPayload(want)) {
				t.Errorf("datagram %d: %d bytes, want the intact %d-byte one", i, len(got[i].data), want)
			}
		}

		// Nothing else may be waiting: the oversize datagrams are gone.
		if err := a.Send([][]byte{udpTestPayload(70)}, netip.AddrPortFrom(udpTestLoop4, b.Port())); err != nil {
			t.Fatalf("Send: %v", err)
		}
		if got := udpTestReceive(t, b.Receivers()[0], len(sizes), slot, 1); len(got[0].data) != 70 {
			t.Errorf("after the batch, received %d bytes, want the 70-byte datagram", len(got[0].data))
		}
	})
}

func TestConcurrentSend(t *testing.T) {
	udpTestEachPath(t, func(t *testing.T, open func(testing.TB, Config) *Bind) {
		cfg := Config{Addrs: []netip.Addr{udpTestLoop4}, BatchSize: 4}
		a := open(t, cfg)
		b := open(t, cfg)
		to := netip.AddrPortFrom(udpTestLoop4, b.Port())

		const senders, sends, perSend = 4, 25, 6
		const total = senders * sends * perSend

		var mu sync.Mutex
		received := 0
		recvDone := make(chan error, 1)
		go func() {
			bufs := make([][]byte, b.BatchSize())
			for i := range bufs {
				bufs[i] = make([]byte, 2000)
			}
			sizes := make([]int, len(bufs))
			eps := make([]netip.AddrPort, len(bufs))
			for {
				n, err := b.Receivers()[0](bufs, sizes, eps)
				if err != nil {
					recvDone <- err
					return
				}
				mu.Lock()
				received += n
				mu.Unlock()
			}
		}()

		var wg sync.WaitGroup
		sendErrs := make(chan error, senders)
		for s := range senders {
			wg.Go(func() {
				bufs := make([][]byte, perSend)
				for i := range bufs {
					bufs[i] = udpTestPayload(100 + s)
				}
				for range sends {
					if err := a.Send(bufs, to); err != nil {
						sendErrs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(sendErrs)
		for err := range sendErrs {
			t.Errorf("concurrent Send: %v", err)
		}

		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			mu.Lock()
			n := received
			mu.Unlock()
			if n >= total {
				break
			}
		}
		b.Close()
		if err := <-recvDone; !errors.Is(err, net.ErrClosed) {
			t.Errorf("receiver stopped with %v, want net.ErrClosed", err)
		}
		if received != total {
			t.Errorf("received %d of %d datagrams", received, total)
		}
	})
}

// udpTestPair is a sender and a receiver with reusable buffers, shared by
// the allocation test and the benchmark.
type udpTestPair struct {
	a, b  *Bind
	to    netip.AddrPort
	out   [][]byte
	in    [][]byte
	sizes []int
	eps   []netip.AddrPort
	recv  receiveFunc
}

func newUDPTestPair(t testing.TB, listen func(Config) (*Bind, error), addr netip.Addr, batch, size int) *udpTestPair {
	cfg := Config{Addrs: []netip.Addr{addr}, BatchSize: batch}
	p := &udpTestPair{a: udpTestListenWith(t, listen, cfg), b: udpTestListenWith(t, listen, cfg)}
	p.to = netip.AddrPortFrom(addr, p.b.Port())
	p.recv = p.b.Receivers()[0]
	p.out = make([][]byte, batch)
	p.in = make([][]byte, batch)
	for i := range batch {
		p.out[i] = udpTestPayload(size)
		p.in[i] = make([]byte, 2048)
	}
	p.sizes = make([]int, batch)
	p.eps = make([]netip.AddrPort, batch)
	return p
}

// roundTrip sends one batch and receives all of it; it reports the first
// error rather than failing, so that it can run inside AllocsPerRun.
func (p *udpTestPair) roundTrip() error {
	if err := p.a.Send(p.out, p.to); err != nil {
		return err
	}
	for got := 0; got < len(p.out); {
		n, err := p.recv(p.in, p.sizes, p.eps)
		if err != nil {
			return err
		}
		got += n
	}
	return nil
}

func TestAllocations(t *testing.T) {
	for _, c := range udpTestConstructors {
		t.Run(c.name, func(t *testing.T) {
			const batch = 32
			var err error
			check := func(e error) {
				if e != nil && err == nil {
					err = e
				}
			}

			// Send alone: nothing is read, so the receiver's queue simply
			// drops what does not fit; that costs the sender nothing.
			send := newUDPTestPair(t, c.listen, udpTestLoop4, batch, 64)
			sendAllocs := testing.AllocsPerRun(200, func() { check(send.a.Send(send.out, send.to)) }) / batch
			if err != nil {
				t.Fatalf("Send: %v", err)
			}

			rt := newUDPTestPair(t, c.listen, udpTestLoop4, batch, 1420)
			for range 5 {
				check(rt.roundTrip())
			}
			bothAllocs := testing.AllocsPerRun(200, func() { check(rt.roundTrip()) }) / batch
			if err != nil {
				t.Fatalf("round trip: %v", err)
			}
			recvAllocs := bothAllocs - sendAllocs
			t.Logf("allocations per datagram: send %.3f, receive %.3f, send+receive %.3f", sendAllocs, recvAllocs, bothAllocs)

			// Sources are decoded from preallocated sockaddrs (Linux) or
			// come back as netip.AddrPort values (the net package):
			// nothing may allocate per datagram.
			if sendAllocs >= 0.1 {
				t.Errorf("Send allocates %.2f times per datagram, want < 0.1 (expected 0)", sendAllocs)
			}
			if recvAllocs >= 0.1 {
				t.Errorf("receive allocates %.2f times per datagram, want < 0.1 (expected 0)", recvAllocs)
			}
		})
	}
}

func BenchmarkBind(b *testing.B) {
	const batch, size = 64, 1420
	for _, c := range udpTestConstructors {
		for _, addr := range []netip.Addr{udpTestLoop4, udpTestLoop6} {
			b.Run(c.name+"/"+addr.String(), func(b *testing.B) {
				benchmarkUDPBind(b, c.listen, addr, batch, size)
			})
		}
	}
}

func benchmarkUDPBind(b *testing.B, listen func(Config) (*Bind, error), addr netip.Addr, batch, size int) {
	p := newUDPTestPair(b, listen, addr, batch, size)
	udpTestDeadline(b, p.b, time.Now().Add(5*time.Minute))
	if err := p.roundTrip(); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(batch * size))
	b.ReportAllocs()
	ops := 0
	for b.Loop() {
		if err := p.roundTrip(); err != nil {
			b.Fatal(err)
		}
		ops++
	}
	b.ReportMetric(float64(ops*batch)/b.Elapsed().Seconds(), "datagrams/s")
}
