//go:build linux

package udpbind

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// udpGSOTestSizes is a batch as the engine sends it: runs of full-sized
// datagrams, a shorter one ending a run, keepalive-sized ones, and a run
// longer than one message may carry.
func udpGSOTestSizes() []int {
	var sizes []int
	for range 10 {
		sizes = append(sizes, 1452)
	}
	sizes = append(sizes, 700, 32, 32, 1452, 1452, 1500, 148)
	for range 70 {
		sizes = append(sizes, 1000)
	}
	return append(sizes, 999, 1000)
}

// TestGSO sends batches with UDP_SEGMENT, and without, to a
// receiver with UDP_GRO, and without, and checks that the receiver gets
// every datagram whole, separately, and in order. On loopback a GSO send
// reaches a GRO socket still coalesced, so the receiver cuts it up.
func TestGSO(t *testing.T) {
	// The second batch starts with a lone datagram, which the receiver
	// hands over in place before cutting up what follows it.
	batches := [][]int{udpGSOTestSizes(), append([]int{500}, udpGSOTestSizes()...)}
	for k, sizes := range batches {
		for _, gso := range []bool{true, false} {
			for _, gro := range []bool{true, false} {
				for _, addr := range []netip.Addr{udpTestLoop4, udpTestLoop6} {
					t.Run(fmt.Sprintf("batch%d/gso=%v/gro=%v/%v", k, gso, gro, addr), func(t *testing.T) {
						testUDPBindGSO(t, sizes, gso, gro, addr)
					})
				}
			}
		}
	}
}

func testUDPBindGSO(t *testing.T, sizes []int, gso, gro bool, addr netip.Addr) {
	open := func(cfg Config, gso, gro bool) *Bind {
		return udpTestListenWith(t, func(cfg Config) (*Bind, error) {
			return listen(cfg, listenNet, mmsgWith(gso, gro))
		}, cfg)
	}
	a := open(Config{Addrs: []netip.Addr{addr}, BatchSize: 128}, gso, false)
	// A small batch on the receiver, so that coalesced
	// messages are cut across several receives.
	b := open(Config{Addrs: []netip.Addr{addr}, BatchSize: 7}, false, gro)
	if gso && !mmsgOf(a).tx.gso {
		t.Skip("the kernel does not take UDP_SEGMENT")
	}
	if gro && !mmsgOf(b).rx.gro {
		t.Skip("the kernel does not take UDP_GRO")
	}
	bufs := make([][]byte, len(sizes))
	for i, n := range sizes {
		bufs[i] = udpTestPayload(n)
		bufs[i][0] = byte(i) // order
	}
	if err := a.Send(bufs, netip.AddrPortFrom(addr, b.Port())); err != nil {
		t.Fatalf("Send: %v", err)
	}
	got := udpTestReceive(t, b.Receivers()[0], b.BatchSize(), 9000, len(sizes))
	if len(got) != len(sizes) {
		t.Fatalf("received %d datagrams, want %d", len(got), len(sizes))
	}
	for i, d := range got {
		if !bytes.Equal(d.data, bufs[i]) {
			t.Fatalf("datagram %d: %d bytes starting %d, want %d bytes starting %d", i, len(d.data), d.data[0], sizes[i], byte(i))
		}
	}
	if c := mmsgOf(b).rx.coalesced; gso && gro && c == 0 {
		t.Fatalf("no coalesced message arrived: the GRO path went untested")
	} else {
		t.Logf("%d coalesced messages", c)
	}
}

// TestPlan checks how a batch is laid out in messages: runs of equal
// sizes, a shorter datagram ending a run, at most udpMaxSegments each.
func TestPlan(t *testing.T) {
	var tx udpSender
	tx.msgs = make([]unix.Mmsghdr, 128)
	tx.iovs = make([]unix.Iovec, 128)
	tx.ctrl = make([]byte, 128*udpSegmentCmsgSpace)
	tx.gso = true
	sizes := udpGSOTestSizes()
	bufs := make([][]byte, len(sizes))
	for i, n := range sizes {
		bufs[i] = make([]byte, n)
	}
	msgs, used := tx.plan(bufs, 16)
	var runs []int
	for i := range msgs {
		runs = append(runs, int(tx.msgs[i].Hdr.Iovlen))
	}
	// 10×1452 then the 700 ending that run; 32, 32; 1452, 1452 (the
	// 1500 is larger); 1500 and the 148; 64×1000; 6×1000 and the 999
	// ending that run; 1000.
	want := []int{11, 2, 2, 2, 64, 7, 1}
	if !slices.Equal(runs, want) || used != len(sizes) {
		t.Fatalf("messages of %v datagrams (%d used), want %v (%d)", runs, used, want, len(sizes))
	}
	clearUDPIovecs(tx.iovs)
}

// TestReleasesSpill: Close unmaps the GRO spill buffers, and a
// receive after it reports the socket closed instead of touching them.
func TestReleasesSpill(t *testing.T) {
	b := udpTestListenWith(t, func(cfg Config) (*Bind, error) { return listen(cfg, listenNet, newMmsg) }, Config{Addrs: []netip.Addr{udpTestLoop4}})
	r := &mmsgOf(b).rx
	if !r.gro {
		t.Skip("the kernel does not take UDP_GRO")
	}
	if r.mapped == nil {
		t.Fatal("UDP_GRO is on without spill buffers")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if r.mapped != nil || r.spill[0] != nil {
		t.Fatal("Close left the spill buffers mapped")
	}
	bufs, sizes, eps := [][]byte{make([]byte, 1500)}, make([]int, 1), make([]netip.AddrPort, 1)
	if _, err := b.Receivers()[0](bufs, sizes, eps); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("receive after Close: %v, want net.ErrClosed", err)
	}
}

// mmsgOf is the batched path of b's first socket.
func mmsgOf(b *Bind) *mmsgSocket {
	return b.socks[0].datagrams.(*mmsgSocket)
}
