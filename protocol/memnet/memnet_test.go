package memnet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
)

// engineBind repeats protocol.Bind, which this package must not import (the
// engine's tests import memnet); ReceiveFunc there is an alias, so a match
// here means a match there.
type engineBind interface {
	Receivers() []func(bufs [][]byte, sizes []int, eps []netip.AddrPort) (n int, err error)
	Send(bufs [][]byte, ep netip.AddrPort) error
	BatchSize() int
	Close() error
}

var _ engineBind = (*Bind)(nil)

var (
	addrA = netip.MustParseAddrPort("10.0.0.1:51820")
	addrB = netip.MustParseAddrPort("10.0.0.2:51820")
	addrC = netip.MustParseAddrPort("[fd00::3]:51820")
)

var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func listen(t *testing.T, n *Network, addr netip.AddrPort) *Bind {
	t.Helper()
	b, err := n.Listen(addr)
	if err != nil {
		t.Fatalf("Listen(%v): %v", addr, err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// queued reports how many datagrams wait at b, so a test can receive
// exactly that many without risking a receive call that blocks forever.
func queued(b *Bind) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue) - b.head
}

type received struct {
	from    netip.AddrPort
	payload []byte
}

// drain receives everything queued at b, in order, in full batches.
func drain(t *testing.T, b *Bind) []received {
	t.Helper()
	recv := b.Receivers()[0]
	bufs := make([][]byte, b.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, 1500)
	}
	sizes := make([]int, len(bufs))
	eps := make([]netip.AddrPort, len(bufs))
	var out []received
	for queued(b) > 0 {
		k, err := recv(bufs, sizes, eps)
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		for i := range k {
			out = append(out, received{eps[i], bytes.Clone(bufs[i][:sizes[i]])})
		}
	}
	return out
}

func seqPayload(i int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(i)) }

func seqOf(t *testing.T, r received) int {
	t.Helper()
	if len(r.payload) != 4 {
		t.Fatalf("payload %x is not a sequence number", r.payload)
	}
	return int(binary.BigEndian.Uint32(r.payload))
}

// sendSeq sends datagrams first..first+count-1 from a to dst, one per Send
// call so that impairment decisions fall on them one at a time.
func sendSeq(t *testing.T, a *Bind, dst netip.AddrPort, first, count int) {
	t.Helper()
	for i := first; i < first+count; i++ {
		if err := a.Send([][]byte{seqPayload(i)}, dst); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
}

func checkBalance(t *testing.T, s Stats) {
	t.Helper()
	in := s.Sent + s.Injected + s.Duplicated
	out := s.Dropped + s.Delivered + s.DroppedFull + s.DroppedNoRoute
	if in != out {
		t.Errorf("stats do not balance: %+v (in %d, out %d)", s, in, out)
	}
}

func TestDeliveryAndSource(t *testing.T) {
	n := NewNetwork(clock.System{}, 1)
	a, b := listen(t, n, addrA), listen(t, n, addrB)
	if a.LocalAddr() != addrA {
		t.Errorf("LocalAddr = %v, want %v", a.LocalAddr(), addrA)
	}
	if a.BatchSize() < 1 || len(a.Receivers()) != 1 {
		t.Fatalf("BatchSize %d, %d receivers", a.BatchSize(), len(a.Receivers()))
	}

	one, two := []byte("hello"), []byte("world!")
	if err := a.Send([][]byte{one, two, {}}, addrB); err != nil {
		t.Fatal(err)
	}
	// The sender owns its buffers again once Send returns.
	copy(one, "XXXXX")
	copy(two, "YYYYYY")

	got := drain(t, b)
	want := []received{{addrA, []byte("hello")}, {addrA, []byte("world!")}, {addrA, []byte{}}}
	if len(got) != len(want) {
		t.Fatalf("got %d datagrams, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].from != want[i].from || !bytes.Equal(got[i].payload, want[i].payload) {
			t.Errorf("datagram %d = %v %q, want %v %q", i, got[i].from, got[i].payload, want[i].from, want[i].payload)
		}
	}

	// And the other way, over IPv6 for good measure.
	c := listen(t, n, addrC)
	if err := b.Send([][]byte{[]byte("v6")}, addrC); err != nil {
		t.Fatal(err)
	}
	if got := drain(t, c); len(got) != 1 || got[0].from != addrB || string(got[0].payload) != "v6" {
		t.Errorf("got %v", got)
	}
	s := n.Stats()
	if s.Sent != 4 || s.Delivered != 4 {
		t.Errorf("stats %+v", s)
	}
	checkBalance(t, s)
}

func TestReceiveFillsBatchAndDropsOversize(t *testing.T) {
	n := NewNetwork(clock.System{}, 1)
	a, b := listen(t, n, addrA), listen(t, n, addrB)
	a.Send([][]byte{make([]byte, 100), make([]byte, 10), make([]byte, 10), make([]byte, 10)}, addrB)

	bufs := [][]byte{make([]byte, 50), make([]byte, 50)}
	sizes := make([]int, 2)
	eps := make([]netip.AddrPort, 2)
	k, err := b.Receivers()[0](bufs, sizes, eps)
	if err != nil || k != 2 || sizes[0] != 10 || sizes[1] != 10 {
		t.Fatalf("receive = %d, %v, sizes %v", k, err, sizes)
	}
	if q := queued(b); q != 1 {
		t.Errorf("%d datagrams left queued, want 1", q)
	}
	if s := n.Stats(); s.DroppedOversize != 1 {
		t.Errorf("DroppedOversize = %d, want 1", s.DroppedOversize)
	}
}

func TestAddressInUse(t *testing.T) {
	n := NewNetwork(clock.System{}, 1)
	a := listen(t, n, addrA)
	if _, err := n.Listen(addrA); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("second Listen: %v, want EADDRINUSE", err)
	}
	if _, err := n.Listen(netip.AddrPort{}); err == nil {
		t.Error("Listen on the zero AddrPort succeeded")
	}
	if _, err := n.Listen(netip.MustParseAddrPort("10.0.0.1:0")); err == nil {
		t.Error("Listen on port 0 succeeded")
	}
	a.Close()
	listen(t, n, addrA) // Close frees the address.
}

