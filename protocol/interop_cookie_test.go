package protocol

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/udpbind"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// initiationFlooder sends initiations with a valid MAC1 for a target's
// key from several loopback source addresses (127.0.1.x, all on this
// host's loopback): enough to put a responder under load.
type initiationFlooder struct {
	conns []*net.UDPConn
	msgs  [][]byte
	dst   *net.UDPAddr
}

func newInitiationFlooder(t *testing.T, to netip.AddrPort, target PublicKey) *initiationFlooder {
	t.Helper()
	f := &initiationFlooder{dst: net.UDPAddrFromAddrPort(to)}
	for i := range 4 {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 1, byte(i+1))})
		if err != nil {
			t.Fatalf("flood socket: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		f.conns = append(f.conns, c)
	}
	for range 64 {
		f.msgs = append(f.msgs, spoofedInitiation(target))
	}
	return f
}

// burst sends n spoofed initiations. The socket buffers may overflow
// and drop some; what matters is that enough arrive to make
// wireguard-go's handshake queue deep, or to spend our handshake budget.
func (f *initiationFlooder) burst(n int) {
	for i := range n {
		f.conns[i%len(f.conns)].WriteToUDP(f.msgs[i%len(f.msgs)], f.dst)
	}
}

// loadUntil bursts until underLoad reports the target under load, which
// takes one burst or a few depending on how fast the target drains.
func (f *initiationFlooder) loadUntil(t *testing.T, underLoad func() bool) {
	t.Helper()
	for range 50 {
		f.burst(1000)
		if underLoad() {
			return
		}
	}
	t.Fatal("the target never came under load")
}

