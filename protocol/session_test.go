package protocol

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/memnet"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// wireLedger watches the network from outside the engines: it learns the
// session indices from handshake responses and checks every transport
// message against the age of the session it names.
type wireLedger struct {
	clk *clock.Manual
	mu  sync.Mutex
	// born maps a receiver index to when its session's response crossed
	// the wire.
	born       map[uint32]time.Time
	transports int
	unknown    int
	tooOld     int
	oldest     time.Duration
	captured   [][]byte // a few transport messages, for replay attacks
}

func newWireLedger(clk *clock.Manual) *wireLedger {
	return &wireLedger{clk: clk, born: make(map[uint32]time.Time)}
}

func (l *wireLedger) tap(from, to netip.AddrPort, b []byte) {
	if len(b) < 4 {
		return
	}
	now := l.clk.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	switch b[0] {
	case MessageResponseType:
		if len(b) == MessageResponseSize {
			l.born[binary.LittleEndian.Uint32(b[4:])] = now // responder's index
			l.born[binary.LittleEndian.Uint32(b[8:])] = now // initiator's index
		}
	case MessageTransportType:
		l.transports++
		if len(l.captured) < 64 && len(b) > MessageKeepaliveSize {
			l.captured = append(l.captured, append([]byte(nil), b...))
		}
		idx := binary.LittleEndian.Uint32(b[4:])
		born, ok := l.born[idx]
		if !ok {
			l.unknown++
			return
		}
		age := now.Sub(born)
		if age > l.oldest {
			l.oldest = age
		}
		if age >= RejectAfterTime {
			l.tooOld++
		}
	}
}

// TestDayOfRekeys runs 24 hours of protocol time, a packet each way every
// second, on the Manual clock.
func TestDayOfRekeys(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the day-long session takes tens of seconds under -race; run without -short")
	}
	const seconds = 24 * 60 * 60
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 7)
	ledger := newWireLedger(clk)
	net.SetTap(ledger.tap)
	a := newMemNode(t, net, clk, "127.0.0.1:2001", "10.0.0.1", nil)
	b := newMemNode(t, net, clk, "127.0.0.1:2002", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})

	var heapAfterHour uint64
	var heapSamples []uint64 // every 4 hours, to tell a leak from warm-up
	var maxIndices int
	payload := make([]byte, 64)
	for i := range seconds {
		clk.Advance(time.Second)
		binary.BigEndian.PutUint64(payload, uint64(i))
		p := ipPacket(a.addr, b.addr, payload)
		a.e.WritePackets([][]byte{p})
		if !b.sink.wait(p, 10*time.Second) {
			sa, _ := a.e.Peer(b.key.PublicKey())
			t.Fatalf("a→b packet at %v not delivered; a's view: %+v; drops a %v b %v; net %+v", clk.Now().Sub(testEpoch), sa, a.e.Stats().Drops, b.e.Stats().Drops, net.Stats())
		}
		q := ipPacket(b.addr, a.addr, payload)
		b.e.WritePackets([][]byte{q})
		a.sink.expect(t, q)
		if !settle(5*time.Second, a, b) {
			t.Fatalf("handshake still unanswered after 5s of real time at %v", clk.Now().Sub(testEpoch))
		}
		if n := max(a.e.indices.len(), b.e.indices.len()); n > maxIndices {
			maxIndices = n
		}
		if i == 3600 {
			heapAfterHour = wgtest.HeapInUse()
		}
		if i%(4*3600) == 0 {
			heapSamples = append(heapSamples, wgtest.HeapInUse())
		}
	}
	heapAfterDay := wgtest.HeapInUse()
	t.Logf("heap every 4 hours: %v", heapSamples)

	sa, _ := a.e.Peer(b.key.PublicKey())
	sb, _ := b.e.Peer(a.key.PublicKey())
	rekeys := sa.HandshakesCompleted + sb.HandshakesCompleted
	t.Logf("%d handshakes in 24h (a: %d, b: %d); oldest session used: %v; %d transport messages; index table max %d; heap %d → %d bytes",
		rekeys, sa.HandshakesCompleted, sb.HandshakesCompleted, ledger.oldest, ledger.transports, maxIndices, heapAfterHour, heapAfterDay)

	// A rekey about every RekeyAfterTime: 720 in a day, give or take the
	// seconds a handshake takes to be confirmed.
	want := seconds / int(RekeyAfterTime/time.Second)
	if sa.HandshakesCompleted < uint64(want)*9/10 || sa.HandshakesCompleted > uint64(want)*11/10 {
		t.Errorf("initiator completed %d handshakes, want about %d", sa.HandshakesCompleted, want)
	}
	if sb.HandshakesCompleted < uint64(want)*9/10 || sb.HandshakesCompleted > uint64(want)*11/10 {
		t.Errorf("responder confirmed %d sessions, want about %d", sb.HandshakesCompleted, want)
	}
	if ledger.unknown != 0 || ledger.tooOld != 0 {
		t.Errorf("%d transport messages on unknown sessions, %d on sessions older than RejectAfterTime", ledger.unknown, ledger.tooOld)
	}
	if ledger.oldest > RekeyAfterTime+10*time.Second {
		t.Errorf("a session was used %v after it was made; rekey should replace it soon after %v", ledger.oldest, RekeyAfterTime)
	}
	// Three sessions and one handshake per side at most.
	if maxIndices > 4 {
		t.Errorf("index table grew to %d entries", maxIndices)
	}
	if grow := int64(heapAfterDay) - int64(heapAfterHour); grow > 1<<20 {
		t.Errorf("heap grew by %d bytes between hour 1 and hour 24", grow)
	}
	for _, n := range []*testNode{a, b} {
		if s := n.e.Stats(); len(s.Drops) != 0 {
			t.Errorf("drops on a clean network: %v", s.Drops)
		}
	}
}

