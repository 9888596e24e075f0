package netstack

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// TestTCPConnNotifyReadable: a relay can wait for a tunnel connection's
// bytes and end of stream without a goroutine in Read.
func TestTCPConnNotifyReadable(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{})
	n := openOurs(t, key, site)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := n.DialContext(ctx, "tcp", netip.AddrPortFrom(peersite.TheirV4, 7).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc, ok := c.(*TCPConn)
	if !ok {
		t.Fatalf("DialContext returned a %T, want *TCPConn", c)
	}
	woken := make(chan struct{}, 1)
	stop := tc.NotifyReadable(func() {
		select {
		case woken <- struct{}{}:
		default:
		}
	})
	defer stop()

	buf := make([]byte, 64)
	if _, wouldBlock, err := tc.TryRead(buf); !wouldBlock || err != nil {
		t.Fatalf("TryRead before anything was sent: wouldBlock %v, err %v", wouldBlock, err)
	}
	if tc.Readable() {
		t.Fatal("Readable before anything was sent")
	}

	// What the echo sends back, then its end of the stream once ours
	// has ended.
	want := "hello"
	if _, err := tc.Write([]byte(want)); err != nil {
		t.Fatal(err)
	}
	if err := tc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for {
		n, wouldBlock, err := tc.TryRead(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("TryRead after %q: %v", got, err)
		}
		if wouldBlock {
			select {
			case <-woken:
			case <-ctx.Done():
				t.Fatalf("no notification after %q", got)
			}
		}
	}
	if string(got) != want {
		t.Fatalf("read %q, want %q", got, want)
	}
}