// loopbackEngine starts an engine on a UDP socket at 127.0.0.1.
func loopbackEngine(t *testing.T, clk clock.Clock) (*Engine, PrivateKey, *sink, uint16) {
	t.Helper()
	ub, err := udpbind.Listen(udpbind.Config{Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	key := mustKey(t)
	s := newSink()
	e, err := New(Config{PrivateKey: key, Bind: ub, Packets: s, Clock: clk, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e, key, s, ub.Port()
}

// TestInteropCookieReplyFromWireGuardGo: wireguard-go under a flood
// answers our initiation with a cookie reply; we must decrypt it and
// retry with a MAC2 that wireguard-go accepts while still under load.
func TestInteropCookieReplyFromWireGuardGo(t *testing.T) {
	t.Parallel()
	lo := netip.MustParseAddr("127.0.0.1")
	clk := clock.NewManual(time.Now())
	our, ourKey, _, _ := loopbackEngine(t, clk)
	wg := startWireGuardGo(t, lo, ourKey.PublicKey(), PresharedKey{}, netip.AddrPort{}, "10.0.0.1/32")
	wgAddr := netip.AddrPortFrom(lo, wg.port)
	if err := our.SetPeer(PeerConfig{PublicKey: wg.key.PublicKey(), Endpoint: wgAddr.String(),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")}}); err != nil {
		t.Fatal(err)
	}
	peer := our.lookupPeer(wg.key.PublicKey())

	flood := newInitiationFlooder(t, wgAddr, wg.key.PublicKey())
	pkt := ipPacket(ourV4, theirV4, []byte("past the cookie"))
	defer func() {
		st, _ := our.Peer(wg.key.PublicKey())
		t.Logf("our drops %v, peer %+v, wireguard-go under load: %v", our.Stats().Drops, st, wg.dev.IsUnderLoad())
	}()
	// A burst makes wireguard-go's handshake queue deep, which keeps it
	// under load for the next second (UnderLoadAfterTime). Our initiation
	// goes once the queue has drained, so it is neither lost to a full
	// queue nor let through: it must be answered with a cookie.
	underLoadWindow := func() {
		t.Helper()
		flood.loadUntil(t, wg.dev.IsUnderLoad)
		time.Sleep(150 * time.Millisecond)
		if !wg.dev.IsUnderLoad() {
			t.Fatal("wireguard-go left the under-load state within its one-second window")
		}
	}
	underLoadWindow()
	our.WritePackets([][]byte{pkt})
	wgtest.WaitFor(t, 10*time.Second, "a cookie reply from wireguard-go", func() bool {
		peer.cookies.mu.Lock()
		defer peer.cookies.mu.Unlock()
		return !peer.cookies.cookieTime.IsZero()
	})
	if st, _ := our.Peer(wg.key.PublicKey()); st.HandshakesCompleted != 0 {
		t.Fatal("handshake completed although wireguard-go demanded a cookie")
	}
	// Retry, now with MAC2, while the flood goes on.
	underLoadWindow()
	clk.Advance(RekeyTimeout + RekeyTimeoutJitterMax)
	expectPacket(t, wg.delivered, pkt, "wgbore → wireguard-go under load")
	if st, _ := our.Peer(wg.key.PublicKey()); st.HandshakesCompleted != 1 || st.HandshakeAttempts != 2 {
		t.Fatalf("want one completed handshake after two attempts, got %+v", st)
	}
}

// TestInteropCookieReplyToWireGuardGo: we are flooded; wireguard-go's
// initiation gets our cookie reply, and its retry, which carries MAC2 made
// with our cookie, is accepted while we are still under load.
func TestInteropCookieReplyToWireGuardGo(t *testing.T) {
	t.Parallel()
	lo := netip.MustParseAddr("127.0.0.1")
	// Our clock stands still, so once under load we stay under load: the
	// retry can only get through with a valid MAC2.
	clk := clock.NewManual(time.Now())
	our, ourKey, sink, port := loopbackEngine(t, clk)
	ourAddr := netip.AddrPortFrom(lo, port)
	wg := startWireGuardGo(t, lo, ourKey.PublicKey(), PresharedKey{}, ourAddr, "10.0.0.1/32")
	if err := our.SetPeer(PeerConfig{PublicKey: wg.key.PublicKey(),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")}}); err != nil {
		t.Fatal(err)
	}

	flood := newInitiationFlooder(t, ourAddr, ourKey.PublicKey())
	flood.loadUntil(t, our.underLoad)
	// Let the flood drain, from the socket as well as from our queue, so
	// that wireguard-go's initiation is not lost to a full socket buffer:
	// wireguard-go would then need two more RekeyTimeouts, one to fetch
	// the cookie and one to use it. On the frozen clock we stay under
	// load regardless.
	waitQuiet(t, our)

	repliesBefore := our.Stats().CookieRepliesSent
	start := time.Now()
	pkt := ipPacket(theirV4, ourV4, []byte("past our cookie"))
	wg.send(pkt)
	expectPacket(t, sink.ch, pkt, "wireguard-go → wgbore under load")
	took := time.Since(start)
	if !our.underLoad() {
		t.Fatal("no longer under load; the test proves nothing about MAC2")
	}
	// The first initiation was answered with a cookie, so the handshake
	// waited for wireguard-go's retransmission after RekeyTimeout.
	if took < RekeyTimeout-500*time.Millisecond {
		t.Fatalf("handshake took %v: the first initiation was not refused", took)
	}
	if our.Stats().CookieRepliesSent == repliesBefore {
		t.Fatal("no cookie reply sent to wireguard-go")
	}
	if st, _ := our.Peer(wg.key.PublicKey()); st.HandshakesCompleted != 1 {
		t.Fatalf("handshakes completed: %d", st.HandshakesCompleted)
	}
}

// waitQuiet waits until e has answered or dropped every handshake message
// that reached it: its queue is empty and its counts stand still for a
// while. The handshake queue alone empties while the socket still holds
// a flood's tail, which is answered with cookie replies in the receive
// path and never queued.
func waitQuiet(t *testing.T, e *Engine) {
	t.Helper()
	handled := func() uint64 {
		s := e.Stats()
		n := s.CookieRepliesSent
		for _, d := range s.Drops {
			n += d
		}
		return n
	}
	last := handled()
	wgtest.WaitFor(t, 10*time.Second, "the flood to drain", func() bool {
		time.Sleep(100 * time.Millisecond)
		n := handled()
		quiet := n == last && len(e.handshakes) == 0
		last = n
		return quiet
	})
}
