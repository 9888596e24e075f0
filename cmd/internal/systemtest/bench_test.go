package systemtest

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/netstack/wgquick"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/proxy/socksclient"
)

// BenchmarkEndToEnd measures the built binary against a wireguard-go peer:
// bulk download and upload through SOCKS5 and HTTP CONNECT, and 1-byte
// echo round trips. Two baselines run in the same process and the same
// run, because these machines are noisy: "direct" dials the same servers
// from wgbore's netstack as a library (no proxy hop), and "wggo" does it
// from wireguard-go's own netstack. The proxy paths' ratio to "direct" is
// what the proxy hop costs.
//
//	go test ./cmd/internal/systemtest -run '^$' -bench EndToEnd -benchtime 200x
func BenchmarkEndToEnd(b *testing.B) {
	ours, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(b, ours.PublicKey(), peersite.Options{})
	conf := WriteFile(b, b.TempDir(), "wg0.conf", site.WGQuick(ours, "[Socks5]\nBindAddress = 127.0.0.1:0\n\n[http]\nBindAddress = 127.0.0.1:0\nUsername = u\nPassword = p\n"))
	d := startDaemon(b, conf, "-log-level", "info")
	socks, httpProxy := d.addr(b, "socks5 ", 0), d.addr(b, "http ", 0)

	// A site accepts one peer, so each baseline client gets a site of
	// its own, identical to the daemon's.
	libKey, _ := protocol.GeneratePrivateKey()
	libSite := peersite.Start(b, libKey.PublicKey(), peersite.Options{})
	lib := openLibrary(b, libSite, libKey)
	wggoKey, _ := protocol.GeneratePrivateKey()
	wggoSite := peersite.Start(b, wggoKey.PublicKey(), peersite.Options{})
	wggo := wggoSite.WireGuardGoClient(b, wggoKey)

	dialers := []struct {
		name string
		dial func(ctx context.Context, addr string) (net.Conn, error)
	}{
		{"socks5", func(ctx context.Context, addr string) (net.Conn, error) {
			return socksclient.Connect(ctx, socks, socksclient.Auth{}, netip.MustParseAddrPort(addr))
		}},
		{"http-connect", func(ctx context.Context, addr string) (net.Conn, error) {
			return httpConnect(ctx, httpProxy, "u", "p", addr)
		}},
		{"direct", func(ctx context.Context, addr string) (net.Conn, error) { return lib.DialContext(ctx, "tcp", addr) }},
		{"wggo", func(ctx context.Context, addr string) (net.Conn, error) { return wggo.DialContext(ctx, "tcp", addr) }},
	}
	const chunk = 1 << 20
	for _, dl := range dialers {
		b.Run("download/"+dl.name, func(b *testing.B) {
			c := benchDial(b, dl.dial, "10.0.0.2:19")
			defer c.Close()
			b.SetBytes(chunk)
			b.ResetTimer()
			var n [8]byte
			binary.BigEndian.PutUint64(n[:], uint64(b.N)*chunk)
			c.Write(n[:])
			got, err := io.Copy(io.Discard, c)
			if err != nil || got != int64(b.N)*chunk {
				b.Fatalf("downloaded %d of %d bytes: %v", got, int64(b.N)*chunk, err)
			}
		})
		b.Run("upload/"+dl.name, func(b *testing.B) {
			c := benchDial(b, dl.dial, "10.0.0.2:9")
			defer c.Close()
			buf := peersite.Body(chunk)
			b.SetBytes(chunk)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			c.(interface{ CloseWrite() error }).CloseWrite()
			count, err := io.ReadAll(c)
			if err != nil || string(count) != strconv.Itoa(b.N*chunk) {
				b.Fatalf("the site counted %q bytes, want %d: %v", count, b.N*chunk, err)
			}
		})
		b.Run("echo-1B/"+dl.name, func(b *testing.B) {
			c := benchDial(b, dl.dial, "10.0.0.2:7")
			defer c.Close()
			rtts := make([]time.Duration, 0, b.N)
			one := []byte{'x'}
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				c.Write(one)
				if _, err := io.ReadFull(c, one); err != nil {
					b.Fatal(err)
				}
				rtts = append(rtts, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(rtts)
			b.ReportMetric(float64(rtts[len(rtts)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(rtts[len(rtts)*99/100].Microseconds()), "p99-µs")
		})
	}
}

func benchDial(b *testing.B, dial func(context.Context, string) (net.Conn, error), addr string) net.Conn {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dial(ctx, addr)
	if err != nil {
		b.Fatal(err)
	}
	// A stalled transfer fails the benchmark with a timeout instead of
	// hanging it: one run here once stalled mid-upload under heavy load.
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	return c
}

// openLibrary opens wgbore's netstack in-process as a peer of site.
func openLibrary(b *testing.B, site *peersite.Site, key protocol.PrivateKey) *netstack.Net {
	b.Helper()
	path := WriteFile(b, b.TempDir(), "lib.conf", site.WGQuick(key, ""))
	n, err := wgquick.Open(context.Background(), path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { n.Close() })
	return n
}

// httpConnect opens a CONNECT tunnel through an HTTP proxy.
func httpConnect(ctx context.Context, proxyAddr, user, pass, target string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return nil, err
	}
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", target, target, auth)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %s", target, res.Status)
	}
	return &bufferedConn{Conn: c, r: br}, nil
}

// bufferedConn reads first what the response parser buffered.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
func (c *bufferedConn) CloseWrite() error {
	return c.Conn.(interface{ CloseWrite() error }).CloseWrite()
}
