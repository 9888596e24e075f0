package netstack

import (
	"context"
	"io"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/faketime"
	"gvisor.dev/gvisor/pkg/tcpip/link/loopback"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

func TestSendSharePart(t *testing.T) {
	sh := newSendShare(faketime.NewManualClock(), 2<<20, 256<<10, 8<<20)
	for _, c := range []struct{ writers, want int }{
		{0, 2 << 20}, {1, 2 << 20}, {2, 1 << 20},
		{3, 512 << 10}, {4, 512 << 10}, // 699 KiB rounds down
		{5, 256 << 10}, {8, 256 << 10}, {10, 256 << 10}, {1000, 256 << 10},
	} {
		if got := sh.partFor(c.writers); got != c.want {
			t.Errorf("%d writers: each may hold %d, want %d", c.writers, got, c.want)
		}
	}
	capped := newSendShare(faketime.NewManualClock(), 2<<20, 256<<10, 1<<20)
	if got := capped.partFor(1); got != 1<<20 {
		t.Errorf("a lone writer under a 1 MiB maximum may hold %d", got)
	}
}

// loopbackStack is a gVisor stack of its own on a loopback NIC with
// 127.0.0.1, our TCP options and clk.
func loopbackStack(t *testing.T, clk tcpip.Clock) *stack.Stack {
	t.Helper()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
		Clock:              clk,
	})
	t.Cleanup(func() {
		s.Close()
		s.Wait()
	})
	if err := s.CreateNIC(1, loopback.New()); err != nil {
		t.Fatal(err)
	}
	a := tcpip.AddrFrom4([4]byte{127, 0, 0, 1})
	if err := s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: a.WithPrefix()}, stack.AddressProperties{}); err != nil {
		t.Fatal(err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: a.WithPrefix().Subnet(), NIC: 1}})
	if err := tuneTCP(s, DefaultTCPBufferMax); err != nil {
		t.Fatal(err)
	}
	return s
}

// bareEndpoint is an unconnected TCP endpoint of s.
func bareEndpoint(t *testing.T, s *stack.Stack) tcpip.Endpoint {
	t.Helper()
	var wq waiter.Queue
	ep, err := s.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ep.Close)
	return ep
}

// TestSendShareFollowsWriters: the part falls at once as writers join and
// rises only after it has held, and a writer's buffer is sized at the
// part when it enters, a larger one cut.
func TestSendShareFollowsWriters(t *testing.T) {
	clk := faketime.NewManualClock()
	s := loopbackStack(t, clk)
	sh := newSendShare(clk, 2<<20, 256<<10, DefaultTCPBufferMax)
	ep := bareEndpoint(t, s)
	// As if it had grown while alone, before a sharing began.
	ep.SocketOptions().SetSendBufferSize(4<<20, false)

	sh.enter(bareEndpoint(t, s))
	sh.enter(bareEndpoint(t, s))
	sh.enter(ep)
	if got := ep.SocketOptions().GetSendBufferSize(); got != 512<<10 {
		t.Fatalf("the third writer's send buffer of 4 MiB is %d after it entered, want cut to 512 KiB", got)
	}
	sh.leave()
	sh.leave()
	if got := sh.part.Load(); got != 512<<10 {
		t.Fatalf("the part rose to %d at once when writers left, want it held", got)
	}
	clk.Advance(raiseAfter)
	sh.leave()
	sh.enter(ep)
	if got := ep.SocketOptions().GetSendBufferSize(); got != 2<<20 {
		t.Fatalf("a lone writer's send buffer is %d once the others have gone and the part held, want the whole share", got)
	}
}

// TestSendShareKeepsBlockedWriterGoing: a writer blocked on a full buffer
// finishes after others join, which once left it waiting for a wake-up
// gVisor never sent (the stack's maximum lowered below its buffer).
func TestSendShareKeepsBlockedWriterGoing(t *testing.T) {
	s := loopbackStack(t, tcpip.NewStdClock())
	// A small receive window: the far end acknowledges in small steps,
	// as a Linux peer does, never half a large buffer at once.
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 64 << 10, Max: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	sh := newSendShare(s.Clock(), 2<<20, 256<<10, DefaultTCPBufferMax)
	fa := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4([4]byte{127, 0, 0, 1}), Port: 9}
	l, err := gonet.ListenTCP(s, fa, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var wq waiter.Queue
	ep, terr := s.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		t.Fatal(terr)
	}
	c := newTCPConn(&wq, ep, &Net{share: sh})
	defer c.Close()
	connected, ready := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&connected)
	if terr := ep.Connect(fa); terr != nil {
		if _, ok := terr.(*tcpip.ErrConnectStarted); !ok {
			t.Fatal(terr)
		}
		<-ready
	}
	wq.EventUnregister(&connected)
	far, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer far.Close()

	// In chunks, as the relay writes: each Write sizes the buffer again,
	// so once the others join, the writer cuts its own buffer below what
	// it holds and must still be woken.
	const size = 32 << 20
	written := make(chan error, 1)
	go func() {
		chunk := make([]byte, 32<<10)
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := c.Write(chunk); err != nil {
				written <- err
				return
			}
		}
		written <- nil
	}()
	// Nothing is read yet: the writer fills what the window and its
	// buffer take, then waits for gVisor to wake it.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for sh.writing.Load() != 1 {
		if ctx.Err() != nil {
			t.Fatal("the writer never entered Write")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	for range 4 {
		sh.enter(bareEndpoint(t, s))
	}
	read := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, far)
		read <- n
	}()
	select {
	case err := <-written:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatalf("the blocked writer is still waiting a minute after four joined; its buffer %d, the part %d", ep.SocketOptions().GetSendBufferSize(), sh.part.Load())
	}
	c.Close()
	if n := <-read; n != size {
		t.Fatalf("the far end read %d bytes, want %d", n, size)
	}
}

// TestSendShareBetweenBlockedWriters: through a wireguard-go peer, two
// connections whose writers wait for room (the far end reads nothing
// back) are both counted, and the part is half the total; once their
// writes have returned, none is.
func TestSendShareBetweenBlockedWriters(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{})
	n := openOursWith(t, key, site, func(c *Config) { c.TCPSendShare = 1 << 20 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	for range 2 {
		// The echo sends back what it reads; since we read nothing,
		// its writes and then ours wait.
		c, err := n.DialContext(ctx, "tcp", netip.AddrPortFrom(peersite.TheirV4, 7).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		wg.Go(func() {
			chunk := make([]byte, 32<<10)
			for {
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		})
	}
	for n.share.writing.Load() != 2 || n.share.part.Load() != 512<<10 {
		if ctx.Err() != nil {
			t.Fatalf("%d writers wait after a minute, each with %d, want 2 with 512 KiB", n.share.writing.Load(), n.share.part.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Both writes stay blocked: the count holds.
	time.Sleep(200 * time.Millisecond)
	if w := n.share.writing.Load(); w != 2 {
		t.Fatalf("%d writers counted while both wait for room, want 2", w)
	}
	n.Close()
	wg.Wait()
	if w := n.share.writing.Load(); w != 0 {
		t.Errorf("%d writers counted after every write returned", w)
	}
}