func TestSendToNowhere(t *testing.T) {
	n := NewNetwork(clock.System{}, 1)
	a := listen(t, n, addrA)
	if err := a.Send([][]byte{[]byte("x"), []byte("y")}, addrB); err != nil {
		t.Fatalf("Send to an unbound address: %v", err)
	}
	s := n.Stats()
	if s.DroppedNoRoute != 2 || s.Delivered != 0 {
		t.Errorf("stats %+v", s)
	}
	checkBalance(t, s)
}

// lossPattern sends count datagrams at the given loss rate and reports which
// arrived.
func lossPattern(t *testing.T, seed uint64, loss float64, count int) (s Stats, arrived []int) {
	n := NewNetwork(clock.System{}, seed)
	n.SetImpairment(Impairment{Loss: loss})
	a, b := listen(t, n, addrA), listen(t, n, addrB)
	const chunk = 1000 // below QueueLen, so nothing overflows
	for first := 0; first < count; first += chunk {
		sendSeq(t, a, addrB, first, chunk)
		for _, r := range drain(t, b) {
			arrived = append(arrived, seqOf(t, r))
		}
	}
	return n.Stats(), arrived
}

func TestLoss(t *testing.T) {
	const count, loss = 10000, 0.2
	s, arrived := lossPattern(t, 42, loss, count)
	t.Logf("dropped %d of %d", s.Dropped, s.Sent)
	if s.Sent != count || s.Dropped < 1800 || s.Dropped > 2200 {
		t.Errorf("dropped %d of %d at loss %v", s.Dropped, s.Sent, loss)
	}
	if uint64(len(arrived)) != s.Sent-s.Dropped || s.Delivered != uint64(len(arrived)) {
		t.Errorf("%d arrived, stats %+v", len(arrived), s)
	}
	if !slices.IsSorted(arrived) {
		t.Error("loss alone reordered datagrams")
	}
	checkBalance(t, s)

	_, again := lossPattern(t, 42, loss, count)
	if !slices.Equal(arrived, again) {
		t.Error("the same seed lost different datagrams")
	}
	_, other := lossPattern(t, 43, loss, count)
	if slices.Equal(arrived, other) {
		t.Error("a different seed lost the same datagrams")
	}
}

