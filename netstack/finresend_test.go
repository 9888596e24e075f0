package netstack

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// TestFINResendFloor: a pure FIN that repeats within finResendFloor of
// the copy that went is dropped, and the first repeat past it leaves;
// data, FINs that carry data, other connections' FINs and a FIN of
// another sequence number are never dropped.
func TestFINResendFloor(t *testing.T) {
	e := &replayEngine{}
	clk := clock.NewManual(time.Unix(1000, 0))
	l := e.link(clk)
	const fa = header.TCPFlagFin | header.TCPFlagAck
	fin := seg(5000, 100, fa, 0, nil)
	other := fin
	other.v6 = true
	steps := []struct {
		after  time.Duration
		ss     superSegment
		leaves bool
		what   string
	}{
		{0, fin, true, "a FIN"},
		{20 * time.Millisecond, fin, false, "its repeat 20 ms on"},
		{0, other, true, "another connection's FIN"},
		{0, seg(4000, 100, header.TCPFlagAck, 1000, nil), true, "a data segment sent again"},
		{0, seg(4900, 100, fa|header.TCPFlagPsh, 100, nil), true, "a FIN with data"},
		{40 * time.Millisecond, fin, false, "its repeat 60 ms on"},
		{80 * time.Millisecond, fin, false, "its repeat 140 ms on"},
		{0, other, false, "the other connection's repeat 140 ms on"},
		{60 * time.Millisecond, fin, true, "its repeat 200 ms on, at the floor"},
		{20 * time.Millisecond, fin, false, "a repeat 20 ms after that copy"},
		{0, seg(9000, 100, fa, 0, nil), true, "a FIN at another sequence number"},
	}
	for _, s := range steps {
		clk.Advance(s.after)
		before := len(e.wire)
		pkt := s.ss.packet()
		var list stack.PacketBufferList
		list.PushBack(pkt)
		if n, err := l.WritePackets(list); n != 1 || err != nil {
			t.Fatalf("%s: WritePackets: %d, %v", s.what, n, err)
		}
		pkt.DecRef()
		if left := len(e.wire) > before; left != s.leaves {
			t.Errorf("%s: left %v, want %v", s.what, left, s.leaves)
		}
	}
}

func TestFINRepeatAllocs(t *testing.T) {
	clk := clock.NewManual(time.Unix(1000, 0))
	var f finTable
	pkt := seg(5000, 100, header.TCPFlagFin|header.TCPFlagAck, 0, nil).packet()
	defer pkt.DecRef()
	k, ok := packetKey(pkt)
	if !ok {
		t.Fatal("no key for a TCP segment")
	}
	th := pkt.TransportHeader().Slice()
	f.repeat(pkt, th, &k, clk) // allocates the table
	if n := testing.AllocsPerRun(100, func() { f.repeat(pkt, th, &k, clk) }); n != 0 {
		t.Fatalf("%v allocations per FIN, want 0", n)
	}
}

// TestFINLostInBlackout: a FIN lost to a blackout, with every repeat
// the floor drops, still reaches wireguard-go's stack (its echo server
// closes when it reads our end of stream) once the path is back, soon
// after the first retransmission past the floor.
func TestFINLostInBlackout(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{})
	relay, err := wgtest.NewRelay(wgtest.RelayConfig{B: netip.MustParseAddrPort(site.Endpoint()), Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	n := openOursWith(t, key, site, func(c *Config) { c.Peers[0].Endpoint = relay.AddrA().String() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := n.DialContext(ctx, "tcp", netip.AddrPortFrom(peersite.TheirV4, 7).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 5)
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	relay.Blackout(150 * time.Millisecond)
	start := time.Now()
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(buf); !errors.Is(err, io.EOF) {
		t.Fatalf("after our FIN was lost in a blackout: read %v, want the end of the echo's stream", err)
	}
	t.Logf("the echo's end of stream came %v after our FIN", time.Since(start).Round(time.Millisecond))
}

// TestFINTablePrunes: the table keeps only FINs within the floor, and
// what a burst grew it to goes once the burst has passed.
func TestFINTablePrunes(t *testing.T) {
	clk := clock.NewManual(time.Unix(1000, 0))
	var f finTable
	fin := func(port uint16) {
		ss := seg(5000, 100, header.TCPFlagFin|header.TCPFlagAck, 0, nil)
		pkt := ss.packet()
		defer pkt.DecRef()
		k, ok := packetKey(pkt)
		if !ok {
			t.Fatal("no key for a TCP segment")
		}
		k.b[k.n-1], k.b[k.n-2] = byte(port), byte(port>>8) // another connection
		if f.repeat(pkt, pkt.TransportHeader().Slice(), &k, clk) {
			t.Fatalf("the first FIN of connection %d taken for a repeat", port)
		}
	}
	for i := range 5000 {
		fin(uint16(i))
		if i%50 == 0 {
			clk.Advance(time.Millisecond)
		}
	}
	if n := len(f.sent); n != 5000 {
		t.Fatalf("%d FINs in the table after 5,000 in 100 ms, want them all", n)
	}
	clk.Advance(finResendFloor)
	fin(60000)
	if n := len(f.sent); n != 1 {
		t.Fatalf("%d FINs in the table a floor after the burst, want 1", n)
	}
}

// BenchmarkWriteSmallPackets measures WritePackets for what passes the
// FIN table's first test and little else: a pure acknowledgement per
// call, with an engine that only copies and no acknowledgement held.
func BenchmarkWriteSmallPackets(b *testing.B) {
	for _, c := range []struct {
		name  string
		flags header.TCPFlags
	}{
		{"ack", header.TCPFlagAck},
		{"fin", header.TCPFlagFin | header.TCPFlagAck},
	} {
		b.Run(c.name, func(b *testing.B) {
			ss := superSegment{seq: 1, ack: 2, flags: c.flags, mss: 1356, opts: timestamps(1, 2)}
			pkt := ss.packet()
			defer pkt.DecRef()
			var list stack.PacketBufferList
			list.PushBack(pkt)
			l := newLinkEndpoint(1420, &discardEngine{buf: make([]byte, 1420)})
			l.delay.wait = 0
			b.ReportAllocs()
			for b.Loop() {
				l.WritePackets(list)
			}
		})
	}
}
