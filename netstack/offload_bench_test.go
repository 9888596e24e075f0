package netstack

import (
	"context"
	"net"
	"runtime/pprof"
	"testing"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// BenchmarkOffloads is BenchmarkTCPThroughput for each set of the link
// endpoint's offloads in turn, and wireguard-go's netstack as the
// reference, all in one run: on a noisy machine only figures from the same
// run compare. Each offload stays only if it pays here.
func BenchmarkOffloads(b *testing.B) {
	variants := []struct {
		name string
		o    offloads
	}{
		{"none", 0},
		{"rxcsum", offloadRXChecksum},
		{"rxcsum+gro", offloadRXChecksum | offloadGRO},
		{"rxcsum+gso", offloadRXChecksum | offloadGSO},
		{"all", offloadAll},
		{"wireguard-go", 0},
	}
	for _, dir := range []string{"download", "upload"} {
		for _, v := range variants {
			b.Run(dir+"/"+v.name, func(b *testing.B) {
				key, _ := protocol.GeneratePrivateKey()
				// Goroutines inherit profiler labels from the one that
				// starts them, so a CPU profile of this benchmark splits
				// by side (go tool pprof -tags): the peer's, and the
				// client's stack, engine and application.
				var site *peersite.Site
				pprof.Do(context.Background(), pprof.Labels("side", "peer", "dir", dir), func(context.Context) {
					site = peersite.Start(b, key.PublicKey(), peersite.Options{})
				})
				client := pprof.Labels("side", "client", "client", v.name, "dir", dir)
				defer pprof.SetGoroutineLabels(context.Background())
				pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), client))
				var dial func(ctx context.Context, network, addr string) (net.Conn, error)
				if v.name == "wireguard-go" {
					dial = site.WireGuardGoClient(b, key).DialContext
				} else {
					n := openOursWith(b, key, site, func(c *Config) { c.withoutOffloads = offloadAll &^ v.o })
					b.Cleanup(func() { n.Close() })
					dial = n.DialContext
				}
				streamThroughSite(b, dial, dir)
			})
		}
	}
}
