package protocol

import (
	"fmt"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/memnet"
)

var testEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestTwoEnginesExchangePackets(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	a := newMemNode(t, net, clk, "127.0.0.1:1001", "10.0.0.1", nil)
	b := newMemNode(t, net, clk, "127.0.0.1:1002", "10.0.0.2", nil)
	psk, _ := GeneratePresharedKey()
	connect(t, a, b, psk)

	for i := range 10 {
		p := ipPacket(a.addr, b.addr, []byte(fmt.Sprintf("a to b %d", i)))
		a.e.WritePackets([][]byte{p})
		b.sink.expect(t, p)
		q := ipPacket(b.addr, a.addr, []byte(fmt.Sprintf("b to a %d", i)))
		b.e.WritePackets([][]byte{q})
		a.sink.expect(t, q)
	}
	st, _ := a.e.Peer(b.key.PublicKey())
	if st.HandshakesCompleted != 1 || st.LastHandshake.IsZero() {
		t.Fatalf("a's view of b: %+v", st)
	}
}

// TestHandshakeWorkersLeaveACore: the handshake workers are one fewer
// than the cores or the crypto workers, so a burst of handshakes never
// takes every core, and there is always one.
func TestHandshakeWorkersLeaveACore(t *testing.T) {
	for _, c := range []struct{ workers, cpus, want int }{
		{1, 1, 1},
		{2, 1, 1},
		{2, 2, 1},
		{3, 2, 1}, // serve's GOMAXPROCS on two cores is three
		{1, 8, 1},
		{4, 8, 3},
		{8, 8, 7},
		{16, 4, 3},
	} {
		if got := handshakeWorkers(c.workers, c.cpus); got != c.want {
			t.Errorf("handshakeWorkers(%d workers, %d cores) = %d, want %d", c.workers, c.cpus, got, c.want)
		}
	}
}
