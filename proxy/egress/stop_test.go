package egress

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack/inbound"
	"github.com/wgbore/wgbore/protocol"
)

// fakeTunnel takes the interceptor and drops echo replies: enough for a
// Server that is driven by calling its handlers.
type fakeTunnel struct{}

func (fakeTunnel) Intercept(inbound.Interceptor) error                           { return nil }
func (fakeTunnel) WriteEchoReply(netip.Addr, netip.Addr, uint16, uint16, []byte) {}

// TestStopCutsDialsAndRefuses: Stop, which the tunnel calls before its
// stack shuts down, ends a host dial under way, so that its flow is
// refused rather than accepted into a stack that is going away, and
// refuses new flows before any dial; it waits for nothing.
func TestStopCutsDialsAndRefuses(t *testing.T) {
	dialing := make(chan struct{}, 1)
	var dials atomic.Int32
	s, err := Start(fakeTunnel{}, Config{
		InterfaceAddrs: func() ([]net.Addr, error) { return nil, nil },
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			dials.Add(1)
			dialing <- struct{}{}
			<-ctx.Done()
			return nil, ctx.Err()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	peer, _ := protocol.GeneratePrivateKey()
	f := inbound.Flow{Network: "tcp", Peer: peer.PublicKey(),
		Source: netip.MustParseAddrPort("10.0.0.2:40000"), Destination: netip.MustParseAddrPort("198.51.100.80:80")}
	var accepted atomic.Bool
	accept := func() (net.Conn, error) {
		accepted.Store(true)
		return nil, net.ErrClosed
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.HandleTCP(f, accept)
	}()
	<-dialing
	s.Stop()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Stop did not cut short the host dial under way")
	}
	s.HandleTCP(f, accept)
	if accepted.Load() || dials.Load() != 1 {
		t.Fatalf("after Stop: accepted %v, %d host dials; want no accept and no new dial", accepted.Load(), dials.Load())
	}
	if got := s.FlowCounts()[f.Peer].Open; got != 0 {
		t.Fatalf("%d flows still counted open after Stop", got)
	}
	// Not deferred: after a failure above, Close would wait for the dial
	// that Stop did not end.
	s.Close()
}
