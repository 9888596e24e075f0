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

// heldBind holds each Send while armed until a token comes (closing
// tokens lets every held and later Send go), as a socket whose buffer is
// full would; entered tells each Send held.
type heldBind struct {
	Bind
	armed   atomic.Bool
	entered chan struct{}
	tokens  chan struct{}
}

func newHeldBind() *heldBind {
	return &heldBind{entered: make(chan struct{}, 100), tokens: make(chan struct{})}
}

func (b *heldBind) Send(bufs [][]byte, ep netip.AddrPort) error {
	if b.armed.Load() {
		b.entered <- struct{}{}
		<-b.tokens
	}
	return b.Bind.Send(bufs, ep)
}

// sendPair makes two connected nodes, a sending through wrap's Bind, has
// a first packet pass, and returns a maker of numbered packets from a
// to b.
func sendPair(t *testing.T, wrap func(Bind) Bind) (a, b *testNode, packet func(seq uint32) []byte) {
	t.Helper()
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	a = newMemNodeWith(t, net, clk, "127.0.0.1:9001", "10.0.0.1", func(c *Config) { c.Bind = wrap(c.Bind) })
	b = newMemNode(t, net, clk, "127.0.0.1:9002", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})
	payload := make([]byte, 100)
	first := ipPacket(a.addr, b.addr, payload)
	a.e.WritePackets([][]byte{first})
	b.sink.expect(t, first)
	return a, b, func(seq uint32) []byte {
		binary.BigEndian.PutUint32(payload, seq)
		return ipPacket(a.addr, b.addr, payload)
	}
}

// TestWritersDoNotQueueBehindTheSender: while one goroutine is sending a
// peer's packets and is held up, other writers to that peer return at
// once, leaving their packets to it, instead of each waiting its turn
// with its stack (a mass close of one peer's connections). Once the
// sender moves on, every packet arrives, in the order written.
func TestWritersDoNotQueueBehindTheSender(t *testing.T) {
	held := newHeldBind()
	a, b, packet := sendPair(t, func(inner Bind) Bind { held.Bind = inner; return held })
	held.armed.Store(true)
	go a.e.WritePackets([][]byte{packet(1)})
	<-held.entered

	// Fewer than the staging bound, one packet a call, as many
	// connections' closes are.
	const writers = 200
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		for seq := uint32(2); seq <= writers+1; seq++ {
			a.e.WritePackets([][]byte{packet(seq)})
		}
	}()
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		close(held.tokens)
		t.Fatal("writers waited for the sender that was held up")
	}
	held.armed.Store(false)
	close(held.tokens)

	for want := uint32(1); want <= writers+1; want++ {
		select {
		case pkt := <-b.sink.ch:
			if got := binary.BigEndian.Uint32(pkt[20:]); got != want {
				t.Fatalf("delivered packet %d, want %d", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("packet %d not delivered; engine drops %v", want, a.e.Stats().Drops)
		}
	}
	if d := a.e.Stats().Drops; len(d) != 0 {
		t.Fatalf("engine dropped packets: %v", d)
	}
}

// TestSenderHandsOnToAPump: a caller that has sent maxSendPasses rounds
// for other writers hands the rest to a goroutine of the peer's own and
// returns, instead of sending for as long as others write (a handshake
// worker or the receive path must get back to its work).
func TestSenderHandsOnToAPump(t *testing.T) {
	held := newHeldBind()
	a, b, packet := sendPair(t, func(inner Bind) Bind { held.Bind = inner; return held })

	held.armed.Store(true)
	callerDone := make(chan struct{})
	go func() {
		defer close(callerDone)
		a.e.WritePackets([][]byte{packet(1)})
	}()
	// Each round sends one packet; while it is held, another writer
	// stages the next and asks for one more round.
	last := uint32(1)
	for range maxSendPasses {
		<-held.entered
		last++
		a.e.WritePackets([][]byte{packet(last)})
		held.tokens <- struct{}{}
	}
	<-held.entered // the pump's first round, held
	select {
	case <-callerDone:
	case <-time.After(10 * time.Second):
		close(held.tokens)
		t.Fatal("the first caller kept sending for the other writers")
	}
	held.armed.Store(false)
	held.tokens <- struct{}{}
	for want := uint32(1); want <= last; want++ {
		select {
		case pkt := <-b.sink.ch:
			if got := binary.BigEndian.Uint32(pkt[20:]); got != want {
				t.Fatalf("delivered packet %d, want %d", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("packet %d not delivered", want)
		}
	}
}
