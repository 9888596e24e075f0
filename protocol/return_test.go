package protocol

import (
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/memnet"
)

// returnSink is a sink that is also a PeerReturner. It records each
// return with how many packets the sink had been given by then, so a
// test can check that the packet which ended the silence came first.
type returnSink struct {
	*sink
	returns chan returnEvent
}

type returnEvent struct {
	peer      PublicKey
	delivered int
}

func (r *returnSink) PeerReturned(p PublicKey) {
	r.returns <- returnEvent{p, len(r.ch)}
}

func (r *returnSink) expectReturn(t *testing.T, from PublicKey, delivered int) {
	t.Helper()
	select {
	case ev := <-r.returns:
		if ev.peer != from || ev.delivered != delivered {
			t.Fatalf("return of %v after %d deliveries, want %v after %d", ev.peer, ev.delivered, from, delivered)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no return reported within 10s")
	}
}

func (r *returnSink) expectNoReturn(t *testing.T) {
	t.Helper()
	select {
	case ev := <-r.returns:
		t.Fatalf("unexpected return of %v", ev.peer)
	default:
	}
}

// TestPeerReturned: the packet side hears of a peer's return when a
// handshake initiation or response ends a silence of ReturnAfterSilence
// or more, but not when data does (it has the data), nor for the first
// packet from a peer, nor after a shorter silence.
func TestPeerReturned(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	w := tmWatch(net, clk)
	withReturns := func(r **returnSink) func(*Config) {
		return func(c *Config) {
			*r = &returnSink{sink: c.Packets.(*sink), returns: make(chan returnEvent, 16)}
			c.Packets = *r
		}
	}
	var ra, rb *returnSink
	a := newMemNodeWith(t, net, clk, "127.0.0.1:7001", "10.0.0.1", withReturns(&ra))
	b := newMemNodeWith(t, net, clk, "127.0.0.1:7002", "10.0.0.2", withReturns(&rb))
	ra.sink, rb.sink = a.sink, b.sink
	connect(t, a, b, PresharedKey{})

	// The first handshake and data: nobody has returned.
	p := ipPacket(a.addr, b.addr, []byte("first"))
	a.e.WritePackets([][]byte{p})
	b.sink.expect(t, p)
	tmQuiesce(t, w, a, b)
	ra.expectNoReturn(t)
	rb.expectNoReturn(t)

	// Data again within the silence that does not count.
	clk.Advance(ReturnAfterSilence / 2)
	a.e.WritePackets([][]byte{p})
	b.sink.expect(t, p)
	tmQuiesce(t, w, a, b)
	rb.expectNoReturn(t)

	// Data after a longer silence: the packet side has the data, and
	// hears of no return; the engine counts it all the same.
	clk.Advance(ReturnAfterSilence)
	a.e.WritePackets([][]byte{p})
	b.sink.expect(t, p)
	tmQuiesce(t, w, a, b)
	ra.expectNoReturn(t)
	rb.expectNoReturn(t)
	if st, _ := b.e.Peer(a.key.PublicKey()); st.Returns != 1 {
		t.Fatalf("B counted %d returns of A, want 1", st.Returns)
	}

	// A handshake after a silence (and after RekeyTimeout, which spaces
	// initiations): B hears A's initiation, A hears B's response.
	clk.Advance(RekeyTimeout + ReturnAfterSilence)
	if !a.e.Handshake(b.key.PublicKey()) {
		t.Fatal("Handshake: no such peer")
	}
	rb.expectReturn(t, a.key.PublicKey(), 0)
	ra.expectReturn(t, b.key.PublicKey(), 0)
	tmQuiesce(t, w, a, b)
	ra.expectNoReturn(t)
	rb.expectNoReturn(t)
}
