package wgtest

import (
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// window bounds the datagrams a test has in flight at each hop, so that no
// socket buffer overflows even at the kernel's default size: a test that
// asserts exact counts must not lose datagrams outside the relay.
const window = 64

// waitTimeout bounds every wait; the waits usually take milliseconds.
const waitTimeout = 5 * time.Second

// arrival is one datagram a testPeer received.
type arrival struct {
	seq  uint64
	from netip.AddrPort
	at   time.Time
}

// testPeer is a UDP socket on loopback standing in for side A or B; it
// records everything it receives, on its own goroutine.
type testPeer struct {
	conn *net.UDPConn
	addr netip.AddrPort
	buf  []byte

	mu  sync.Mutex
	got []arrival
}

func newTestPeer(t testing.TB) *testPeer {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadBuffer(1 << 20)
	p := &testPeer{conn: c, addr: c.LocalAddr().(*net.UDPAddr).AddrPort(), buf: make([]byte, 64)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			at := time.Now()
			if n < 8 {
				continue
			}
			p.mu.Lock()
			p.got = append(p.got, arrival{binary.BigEndian.Uint64(buf), from, at})
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	return p
}

// send sends datagram number seq to dst.
func (p *testPeer) send(t testing.TB, dst netip.AddrPort, seq uint64) {
	t.Helper()
	binary.BigEndian.PutUint64(p.buf, seq)
	if _, err := p.conn.WriteToUDPAddrPort(p.buf, dst); err != nil {
		t.Fatal(err)
	}
}

func (p *testPeer) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.got)
}

func (p *testPeer) arrivals() []arrival {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]arrival(nil), p.got...)
}

func newTestRelay(t testing.TB, cfg RelayConfig) *Relay {
	t.Helper()
	r, err := NewRelay(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

// pump sends datagrams first…first+n-1 from src to dst, a socket of r that
// forwards in direction dir to sink, and returns once the relay has read
// them all, sent everything it forwarded and sink has received that. sent,
// if not nil, gets each datagram's send time by number.
func pump(t testing.TB, r *Relay, src *testPeer, dst netip.AddrPort, dir Direction, sink *testPeer, first, n int, sent map[uint64]time.Time) {
	t.Helper()
	base := r.dirStats(dir)
	sinkBase := sink.count()
	st := base
	inFlight := func(i int) bool {
		return i-int(st.Received-base.Received) >= window ||
			int(st.Forwarded-base.Forwarded)-(sink.count()-sinkBase) >= window
	}
	for i := range n {
		if inFlight(i) {
			WaitFor(t, waitTimeout, "the relay to catch up", func() bool {
				st = r.dirStats(dir)
				return !inFlight(i)
			})
		}
		seq := uint64(first + i)
		if sent != nil {
			sent[seq] = time.Now()
		}
		src.send(t, dst, seq)
	}
	WaitFor(t, waitTimeout, "the relay to settle", func() bool {
		st = r.dirStats(dir)
		return st.Received-base.Received == uint64(n) && st.Pending == 0 &&
			int(st.Forwarded-base.Forwarded) == sink.count()-sinkBase
	})
}

func seqs(as []arrival) []uint64 {
	s := make([]uint64, len(as))
	for i, a := range as {
		s[i] = a.seq
	}
	return s
}

func checkInOrder(t *testing.T, got []arrival, first, n int, from netip.AddrPort) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("got %d datagrams, want %d", len(got), n)
	}
	for i, a := range got {
		if a.seq != uint64(first+i) || a.from != from {
			t.Fatalf("datagram %d is number %d from %v, want number %d from %v", i, a.seq, a.from, first+i, from)
		}
	}
}