// TestLossyNetwork runs a session through 20% loss with reordering and
// duplication, then replays captured messages: handshakes must still
// complete, nothing may be delivered twice, and every replay is refused.
func TestLossyNetwork(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 11)
	ledger := newWireLedger(clk)
	net.SetTap(ledger.tap)
	net.SetImpairment(memnet.Impairment{Loss: 0.2, Reorder: 0.1, Duplicate: 0.1})
	a := newMemNode(t, net, clk, "127.0.0.1:3001", "10.0.0.1", nil)
	b := newMemNode(t, net, clk, "127.0.0.1:3002", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})

	const steps = 1200 // 20 minutes of protocol time: ten rekeys
	seen := map[string]int{}
	collect := func(s *sink, wait time.Duration) {
		deadline := time.After(wait)
		for {
			select {
			case p := <-s.ch:
				seen[string(p)]++
			case <-deadline:
				return
			}
		}
	}
	sent := 0
	for i := range steps {
		clk.Advance(time.Second)
		net.Flush()
		for j := range 3 {
			p := ipPacket(a.addr, b.addr, fmt.Appendf(nil, "a→b %d/%d", i, j))
			a.e.WritePackets([][]byte{p})
			q := ipPacket(b.addr, a.addr, fmt.Appendf(nil, "b→a %d/%d", i, j))
			b.e.WritePackets([][]byte{q})
			sent += 2
		}
		// A lost handshake message waits for its retransmission timer,
		// so settle only briefly.
		settle(2*time.Millisecond, a, b)
		collect(a.sink, 0)
		collect(b.sink, 0)
		if i%50 == 0 {
			collect(a.sink, 2*time.Millisecond)
			collect(b.sink, 2*time.Millisecond)
		}
	}
	// Stop impairing before releasing what the network holds, so nothing
	// sent from here on is held back or duplicated.
	net.SetImpairment(memnet.Impairment{})
	net.Flush()
	collect(a.sink, 200*time.Millisecond)
	collect(b.sink, 10*time.Millisecond)

	for p, n := range seen {
		if n != 1 {
			t.Fatalf("packet %q delivered %d times", p[20:], n)
		}
	}
	sa, _ := a.e.Peer(b.key.PublicKey())
	if sa.HandshakesCompleted < 5 {
		t.Errorf("only %d handshakes completed through the lossy network", sa.HandshakesCompleted)
	}
	if len(seen) < sent/2 {
		t.Errorf("only %d of %d packets delivered through 20%% loss", len(seen), sent)
	}
	dupReplays := a.e.Stats().Dropped(DropReplay) + b.e.Stats().Dropped(DropReplay)
	if net.Stats().Duplicated == 0 || dupReplays == 0 {
		t.Errorf("duplication not exercised: %d duplicated, %d rejected as replays", net.Stats().Duplicated, dupReplays)
	}
	t.Logf("delivered %d of %d, %d handshakes, %d duplicates rejected as replays, network %+v",
		len(seen), sent, sa.HandshakesCompleted, dupReplays, net.Stats())

	// An attacker replays captured transport messages that are still on
	// a live session. Each must be refused as a replay; none delivered.
	// Messages from the current session, captured on the wire.
	fresh := newWireLedger(clk)
	net.SetTap(fresh.tap)
	for i := range 10 {
		p := ipPacket(a.addr, b.addr, fmt.Appendf(nil, "replayable %d", i))
		a.e.WritePackets([][]byte{p})
		// Packets staged during the lossy phase may still arrive first;
		// they count toward the no-duplicates check.
		for {
			select {
			case got := <-b.sink.ch:
				seen[string(got)]++
				if seen[string(got)] > 1 {
					t.Fatalf("packet %q delivered twice", got[20:])
				}
				if string(got) != string(p) {
					continue
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("packet %d not delivered after impairment stopped", i)
			}
			break
		}
	}
	net.SetTap(nil)
	fresh.mu.Lock()
	replays := fresh.captured
	fresh.mu.Unlock()
	if len(replays) != 10 {
		t.Fatalf("captured %d messages, want 10", len(replays))
	}
	net.Flush()
	time.Sleep(20 * time.Millisecond)
	before := b.e.Stats().Dropped(DropReplay)
	for _, m := range replays {
		net.Inject(a.ep, b.ep, m)
	}
	b.sink.expectNone(t, 200*time.Millisecond)
	if got := b.e.Stats().Dropped(DropReplay) - before; got != uint64(len(replays)) {
		t.Fatalf("%d of %d replayed messages refused as replays", got, len(replays))
	}
}
