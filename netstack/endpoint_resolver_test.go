package netstack

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// movingResolver answers one name with an address the test moves.
type movingResolver struct {
	mu    sync.Mutex
	addr  netip.Addr
	asked atomic.Int64
}

func (r *movingResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	r.asked.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if host != "peer.wgbore.test" {
		return nil, fmt.Errorf("no such host %q", host)
	}
	return []netip.Addr{r.addr}, nil
}

func (r *movingResolver) move(a netip.Addr) {
	r.mu.Lock()
	r.addr = a
	r.mu.Unlock()
}

// TestHostnameEndpointFollowsItsName: a wireguard-go peer's endpoint is
// a name, answered by a resolver the test controls, which first points
// at an address where nothing listens (127.0.0.9) and then moves to the
// peer's. While handshakes fail the name is looked up again, and the
// tunnel comes up at the new address without reopening anything.
func TestHostnameEndpointFollowsItsName(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	siteKey, _ := protocol.GeneratePrivateKey()
	port := wgtest.FreeLoopbackUDPPort(t)
	res := &movingResolver{addr: netip.MustParseAddr("127.0.0.9")}
	n, err := Open(context.Background(), Config{
		PrivateKey:  key,
		Addresses:   []netip.Prefix{netip.PrefixFrom(peersite.OurV4, 32)},
		ListenAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Peers: []protocol.PeerConfig{{
			PublicKey:  siteKey.PublicKey(),
			Endpoint:   fmt.Sprintf("peer.wgbore.test:%d", port),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(peersite.TheirV4, 32)},
		}},
		EndpointResolver: res,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	// The site starts after our Net, so its cleanup runs first: a
	// wireguard-go netstack that is still retransmitting (the last
	// connection's FIN) when its device closes sends on a closed channel
	// and panics, so it must not outlive us.
	site := peersite.Start(t, key.PublicKey(), peersite.Options{PrivateKey: siteKey, Port: port})
	echo := netip.AddrPortFrom(peersite.TheirV4, 7).String()
	dial := func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		c, err := n.DialContext(ctx, "tcp", echo)
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(time.Second); err == nil {
		t.Fatal("a connection worked while the name pointed where no peer is")
	}
	if st, _ := n.Engine().Peer(site.PublicKey); st.Endpoint != netip.MustParseAddrPort(fmt.Sprintf("127.0.0.9:%d", site.Port)) {
		t.Fatalf("endpoint %v before the move, want the first answer", st.Endpoint)
	}

	res.move(netip.MustParseAddr("127.0.0.1"))
	moved, asked := time.Now(), res.asked.Load()
	for {
		if err := dial(2 * time.Second); err == nil {
			break
		}
		if time.Since(moved) > 45*time.Second {
			t.Fatalf("no connection 45 s after the name moved (%d lookups since)", res.asked.Load()-asked)
		}
	}
	st, _ := n.Engine().Peer(site.PublicKey)
	t.Logf("connected %v after the name moved, %d lookups since; endpoint %v", time.Since(moved).Round(time.Millisecond), res.asked.Load()-asked, st.Endpoint)
	if st.Endpoint != netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), site.Port) {
		t.Fatalf("endpoint %v after the move", st.Endpoint)
	}
	if res.asked.Load() == asked {
		t.Fatal("connected without looking the name up again")
	}
}
