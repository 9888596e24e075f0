package happyeyeballs

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

var (
	v6a = netip.MustParseAddrPort("[fd00::2]:80")
	v6b = netip.MustParseAddrPort("[fd00::3]:80")
	v4a = netip.MustParseAddrPort("10.0.0.2:80")
	v4b = netip.MustParseAddrPort("10.0.0.3:80")
)

// fakeDial answers each address as told: a connection, an error, or
// nothing until its context ends (a black hole). It records the order of
// attempts and which contexts ended.
type fakeDial struct {
	mu        sync.Mutex
	ok        map[netip.AddrPort]bool
	refuse    map[netip.AddrPort]bool
	tried     []netip.AddrPort
	cancelled []netip.AddrPort
	// holes counts the black-holed attempts under way; overlapped is
	// set when an attempt that answers starts while one is.
	holes      int
	overlapped bool
}

var errRefused = errors.New("refused")

func (f *fakeDial) dial(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
	f.mu.Lock()
	f.tried = append(f.tried, ap)
	ok, refuse := f.ok[ap], f.refuse[ap]
	if ok && f.holes > 0 {
		f.overlapped = true
	}
	if !ok && !refuse {
		f.holes++
	}
	f.mu.Unlock()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	switch {
	case ok:
		c, _ := net.Pipe()
		return c, nil
	case refuse:
		return nil, errRefused
	}
	<-ctx.Done()
	f.mu.Lock()
	f.holes--
	f.cancelled = append(f.cancelled, ap)
	f.mu.Unlock()
	return nil, ctx.Err()
}

func (f *fakeDial) triedList() []netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]netip.AddrPort(nil), f.tried...)
}

// TestPreferredVersionWins: when the first address answers, nothing of
// the other version is tried.
func TestPreferredVersionWins(t *testing.T) {
	f := &fakeDial{ok: map[netip.AddrPort]bool{v6a: true, v4a: true}}
	c, err := Dial(context.Background(), []netip.AddrPort{v6a, v4a}, f.dial)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if got := f.triedList(); len(got) != 1 || got[0] != v6a {
		t.Fatalf("tried %v, want only %v", got, v6a)
	}
}

// TestBlackHoledVersionFallsBack: a preferred version that never answers
// does not hold the dial: the other version is tried beside it and wins,
// and the losing attempt is cancelled.
func TestBlackHoledVersionFallsBack(t *testing.T) {
	f := &fakeDial{ok: map[netip.AddrPort]bool{v4a: true}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Dial(ctx, []netip.AddrPort{v6a, v4a}, f.dial)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	f.mu.Lock()
	overlapped := f.overlapped
	f.mu.Unlock()
	if !overlapped {
		t.Fatal("IPv4 was tried only once IPv6 had given up, not beside it")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		f.mu.Lock()
		n := len(f.cancelled)
		f.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the black-holed attempt was not cancelled once the other version won")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestRefusedVersionFallsBackAtOnce: a preferred version that fails
// starts the other without waiting, and within a version the addresses
// are tried in order.
func TestRefusedVersionFallsBackAtOnce(t *testing.T) {
	f := &fakeDial{ok: map[netip.AddrPort]bool{v4b: true}, refuse: map[netip.AddrPort]bool{v6a: true, v6b: true, v4a: true}}
	c, err := Dial(context.Background(), []netip.AddrPort{v6a, v4a, v6b, v4b}, f.dial)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	var v6order, v4order []netip.AddrPort
	for _, ap := range f.triedList() {
		if ap.Addr().Is4() {
			v4order = append(v4order, ap)
		} else {
			v6order = append(v6order, ap)
		}
	}
	if len(v6order) != 2 || v6order[0] != v6a || v6order[1] != v6b || len(v4order) != 2 || v4order[0] != v4a || v4order[1] != v4b {
		t.Fatalf("tried IPv6 %v and IPv4 %v, each in the given order", v6order, v4order)
	}
}

// TestBothFailReportsPreferred: when every address fails, the error is
// the preferred version's first.
func TestBothFailReportsPreferred(t *testing.T) {
	errV4 := errors.New("v4 unreachable")
	dial := func(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
		if ap.Addr().Is4() {
			return nil, errV4
		}
		return nil, errRefused
	}
	_, err := Dial(context.Background(), []netip.AddrPort{v4a, v6a}, dial)
	if !errors.Is(err, errV4) {
		t.Fatalf("error %v, want the preferred (IPv4) version's %v", err, errV4)
	}
}

// TestDoneContextAsksDialForItsError: a dial whose context has ended
// reports what DialFunc says for such a context, and tries nothing else.
func TestDoneContextAsksDialForItsError(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f := &fakeDial{ok: map[netip.AddrPort]bool{v6a: true}}
	_, err := Dial(ctx, []netip.AddrPort{v6a, v6b}, f.dial)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want the context's", err)
	}
	if got := f.triedList(); len(got) != 1 {
		t.Fatalf("tried %v after the context ended, want one call for its error", got)
	}
}

// TestNoAddresses is an error, not a hang or a nil connection.
func TestNoAddresses(t *testing.T) {
	_, err := Dial(context.Background(), nil, (&fakeDial{}).dial)
	if !errors.Is(err, ErrNoAddresses) {
		t.Fatalf("error %v, want ErrNoAddresses", err)
	}
}

// TestTimeIsShared: with a deadline, each address of a version gets a
// share of the time left, so a black hole first does not use it all.
func TestTimeIsShared(t *testing.T) {
	f := &fakeDial{ok: map[netip.AddrPort]bool{v4b: true}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*minPerAddress+time.Second)
	defer cancel()
	c, err := Dial(ctx, []netip.AddrPort{v4a, v4b}, f.dial)
	if err != nil {
		t.Fatalf("the second address was not reached before the deadline: %v", err)
	}
	c.Close()
}
