package config

import (
	"fmt"
	"strings"
	"testing"

	"github.com/wgbore/wgbore/protocol"
)

// BenchmarkParseManyPeers parses a server's file with two thousand
// peers, as a reload of a large `wgbore serve` does.
func BenchmarkParseManyPeers(b *testing.B) {
	key, _ := protocol.GeneratePrivateKey()
	var f strings.Builder
	fmt.Fprintf(&f, "[Interface]\nPrivateKey = %s\nAddress = 10.99.0.1/16\nListenPort = 51820\n\n", key.Base64())
	for i := range 2000 {
		k, _ := protocol.GeneratePrivateKey()
		fmt.Fprintf(&f, "[Peer]\nPublicKey = %s\nAllowedIPs = 10.99.%d.%d/32\n\n", k.PublicKey(), (i+2)>>8, (i+2)&255)
	}
	text := []byte(f.String())
	for b.Loop() {
		cfg, err := Parse("serve.conf", text, Options{})
		if err != nil || len(cfg.Peers) != 2000 {
			b.Fatalf("%d peers: %v", len(cfg.Peers), err)
		}
	}
}
