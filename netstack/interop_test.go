package netstack

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// fetchBytes GETs url, which serves peersite.Body(size), and checks it.
func fetchBytes(t *testing.T, client *http.Client, url string, size int) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := peersite.CheckBody(resp.Body, size); err != nil {
		t.Fatal(err)
	}
}

func openOurs(t testing.TB, key protocol.PrivateKey, site *peersite.Site) *Net {
	t.Helper()
	return openOursWith(t, key, site, nil)
}

func TestNetAgainstWireGuardGoNetstack(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{})
	n := openOurs(t, key, site)
	defer n.Close()

	client := &http.Client{Transport: &http.Transport{DialContext: n.DialContext}, Timeout: 2 * time.Minute}
	for _, c := range []struct {
		host string
		size int
	}{
		{peersite.TheirV4.String(), 64 << 20},
		{"[" + peersite.TheirV6.String() + "]", 8 << 20},
	} {
		t.Run("http/"+c.host, func(t *testing.T) {
			start := time.Now()
			fetchBytes(t, client, fmt.Sprintf("http://%s/bytes/%d", c.host, c.size), c.size)
			t.Logf("%d MiB in %v (%.1f MB/s)", c.size>>20, time.Since(start).Round(time.Millisecond), float64(c.size)/1e6/time.Since(start).Seconds())
		})
	}

	// Upload and download at once, byte-exact: the outbound path gathers
	// gVisor's scattered buffers itself, so it must be checked as closely
	// as the inbound one.
	t.Run("tcp-echo-8MiB", func(t *testing.T) {
		c, err := n.DialContext(context.Background(), "tcp", "10.0.0.2:7")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		data := peersite.Body(8 << 20)
		go func() { c.Write(data) }()
		got := make([]byte, len(data))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatal("echoed bytes differ from what was sent")
		}
	})

	t.Run("udp-echo", func(t *testing.T) {
		for _, a := range []netip.Addr{peersite.TheirV4, peersite.TheirV6} {
			c, err := n.DialContext(context.Background(), "udp", netip.AddrPortFrom(a, 7).String())
			if err != nil {
				t.Fatal(err)
			}
			msg := []byte("echo through the tunnel " + a.String())
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 100)
			m, err := c.Read(buf)
			if err != nil || !bytes.Equal(buf[:m], msg) {
				t.Fatalf("udp echo from %v: %q, %v", a, buf[:m], err)
			}
			c.Close()
		}
	})

	t.Run("they-dial-us", func(t *testing.T) {
		l, err := n.Listen("tcp", "10.0.0.1:8080")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.Copy(c, c)
			c.Close()
		}()
		c, err := site.Net.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(peersite.OurV4, 8080))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		msg := []byte("hello from the wireguard-go side")
		c.Write(msg)
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || !bytes.Equal(buf, msg) {
			t.Fatalf("echo through our listener: %q, %v", buf, err)
		}
	})
}

// TestCloseLeaksNothing opens a Net, uses it, closes it, and expects no
// goroutine of ours left: every goroutine that appeared since Open must
// be gone, except the wireguard-go peer's own (its echo handler may still
// be waiting for a FIN our closed stack never sent).
func TestCloseLeaksNothing(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{})
	before := peersite.Goroutines()
	n := openOurs(t, key, site)
	c, err := n.DialContext(context.Background(), "tcp", "10.0.0.2:7")
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("x"))
	buf := make([]byte, 1)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	l, err := n.Listen("tcp", "10.0.0.1:9")
	if err != nil {
		t.Fatal(err)
	}
	_ = l // left open on purpose: Close must take it down too
	c.Close()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var leaked []string
		for id, g := range peersite.Goroutines() {
			if _, old := before[id]; old || strings.Contains(g, "netstack/peersite.") || strings.Contains(g, "golang.zx2c4.com/wireguard") ||
				strings.Contains(g, "TestCloseLeaksNothing") || strings.Contains(g, "testing.tRunner") {
				continue
			}
			leaked = append(leaked, g)
		}
		if len(leaked) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left after Close:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The engine's UDP port is released.
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(n.LocalPort())})
	if err != nil {
		t.Fatalf("port still held after Close: %v", err)
	}
	pc.Close()
}
