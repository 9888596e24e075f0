package netstack

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/faketime"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// stackSendMax is the most the stack lets a send buffer grow to now.
func stackSendMax(t *testing.T, s *stack.Stack) int {
	t.Helper()
	var opt tcpip.TCPSendBufferSizeRangeOption
	if err := s.TransportProtocolOption(tcp.ProtocolNumber, &opt); err != nil {
		t.Fatal(err)
	}
	return opt.Max
}

func TestSendShareCeiling(t *testing.T) {
	sh := &sendShare{total: 2 << 20, floor: 256 << 10, max: 8 << 20}
	for _, c := range []struct{ writers, want int }{
		{0, 2 << 20}, {1, 2 << 20}, {2, 1 << 20},
		{3, 512 << 10}, {4, 512 << 10}, // 699 KiB rounds down
		{5, 256 << 10}, {8, 256 << 10}, {10, 256 << 10}, {1000, 256 << 10},
	} {
		if got := sh.ceilingFor(c.writers); got != c.want {
			t.Errorf("%d writers: each may grow to %d, want %d", c.writers, got, c.want)
		}
	}
	capped := &sendShare{total: 2 << 20, floor: 256 << 10, max: 1 << 20}
	if got := capped.ceilingFor(1); got != 1<<20 {
		t.Errorf("a lone writer under a 1 MiB maximum may grow to %d", got)
	}
}

// TestSendShareFollowsWriters: the stack's maximum falls at once as
// writers join, rises only after it has held, and a connection that grew
// larger is cut to it when it next writes.
func TestSendShareFollowsWriters(t *testing.T) {
	clk := faketime.NewManualClock()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
		Clock:              clk,
	})
	defer s.Close()
	if err := tuneTCP(s, 0); err != nil {
		t.Fatal(err)
	}
	sh, err := newSendShare(s, 2<<20, 256<<10, DefaultTCPBufferMax)
	if err != nil {
		t.Fatal(err)
	}
	if got := stackSendMax(t, s); got != 2<<20 {
		t.Fatalf("with no writer the maximum is %d, want the whole share", got)
	}
	var wq waiter.Queue
	ep, terr := s.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		t.Fatal(terr)
	}
	defer ep.Close()
	// As if it had grown while alone, before a sharing began.
	ep.SocketOptions().SetSendBufferSize(4<<20, false)

	sh.enter(ep)
	sh.enter(ep)
	sh.enter(ep)
	if got := stackSendMax(t, s); got != 512<<10 {
		t.Fatalf("with 3 writers the maximum is %d, want 512 KiB", got)
	}
	if got := ep.SocketOptions().GetSendBufferSize(); got != 512<<10 {
		t.Fatalf("a writer's send buffer of 4 MiB is %d after it entered, want cut to 512 KiB", got)
	}
	sh.leave()
	sh.leave()
	if got := stackSendMax(t, s); got != 512<<10 {
		t.Fatalf("the maximum rose to %d at once when writers left, want it held", got)
	}
	clk.Advance(raiseAfter)
	sh.leave()
	if got := stackSendMax(t, s); got != 2<<20 {
		t.Fatalf("the maximum is %d once the writers have gone and it held, want the whole share", got)
	}
}

// TestSendShareBetweenBlockedWriters: through a wireguard-go peer, two
// connections whose writers wait for room (the far end reads nothing
// back) share the total, and a Net without a share leaves the maximum
// alone.
func TestSendShareBetweenBlockedWriters(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{})
	n := openOursWith(t, key, site, func(c *Config) { c.TCPSendShare = 1 << 20 })
	if got := stackSendMax(t, n.stack); got != 1<<20 {
		t.Fatalf("with no writer the maximum is %d, want the whole share", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	var conns []net.Conn
	for range 2 {
		// The echo sends back what it reads; since we read nothing,
		// its writes and then ours wait.
		c, err := n.DialContext(ctx, "tcp", netip.AddrPortFrom(peersite.TheirV4, 7).String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		wg.Go(func() {
			chunk := make([]byte, 32<<10)
			for {
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		})
	}
	for n.share.writing.Load() < 2 {
		if ctx.Err() != nil {
			t.Fatalf("%d writers wait after a minute, want 2", n.share.writing.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := stackSendMax(t, n.stack); got != 512<<10 {
		t.Errorf("two blocked writers may each grow to %d, want 512 KiB", got)
	}
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
	if w := n.share.writing.Load(); w != 0 {
		t.Errorf("%d writers counted after every write returned", w)
	}

	other, _ := protocol.GeneratePrivateKey()
	plain := openOurs(t, other, site)
	if plain.share != nil {
		t.Fatal("a Net without TCPSendShare shares its send buffer")
	}
	if got := stackSendMax(t, plain.stack); got != DefaultTCPBufferMax {
		t.Errorf("without a share the maximum is %d, want %d", got, DefaultTCPBufferMax)
	}
}
