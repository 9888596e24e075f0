package netstack

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// BenchmarkTCPThroughput moves data through one TCP connection between a
// client and a wireguard-go peer that runs wireguard-go's own netstack, for
// two clients in the same run: our Net ("wgbore") and wireguard-go's
// tun/netstack ("wireguard-go", the reference). Everything runs in this
// process, so cpu-s/GB counts both ends: the peer's share is the same for
// both clients, and the difference between the two is the client's.
func BenchmarkTCPThroughput(b *testing.B) {
	for _, client := range []string{"wgbore", "wireguard-go"} {
		for _, dir := range []string{"download", "upload"} {
			b.Run(client+"/"+dir, func(b *testing.B) {
				key, _ := protocol.GeneratePrivateKey()
				site := peersite.Start(b, key.PublicKey(), peersite.Options{})
				var dial func(ctx context.Context, network, addr string) (net.Conn, error)
				if client == "wgbore" {
					n := openOurs(b, key, site)
					b.Cleanup(func() { n.Close() })
					dial = n.DialContext
				} else {
					dial = site.WireGuardGoClient(b, key).DialContext
				}
				streamThroughSite(b, dial, dir)
			})
		}
	}
}

// streamThroughSite measures one TCP stream to the peer site over dial:
// dir "download" reads from the site's source (19), asked for more than
// any run reads; "upload" writes to its discard (9), which reads until
// we close.
func streamThroughSite(b *testing.B, dial func(ctx context.Context, network, addr string) (net.Conn, error), dir string) {
	b.Helper()
	port := 19
	if dir == "upload" {
		port = 9
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dial(ctx, "tcp", fmt.Sprintf("10.0.0.2:%d", port))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if dir == "download" {
		if _, err := c.Write(binary.BigEndian.AppendUint64(nil, 1<<62)); err != nil {
			b.Fatal(err)
		}
	}
	peersite.MeasureStream(b, c, dir == "download")
}
