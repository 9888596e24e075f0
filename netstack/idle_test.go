package netstack

import (
	"context"
	"net"
	"testing"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// TestIdleConnectionsAreCheap holds many idle TCP connections open
// through the tunnel and measures the heap they cost. Both ends live in
// this process (our stack and the wireguard-go peer's, whose echo handler
// also holds io.Copy's 32 KiB buffer per connection), so the figure is a
// loose upper bound for ours. Buffers grow with queued data, not with the
// configured maximum, so an idle connection must cost kilobytes, not the
// megabytes a pre-allocated buffer would.
func TestIdleConnectionsAreCheap(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: opens 1000 connections")
	}
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{})
	n := openOurs(t, key, site)
	defer n.Close()
	warm, err := n.DialContext(context.Background(), "tcp", "10.0.0.2:7")
	if err != nil {
		t.Fatal(err)
	}
	warm.Close()

	before := wgtest.HeapInUse()
	const count = 1000
	conns := make([]net.Conn, 0, count)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range count {
		c, err := n.DialContext(context.Background(), "tcp", "10.0.0.2:7")
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	after := wgtest.HeapInUse()
	per := (int64(after) - int64(before)) / count
	t.Logf("%d idle connections: %d bytes of heap each, both ends together", count, per)
	if per > 256<<10 {
		t.Fatalf("an idle connection costs %d bytes of heap", per)
	}
}