func TestDuplicate(t *testing.T) {
	const count = 1000
	n := NewNetwork(clock.System{}, 7)
	n.SetImpairment(Impairment{Duplicate: 0.3})
	a, b := listen(t, n, addrA), listen(t, n, addrB)
	sendSeq(t, a, addrB, 0, count)

	seen := make(map[int]int)
	for _, r := range drain(t, b) {
		seen[seqOf(t, r)]++
	}
	twice := 0
	for i := range count {
		switch seen[i] {
		case 1:
		case 2:
			twice++
		default:
			t.Fatalf("datagram %d arrived %d times", i, seen[i])
		}
	}
	s := n.Stats()
	if twice == 0 || uint64(twice) != s.Duplicated || s.Delivered != count+s.Duplicated {
		t.Errorf("%d duplicated, stats %+v", twice, s)
	}
	checkBalance(t, s)
}

func TestReorder(t *testing.T) {
	const count = 1000
	n := NewNetwork(clock.System{}, 9)
	n.SetImpairment(Impairment{Reorder: 0.25})
	a, b := listen(t, n, addrA), listen(t, n, addrB)
	sendSeq(t, a, addrB, 0, count)
	n.Flush() // the last datagram may still be held

	var order []int
	for _, r := range drain(t, b) {
		order = append(order, seqOf(t, r))
	}
	descents := 0
	for i := 1; i < len(order); i++ {
		if order[i] < order[i-1] {
			descents++
		}
	}
	s := n.Stats()
	t.Logf("%d reordered of %d", s.Reordered, count)
	// Each overtaken datagram swaps places with exactly one other.
	if descents == 0 || uint64(descents) != s.Reordered {
		t.Errorf("%d descents, stats %+v", descents, s)
	}
	slices.Sort(order)
	for i, seq := range order {
		if seq != i {
			t.Fatalf("after sorting, position %d holds %d: datagrams lost or duplicated", i, seq)
		}
	}
	if len(order) != count {
		t.Fatalf("%d arrived, want %d", len(order), count)
	}
	checkBalance(t, s)
}

func TestHeldDatagramIsNeverLost(t *testing.T) {
	clk := clock.NewManual(epoch)
	n := NewNetwork(clk, 1)
	n.SetImpairment(Impairment{Reorder: 1})
	a, b := listen(t, n, addrA), listen(t, n, addrB)

	// Overtaken by the next datagram: the pair arrives swapped and the
	// hold timer is cancelled.
	sendSeq(t, a, addrB, 0, 2)
	if got := drain(t, b); len(got) != 2 || seqOf(t, got[0]) != 1 || seqOf(t, got[1]) != 0 {
		t.Fatalf("got %v, want 1 then 0", got)
	}

	// Overtaken by an injected datagram: anything arriving counts.
	sendSeq(t, a, addrB, 2, 1)
	n.Inject(addrC, addrB, seqPayload(99))
	if got := drain(t, b); len(got) != 2 || seqOf(t, got[0]) != 99 || seqOf(t, got[1]) != 2 {
		t.Fatalf("got %v, want 99 then 2", got)
	}

	// Nothing follows: the clock lets it go.
	sendSeq(t, a, addrB, 3, 1)
	if q := queued(b); q != 0 {
		t.Fatalf("%d queued before the hold expired", q)
	}
	clk.Advance(holdSlack)
	if got := drain(t, b); len(got) != 1 || seqOf(t, got[0]) != 3 {
		t.Fatalf("got %v after the hold expired", got)
	}

	// Closing the destination discards what it held.
	sendSeq(t, a, addrB, 4, 1)
	b.Close()
	if p := clk.Pending(); p != 0 {
		t.Errorf("%d timers left armed", p)
	}
	s := n.Stats()
	if s.Reordered != 2 || s.DroppedNoRoute != 1 {
		t.Errorf("stats %+v", s)
	}
	checkBalance(t, s)
}