func TestRelayForwardsBothWays(t *testing.T) {
	a, b := newTestPeer(t), newTestPeer(t)
	r := newTestRelay(t, RelayConfig{B: b.addr, Seed: 1})
	if r.AddrA() == r.AddrB() || r.AddrA().Addr() != netip.MustParseAddr("127.0.0.1") || r.AddrB().Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("AddrA %v, AddrB %v: want two sockets on 127.0.0.1", r.AddrA(), r.AddrB())
	}

	// Before A has sent anything B's datagrams have nowhere to go.
	b.send(t, r.AddrB(), 1<<40)
	WaitFor(t, waitTimeout, "an unroutable datagram", func() bool { return r.Stats().BToA.Unroutable == 1 })
	if _, ok := r.PeerA(); ok {
		t.Fatal("PeerA known before A sent anything")
	}

	const n = 2000
	pump(t, r, a, r.AddrA(), AToB, b, 0, n, nil)
	checkInOrder(t, b.arrivals(), 0, n, r.AddrB())
	if pa, ok := r.PeerA(); !ok || pa != a.addr {
		t.Fatalf("PeerA = %v, %v; want %v", pa, ok, a.addr)
	}

	pump(t, r, b, r.AddrB(), BToA, a, n, n, nil)
	checkInOrder(t, a.arrivals(), n, n, r.AddrA())

	// Like a NAT, the relay sends B's datagrams to where A last sent from.
	a2 := newTestPeer(t)
	pump(t, r, a2, r.AddrA(), AToB, b, 2*n, 10, nil)
	if pa, _ := r.PeerA(); pa != a2.addr {
		t.Fatalf("PeerA = %v after A moved to %v", pa, a2.addr)
	}
	pump(t, r, b, r.AddrB(), BToA, a2, 2*n+10, 10, nil)
	checkInOrder(t, a2.arrivals(), 2*n+10, 10, r.AddrA())

	// Side B accepts datagrams from B only.
	c := newTestPeer(t)
	c.send(t, r.AddrB(), 1<<41)
	WaitFor(t, waitTimeout, "a foreign datagram", func() bool { return r.Stats().B.Foreign == 1 })

	st := r.Stats()
	want := DirectionStats{Received: n + 10, Forwarded: n + 10}
	if st.AToB != want {
		t.Errorf("A→B stats %+v, want %+v", st.AToB, want)
	}
	want = DirectionStats{Received: n + 11, Forwarded: n + 10, Unroutable: 1}
	if st.BToA != want {
		t.Errorf("B→A stats %+v, want %+v", st.BToA, want)
	}
	if a.count() != n {
		t.Errorf("A got %d datagrams, want %d", a.count(), n)
	}
	if len(st.Sockets) != 2 || st.A.Generations != 1 || st.B.Generations != 1 || st.A.Stale+st.B.Stale != 0 {
		t.Errorf("sockets %+v, sides %+v %+v", st.Sockets, st.A, st.B)
	}
}

// lostSeqs pumps n datagrams A→B through a relay with the given loss and
// returns the relay and which datagrams B did not get.
func lostSeqs(t *testing.T, seed uint64, loss float64, n int) (*Relay, map[uint64]bool) {
	a, b := newTestPeer(t), newTestPeer(t)
	r := newTestRelay(t, RelayConfig{B: b.addr, Seed: seed, AToB: Impairment{Loss: loss}})
	pump(t, r, a, r.AddrA(), AToB, b, 0, n, nil)
	lost := make(map[uint64]bool)
	for i := range n {
		lost[uint64(i)] = true
	}
	prev := -1
	for _, a := range b.arrivals() {
		if int(a.seq) <= prev {
			t.Fatalf("loss alone reordered: %d after %d", a.seq, prev)
		}
		prev = int(a.seq)
		delete(lost, a.seq)
	}
	return r, lost
}

