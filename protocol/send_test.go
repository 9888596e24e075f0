package protocol

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/memnet"
)

// gatedBind holds every Send while its gate is armed, as a socket whose
// buffer is full would.
type gatedBind struct {
	Bind
	gate    atomic.Pointer[chan struct{}]
	entered chan struct{}
	once    sync.Once
}

func (b *gatedBind) Send(bufs [][]byte, ep netip.AddrPort) error {
	if g := b.gate.Load(); g != nil {
		b.once.Do(func() { close(b.entered) })
		<-*g
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
	gated := &gatedBind{entered: make(chan struct{})}
	a, b, packet := sendPair(t, func(inner Bind) Bind { gated.Bind = inner; return gated })
	gate := make(chan struct{})
	gated.gate.Store(&gate)
	go a.e.WritePackets([][]byte{packet(1)})
	<-gated.entered

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
		close(gate)
		t.Fatal("writers waited for the sender that was held up")
	}
	gated.gate.Store(nil)
	close(gate)

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
	gated := &tokenBind{entered: make(chan struct{}, 100), tokens: make(chan struct{})}
	a, b, packet := sendPair(t, func(inner Bind) Bind { gated.Bind = inner; return gated })

	gated.armed.Store(true)
	callerDone := make(chan struct{})
	go func() {
		defer close(callerDone)
		a.e.WritePackets([][]byte{packet(1)})
	}()
	// Each round sends one packet; while it is held, another writer
	// stages the next and asks for one more round.
	last := uint32(1)
	for range maxSendPasses {
		<-gated.entered
		last++
		a.e.WritePackets([][]byte{packet(last)})
		gated.tokens <- struct{}{}
	}
	<-gated.entered // the pump's first round, held
	select {
	case <-callerDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the first caller kept sending for the other writers")
	}
	gated.armed.Store(false)
	gated.tokens <- struct{}{}
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

// tokenBind holds each Send while armed until a token comes.
type tokenBind struct {
	Bind
	armed   atomic.Bool
	entered chan struct{}
	tokens  chan struct{}
}

func (b *tokenBind) Send(bufs [][]byte, ep netip.AddrPort) error {
	if b.armed.Load() {
		b.entered <- struct{}{}
		<-b.tokens
	}
	return b.Bind.Send(bufs, ep)
}
