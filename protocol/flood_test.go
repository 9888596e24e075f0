package protocol

import (
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/memnet"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// spoofedInitiation is what an attacker who knows the responder's public
// key can make: random content with a valid MAC1, from a forged source.
// It passes the cheap check and would cost a Curve25519 operation if the
// responder were not demanding cookies.
func spoofedInitiation(responder PublicKey) []byte {
	msg := make([]byte, MessageInitiationSize)
	rand.Read(msg[4 : MessageInitiationSize-2*macSize])
	msg[0] = MessageInitiationType
	var g cookieGenerator
	g.init(clock.System{}, responder)
	g.addMACs(msg)
	return msg
}

// TestInitiationFlood floods a responder with 10,000 spoofed initiations
// from many forged loopback sources while a real peer handshakes. The
// responder must switch to cookies, the real initiator must get its
// cookie and complete with MAC2, and every spoofed message must be
// accounted for.
func TestInitiationFlood(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 3)
	a := newMemNode(t, net, clk, "127.0.0.1:4001", "10.0.0.1", nil)
	b := newMemNode(t, net, clk, "127.0.0.1:4002", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})

	const total = 10000
	spoofs := make([][]byte, total)
	for i := range spoofs {
		spoofs[i] = spoofedInitiation(b.key.PublicKey())
	}
	sent := 0
	// inject sends the next n spoofs from 127.1.x.y sources, pacing so the
	// queue stays deep without overflowing and hiding the real peer's
	// messages behind queue-full drops.
	inject := func(n int) {
		for ; n > 0 && sent < total; n-- {
			for len(b.e.handshakes) > handshakeQueueSize*3/4 {
				time.Sleep(20 * time.Microsecond)
			}
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(sent >> 8), byte(sent)}), uint16(10000+sent))
			net.Inject(src, b.ep, spoofs[sent])
			sent++
		}
	}

	// Past the handshake budget, so under load when the real initiation
	// arrives, whatever the workers have got through.
	inject(underLoadBurst + 1)
	pkt := ipPacket(a.addr, b.addr, []byte("through the flood"))
	a.e.WritePackets([][]byte{pkt}) // the real initiation, behind the spoofs
	inject(1500)

	wgtest.WaitFor(t, 10*time.Second, "cookie reply at the real initiator", func() bool {
		ap := a.e.lookupPeer(b.key.PublicKey())
		ap.cookies.mu.Lock()
		defer ap.cookies.mu.Unlock()
		return !ap.cookies.cookieTime.IsZero()
	})
	if st, _ := a.e.Peer(b.key.PublicKey()); st.HandshakesCompleted != 0 {
		t.Fatalf("handshake completed without MAC2 while the responder was under load")
	}

	// Keep the responder loaded across the retransmission, which now
	// carries MAC2: spend the refilled budget just before it is due.
	clk.Advance(RekeyTimeout - time.Millisecond)
	inject(underLoadBurst + 1)
	clk.Advance(RekeyTimeoutJitterMax + time.Millisecond)
	inject(1500)
	b.sink.expect(t, pkt)
	if st, _ := a.e.Peer(b.key.PublicKey()); st.HandshakesCompleted != 1 {
		t.Fatalf("real initiator: %d handshakes completed, want 1", st.HandshakesCompleted)
	}

	// The rest of the flood does not stop the data path.
	inject(total)
	for i := range 20 {
		p := ipPacket(a.addr, b.addr, binary.BigEndian.AppendUint32(nil, uint32(i)))
		a.e.WritePackets([][]byte{p})
		b.sink.expect(t, p)
	}
	// Drained once every message is accounted for: some still wait in
	// the in-memory socket while the receive goroutine answers cookies.
	accountedFor := func(s StatsSnapshot) uint64 {
		return s.Dropped(DropCookieRequired) + s.Dropped(DropHandshakeFailed) + s.Dropped(DropHandshakeQueueFull) + net.Stats().DroppedFull
	}
	wgtest.WaitFor(t, 30*time.Second, "the flood to drain", func() bool { return accountedFor(b.e.Stats()) >= total+1 })
	time.Sleep(50 * time.Millisecond) // anything counted twice would show now

	s := b.e.Stats()
	accounted := accountedFor(s)
	t.Logf("responder: %d cookie replies, drops %v", s.CookieRepliesSent, s.Drops)
	// Every spoof, plus the real peer's first initiation (answered with a
	// cookie), is accounted for under exactly one reason, or was lost
	// to a full socket queue as UDP would lose it.
	if accounted != total+1 {
		t.Errorf("%d messages accounted for, want %d", accounted, total+1)
	}
	if s.CookieRepliesSent < 1000 {
		t.Errorf("only %d cookie replies: the responder did not switch to cookies", s.CookieRepliesSent)
	}
	if s.Dropped(DropCookieRequired) != s.CookieRepliesSent {
		t.Errorf("%d cookie-required drops but %d replies", s.Dropped(DropCookieRequired), s.CookieRepliesSent)
	}
	if n := b.e.indices.len(); n > 4 {
		t.Errorf("spoofed initiations left %d index entries", n)
	}
}

