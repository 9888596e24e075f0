package peersite_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

func TestBody(t *testing.T) {
	for _, n := range []int{0, 1, 7, 8, 9, 1000, 4096} {
		b := peersite.Body(n)
		if len(b) != n || !bytes.Equal(b, peersite.Body(n)) {
			t.Fatalf("Body(%d) is %d bytes or not deterministic", n, len(b))
		}
	}
	if bytes.Equal(peersite.Body(64), peersite.Body(65)[:64]) {
		t.Fatal("Body(64) is a prefix of Body(65): sizes should give unrelated bytes")
	}
}

func TestWGQuickParses(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	// Options are accepted by wireguard-go, though nobody listens there.
	site := peersite.Start(t, key.PublicKey(), peersite.Options{MTU: 1280, Endpoint: "127.0.0.1:9"})
	src := site.WGQuick(key, "[Socks5]\nBindAddress = 127.0.0.1:1080\n")
	c, err := config.Parse("wg0.conf", []byte(src), config.Options{})
	if err != nil {
		t.Fatalf("%v\n%s", err, src)
	}
	if len(c.Warnings) != 0 {
		t.Errorf("warnings: %v", c.Warnings)
	}
	in := c.Interface
	if !in.PrivateKey.Equal(key) || !slices.Equal(in.Addresses, []netip.Prefix{netip.PrefixFrom(peersite.OurV4, 32), netip.PrefixFrom(peersite.OurV6, 128)}) ||
		!slices.Equal(in.DNS, []netip.Addr{peersite.TheirV4}) || !slices.Equal(in.DNSSearch, []string{peersite.Domain}) {
		t.Errorf("interface %+v", in)
	}
	if len(c.Peers) != 1 {
		t.Fatalf("%d peers, want 1", len(c.Peers))
	}
	p := c.Peers[0]
	if p.PublicKey != site.PublicKey || p.Endpoint != site.Endpoint() ||
		!slices.Equal(p.AllowedIPs, []netip.Prefix{netip.PrefixFrom(peersite.TheirV4, 32), netip.PrefixFrom(peersite.TheirV6, 128)}) {
		t.Errorf("peer %+v, want the site %v at %s", p, site.PublicKey, site.Endpoint())
	}
	if len(c.Socks5) != 1 || c.Socks5[0].BindAddress != "127.0.0.1:1080" {
		t.Errorf("extra section lost: %+v", c.Socks5)
	}
}

// TestServices drives every service on both addresses, with wireguard-go
// on our side too.
func TestServices(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{})
	ours := site.WireGuardGoClient(t, key)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tr := &http.Transport{DialContext: ours.DialContext}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	for _, a := range []netip.Addr{peersite.TheirV4, peersite.TheirV6} {
		web := "http://" + netip.AddrPortFrom(a, 80).String()
		t.Run("http/"+a.String(), func(t *testing.T) {
			const size = 100003
			if got := get(t, client, "GET", web+fmt.Sprintf("/bytes/%d", size), ""); got != string(peersite.Body(size)) {
				t.Errorf("/bytes/%d: %d bytes differ from Body", size, len(got))
			}
			data := string(peersite.Body(70000))
			if got, want := get(t, client, "POST", web+"/sha256", data), fmt.Sprintf("%x %d", sha256.Sum256([]byte(data)), len(data)); got != want {
				t.Errorf("/sha256 = %q, want %q", got, want)
			}
			for _, m := range []string{"GET", "PUT", "DELETE", "PATCH", "OPTIONS"} {
				if got := get(t, client, m, web+"/echo", "payload"); got != m+" payload" {
					t.Errorf("%s /echo = %q", m, got)
				}
			}
		})
		t.Run("tcp/"+a.String(), func(t *testing.T) {
			if got := exchange(t, ours.DialContext, a, 7, []byte("echo me")); got != "echo me" {
				t.Errorf("echo: %q", got)
			}
			if got := exchange(t, ours.DialContext, a, 9, peersite.Body(300000)); got != "300000" {
				t.Errorf("discard: %q", got)
			}
			if got := exchange(t, ours.DialContext, a, 19, binary.BigEndian.AppendUint64(nil, 200001)); got != string(peersite.Body(200001)) {
				t.Errorf("source: %d bytes differ from Body", len(got))
			}
		})
		t.Run("udp/"+a.String(), func(t *testing.T) {
			c, err := ours.DialContext(ctx, "udp", netip.AddrPortFrom(a, 7).String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 100)
			if _, err := c.Write([]byte("datagram")); err != nil {
				t.Fatal(err)
			}
			if n, err := c.Read(buf); err != nil || string(buf[:n]) != "datagram" {
				t.Fatalf("udp echo: %q, %v", buf[:n], err)
			}
		})
	}

	t.Run("dns", func(t *testing.T) {
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return ours.DialContext(ctx, network, netip.AddrPortFrom(peersite.TheirV4, 53).String())
		}}
		got, err := r.LookupNetIP(ctx, "ip", "site."+peersite.Domain)
		if want := peersite.Records("site.tunnel.test"); err != nil || !slices.Equal(got, want) || len(want) != 2 {
			t.Errorf("site = %v, %v; want %v", got, err, want)
		}
		got, err = r.LookupNetIP(ctx, "ip4", "big."+peersite.Domain)
		if want := peersite.Records("BIG.tunnel.test."); err != nil || !slices.Equal(got, want) || len(want) < 40 {
			t.Errorf("big = %d addresses, %v; want its %d", len(got), err, len(want))
		}
		if site.DNS.UDPQueries.Load() == 0 || site.DNS.TCPQueries.Load() == 0 {
			t.Errorf("%d UDP and %d TCP queries; the truncated answer should have led to TCP", site.DNS.UDPQueries.Load(), site.DNS.TCPQueries.Load())
		}
		if !slices.Contains(site.DNS.Asked(), "big.tunnel.test.") {
			t.Errorf("asked %v", site.DNS.Asked())
		}
		if _, err := r.LookupNetIP(ctx, "ip", "nope."+peersite.Domain); err == nil {
			t.Error("nope resolved")
		}
	})

	t.Run("they-dial-us", func(t *testing.T) {
		l, err := ours.ListenTCPAddrPort(netip.AddrPortFrom(peersite.OurV4, 8080))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			if c, err := l.Accept(); err == nil {
				io.WriteString(c, "hello")
				c.Close()
			}
		}()
		c, err := site.Net.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(peersite.OurV4, 8080))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got, err := io.ReadAll(c); err != nil || string(got) != "hello" {
			t.Fatalf("from our listener: %q, %v", got, err)
		}
	})
}

