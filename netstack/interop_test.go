package netstack

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/device"
	wgnetstack "golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

var (
	ourV4   = netip.MustParseAddr("10.0.0.1")
	theirV4 = netip.MustParseAddr("10.0.0.2")
	ourV6   = netip.MustParseAddr("fd00::1")
	theirV6 = netip.MustParseAddr("fd00::2")
)

// peerSite is a wireguard-go device with its own gVisor netstack (the
// wireguard-go tun/netstack package), serving inside its tunnel: HTTP
// with bodies of any size, TCP echo and UDP echo.
type peerSite struct {
	dev  *device.Device
	tnet *wgnetstack.Net
	key  protocol.PrivateKey
	port uint16

	// Server goroutines and their connections. The device closes only
	// after every goroutine has returned: wireguard-go's tun/netstack
	// races (a send on a channel its Close closes) if its stack is still
	// writing a reply when the device goes away.
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []io.Closer
}

// serve runs f as one of the site's server goroutines.
func (s *peerSite) serve(f func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// track registers a connection to be closed before the device is.
func (s *peerSite) track(c io.Closer) {
	s.mu.Lock()
	s.conns = append(s.conns, c)
	s.mu.Unlock()
}

// closeAndWait closes every connection and waits for every server
// goroutine.
func (s *peerSite) closeAndWait() {
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// body returns n deterministic bytes, so both ends can hash them.
func body(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), 7))
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func startPeerSite(t testing.TB, ours protocol.PublicKey) *peerSite {
	t.Helper()
	key, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	tun, tnet, err := wgnetstack.CreateNetTUN([]netip.Addr{theirV4, theirV6}, nil, protocol.DefaultMTU)
	if err != nil {
		t.Fatal(err)
	}
	bind := &wgtest.LoopbackBind{Addr: netip.MustParseAddr("127.0.0.1")}
	dev := device.NewDevice(tun, bind, device.NewLogger(device.LogLevelSilent, ""))
	if err := dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=0\npublic_key=%s\nallowed_ip=10.0.0.1/32\nallowed_ip=fd00::1/128\n",
		hex.EncodeToString(key[:]), hex.EncodeToString(ours[:]))); err != nil {
		t.Fatal(err)
	}
	if err := dev.Up(); err != nil {
		t.Fatal(err)
	}
	s := &peerSite{dev: dev, tnet: tnet, key: key, port: bind.Port()}

	var closers []io.Closer
	for _, a := range []netip.Addr{theirV4, theirV6} {
		l, err := tnet.ListenTCPAddrPort(netip.AddrPortFrom(a, 80))
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var n int
			fmt.Sscanf(strings.TrimPrefix(r.URL.Path, "/bytes/"), "%d", &n)
			w.Header().Set("Content-Length", fmt.Sprint(n))
			w.Write(body(n))
		})}
		s.serve(func() { srv.Serve(l) })
		closers = append(closers, srv)

		el, err := tnet.ListenTCPAddrPort(netip.AddrPortFrom(a, 7))
		if err != nil {
			t.Fatal(err)
		}
		s.serve(func() {
			for {
				c, err := el.Accept()
				if err != nil {
					return
				}
				s.track(c)
				s.serve(func() { io.Copy(c, c); c.Close() })
			}
		})
		closers = append(closers, el)

		uc, err := tnet.ListenUDPAddrPort(netip.AddrPortFrom(a, 7))
		if err != nil {
			t.Fatal(err)
		}
		s.serve(func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := uc.ReadFrom(buf)
				if err != nil {
					return
				}
				uc.WriteTo(buf[:n], from)
			}
		})
		closers = append(closers, uc)
	}
	t.Cleanup(func() {
		for _, c := range closers {
			s.track(c)
		}
		s.closeAndWait()
		dev.Close()
	})
	return s
}

// fetchBytes GETs url, which serves body(size), and checks length and
// sha256.
func fetchBytes(t *testing.T, client *http.Client, url string, size int) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	got, err := io.Copy(h, resp.Body)
	if err != nil {
		t.Fatalf("after %d bytes: %v", got, err)
	}
	want := sha256.Sum256(body(size))
	if got != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("got %d bytes with sha256 %x, want %d bytes with %x", got, h.Sum(nil), size, want)
	}
}

func openOurs(t testing.TB, key protocol.PrivateKey, site *peerSite) *Net {
	t.Helper()
	return openOursWith(t, key, site, nil)
}

func TestNetAgainstWireGuardGoNetstack(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := startPeerSite(t, key.PublicKey())
	n := openOurs(t, key, site)
	defer n.Close()

	client := &http.Client{Transport: &http.Transport{DialContext: n.DialContext}, Timeout: 2 * time.Minute}
	for _, c := range []struct {
		host string
		size int
	}{
		{theirV4.String(), 64 << 20},
		{"[" + theirV6.String() + "]", 8 << 20},
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
		data := body(8 << 20)
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
		for _, a := range []netip.Addr{theirV4, theirV6} {
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
		c, err := site.tnet.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(ourV4, 8080))
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

// goroutines lists the running goroutines by ID with their stacks.
func goroutines() map[string]string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	out := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		id, _, _ := strings.Cut(g, " [")
		out[id] = g
	}
	return out
}

// TestCloseLeaksNothing opens a Net, uses it, closes it, and expects no
// goroutine of ours left: every goroutine that appeared since Open must
// be gone, except the wireguard-go peer's own (its echo handler may still
// be waiting for a FIN our closed stack never sent).
func TestCloseLeaksNothing(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := startPeerSite(t, key.PublicKey())
	before := goroutines()
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
		for id, g := range goroutines() {
			if _, old := before[id]; old || strings.Contains(g, "startPeerSite") || strings.Contains(g, "golang.zx2c4.com/wireguard") ||
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