func TestRelayLoss(t *testing.T) {
	const n = 20000
	r, lost := lostSeqs(t, 7, 0.1, n)
	st := r.Stats()
	if st.AToB.DroppedLoss != uint64(len(lost)) || st.AToB.Forwarded != n-uint64(len(lost)) {
		t.Fatalf("%d lost, stats %+v", len(lost), st.AToB)
	}
	if len(lost) < 1500 || len(lost) > 2500 {
		t.Fatalf("%d of %d lost at 10%% loss", len(lost), n)
	}

	// The other direction is not impaired.
	a, b := newTestPeer(t), newTestPeer(t)
	r2 := newTestRelay(t, RelayConfig{B: b.addr, Seed: 7, AToB: Impairment{Loss: 0.5}})
	pump(t, r2, a, r2.AddrA(), AToB, b, 0, 10, nil)
	pump(t, r2, b, r2.AddrB(), BToA, a, 0, 500, nil)
	if got := r2.Stats().BToA; got.DroppedLoss != 0 || got.Forwarded != 500 {
		t.Fatalf("B→A stats %+v with only A→B impaired", got)
	}

	// The same seed loses the same datagrams; another seed others.
	_, again := lostSeqs(t, 7, 0.1, 2000)
	_, other := lostSeqs(t, 8, 0.1, 2000)
	same := true
	for i := range uint64(2000) {
		if again[i] != lost[i] {
			t.Fatalf("datagram %d: lost %v with seed 7 once, %v the second time", i, lost[i], again[i])
		}
		same = same && other[i] == lost[i]
	}
	if same {
		t.Fatal("seeds 7 and 8 lost the same datagrams")
	}
}

func TestRelayDuplicate(t *testing.T) {
	a, b := newTestPeer(t), newTestPeer(t)
	r := newTestRelay(t, RelayConfig{B: b.addr, Seed: 3, AToB: Impairment{Duplicate: 0.2}})
	const n = 5000
	pump(t, r, a, r.AddrA(), AToB, b, 0, n, nil)
	st := r.Stats().AToB
	if st.Duplicated < 700 || st.Duplicated > 1300 {
		t.Fatalf("%d of %d duplicated at 20%%", st.Duplicated, n)
	}
	seen := make(map[uint64]int)
	for _, a := range b.arrivals() {
		seen[a.seq]++
	}
	twice := 0
	for i := range uint64(n) {
		switch seen[i] {
		case 1:
		case 2:
			twice++
		default:
			t.Fatalf("datagram %d arrived %d times", i, seen[i])
		}
	}
	if uint64(twice) != st.Duplicated || st.Forwarded != n+st.Duplicated {
		t.Fatalf("%d arrived twice; stats %+v", twice, st)
	}
}

func TestRelayReorder(t *testing.T) {
	a, b := newTestPeer(t), newTestPeer(t)
	// A long hold, so that it is always the next datagram that releases the
	// held one, and each reordering shows as two swapped neighbours.
	r := newTestRelay(t, RelayConfig{B: b.addr, Seed: 5, AToB: Impairment{Reorder: 0.1, ReorderHold: 200 * time.Millisecond}})
	const n = 5000
	pump(t, r, a, r.AddrA(), AToB, b, 0, n, nil)
	st := r.Stats().AToB
	if st.Reordered < 350 || st.Reordered > 650 {
		t.Fatalf("%d of %d reordered at 10%%", st.Reordered, n)
	}
	got := seqs(b.arrivals())
	if len(got) != n || st.Forwarded != n {
		t.Fatalf("got %d datagrams, want %d; stats %+v", len(got), n, st)
	}
	swaps := 0
	seen := make(map[uint64]bool)
	for i, s := range got {
		if seen[s] {
			t.Fatalf("datagram %d twice", s)
		}
		seen[s] = true
		if i > 0 && s < got[i-1] {
			if s+1 != got[i-1] {
				t.Fatalf("datagram %d came after %d: held back by more than one", s, got[i-1])
			}
			swaps++
		}
	}
	// The last one held may have gone out alone, when its hold ran out.
	if uint64(swaps) != st.Reordered && uint64(swaps)+1 != st.Reordered {
		t.Fatalf("%d swapped pairs, %d reordered", swaps, st.Reordered)
	}
}