func TestDelayWithManualClock(t *testing.T) {
	const count = 200
	const delay, jitter = 50 * time.Millisecond, 10 * time.Millisecond
	clk := clock.NewManual(epoch)
	n := NewNetwork(clk, 3)
	n.SetImpairment(Impairment{Delay: delay, Jitter: jitter})
	a, b := listen(t, n, addrA), listen(t, n, addrB)
	sendSeq(t, a, addrB, 0, count)

	if q := queued(b); q != 0 {
		t.Fatalf("%d delivered before the clock moved", q)
	}
	clk.Advance(delay - time.Nanosecond)
	if q := queued(b); q != 0 {
		t.Fatalf("%d delivered before the delay passed", q)
	}
	clk.Advance(jitter / 2)
	early := queued(b)
	clk.Advance(jitter / 2)
	if early == 0 || early == count {
		t.Errorf("%d of %d arrived half way through the jitter; want a spread", early, count)
	}
	if q := queued(b); q != count {
		t.Fatalf("%d of %d delivered after delay+jitter", q, count)
	}
	if p := clk.Pending(); p != 0 {
		t.Errorf("%d timers left armed", p)
	}
	got := drain(t, b)
	order := make([]int, len(got))
	for i, r := range got {
		order[i] = seqOf(t, r)
	}
	if slices.IsSorted(order) {
		t.Error("jitter never reordered anything")
	}
	checkBalance(t, n.Stats())
}

func TestDelayWithSystemClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := NewNetwork(clock.System{}, 3)
		n.SetImpairment(Impairment{Delay: time.Second})
		a, b := listen(t, n, addrA), listen(t, n, addrB)

		start := time.Now()
		sendSeq(t, a, addrB, 0, 1)
		buf := [][]byte{make([]byte, 10)}
		k, err := b.Receivers()[0](buf, make([]int, 1), make([]netip.AddrPort, 1))
		if k != 1 || err != nil {
			t.Fatalf("receive = %d, %v", k, err)
		}
		if elapsed := time.Since(start); elapsed != time.Second {
			t.Errorf("arrived after %v, want 1s", elapsed)
		}
		a.Close()
		b.Close()
	})
}

func TestQueueOverflowDoesNotBlock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := NewNetwork(clock.System{}, 1)
		a, b := listen(t, n, addrA), listen(t, n, addrB)

		// No one receives, so a sender that waited for room would never
		// return.
		const extra = 100
		sendSeq(t, a, addrB, 0, QueueLen+extra)

		s := n.Stats()
		if s.Delivered != QueueLen || s.DroppedFull != extra {
			t.Errorf("stats %+v", s)
		}
		got := drain(t, b)
		if len(got) != QueueLen || seqOf(t, got[0]) != 0 || seqOf(t, got[len(got)-1]) != QueueLen-1 {
			t.Fatalf("received %d, want the first %d", len(got), QueueLen)
		}
		// Room again once drained.
		sendSeq(t, a, addrB, 0, 1)
		if q := queued(b); q != 1 {
			t.Errorf("%d queued after drain and one send", q)
		}
		checkBalance(t, n.Stats())
		a.Close()
		b.Close()
	})
}

func TestCloseUnblocksReceiver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := NewNetwork(clock.System{}, 1)
		a, b := listen(t, n, addrA), listen(t, n, addrB)

		errc := make(chan error, 1)
		go func() {
			buf := [][]byte{make([]byte, 10)}
			_, err := b.Receivers()[0](buf, make([]int, 1), make([]netip.AddrPort, 1))
			errc <- err
		}()
		// Returns only once the receiver is durably blocked, which also
		// shows it sleeps rather than spins.
		synctest.Wait()
		select {
		case err := <-errc:
			t.Fatalf("receive returned %v with nothing sent", err)
		default:
		}

		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; !errors.Is(err, net.ErrClosed) {
			t.Errorf("receive after Close: %v, want net.ErrClosed", err)
		}
		if err := b.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if err := b.Send([][]byte{[]byte("x")}, addrA); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Send after Close: %v", err)
		}
		buf := [][]byte{make([]byte, 10)}
		if _, err := b.Receivers()[0](buf, make([]int, 1), make([]netip.AddrPort, 1)); !errors.Is(err, net.ErrClosed) {
			t.Errorf("receive on a closed Bind: %v", err)
		}
		// Traffic to a closed address goes nowhere.
		a.Send([][]byte{[]byte("x")}, addrB)
		if s := n.Stats(); s.DroppedNoRoute != 1 {
			t.Errorf("stats %+v", s)
		}
		a.Close()
	})
}

