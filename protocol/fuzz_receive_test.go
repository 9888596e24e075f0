package protocol

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/memnet"
)

// FuzzReceivePath feeds arbitrary datagrams into a running engine that has
// a live session, from a stranger's address and from the real peer's. No
// input may crash it, deliver a packet, move the peer's endpoint, or stop
// the real peer's traffic. After every input a real packet goes through
// as a barrier, so a failure is pinned to the input that caused it.
func FuzzReceivePath(f *testing.F) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 5)
	var (
		mu   sync.Mutex
		wire [][]byte
	)
	net.SetTap(func(_, _ netip.AddrPort, b []byte) {
		mu.Lock()
		wire = append(wire, append([]byte(nil), b...))
		mu.Unlock()
	})
	a := newMemNode(f, net, clk, "127.0.0.1:5001", "10.0.0.1", nil)
	b := newMemNode(f, net, clk, "127.0.0.1:5002", "10.0.0.2", nil)
	connect(f, a, b, PresharedKey{})
	for i := range 3 {
		p := ipPacket(a.addr, b.addr, []byte{byte(i)})
		a.e.WritePackets([][]byte{p})
		b.sink.expect(f, p)
		q := ipPacket(b.addr, a.addr, []byte{byte(i)})
		b.e.WritePackets([][]byte{q})
		a.sink.expect(f, q)
	}
	net.SetTap(nil)
	// Seeds: everything that crossed the wire (initiation, response,
	// transport messages, keepalives), replayed and mutated by the fuzzer.
	mu.Lock()
	for _, m := range wire {
		f.Add(m)
	}
	mu.Unlock()

	stranger := netip.MustParseAddrPort("127.9.9.9:9999")
	barrier := uint32(0)
	f.Fuzz(func(t *testing.T, data []byte) {
		net.Inject(stranger, b.ep, data)
		net.Inject(a.ep, b.ep, data)
		barrier++
		p := ipPacket(a.addr, b.addr, binary.BigEndian.AppendUint32(nil, barrier))
		a.e.WritePackets([][]byte{p})
		select {
		case got := <-b.sink.ch:
			if string(got) != string(p) {
				t.Fatalf("fuzz input made the engine deliver %x", got)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("real traffic stopped after the input; drops %v", b.e.Stats().Drops)
		}
		if st, _ := b.e.Peer(a.key.PublicKey()); st.Endpoint != a.ep {
			t.Fatalf("unauthenticated input moved the peer's endpoint to %v", st.Endpoint)
		}
	})
}