// With a delay the held datagram goes into the queue behind the one that
// overtakes it, rather than out of the reader.
func TestRelayReorderDelayed(t *testing.T) {
	a, b := newTestPeer(t), newTestPeer(t)
	im := Impairment{Reorder: 0.2, ReorderHold: 200 * time.Millisecond, Delay: time.Millisecond}
	r := newTestRelay(t, RelayConfig{B: b.addr, Seed: 6, AToB: im})
	const n = 2000
	pump(t, r, a, r.AddrA(), AToB, b, 0, n, nil)
	st := r.Stats().AToB
	got := seqs(b.arrivals())
	if len(got) != n || st.Forwarded != n || st.Reordered+st.Delayed != n {
		t.Fatalf("got %d datagrams, want %d; stats %+v", len(got), n, st)
	}
	swaps := 0
	for i := 1; i < len(got); i++ {
		if got[i] < got[i-1] {
			if got[i]+1 != got[i-1] {
				t.Fatalf("datagram %d came after %d", got[i], got[i-1])
			}
			swaps++
		}
	}
	if st.Reordered < 250 || uint64(swaps)+1 < st.Reordered {
		t.Fatalf("%d swapped pairs, %d reordered of %d at 20%%", swaps, st.Reordered, n)
	}
}

func TestRelayAdmits(t *testing.T) {
	r := &Relay{b: netip.MustParseAddrPort("127.0.0.1:51820")}
	for _, c := range []struct {
		side Side
		src  string
		ok   bool
	}{
		{SideB, "127.0.0.1:51820", true},
		{SideB, "127.0.0.1:51821", false},
		{SideB, "127.0.0.2:51820", false},
		{SideA, "127.0.0.1:40000", true},
		{SideA, "127.1.2.3:40000", true},
		{SideA, "10.0.0.1:40000", false},
		{SideA, "[::1]:40000", false},
		{SideA, "127.0.0.1:0", false},
	} {
		if got := r.admits(c.side, netip.MustParseAddrPort(c.src)); got != c.ok {
			t.Errorf("side %v admits %s: %v, want %v", c.side, c.src, got, c.ok)
		}
	}
}

func TestSampleDelay(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	im := Impairment{Delay: 2 * time.Millisecond, Jitter: time.Millisecond}
	lo, hi, sum := time.Hour, time.Duration(0), time.Duration(0)
	const n = 10000
	for range n {
		d := sampleDelay(rng, im)
		lo, hi, sum = min(lo, d), max(hi, d), sum+d
	}
	if lo < time.Millisecond || hi > 3*time.Millisecond {
		t.Fatalf("delays in [%v, %v], want within [1ms, 3ms]", lo, hi)
	}
	if lo > 1100*time.Microsecond || hi < 2900*time.Microsecond {
		t.Fatalf("delays in [%v, %v], want them to fill [1ms, 3ms]", lo, hi)
	}
	if mean := sum / n; mean < 1950*time.Microsecond || mean > 2050*time.Microsecond {
		t.Fatalf("mean delay %v, want 2ms", mean)
	}
	zeros := 0
	for range 1000 {
		d := sampleDelay(rng, Impairment{Delay: time.Millisecond, Jitter: 3 * time.Millisecond})
		if d < 0 {
			t.Fatalf("negative delay %v", d)
		}
		if d == 0 {
			zeros++
		}
	}
	if zeros == 0 {
		t.Fatal("no delay clamped to zero with jitter above delay")
	}
}

func TestRelayDelayJitter(t *testing.T) {
	a, b := newTestPeer(t), newTestPeer(t)
	const delay, jitter = 10 * time.Millisecond, 5 * time.Millisecond
	r := newTestRelay(t, RelayConfig{B: b.addr, Seed: 9, AToB: Impairment{Delay: delay, Jitter: jitter}})
	const n = 300
	sent := make(map[uint64]time.Time, n)
	pump(t, r, a, r.AddrA(), AToB, b, 0, n, sent)
	got := b.arrivals()
	if len(got) != n || r.Stats().AToB.Delayed != n {
		t.Fatalf("got %d datagrams, want %d; stats %+v", len(got), n, r.Stats().AToB)
	}
	// The machine is noisy: only the lower bound is exact.
	const slack = 500 * time.Millisecond
	early := 0
	lo, hi := time.Duration(math.MaxInt64), time.Duration(0)
	for _, a := range got {
		d := a.at.Sub(sent[a.seq])
		if d < delay-jitter || d > delay+jitter+slack {
			t.Fatalf("datagram %d took %v, want [%v, %v]", a.seq, d, delay-jitter, delay+jitter+slack)
		}
		if d < delay {
			early++
		}
		lo, hi = min(lo, d), max(hi, d)
	}
	// Jitter spreads the delays over twice its width; without it they
	// would bunch within a fraction of it. A loaded machine only adds to
	// each delay, so the spread is checked, not how many came early,
	// which a busy CI host can make none.
	if hi-lo < jitter {
		t.Fatalf("delays within [%v, %v] with ±%v jitter, want them spread over at least %v", lo, hi, jitter, jitter)
	}
	t.Logf("delays within [%v, %v]; %d of %d faster than %v", lo, hi, early, n, delay)

	// B→A is not delayed.
	pump(t, r, b, r.AddrB(), BToA, a, 0, 10, nil)
	if st := r.Stats().BToA; st.Delayed != 0 || st.Forwarded != 10 {
		t.Fatalf("B→A stats %+v with only A→B delayed", st)
	}
}

