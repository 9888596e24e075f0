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
