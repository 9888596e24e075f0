package netstack

import (
	"context"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

const finAck = header.TCPFlagFin | header.TCPFlagAck

// finOf is a pure FIN of the connection from source port port.
func finOf(port uint16) superSegment {
	ss := seg(5000, 100, finAck, 0, nil)
	ss.port = port
	return ss
}

// write hands l one batch and reports which of its segments left, in
// order, by their sequence numbers; each segment's reference is the
// caller's again after.
func write(t *testing.T, l *linkEndpoint, e *replayEngine, batch ...superSegment) []uint32 {
	t.Helper()
	before := len(e.wire)
	var list stack.PacketBufferList
	var pkts []*stack.PacketBuffer
	for _, ss := range batch {
		p := ss.packet()
		pkts = append(pkts, p)
		list.PushBack(p)
	}
	if n, err := l.WritePackets(list); n != len(batch) || err != nil {
		t.Fatalf("WritePackets: %d, %v", n, err)
	}
	for _, p := range pkts {
		p.DecRef()
	}
	var left []uint32
	for _, b := range e.wire[before:] {
		left = append(left, tcpOf(b).SequenceNumber())
	}
	return left
}

// binaryTCP is the TCP header of a packet as it left.
func tcpOf(b []byte) header.TCP { return header.TCP(b[ipHeaderLen(b):]) }

// burst writes n FINs of other connections, which all leave.
func burst(t *testing.T, l *linkEndpoint, e *replayEngine, n int) {
	t.Helper()
	for i := range n {
		if left := write(t, l, e, finOf(uint16(20000+i))); len(left) != 1 {
			t.Fatalf("FIN %d of a burst did not leave", i)
		}
	}
}

// TestFINResendFloor: in a burst of FINs, a pure FIN that repeats within
// finResendFloor of the copy that went is dropped, and the first repeat
// past it leaves; outside a burst every repeat leaves. Data, FINs that
// carry data, other connections' FINs and a FIN of another sequence
// number are never dropped.
func TestFINResendFloor(t *testing.T) {
	e := &replayEngine{}
	clk := clock.NewManual(time.Unix(1000, 0))
	l := e.link(clk)
	fin, other := finOf(0), finOf(0)
	other.v6 = true

	// A lone FIN and its repeat, with no burst: both leave.
	if left := write(t, l, e, fin); len(left) != 1 {
		t.Fatal("a lone FIN did not leave")
	}
	clk.Advance(20 * time.Millisecond)
	if left := write(t, l, e, fin); len(left) != 1 {
		t.Fatal("a lone FIN's repeat 20 ms on, with no burst of FINs, did not leave")
	}
	burst(t, l, e, finBurst)

	steps := []struct {
		after  time.Duration
		ss     superSegment
		leaves bool
		what   string
	}{
		// Its last copy went at 20 ms, the other connection's at 40.
		{20 * time.Millisecond, fin, false, "its repeat 20 ms after its last copy, in a burst"},
		{0, other, true, "another connection's FIN"},
		{0, seg(4000, 100, header.TCPFlagAck, 1000, nil), true, "a data segment sent again"},
		{0, seg(4900, 100, finAck|header.TCPFlagPsh, 100, nil), true, "a FIN with data"},
		{40 * time.Millisecond, fin, false, "its repeat 60 ms after its last copy"},
		{80 * time.Millisecond, fin, false, "its repeat 140 ms after"},
		{0, other, false, "the other connection's repeat 120 ms after its copy"},
		{60 * time.Millisecond, fin, true, "its repeat 200 ms after, at the floor"},
		{0, seg(9000, 100, finAck, 0, nil), true, "a FIN at another sequence number"},
		{20 * time.Millisecond, fin, true, "a repeat 20 ms after that copy, the burst's FINs past the floor"},
	}
	for _, s := range steps {
		clk.Advance(s.after)
		if left := len(write(t, l, e, s.ss)) == 1; left != s.leaves {
			t.Errorf("%s: left %v, want %v", s.what, left, s.leaves)
		}
	}
	burst(t, l, e, finBurst)
	clk.Advance(20 * time.Millisecond)
	if left := write(t, l, e, fin); len(left) != 0 {
		t.Error("a repeat 20 ms after its last copy, in a new burst, left")
	}
}

// TestFINDroppedInBatch: a FIN dropped from the middle of a batch leaves
// the others in order, takes no reference of its own, and does not
// release or supersede its connection's acknowledgement held back for
// an answer.
func TestFINDroppedInBatch(t *testing.T) {
	l, e, clk := delayLink()
	burst(t, l, e, finBurst)
	fin := seg(110, 4000, finAck, 0, timestamps(1, 2))
	send(t, l, e, fin)
	send(t, l, e, seg(100, 4000, header.TCPFlagAck|header.TCPFlagPsh, 10, timestamps(1, 2)))
	left, ack := offer(t, l, e, seg(110, 5000, header.TCPFlagAck, 0, timestamps(2, 2)))
	defer ack.DecRef()
	if len(left) != 0 {
		t.Fatal("the acknowledgement after our data was not held back")
	}

	before := len(e.wire)
	a, b := finOf(30000), finOf(30001)
	a.seq, b.seq = 7000, 8000
	repeat := fin.packet()
	defer repeat.DecRef()
	var list stack.PacketBufferList
	for _, p := range []*stack.PacketBuffer{a.packet(), repeat, b.packet()} {
		list.PushBack(p)
	}
	if n, err := l.WritePackets(list); n != 3 || err != nil {
		t.Fatalf("WritePackets: %d, %v", n, err)
	}
	var seqs []uint32
	for _, w := range e.wire[before:] {
		seqs = append(seqs, tcpOf(w).SequenceNumber())
	}
	if !slices.Equal(seqs, []uint32{7000, 8000}) {
		t.Fatalf("left %v, want the two other FINs in order, [7000 8000]", seqs)
	}
	if refs := repeat.ReadRefs(); refs != 1 {
		t.Fatalf("the dropped FIN has %d references after WritePackets, want only ours", refs)
	}
	clk.Advance(ackDelay)
	if n := len(e.wire) - before; n != 3 || ackOf(t, e.wire[len(e.wire)-1]) != 5000 {
		t.Fatalf("%d packets left once the delay was over, want the two FINs and the held acknowledgement", n)
	}
}

// repeatOf asks f about pkt, as WritePackets does.
func repeatOf(t *testing.T, f *finTable, pkt *stack.PacketBuffer, clk clock.Clock) bool {
	t.Helper()
	k, ok := packetKey(pkt)
	if !ok {
		t.Fatal("no key for a TCP segment")
	}
	return f.repeat(pkt, pkt.TransportHeader().Slice(), &k, clk)
}

// TestFINRepeatAllocs: recording a FIN, and pruning the table, allocate
// nothing once the table is made.
func TestFINRepeatAllocs(t *testing.T) {
	clk := clock.NewManual(time.Unix(1000, 0))
	var f finTable
	pkt := finOf(0).packet()
	defer pkt.DecRef()
	repeatOf(t, &f, pkt, clk) // allocates the table
	// Each call a floor after the last: the FIN is recorded again, and
	// the table pruned.
	if n := testing.AllocsPerRun(100, func() {
		clk.Advance(finResendFloor)
		repeatOf(t, &f, pkt, clk)
	}); n != 0 {
		t.Fatalf("%v allocations per FIN, want 0", n)
	}
}

// TestFINTablePrunes: the table keeps only FINs within the floor, and
// moves to a new map once a burst has passed; a clock that steps back
// ages nothing into the floor.
func TestFINTablePrunes(t *testing.T) {
	clk := clock.NewManual(time.Unix(1000, 0))
	var f finTable
	fin := func(port uint16) bool {
		pkt := finOf(port).packet()
		defer pkt.DecRef()
		return repeatOf(t, &f, pkt, clk)
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
	grown := reflect.ValueOf(f.sent).UnsafePointer()
	clk.Advance(finResendFloor)
	fin(60000)
	if n := len(f.sent); n != 1 {
		t.Fatalf("%d FINs in the table a floor after the burst, want 1", n)
	}
	if reflect.ValueOf(f.sent).UnsafePointer() == grown {
		t.Fatal("the table kept the map a burst grew")
	}

	// Trim keeps what is young, and gives the map back once a floor
	// has passed with no FIN.
	f.trim(clk)
	if len(f.sent) != 1 {
		t.Fatalf("trim within the floor left %d FINs, want 1", len(f.sent))
	}
	clk.Advance(finResendFloor)
	f.trim(clk)
	if f.sent != nil {
		t.Fatalf("trim a floor after the last FIN kept a map of %d", len(f.sent))
	}
	if fin(60000) {
		t.Fatal("the first FIN after trim was taken for a repeat")
	}

	// A burst, then the clock an hour back: the repeat leaves.
	for i := range finBurst {
		fin(uint16(i))
	}
	clk.Advance(-time.Hour)
	if fin(0) {
		t.Fatal("a repeat after the clock stepped an hour back was dropped")
	}
}

// TestFINLostInBlackout: FINs of a close lost to a blackout, with every
// repeat the floor drops, still reach wireguard-go's stack (its echo
// server closes when it reads our end of stream) once the path is back.
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

	// Enough connections for their FINs to be a burst.
	conns := echoConns(ctx, t, n, 2*finBurst)
	relay.Blackout(100 * time.Millisecond)
	start := time.Now()
	for _, c := range conns {
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
	}
	if err := endsOfStream(conns)(); err != nil {
		t.Fatalf("after our FINs were lost in a blackout: read %v, want the end of the echo's stream", err)
	}
	t.Logf("the echoes' ends of stream all came within %v of our FINs", time.Since(start).Round(time.Millisecond))
}

// BenchmarkWriteSmallPackets measures WritePackets for a pure
// acknowledgement, which the FIN table's test lets by, and for a lone
// connection's FIN, which it records, each call on its own, with an
// engine that only copies and no acknowledgement held.
func BenchmarkWriteSmallPackets(b *testing.B) {
	for _, c := range []struct {
		name  string
		flags header.TCPFlags
	}{
		{"ack", header.TCPFlagAck},
		{"fin", finAck},
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