// A delay must not hold up the reader: at 2 ms ± 1 ms a reader that waited
// out each datagram's delay would manage 500 datagrams a second.
func TestRelayDelayKeepsRate(t *testing.T) {
	a, b := newTestPeer(t), newTestPeer(t)
	im := Impairment{Delay: 2 * time.Millisecond, Jitter: time.Millisecond}
	r := newTestRelay(t, RelayConfig{B: b.addr, Seed: 11, AToB: im, BToA: im})
	const n = 5000
	start := time.Now()
	pump(t, r, a, r.AddrA(), AToB, b, 0, n, nil)
	elapsed := time.Since(start)
	if st := r.Stats().AToB; st.Delayed != n || b.count() != n {
		t.Fatalf("B got %d of %d; stats %+v", b.count(), n, st)
	}
	t.Logf("%d delayed datagrams in %v: %.0f/s", n, elapsed, n/elapsed.Seconds())
	if elapsed > 3*time.Second {
		t.Fatalf("%d datagrams delayed by 2ms±1ms took %v", n, elapsed)
	}
	pump(t, r, b, r.AddrB(), BToA, a, 0, 500, nil)
}

// TestRelayFirstAfterBlackout: the relay tells what came first through
// it after a blackout, for a test that must know whether a peer's
// silence ended with data or with a keepalive.
func TestRelayFirstAfterBlackout(t *testing.T) {
	a, b := newTestPeer(t), newTestPeer(t)
	r := newTestRelay(t, RelayConfig{B: b.addr, Seed: 1})
	pump(t, r, a, r.AddrA(), AToB, b, 0, 1, nil) // B→A needs A's address
	message := func(typ byte, n int) []byte {
		m := make([]byte, n)
		m[0] = typ
		return m
	}
	keepalive, data := message(4, 32), message(4, 96)
	through := func(msgs ...[]byte) Datagram {
		t.Helper()
		r.SetBlackout(true)
		base := r.Stats().BToA
		if _, err := b.conn.WriteToUDPAddrPort(message(1, 148), r.AddrB()); err != nil {
			t.Fatal(err)
		}
		WaitFor(t, waitTimeout, "the blackout to drop", func() bool { return r.Stats().BToA.DroppedBlackout == base.DroppedBlackout+1 })
		if got := r.Stats().BToA.FirstAfterBlackout; got != (Datagram{}) {
			t.Fatalf("nothing sent since the blackout dropped one, yet %+v", got)
		}
		r.SetBlackout(false)
		for _, m := range msgs {
			if _, err := b.conn.WriteToUDPAddrPort(m, r.AddrB()); err != nil {
				t.Fatal(err)
			}
		}
		WaitFor(t, waitTimeout, "the relay to forward", func() bool {
			return r.Stats().BToA.Forwarded == base.Forwarded+uint64(len(msgs))
		})
		return r.Stats().BToA.FirstAfterBlackout
	}
	if got := r.Stats().BToA.FirstAfterBlackout; got != (Datagram{}) {
		t.Fatalf("before any blackout: %+v", got)
	}
	if got := through(keepalive, data); got != (Datagram{Type: 4, Len: 32}) || got.Data() {
		t.Fatalf("keepalive first: %+v, data %v", got, got.Data())
	}
	if got := through(data, keepalive); got != (Datagram{Type: 4, Len: 96}) || !got.Data() {
		t.Fatalf("data first: %+v, data %v", got, got.Data())
	}
}