// TestUnderLoadByRate: spoofed initiations that never queue up (each is
// handled before the next arrives) still put the responder under load
// once they exceed the handshake budget (underLoadBurst at once), and it
// demands cookies instead of spending a Curve25519 operation on each.
// Once they stop for UnderLoadAfterTime, full handshakes resume.
func TestUnderLoadByRate(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 5)
	b := newMemNode(t, net, clk, "127.0.0.1:4102", "10.0.0.2", nil)
	spoof := func(i int) {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 2, byte(i >> 8), byte(i)}), uint16(20000+i))
		before := b.e.Stats()
		net.Inject(src, b.ep, spoofedInitiation(b.key.PublicKey()))
		wgtest.WaitFor(t, 5*time.Second, "the spoof to be handled", func() bool {
			s := b.e.Stats()
			return s.Dropped(DropCookieRequired)+s.Dropped(DropHandshakeFailed) > before.Dropped(DropCookieRequired)+before.Dropped(DropHandshakeFailed)
		})
	}
	const n = underLoadBurst + 100
	for i := range n {
		spoof(i)
	}
	s := b.e.Stats()
	failed, cookies := s.Dropped(DropHandshakeFailed), s.Dropped(DropCookieRequired)
	t.Logf("%d spoofs in one window: %d fully processed, %d answered with a cookie", n, failed, cookies)
	if failed != underLoadBurst || cookies != n-underLoadBurst {
		t.Fatalf("%d processed and %d cookies, want %d and %d", failed, cookies, underLoadBurst, n-underLoadBurst)
	}
	clk.Advance(UnderLoadAfterTime)
	spoof(n)
	if s := b.e.Stats(); s.Dropped(DropHandshakeFailed) != failed+1 {
		t.Fatalf("after the flood stopped, a spoof was not processed in full: drops %v", s.Drops)
	}
}

// TestDeepQueueWithinBudget: a burst within the handshake budget is
// answered in full however deep it fills the queue, as a server's peers
// coming back at once after a restart must be; only a message that
// waited longer than underLoadQueueWait puts the responder under load.
func TestDeepQueueWithinBudget(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 7)
	b := newMemNode(t, net, clk, "127.0.0.1:4202", "10.0.0.2", nil)
	const n = 1000 // deeper than the test this replaced, an eighth of the queue
	spoofs := make([][]byte, n)
	for i := range spoofs {
		spoofs[i] = spoofedInitiation(b.key.PublicKey())
	}
	burst := func() {
		for i := range n {
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 3, byte(i >> 8), byte(i)}), uint16(30000+i))
			net.Inject(src, b.ep, spoofs[i])
		}
	}
	handled := func() (full, cookies uint64) {
		s := b.e.Stats()
		return s.Dropped(DropHandshakeFailed), s.Dropped(DropCookieRequired)
	}
	burst()
	wgtest.WaitFor(t, 30*time.Second, "the burst to be handled", func() bool { f, c := handled(); return f+c >= n })
	if full, cookies := handled(); full != n || cookies != 0 {
		t.Fatalf("a burst of %d within the budget: %d answered in full, %d with a cookie; want all in full", n, full, cookies)
	}
	if b.e.underLoad() {
		t.Fatal("under load after a burst within the budget")
	}

	// The wait alone: a message that waited underLoadQueueWait does not
	// count, one that waited longer does, for UnderLoadAfterTime.
	now := clk.Now().UnixNano()
	b.e.noteQueueWait(now - int64(underLoadQueueWait))
	if b.e.underLoad() {
		t.Fatal("under load after a wait of exactly underLoadQueueWait")
	}
	b.e.noteQueueWait(now - int64(underLoadQueueWait) - 1)
	if !b.e.underLoad() {
		t.Fatal("not under load after a wait past underLoadQueueWait")
	}
	clk.Advance(UnderLoadAfterTime)
	if b.e.underLoad() {
		t.Fatal("still under load UnderLoadAfterTime after the long wait")
	}

	// And a worker applies it: a message queued longer ago than that.
	he := b.e.handshakeElements.Get().(*handshakeElement)
	he.n = copy(he.buf[:], spoofs[0])
	he.src = netip.MustParseAddrPort("127.3.255.1:30000")
	he.queued = clk.Now().UnixNano() - int64(underLoadQueueWait) - 1
	b.e.handshakes <- he
	wgtest.WaitFor(t, 10*time.Second, "a worker to find the message waited too long", b.e.underLoad)
}