// get sends a request with body and returns the response body.
func get(t *testing.T, client *http.Client, method, url, body string) string {
	t.Helper()
	// A reader of unknown length, so bodies go chunked.
	req, err := http.NewRequest(method, url, iotest.HalfReader(strings.NewReader(body)))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %s, %v", method, url, resp.Status, err)
	}
	return string(got)
}

// exchange sends msg to a:port over TCP, closes our sending side and
// returns all that comes back.
func exchange(t *testing.T, dial func(ctx context.Context, network, addr string) (net.Conn, error), a netip.Addr, port uint16, msg []byte) string {
	t.Helper()
	c, err := dial(context.Background(), "tcp", netip.AddrPortFrom(a, port).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	go func() {
		c.Write(msg)
		c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(got)
}

// TestStopLeavesNothing: after a site's cleanup, none of the goroutines
// it started remains, even with connections left open into it.
func TestStopLeavesNothing(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Run("site", func(t *testing.T) {
		key, _ := protocol.GeneratePrivateKey()
		site := peersite.Start(t, key.PublicKey(), peersite.Options{})
		ours := site.WireGuardGoClient(t, key)
		for _, port := range []uint16{7, 9, 19, 53, 80} {
			c, err := ours.DialContext(context.Background(), "tcp", netip.AddrPortFrom(peersite.TheirV4, port).String())
			if err != nil {
				t.Fatal(err)
			}
			_ = c // left open: stopping the site must not wait for us
		}
	})
	for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before the site, %d after it stopped:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
	}
}

// TestStopUnderTraffic stops sites while a client keeps dialing a closed
// port, so that the site's stack is answering with resets as it goes
// away: closing wireguard-go's TUN under a receiver that is still
// delivering panics the whole test binary.
func TestStopUnderTraffic(t *testing.T) {
	stopUnderLoad(t, 20, 50*time.Millisecond, func(ctx context.Context, ours dialer, wg *sync.WaitGroup) {
		for range 16 {
			wg.Go(func() {
				for ctx.Err() == nil {
					if c, err := ours.DialContext(ctx, "tcp", netip.AddrPortFrom(peersite.TheirV4, 1).String()); err == nil {
						c.Close()
					}
				}
			})
		}
	})
}

// TestStopWhileAnswering stops sites whose own stack is still answering:
// a client keeps writing on connections that the site closes as it
// stops, so the site's TCP goroutines send resets of their own accord
// while its TUN closes. tun/netstack's Close closed the TUN's channel
// under those sends, which panicked.
func TestStopWhileAnswering(t *testing.T) {
	stopUnderLoad(t, 8, 20*time.Millisecond, func(ctx context.Context, ours dialer, wg *sync.WaitGroup) {
		for range 16 {
			c, err := ours.DialContext(ctx, "tcp", netip.AddrPortFrom(peersite.TheirV4, 9).String())
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				defer c.Close()
				b := make([]byte, 1024)
				for ctx.Err() == nil {
					c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
					c.Write(b)
				}
			})
		}
	})
}

type dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// stopUnderLoad starts rounds sites one after another, each with a
// wireguard-go client that load sets to work on goroutines counted in wg
// until ctx ends, and stops each site settle after its load began.
func stopUnderLoad(t *testing.T, rounds int, settle time.Duration, load func(ctx context.Context, ours dialer, wg *sync.WaitGroup)) {
	for range rounds {
		key, _ := protocol.GeneratePrivateKey()
		site := peersite.Start(t, key.PublicKey(), peersite.Options{})
		ours := site.WireGuardGoClient(t, key)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		load(ctx, ours, &wg)
		time.Sleep(settle)
		site.Stop()
		cancel()
		wg.Wait()
	}
}