func TestRelayBlackout(t *testing.T) {
	a, b := newTestPeer(t), newTestPeer(t)
	r := newTestRelay(t, RelayConfig{B: b.addr, Seed: 1})
	pump(t, r, a, r.AddrA(), AToB, b, 0, 100, nil)
	pump(t, r, b, r.AddrB(), BToA, a, 0, 100, nil)

	r.SetBlackout(true)
	for i := range uint64(50) {
		a.send(t, r.AddrA(), 100+i)
		b.send(t, r.AddrB(), 100+i)
	}
	WaitFor(t, waitTimeout, "the blackout to drop both ways", func() bool {
		st := r.Stats()
		return st.AToB.DroppedBlackout == 50 && st.BToA.DroppedBlackout == 50
	})
	if a.count() != 100 || b.count() != 100 {
		t.Fatalf("A got %d, B got %d during a blackout", a.count()-100, b.count()-100)
	}
	r.SetBlackout(false)
	pump(t, r, a, r.AddrA(), AToB, b, 150, 100, nil)
	pump(t, r, b, r.AddrB(), BToA, a, 150, 100, nil)

	// A timed blackout returns at once and ends by itself.
	const d = 500 * time.Millisecond
	start := time.Now()
	r.Blackout(d)
	if took := time.Since(start); took > d/2 {
		t.Fatalf("Blackout took %v", took)
	}
	base := r.Stats().AToB
	for i := range uint64(20) {
		a.send(t, r.AddrA(), 250+i)
	}
	WaitFor(t, waitTimeout, "the relay to read", func() bool { return r.Stats().AToB.Received == base.Received+20 })
	if time.Since(start) < d {
		if st := r.Stats().AToB; st.DroppedBlackout != base.DroppedBlackout+20 || st.Forwarded != base.Forwarded {
			t.Fatalf("stats %+v in a blackout, %+v before it", st, base)
		}
	}
	time.Sleep(time.Until(start.Add(d)))
	pump(t, r, a, r.AddrA(), AToB, b, 270, 100, nil)

	// Datagrams waiting for their delay are dropped if due in a blackout.
	if err := r.SetImpairment(AToB, Impairment{Delay: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	base = r.Stats().AToB
	had := b.count()
	for i := range uint64(20) {
		a.send(t, r.AddrA(), 370+i)
	}
	WaitFor(t, waitTimeout, "the relay to queue", func() bool { return r.Stats().AToB.Pending == 20 })
	r.SetBlackout(true)
	WaitFor(t, waitTimeout, "the delayed datagrams to come due", func() bool {
		st := r.Stats().AToB
		return st.Received == base.Received+20 && st.Pending == 0
	})
	if st := r.Stats().AToB; st.Delayed != base.Delayed+20 || st.DroppedBlackout != base.DroppedBlackout+20 || st.Forwarded != base.Forwarded || b.count() != had {
		t.Fatalf("B got %d; stats %+v, before %+v", b.count()-had, st, base)
	}
}

func TestRelayRebind(t *testing.T) {
	a, b := newTestPeer(t), newTestPeer(t)
	r := newTestRelay(t, RelayConfig{B: b.addr, Seed: 1})
	oldB, addrA := r.AddrB(), r.AddrA()
	pump(t, r, a, addrA, AToB, b, 0, 10, nil)
	pump(t, r, b, oldB, BToA, a, 0, 10, nil)

	if err := r.Rebind(); err != nil {
		t.Fatal(err)
	}
	newB := r.AddrB()
	if newB == oldB || newB.Addr() != oldB.Addr() || r.AddrA() != addrA {
		t.Fatalf("after Rebind AddrB %v (was %v), AddrA %v (was %v)", newB, oldB, r.AddrA(), addrA)
	}
	// B sees A's datagrams come from the new port.
	pump(t, r, a, addrA, AToB, b, 10, 10, nil)
	checkInOrder(t, b.arrivals()[10:], 10, 10, newB)

	// What B sends to the old port is counted, not forwarded: first before
	// anything reached the new one, then after.
	for i := range uint64(5) {
		b.send(t, oldB, 100+i)
	}
	WaitFor(t, waitTimeout, "stale datagrams", func() bool { return r.Stats().B.Stale == 5 })
	pump(t, r, b, newB, BToA, a, 10, 10, nil)
	for i := range uint64(3) {
		b.send(t, oldB, 200+i)
	}
	WaitFor(t, waitTimeout, "stale datagrams", func() bool { return r.Stats().B.Stale == 8 })
	checkInOrder(t, a.arrivals(), 0, 20, addrA)

	st := r.Stats()
	if st.B.Generations != 2 || st.B.StaleAfterNew != 3 || st.A.Generations != 1 || st.A.Stale != 0 {
		t.Fatalf("side stats A %+v, B %+v", st.A, st.B)
	}
	if st.BToA.Received != 20 || st.BToA.Forwarded != 20 {
		t.Fatalf("B→A stats %+v", st.BToA)
	}
	var old, cur SocketStats
	for _, s := range st.Sockets {
		if s.Side == SideB && s.Gen == 0 {
			old = s
		}
		if s.Side == SideB && s.Gen == 1 {
			cur = s
		}
	}
	if old.Addr != oldB || old.Current || old.Arrivals != 18 || old.Stale != 8 || old.StaleAfterNew != 3 || old.Replaced.IsZero() {
		t.Fatalf("old socket %+v", old)
	}
	if cur.Addr != newB || !cur.Current || cur.Arrivals != 10 || cur.Stale != 0 || cur.FirstArrival.Before(old.Replaced) {
		t.Fatalf("new socket %+v", cur)
	}
	if !st.B.LastStale.After(cur.FirstArrival) {
		t.Fatalf("last stale arrival %v, first on the new socket %v", st.B.LastStale, cur.FirstArrival)
	}
}

func TestRelayRebindA(t *testing.T) {
	a, b := newTestPeer(t), newTestPeer(t)
	r := newTestRelay(t, RelayConfig{B: b.addr, Seed: 1})
	oldA, addrB := r.AddrA(), r.AddrB()
	pump(t, r, a, oldA, AToB, b, 0, 10, nil)
	pump(t, r, b, addrB, BToA, a, 0, 10, nil)

	if err := r.RebindA(); err != nil {
		t.Fatal(err)
	}
	newA := r.AddrA()
	if newA == oldA || r.AddrB() != addrB {
		t.Fatalf("after RebindA AddrA %v (was %v), AddrB %v (was %v)", newA, oldA, r.AddrB(), addrB)
	}
	// A sees B's datagrams come from the new port.
	pump(t, r, b, addrB, BToA, a, 10, 10, nil)
	checkInOrder(t, a.arrivals()[10:], 10, 10, newA)

	for i := range uint64(4) {
		a.send(t, oldA, 100+i)
	}
	WaitFor(t, waitTimeout, "stale datagrams", func() bool { return r.Stats().A.Stale == 4 })
	pump(t, r, a, newA, AToB, b, 10, 10, nil)
	for i := range uint64(2) {
		a.send(t, oldA, 200+i)
	}
	WaitFor(t, waitTimeout, "stale datagrams", func() bool { return r.Stats().A.Stale == 6 })
	checkInOrder(t, b.arrivals(), 0, 20, addrB)

	st := r.Stats()
	if st.A.Generations != 2 || st.A.StaleAfterNew != 2 || st.B.Generations != 1 || st.B.Stale != 0 {
		t.Fatalf("side stats A %+v, B %+v", st.A, st.B)
	}
	if st.AToB.Received != 20 || st.AToB.Forwarded != 20 {
		t.Fatalf("A→B stats %+v", st.AToB)
	}
}

func TestRelayCloseStopsEverything(t *testing.T) {
	a, b := newTestPeer(t), newTestPeer(t)
	before := runtime.NumGoroutine()

	im := Impairment{Delay: time.Second, Reorder: 0.5}
	r, err := NewRelay(RelayConfig{B: b.addr, Seed: 1, AToB: im, BToA: im})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Rebind(); err != nil {
		t.Fatal(err)
	}
	if err := r.RebindA(); err != nil {
		t.Fatal(err)
	}
	for i := range uint64(20) {
		a.send(t, r.AddrA(), i)
	}
	WaitFor(t, waitTimeout, "datagrams to wait in the relay", func() bool { return r.Stats().AToB.Pending == 20 })
	for i := range uint64(20) {
		b.send(t, r.AddrB(), i)
	}
	WaitFor(t, waitTimeout, "datagrams to wait in the relay", func() bool { return r.Stats().BToA.Pending == 20 })

	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := r.Rebind(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Rebind after Close: %v", err)
	}
	for deadline := time.Now().Add(waitTimeout); runtime.NumGoroutine() > before; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before the relay, %d after Close:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
	}
	if st := r.Stats(); st.AToB.Pending != 0 || st.BToA.Pending != 0 {
		t.Fatalf("datagrams still pending after Close: %+v", st)
	}
}

func TestNewRelayChecksConfig(t *testing.T) {
	b := netip.MustParseAddrPort("127.0.0.1:51820")
	for _, cfg := range []RelayConfig{
		{B: netip.MustParseAddrPort("10.1.2.3:51820")},
		{B: netip.MustParseAddrPort("[::1]:51820")},
		{B: netip.MustParseAddrPort("127.0.0.1:0")},
		{},
		{B: b, AToB: Impairment{Loss: 1.5}},
		{B: b, BToA: Impairment{Delay: -time.Millisecond}},
	} {
		if r, err := NewRelay(cfg); err == nil {
			r.Close()
			t.Errorf("NewRelay(%+v) succeeded", cfg)
		}
	}
	r := newTestRelay(t, RelayConfig{B: b})
	if err := r.SetImpairment(AToB, Impairment{Duplicate: -0.1}); err == nil {
		t.Error("SetImpairment took a negative probability")
	}
	if err := r.SetImpairment(Direction(2), Impairment{}); err == nil {
		t.Error("SetImpairment took direction 2")
	}
	im := Impairment{Loss: 0.25, Delay: time.Millisecond}
	if err := r.SetImpairment(BToA, im); err != nil || r.Impairment(BToA) != im || r.Impairment(AToB) != (Impairment{}) {
		t.Errorf("SetImpairment(B→A, %+v): %v; now A→B %+v, B→A %+v", im, err, r.Impairment(AToB), r.Impairment(BToA))
	}
}

// BenchmarkRelayForward measures unimpaired forwarding, A→B, in datagrams a
// second, with a bounded number in flight so that no socket overflows.
func BenchmarkRelayForward(b *testing.B) {
	newConn := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		_ = c.SetReadBuffer(1 << 20)
		b.Cleanup(func() { c.Close() })
		return c
	}
	src, sink := newConn(), newConn()
	r, err := NewRelay(RelayConfig{B: sink.LocalAddr().(*net.UDPAddr).AddrPort()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })

	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			if _, _, err := sink.ReadFromUDPAddrPort(buf); err != nil {
				return
			}
			got.Add(1)
		}
	}()
	b.Cleanup(func() {
		sink.Close()
		<-done
	})

	payload := make([]byte, 128)
	dst := r.AddrA()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := range int64(b.N) {
		for stalled := time.Now(); i-got.Load() >= window; runtime.Gosched() {
			if time.Since(stalled) > waitTimeout {
				b.Fatalf("stalled at %d sent, %d received", i, got.Load())
			}
		}
		if _, err := src.WriteToUDPAddrPort(payload, dst); err != nil {
			b.Fatal(err)
		}
	}
	for stalled := time.Now(); got.Load() < int64(b.N); runtime.Gosched() {
		if time.Since(stalled) > waitTimeout {
			b.Fatalf("stalled at %d received of %d", got.Load(), b.N)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "datagrams/s")
}
