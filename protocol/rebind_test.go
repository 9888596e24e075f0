package protocol

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/memnet"
)

// TestRebind moves one engine to a new socket at a new address, as after
// a network change, and checks that its peer follows (roaming) at once
// and traffic flows both ways on the session it had; that a socket
// closed under the engine is reported through BindFailed, once, while
// sockets the engine closes itself (Rebind, Close) are not; and that a
// failed reopen leaves the engine able to Rebind again.
func TestRebind(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	mem := memnet.NewNetwork(clk, 1)
	failures := make(chan error, 4)
	a := newMemNode(t, mem, clk, "127.0.0.1:1001", "10.0.0.1", nil)
	b := newMemNodeWith(t, mem, clk, "127.0.0.1:1002", "10.0.0.2", func(c *Config) {
		c.BindFailed = func(err error) { failures <- err }
	})
	connect(t, b, a, PresharedKey{})
	exchange := func(what string) {
		t.Helper()
		p := ipPacket(b.addr, a.addr, []byte(what+": b to a"))
		b.e.WritePackets([][]byte{p})
		a.sink.expect(t, p)
		q := ipPacket(a.addr, b.addr, []byte(what+": a to b"))
		a.e.WritePackets([][]byte{q})
		b.sink.expect(t, q)
	}
	exchange("before")

	// A handshake's timestamp must be newer than the last one's.
	clk.Advance(time.Second)
	moved := netip.MustParseAddrPort("127.0.0.9:2002")
	var next *memnet.Bind
	if err := b.e.Rebind(func() (Bind, error) {
		var err error
		next, err = mem.Listen(moved)
		return next, err
	}); err != nil {
		t.Fatalf("Rebind: %v", err)
	}
	// Before any data from b: the keepalive and the handshake that
	// Rebind sends tell a where b is now.
	deadline := time.Now().Add(10 * time.Second)
	for st, _ := a.e.Peer(b.key.PublicKey()); st.Endpoint != moved; st, _ = a.e.Peer(b.key.PublicKey()) {
		if time.Now().After(deadline) {
			t.Fatalf("a still sends to %v, want b's new address %v", st.Endpoint, moved)
		}
		time.Sleep(time.Millisecond)
	}
	exchange("after")
	// The response is handled apart from the data path: wait for it.
	for st, _ := b.e.Peer(a.key.PublicKey()); st.HandshakesCompleted < 2; st, _ = b.e.Peer(a.key.PublicKey()) {
		if time.Now().After(deadline) {
			t.Fatalf("%d handshakes completed, want a fresh one after Rebind", st.HandshakesCompleted)
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-failures:
		t.Fatalf("BindFailed after Rebind closed the old socket: %v", err)
	default:
	}

	// The socket closed by something other than the engine.
	next.Close()
	select {
	case err := <-failures:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("BindFailed(%v), want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("BindFailed was not called for a socket closed under the engine")
	}

	// A reopen that fails, then one that works.
	refused := errors.New("no network")
	if err := b.e.Rebind(func() (Bind, error) { return nil, refused }); !errors.Is(err, refused) {
		t.Fatalf("Rebind with a failing open: %v, want it to wrap %v", err, refused)
	}
	if err := b.e.Rebind(func() (Bind, error) { return mem.Listen(netip.MustParseAddrPort("127.0.0.9:2003")) }); err != nil {
		t.Fatalf("Rebind after a failed one: %v", err)
	}
	exchange("recovered")

	b.e.Close()
	if err := b.e.Rebind(func() (Bind, error) { t.Fatal("Rebind opened a socket after Close"); return nil, nil }); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Rebind after Close: %v, want net.ErrClosed", err)
	}
	select {
	case err := <-failures:
		t.Fatalf("BindFailed more than once, or after Close: %v", err)
	default:
	}
}

// erringBind is a Bind whose one receive function returns the errors fed
// to it, and net.ErrClosed once closed.
type erringBind struct {
	errs   chan error
	closed chan struct{}
	once   sync.Once
}

func newErringBind() *erringBind {
	return &erringBind{errs: make(chan error), closed: make(chan struct{})}
}

func (b *erringBind) Receivers() []ReceiveFunc {
	return []ReceiveFunc{func([][]byte, []int, []netip.AddrPort) (int, error) {
		select {
		case err := <-b.errs:
			return 0, err
		case <-b.closed:
			return 0, net.ErrClosed
		}
	}}
}
func (b *erringBind) Send([][]byte, netip.AddrPort) error { return nil }
func (b *erringBind) BatchSize() int                      { return 1 }
func (b *erringBind) Close() error                        { b.once.Do(func() { close(b.closed) }); return nil }

// feed hands the receive function an error every interval for d, and
// reports whether it still took one at the end.
func (b *erringBind) feed(every, d time.Duration) (stillReading bool) {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(every) {
		select {
		case b.errs <- errors.New("no network"):
		case <-time.After(100 * time.Millisecond):
		}
	}
	select {
	case b.errs <- errors.New("no network"):
		return true
	case <-time.After(time.Second):
		return false
	}
}

// TestBindFailsAfterSteadyErrors: receives that fail back to back for a
// second make a failed socket, reported once, after which the engine
// stops reading it; errors now and then never do; and without
// BindFailed the engine keeps reading through any errors.
func TestBindFailsAfterSteadyErrors(t *testing.T) {
	start := func(t *testing.T, failed func(error)) *erringBind {
		b := newErringBind()
		e, err := New(Config{PrivateKey: mustKey(t), Bind: b, Packets: newSink(), Workers: 1, Logger: testLogger(t), BindFailed: failed})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		return b
	}
	t.Run("steady", func(t *testing.T) {
		failures := make(chan error, 2)
		b := start(t, func(err error) { failures <- err })
		// Errors every millisecond until the engine gives up: on a
		// loaded machine a pause in this goroutine restarts the
		// engine's second, so the time it takes is not the test's
		// business, only that it comes.
		for deadline := time.Now().Add(60 * time.Second); len(failures) == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("BindFailed not called after a minute of back-to-back receive errors")
			}
			select {
			case b.errs <- errors.New("no network"):
			case <-time.After(100 * time.Millisecond):
			}
		}
		select {
		case b.errs <- errors.New("no network"):
			t.Error("the engine still reads a socket it reported as failed")
		case <-time.After(time.Second):
		}
		if len(failures) != 1 {
			t.Errorf("BindFailed called %d times, want once", len(failures))
		}
	})
	t.Run("now and then", func(t *testing.T) {
		failures := make(chan error, 2)
		b := start(t, func(err error) { failures <- err })
		if !b.feed(300*time.Millisecond, 1500*time.Millisecond) {
			t.Error("the engine stopped reading after errors spread over more than a second")
		}
		if len(failures) != 0 {
			t.Errorf("BindFailed(%v) for errors now and then", <-failures)
		}
	})
	t.Run("no BindFailed", func(t *testing.T) {
		b := start(t, nil)
		if !b.feed(time.Millisecond, 1500*time.Millisecond) {
			t.Error("without BindFailed the engine stopped reading")
		}
	})
}
