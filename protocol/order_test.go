package protocol

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/memnet"
)

// TestOrderKeptThroughParallelCrypto sends many batches through engines
// with several crypto workers each. Workers finish batches in any order,
// and batches of up to inlineBatchMax packets skip them; delivery must
// still be in send order, with nothing missing.
func TestOrderKeptThroughParallelCrypto(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	fourWorkers := func(c *Config) { c.Workers = 4 }
	a := newMemNodeWith(t, net, clk, "127.0.0.1:9001", "10.0.0.1", fourWorkers)
	b := newMemNodeWith(t, net, clk, "127.0.0.1:9002", "10.0.0.2", fourWorkers)
	connect(t, a, b, PresharedKey{})

	const batches = 300
	// Sizes on both sides of inlineBatchMax, so that inline and worker
	// batches follow each other on both the sending and receiving side.
	sizes := []int{32, 1, 5, inlineBatchMax, inlineBatchMax + 1, 2, 40}
	payload := make([]byte, 1000)
	seq := uint32(0)
	first := ipPacket(a.addr, b.addr, payload)
	a.e.WritePackets([][]byte{first})
	b.sink.expect(t, first)
	for k := range batches {
		batch := make([][]byte, sizes[k%len(sizes)])
		for i := range batch {
			seq++
			binary.BigEndian.PutUint32(payload, seq)
			batch[i] = ipPacket(a.addr, b.addr, payload)
		}
		a.e.WritePackets(batch)
		// Pace to stay within memnet's receive queue, which drops like
		// UDP when full; this test is about order, not loss.
		if seq%1024 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	// The in-memory network drops like UDP when b's socket queue is full
	// (the engine waits rather than drop, so the socket fills); what
	// arrives must be in strictly increasing order with nothing repeated,
	// and the engine itself must drop nothing.
	last, got := uint32(0), 0
	for {
		select {
		case pkt := <-b.sink.ch:
			n := binary.BigEndian.Uint32(pkt[20:])
			if n <= last {
				t.Fatalf("delivered packet %d after %d", n, last)
			}
			last = n
			got++
			continue
		case <-time.After(500 * time.Millisecond):
		}
		break
	}
	t.Logf("%d of %d delivered in order; network %+v", got, seq, net.Stats())
	if got < int(seq)/2 {
		t.Fatalf("only %d of %d packets delivered", got, seq)
	}
	if d := b.e.Stats().Drops; len(d) != 0 {
		t.Fatalf("engine dropped packets: %v", d)
	}
}

// TestNoReplyToUnauthenticated: nothing a stranger sends, short of a
// handshake while we are under load, gets any answer. A reply would make
// us a reflector and tell a scanner a WireGuard endpoint lives here.
func TestNoReplyToUnauthenticated(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	a := newMemNode(t, net, clk, "127.0.0.1:9011", "10.0.0.1", nil)
	b := newMemNode(t, net, clk, "127.0.0.1:9012", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})
	p := ipPacket(a.addr, b.addr, []byte("x"))
	a.e.WritePackets([][]byte{p})
	b.sink.expect(t, p)

	// A real WireGuard peer b does not know: its initiation has a valid
	// MAC1 and a valid static key, just not one b accepts.
	stranger := newMemNode(t, net, clk, "127.0.0.1:9013", "10.0.0.3", nil)
	if err := stranger.e.SetPeer(PeerConfig{PublicKey: b.key.PublicKey(), Endpoint: b.ep.String(),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")}}); err != nil {
		t.Fatal(err)
	}
	var answered atomic.Int64
	net.SetTap(func(from, to netip.AddrPort, _ []byte) {
		if from == b.ep && to != a.ep {
			answered.Add(1)
		}
	})
	stranger.e.WritePackets([][]byte{ipPacket(stranger.addr, b.addr, []byte("let me in"))})

	inits := 0
	for _, m := range [][]byte{
		{},
		make([]byte, 3),
		{MessageInitiationType, 0, 0, 0},
		make([]byte, MessageInitiationSize),
		append([]byte{MessageInitiationType, 0, 0, 0}, make([]byte, MessageInitiationSize-4)...),
		append([]byte{MessageResponseType, 0, 0, 0}, make([]byte, MessageResponseSize-4)...),
		append([]byte{MessageCookieReplyType, 0, 0, 0}, make([]byte, MessageCookieReplySize-4)...),
		append([]byte{MessageTransportType, 0, 0, 0}, make([]byte, 100)...),
		spoofedInitiation(b.key.PublicKey()), // valid MAC1, garbage inside
	} {
		net.Inject(netip.MustParseAddrPort("127.0.0.1:9014"), b.ep, m)
		inits++
	}
	time.Sleep(100 * time.Millisecond)
	if n := answered.Load(); n != 0 {
		t.Fatalf("b answered %d unauthenticated datagrams", n)
	}
	if b.e.underLoad() {
		t.Fatal("under load; this test is about the normal state")
	}
	s := b.e.Stats()
	if s.Dropped(DropHandshakeFailed) < 2 || s.Dropped(DropBadMAC1) < 1 || s.Dropped(DropMalformedMessage) < 3 {
		t.Fatalf("unexpected drop accounting: %v", s.Drops)
	}
}