func TestInjectSpoofedSource(t *testing.T) {
	n := NewNetwork(clock.System{}, 1)
	n.SetImpairment(Impairment{Loss: 1}) // Inject bypasses it
	b := listen(t, n, addrB)
	var tapped int
	n.SetTap(func(_, _ netip.AddrPort, _ []byte) { tapped++ })

	spoofed := netip.MustParseAddrPort("203.0.113.9:1234")
	payload := []byte("forged")
	n.Inject(spoofed, addrB, payload)
	copy(payload, "XXXXXX")

	got := drain(t, b)
	if len(got) != 1 || got[0].from != spoofed || string(got[0].payload) != "forged" {
		t.Fatalf("got %v", got)
	}
	if tapped != 0 {
		t.Errorf("tap saw %d injected datagrams", tapped)
	}
	n.Inject(spoofed, addrA, payload)
	s := n.Stats()
	if s.Injected != 2 || s.Delivered != 1 || s.DroppedNoRoute != 1 || s.Sent != 0 {
		t.Errorf("stats %+v", s)
	}
	checkBalance(t, s)
}

func TestTapSeesEverySend(t *testing.T) {
	n := NewNetwork(clock.System{}, 1)
	n.SetImpairment(Impairment{Loss: 0.5})
	a, b := listen(t, n, addrA), listen(t, n, addrB)

	type tapped struct {
		from, to netip.AddrPort
		seq      int
	}
	var mu sync.Mutex
	var seen []tapped
	n.SetTap(func(from, to netip.AddrPort, payload []byte) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, tapped{from, to, int(binary.BigEndian.Uint32(payload))})
	})

	const count = 100
	sendSeq(t, a, addrB, 0, count)
	sendSeq(t, b, addrC, count, 1) // nowhere, but still sent
	n.SetTap(nil)
	sendSeq(t, a, addrB, count+1, 1)

	mu.Lock()
	defer mu.Unlock()
	if len(seen) != count+1 {
		t.Fatalf("tap saw %d datagrams, want %d", len(seen), count+1)
	}
	for i, s := range seen[:count] {
		if s != (tapped{addrA, addrB, i}) {
			t.Errorf("tap %d = %+v", i, s)
		}
	}
	if last := seen[count]; last != (tapped{addrB, addrC, count}) {
		t.Errorf("last tap = %+v", last)
	}
	if s := n.Stats(); s.Dropped == 0 {
		t.Errorf("nothing lost at 50%% loss: %+v", s)
	}
}

// TestConcurrentUse is for the race detector: everything at once, then a
// check that nothing went unaccounted.
func TestConcurrentUse(t *testing.T) {
	n := NewNetwork(clock.System{}, 5)
	addrs := []netip.AddrPort{addrA, addrB, addrC}
	binds := make([]*Bind, len(addrs))
	for i, addr := range addrs {
		binds[i] = listen(t, n, addr)
	}

	var receivers sync.WaitGroup
	for _, b := range binds {
		for range 2 { // two goroutines sharing one receive function
			receivers.Go(func() {
				recv := b.Receivers()[0]
				bufs := make([][]byte, b.BatchSize())
				for i := range bufs {
					bufs[i] = make([]byte, 64)
				}
				sizes := make([]int, len(bufs))
				eps := make([]netip.AddrPort, len(bufs))
				for {
					if _, err := recv(bufs, sizes, eps); err != nil {
						if !errors.Is(err, net.ErrClosed) {
							t.Errorf("receive: %v", err)
						}
						return
					}
				}
			})
		}
	}

	var senders sync.WaitGroup
	for i, b := range binds {
		senders.Go(func() {
			for j := range 2000 {
				dst := addrs[(i+1+j%2)%len(addrs)]
				b.Send([][]byte{seqPayload(j), seqPayload(j + 1)}, dst)
			}
		})
	}
	senders.Go(func() {
		for j := range 2000 {
			n.Inject(addrC, addrs[j%len(addrs)], seqPayload(j))
		}
	})
	senders.Go(func() {
		for j := range 200 {
			n.SetImpairment(Impairment{Loss: 0.1, Duplicate: 0.1, Reorder: float64(j%2) * 0.5})
			n.SetTap(func(_, _ netip.AddrPort, p []byte) { _ = p[0] })
			_ = n.Stats()
			n.Flush()
		}
	})
	senders.Wait()
	n.Flush()
	checkBalance(t, n.Stats())

	for _, b := range binds {
		b.Close()
	}
	receivers.Wait()
}
