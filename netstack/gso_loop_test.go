package netstack

import (
	"bytes"
	"context"
	"io"
	"net/netip"
	"testing"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// TestTCPToOurselves moves data over TCP from our tunnel address to our
// tunnel address, v4 and v6. Such packets never reach the engine: the link
// endpoint loops them back, GSO super-segments whole, larger than the MTU
// and with only the pseudo-header checksum, which gVisor then takes as
// one big segment.
func TestTCPToOurselves(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{})
	n := openOurs(t, key, site)
	payload := testPayload(4 << 20)
	for _, a := range []netip.Addr{peersite.OurV4, peersite.OurV6} {
		t.Run(a.String(), func(t *testing.T) {
			ln, err := n.Listen("tcp", netip.AddrPortFrom(a, 7777).String())
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := make(chan []byte, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					got <- nil
					return
				}
				defer c.Close()
				b, _ := io.ReadAll(c)
				got <- b
			}()
			c, err := n.DialContext(context.Background(), "tcp", netip.AddrPortFrom(a, 7777).String())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write(payload); err != nil {
				t.Fatal(err)
			}
			if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if b := <-got; !bytes.Equal(b, payload) {
				t.Fatalf("received %d bytes, not the %d sent", len(b), len(payload))
			}
			c.Close()
		})
	}
}
