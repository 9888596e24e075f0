package egress

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack"
	"github.com/wgbore/wgbore/netstack/inbound"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// refusalGuard bounds how long a refusal may take: generous, since it
// only has to tell an RST from a dial that hangs until its timeout.
const refusalGuard = 10 * time.Second

var hostLoopback = netip.MustParseAddr("127.0.0.1")

// serverSetup is our Net in server mode and a wireguard-go client of it.
type serverSetup struct {
	n      *netstack.Net
	eg     *Server
	client *peersite.Client
	dials  *dialLog
}

// dialLog records the host dials the forwarder makes.
type dialLog struct {
	mu    sync.Mutex
	addrs []string
}

func (d *dialLog) dial(ctx context.Context, network, address string) (net.Conn, error) {
	d.mu.Lock()
	d.addrs = append(d.addrs, network+" "+address)
	d.mu.Unlock()
	var nd net.Dialer
	return nd.DialContext(ctx, network, address)
}

func (d *dialLog) list() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.addrs...)
}

// openNet opens our Net on 127.0.0.1, at OurV4 and OurV6, with one peer
// that routes allowed, at endpoint when it is not empty.
func openNet(t testing.TB, ours protocol.PrivateKey, peer protocol.PublicKey, endpoint string, allowed ...netip.Prefix) *netstack.Net {
	t.Helper()
	n, err := netstack.Open(context.Background(), netstack.Config{
		PrivateKey:  ours,
		Addresses:   []netip.Prefix{netip.PrefixFrom(peersite.OurV4, 32), netip.PrefixFrom(peersite.OurV6, 128)},
		ListenAddrs: []netip.Addr{hostLoopback},
		Peers:       []protocol.PeerConfig{{PublicKey: peer, Endpoint: endpoint, AllowedIPs: allowed}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// theirPrefixes are the client's addresses, as our Net routes them to it.
var theirPrefixes = []netip.Prefix{netip.PrefixFrom(peersite.TheirV4, 32), netip.PrefixFrom(peersite.TheirV6, 128)}

// startServer opens our Net as a server on 127.0.0.1 with the client as
// its one peer, starts the egress on it with cfg (its Dial recorded
// unless set), and starts the client, which routes everything to us.
func startServer(t testing.TB, cfg Config) *serverSetup {
	t.Helper()
	ourKey, _ := protocol.GeneratePrivateKey()
	clientKey, _ := protocol.GeneratePrivateKey()
	n := openNet(t, ourKey, clientKey.PublicKey(), "", theirPrefixes...)
	s := &serverSetup{n: n, dials: &dialLog{}}
	if cfg.Dial == nil {
		cfg.Dial = s.dials.dial
	}
	eg, err := Start(n, cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.eg = eg
	s.client = peersite.StartClient(t, ourKey.PublicKey(), peersite.Options{
		PrivateKey: clientKey,
		Endpoint:   netip.AddrPortFrom(hostLoopback, n.LocalPort()).String(),
	})
	return s
}

func (s *serverSetup) dial(t testing.TB, network, address string) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return s.client.DialContext(ctx, network, address)
}

// hostListen listens on the host's a:0 and closes the listener when the
// test ends.
func hostListen(t testing.TB, a netip.Addr) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", netip.AddrPortFrom(a, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// serveHostHTTP runs an HTTP server on the host's 127.0.0.1: GET
// /bytes/N answers Body(N), and /sha256 answers the hash and length of
// the request body.
func serveHostHTTP(t testing.TB) netip.AddrPort {
	t.Helper()
	l := hostListen(t, hostLoopback)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bytes/{n}", func(w http.ResponseWriter, r *http.Request) {
		size, _ := strconv.Atoi(r.PathValue("n"))
		w.Header().Set("Content-Length", strconv.Itoa(size))
		w.Write(peersite.Body(size))
	})
	mux.HandleFunc("/sha256", hashBody)
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return netip.MustParseAddrPort(l.Addr().String())
}

// hashBody answers the hash and length of the request body.
func hashBody(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	size, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	fmt.Fprintf(w, "%x %d", h.Sum(nil), size)
}

// serveHostTCP accepts on l and runs handle for each connection.
func serveHostTCP(l net.Listener, handle func(net.Conn)) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// serveHostUDPEcho echoes datagrams on the host's a:0.
func serveHostUDPEcho(t testing.TB, a netip.Addr) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", netip.AddrPortFrom(a, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

func allowHostLoopback() Policy {
	return Policy{Allow: []netip.Prefix{netip.PrefixFrom(hostLoopback, 32)}}
}

// TestEgressTCPToHostLoopback fetches 64 MiB from an HTTP server on the
// host's 127.0.0.1 through our server, and uploads 8 MiB to it.
func TestEgressTCPToHostLoopback(t *testing.T) {
	s := startServer(t, Config{Policy: allowHostLoopback()})
	web := serveHostHTTP(t)
	tr := &http.Transport{DialContext: s.client.DialContext}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 2 * time.Minute}

	const size = 64 << 20
	start := time.Now()
	resp, err := client.Get(fmt.Sprintf("http://%s/bytes/%d", web, size))
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	got, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(peersite.Body(size))
	if got != size || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("download: %d bytes, sha256 %x; want %d bytes, %x", got, h.Sum(nil), size, want)
	}
	t.Logf("download: %d MiB in %v (%.1f MB/s)", size>>20, time.Since(start).Round(time.Millisecond), size/1e6/time.Since(start).Seconds())

	const upSize = 8 << 20
	resp, err = client.Post(fmt.Sprintf("http://%s/sha256", web), "application/octet-stream", bytes.NewReader(peersite.Body(upSize)))
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	upWant := sha256.Sum256(peersite.Body(upSize))
	if string(answer) != fmt.Sprintf("%x %d", upWant, upSize) {
		t.Fatalf("upload: host saw %q", answer)
	}
	if dials := s.dials.list(); len(dials) == 0 || dials[0] != "tcp "+web.String() {
		t.Errorf("host dials %v, want tcp %v", dials, web)
	}
}

// TestEgressHalfClose checks that a FIN travels both ways on its own:
// the client shuts its sending side, the host reads to EOF and only then
// answers, and the client reads the answer and then EOF.
func TestEgressHalfClose(t *testing.T) {
	s := startServer(t, Config{Policy: allowHostLoopback()})
	l := hostListen(t, hostLoopback)
	serveHostTCP(l, func(c net.Conn) {
		n, err := io.Copy(io.Discard, c)
		if err != nil {
			return
		}
		fmt.Fprintf(c, "read %d", n)
	})
	c, err := s.dial(t, "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(peersite.Body(100000)); err != nil {
		t.Fatal(err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	answer, err := io.ReadAll(c)
	if err != nil || string(answer) != "read 100000" {
		t.Fatalf("answer %q, %v", answer, err)
	}
}

func TestEgressUDPEcho(t *testing.T) {
	s := startServer(t, Config{Policy: allowHostLoopback()})
	echo := serveHostUDPEcho(t, hostLoopback)
	c, err := s.dial(t, "udp", echo.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 2000)
	for i, size := range []int{1, 100, 1200} {
		msg := peersite.Body(size)
		// A datagram may be lost before the handshake; retry a few times.
		var got []byte
		for try := 0; try < 10 && got == nil; try++ {
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			if n, err := c.Read(buf); err == nil {
				got = buf[:n]
			}
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("datagram %d: echo of %d bytes came back as %d bytes", i, size, len(got))
		}
	}
}

// TestEgressOwnAddress checks that a flow to the server's own tunnel
// address on a port without a listener of ours reaches the host's
// loopback on that port, IPv4 to 127.0.0.1 and IPv6 to ::1, and only
// where the egress policy allows loopback: the default refuses it at once.
func TestEgressOwnAddress(t *testing.T) {
	v6Loopback := netip.IPv6Loopback()
	tcp4 := hostListen(t, hostLoopback)
	serveHostTCP(tcp4, func(c net.Conn) { io.WriteString(c, "host 127.0.0.1") })
	tcp6, err := net.Listen("tcp", netip.AddrPortFrom(v6Loopback, 0).String())
	if err != nil {
		t.Skipf("no IPv6 loopback on this host: %v", err)
	}
	t.Cleanup(func() { tcp6.Close() })
	serveHostTCP(tcp6, func(c net.Conn) { io.WriteString(c, "host ::1") })
	udp4 := serveHostUDPEcho(t, hostLoopback)
	port := func(l net.Listener) uint16 { return netip.MustParseAddrPort(l.Addr().String()).Port() }

	t.Run("allowed", func(t *testing.T) {
		s := startServer(t, Config{Policy: Policy{Allow: []netip.Prefix{
			netip.PrefixFrom(hostLoopback, 32), netip.PrefixFrom(v6Loopback, 128)}}})
		for _, c := range []struct {
			own  netip.Addr
			port uint16
			want string
		}{{peersite.OurV4, port(tcp4), "host 127.0.0.1"}, {peersite.OurV6, port(tcp6), "host ::1"}} {
			conn, err := s.dial(t, "tcp", netip.AddrPortFrom(c.own, c.port).String())
			if err != nil {
				t.Fatalf("tcp to %v: %v", c.own, err)
			}
			conn.SetDeadline(time.Now().Add(30 * time.Second))
			got, err := io.ReadAll(conn)
			conn.Close()
			if err != nil || string(got) != c.want {
				t.Fatalf("tcp to %v port %d: %q, %v; want %q", c.own, c.port, got, err, c.want)
			}
		}
		conn, err := s.dial(t, "udp", netip.AddrPortFrom(peersite.OurV4, udp4.Port()).String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.Write([]byte("echo"))
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		buf := make([]byte, 100)
		if n, err := conn.Read(buf); err != nil || string(buf[:n]) != "echo" {
			t.Fatalf("udp echo through our own address: %q, %v", buf[:n], err)
		}
		want := []string{"tcp " + tcp4.Addr().String(), "tcp " + tcp6.Addr().String(), "udp " + udp4.String()}
		if got := s.dials.list(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("host dials %v, want %v", got, want)
		}
	})

	t.Run("default policy", func(t *testing.T) {
		s := startServer(t, Config{})
		for _, own := range []netip.Addr{peersite.OurV4, peersite.OurV6} {
			conn, err := s.dial(t, "tcp", netip.AddrPortFrom(own, port(tcp4)).String())
			if err == nil {
				conn.Close()
				t.Fatalf("tcp to %v: connected", own)
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("tcp to %v: %v, want connection refused", own, err)
			}
		}
		conn, err := s.dial(t, "udp", netip.AddrPortFrom(peersite.OurV4, udp4.Port()).String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.Write([]byte("echo"))
		if err := readRefused(conn); err != nil {
			t.Fatal(err)
		}
		if d := s.dials.list(); len(d) != 0 {
			t.Errorf("host dials %v under the default policy, want none", d)
		}
	})
}

// TestEgressRefusals checks that every refused flow is refused at once,
// with an RST or an ICMP port unreachable, and that no host dial happens
// for a flow the policy denies.
func TestEgressRefusals(t *testing.T) {
	s := startServer(t, Config{Policy: allowHostLoopback()})
	// Warm up: the first packet waits for the handshake.
	echo := serveHostUDPEcho(t, hostLoopback)
	if c, err := s.dial(t, "udp", echo.String()); err == nil {
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		c.Read(make([]byte, 10))
		c.Close()
	}

	// A listener on 127.0.0.2, denied because only 127.0.0.1/32 is
	// allowed: it must never see a connection.
	denied := hostListen(t, netip.MustParseAddr("127.0.0.2"))
	accepted := make(chan struct{}, 1)
	serveHostTCP(denied, func(net.Conn) { accepted <- struct{}{} })
	closed := hostListen(t, hostLoopback)
	closedAddr := closed.Addr().String()
	closed.Close()

	for _, c := range []struct{ name, addr string }{
		{"denied loopback address", denied.Addr().String()},
		{"denied private range", "10.9.9.9:80"},
		{"denied v6 loopback", "[::1]:80"},
		{"allowed but closed host port", closedAddr},
	} {
		t.Run("tcp/"+c.name, func(t *testing.T) {
			start := time.Now()
			conn, err := s.dial(t, "tcp", c.addr)
			if err == nil {
				conn.Close()
				t.Fatal("connected")
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("%v, want connection refused", err)
			}
			if d := time.Since(start); d > refusalGuard {
				t.Fatalf("refusal took %v", d)
			}
		})
	}
	select {
	case <-accepted:
		t.Error("the denied host listener accepted a connection")
	default:
	}

	deniedUDP := serveHostUDPEcho(t, netip.MustParseAddr("127.0.0.2"))
	for _, c := range []struct{ name, addr string }{
		{"denied loopback address", deniedUDP.String()},
		{"denied private range", "10.9.9.9:53"},
	} {
		t.Run("udp/"+c.name, func(t *testing.T) {
			conn, err := s.dial(t, "udp", c.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			if err := readRefused(conn); err != nil {
				t.Fatal(err)
			}
		})
	}
	for _, d := range s.dials.list() {
		if strings.Contains(d, "127.0.0.2") || strings.Contains(d, "10.9.9.9") || strings.Contains(d, "::1") {
			t.Errorf("host dial for a denied flow: %s", d)
		}
	}
}

// TestEgressRefusesTunnelDestinations: an address inside some peer's
// AllowedIPs lives in the tunnel, not on the host's network, so a flow to
// it is refused even when the egress policy allows its range, and the
// host is never asked.
func TestEgressRefusesTunnelDestinations(t *testing.T) {
	var dialed atomic.Int32
	s := startServer(t, Config{
		Policy: Policy{Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		// No host dial may happen here: the test must not reach any host
		// address but loopback.
		Dial: func(context.Context, string, string) (net.Conn, error) {
			dialed.Add(1)
			return nil, syscall.ECONNREFUSED
		},
	})
	other, _ := protocol.GeneratePrivateKey()
	if err := s.n.Engine().SetPeer(protocol.PeerConfig{PublicKey: other.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.7.0.0/16")}}); err != nil {
		t.Fatal(err)
	}
	c, err := s.dial(t, "tcp", "10.7.0.1:80")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("%v, want connection refused", err)
	}
	u, err := s.dial(t, "udp", "10.7.0.1:53")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.Write([]byte("x"))
	if err := readRefused(u); err != nil {
		t.Fatal(err)
	}
	if n := dialed.Load(); n != 0 {
		t.Fatalf("%d host dials", n)
	}
}

// TestEgressFlowLimit: at MaxFlowsPerPeer, or at MaxFlows for all
// peers together, the next flow is refused at once (RST, or ICMP
// unreachable for UDP) rather than held, and counted by its reason; the
// open flows carry on, and once one ends a new one is accepted.
func TestEgressFlowLimit(t *testing.T) {
	for _, c := range []struct {
		name    string
		fc      Config
		refused func(FlowCounts) uint64
	}{
		{"per peer", Config{MaxFlowsPerPeer: 2}, func(c FlowCounts) uint64 { return c.RefusedPeerCap }},
		{"all peers", Config{MaxFlowsPerPeer: 100, MaxFlows: 2}, func(c FlowCounts) uint64 { return c.RefusedGlobalCap }},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.fc.Policy = allowHostLoopback()
			s := startServer(t, c.fc)
			l := hostListen(t, hostLoopback)
			serveHostTCP(l, func(c net.Conn) { io.Copy(c, c) })
			echo := serveHostUDPEcho(t, hostLoopback)

			var open []net.Conn
			defer func() {
				for _, c := range open {
					c.Close()
				}
			}()
			for range 2 {
				c, err := s.dial(t, "tcp", l.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				open = append(open, c)
			}
			if c, err := s.dial(t, "tcp", l.Addr().String()); !errors.Is(err, syscall.ECONNREFUSED) {
				if c != nil {
					c.Close()
				}
				t.Fatalf("third TCP flow: %v, want connection refused", err)
			}
			u, err := s.dial(t, "udp", echo.String())
			if err != nil {
				t.Fatal(err)
			}
			u.Write([]byte("x"))
			if err := readRefused(u); err != nil {
				t.Fatalf("UDP flow over the limit: %v", err)
			}
			u.Close()
			counts := s.eg.FlowCounts()[s.client.PublicKey]
			if counts.Open != 2 || c.refused(counts) != 2 || counts.RefusedPeerCap+counts.RefusedGlobalCap+counts.RefusedMemory != 2 {
				t.Errorf("flow counts %+v: want 2 open and the 2 refusals under this limit alone", counts)
			}
			for i, c := range open {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write([]byte("still here")); err != nil {
					t.Fatalf("open flow %d after the refusals: %v", i, err)
				}
				if got, err := io.ReadAll(io.LimitReader(c, 10)); err != nil || string(got) != "still here" {
					t.Fatalf("open flow %d after the refusals: %q, %v", i, got, err)
				}
			}

			open[0].Close()
			f := s.eg
			wgtest.WaitFor(t, 10*time.Second, "the closed flow to end", func() bool { return f.flows(s.client.PublicKey) < 2 })
			c, err := s.dial(t, "tcp", l.Addr().String())
			if err != nil {
				t.Fatalf("after a flow ended: %v", err)
			}
			open = append(open, c)
		})
	}
}

// TestEgressAdmit: while Admit says no (a memory budget nearly spent),
// new flows are refused at once as over the flow limit; the flows
// already open keep working, and new ones are taken again once Admit
// says yes.
func TestEgressAdmit(t *testing.T) {
	var full atomic.Bool
	s := startServer(t, Config{Policy: allowHostLoopback(), Admit: func() bool { return !full.Load() }})
	l := hostListen(t, hostLoopback)
	serveHostTCP(l, func(c net.Conn) { io.Copy(c, c) })
	echo := serveHostUDPEcho(t, hostLoopback)

	open, err := s.dial(t, "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	full.Store(true)
	if c, err := s.dial(t, "tcp", l.Addr().String()); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("TCP flow refused by Admit: %v, want connection refused", err)
	}
	u, err := s.dial(t, "udp", echo.String())
	if err != nil {
		t.Fatal(err)
	}
	u.Write([]byte("x"))
	if err := readRefused(u); err != nil {
		t.Fatalf("UDP flow refused by Admit: %v", err)
	}
	u.Close()
	open.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := open.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(open, make([]byte, 4)); err != nil {
		t.Fatalf("the flow open before Admit said no: %v", err)
	}

	full.Store(false)
	c, err := s.dial(t, "tcp", l.Addr().String())
	if err != nil {
		t.Fatalf("once Admit says yes again: %v", err)
	}
	c.Close()
}

// TestEgressUDPIdle: a UDP flow with traffic outlives UDPIdleTimeout,
// and ends after it without, and its count with it.
func TestEgressUDPIdle(t *testing.T) {
	const idle = 300 * time.Millisecond
	s := startServer(t, Config{Policy: allowHostLoopback(), UDPIdleTimeout: idle})
	echo := serveHostUDPEcho(t, hostLoopback)
	c, err := s.dial(t, "udp", echo.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 10)
	var ok bool
	for try := 0; try < 10 && !ok; try++ {
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(time.Second))
		_, err = c.Read(buf)
		ok = err == nil
	}
	if !ok {
		t.Fatal("no echo")
	}
	f := s.eg
	for end := time.Now().Add(3 * idle); time.Now().Before(end); time.Sleep(idle / 6) {
		c.Write([]byte("x"))
		if got := f.flows(s.client.PublicKey); got != 1 {
			t.Fatalf("%d flows open while the flow has traffic, want 1", got)
		}
	}
	wgtest.WaitFor(t, 10*time.Second, "the idle UDP flow to end", func() bool { return f.flows(s.client.PublicKey) == 0 })
}

// TestEgressPing documents ICMP echo in server mode that never reaches
// the host: a ping to our tunnel address is answered by gVisor, and one
// to a destination the egress policy denies is dropped unanswered (see
// Start). TestEgressPingHost covers the pings that are forwarded.
func TestEgressPing(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")},
	})
	n := openNet(t, key, site.PublicKey, site.Endpoint(), theirPrefixes...)
	// 198.51.100.0/24 is public, so allowed by default: deny it, so that
	// no ping of this test leaves the host.
	if _, err := Start(n, Config{Policy: Policy{Deny: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}}); err != nil {
		t.Fatal(err)
	}
	// Our first packet starts the handshake: the site knows no endpoint.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := n.Ping(ctx, peersite.TheirV4); err != nil {
		t.Fatal(err)
	}
	ping := func(dst string, wait time.Duration) error {
		pc, err := site.Net.DialPingAddr(netip.Addr{}, netip.MustParseAddr(dst))
		if err != nil {
			return err
		}
		defer pc.Close()
		pc.SetDeadline(time.Now().Add(wait))
		if _, err := pc.Write([]byte{8, 0, 0, 0, 0, 1, 0, 1, 'h', 'i'}); err != nil {
			return err
		}
		buf := make([]byte, 100)
		m, err := pc.Read(buf)
		if err != nil {
			return err
		}
		if m < 8 || buf[0] != 0 {
			return fmt.Errorf("answer % x is not an echo reply", buf[:m])
		}
		return nil
	}
	// ICMP may lose a packet, as ping(8) expects: a few tries, and one
	// answer is enough.
	var err error
	for range 5 {
		if err = ping(peersite.OurV4.String(), 3*time.Second); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("ping our tunnel address, 5 tries: %v", err)
	}
	for _, dst := range []string{"198.51.100.1", "10.9.9.9"} {
		if err := ping(dst, 500*time.Millisecond); err == nil || !isTimeout(err) {
			t.Errorf("ping %s: %v, want no answer", dst, err)
		}
	}
}

// TestEgressPingHost pings the host's 127.0.0.1 through our server,
// which the egress policy allows: the host's echo reply comes back as an
// echo reply from 127.0.0.1 with the client's identifier, sequence number
// and payload. A ping to a denied destination gets no reply.
func TestEgressPingHost(t *testing.T) {
	s := startServer(t, Config{Policy: allowHostLoopback()})
	f := s.eg
	p := f.ping.Load()
	if p == nil {
		t.Skip("the host allows neither a ping socket (net.ipv4.ping_group_range) nor a raw ICMP socket (CAP_NET_RAW)")
	}
	t.Logf("raw socket: %v", p.raw)
	ping := func(dst netip.Addr, seq uint16, payload []byte, wait time.Duration) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		return s.client.Ping(ctx, dst, seq, payload)
	}
	// The first ping also waits for the client's handshake with us.
	var got []byte
	var err error
	for try := 0; try < 10; try++ {
		if got, err = ping(hostLoopback, uint16(try+1), []byte("through the tunnel"), 2*time.Second); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("ping %v: %v", hostLoopback, err)
	}
	if string(got) != "through the tunnel" {
		t.Fatalf("echo payload %q, want %q", got, "through the tunnel")
	}
	// Several at once, each answered with its own payload.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := bytes.Repeat([]byte{byte(i)}, 100+i)
			got, err := ping(hostLoopback, uint16(100+i), want, 10*time.Second)
			if err != nil {
				t.Errorf("ping %d: %v", i, err)
			} else if !bytes.Equal(got, want) {
				t.Errorf("ping %d: payload % x, want % x", i, got, want)
			}
		}()
	}
	wg.Wait()
	if _, err := ping(netip.MustParseAddr("10.9.9.9"), 7, []byte("denied"), 500*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ping 10.9.9.9: %v, want no answer", err)
	}
	wgtest.WaitFor(t, 10*time.Second, "the ping forwarder to hold no request awaiting a reply", func() bool { return p.outstanding(s.client.PublicKey) == 0 })
}

// TestEgressPingHost6 is TestEgressPingHost for ICMPv6 to the host's
// ::1. It also checks that a ping to a denied IPv6 destination is not
// answered: gVisor answers ICMPv6 echo to any address of promiscuous mode
// itself unless our handler claims it.
func TestEgressPingHost6(t *testing.T) {
	loop6 := netip.MustParseAddr("::1")
	// 2001:db8::/32 is public, so allowed by default: deny it, so that no
	// ping of this test leaves the host.
	s := startServer(t, Config{Policy: Policy{
		Allow: []netip.Prefix{netip.PrefixFrom(loop6, 128)},
		Deny:  []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")},
	}})
	ping := func(dst netip.Addr, seq uint16, payload []byte, wait time.Duration) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		return s.client.Ping(ctx, dst, seq, payload)
	}
	// Our own address is answered by gVisor; this also waits for the
	// client's handshake with us.
	var err error
	for try := 0; try < 10; try++ {
		if _, err = ping(peersite.OurV6, uint16(try+1), []byte("own"), 2*time.Second); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("ping %v: %v", peersite.OurV6, err)
	}
	for _, dst := range []string{"fd00::9", "2001:db8::1"} {
		if _, err := ping(netip.MustParseAddr(dst), 7, []byte("denied"), 500*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("ping %s: %v, want no answer", dst, err)
		}
	}
	p := s.eg.ping6.Load()
	if p == nil {
		t.Skip("the host allows neither an ICMPv6 ping socket (net.ipv4.ping_group_range) nor a raw ICMPv6 socket (CAP_NET_RAW)")
	}
	if l, err := net.ListenPacket("udp6", "[::1]:0"); err != nil {
		t.Skipf("the host has no ::1: %v", err)
	} else {
		l.Close()
	}
	t.Logf("raw socket: %v", p.raw)
	got, err := ping(loop6, 100, []byte("through the tunnel"), 10*time.Second)
	if err != nil {
		t.Fatalf("ping %v: %v", loop6, err)
	}
	if string(got) != "through the tunnel" {
		t.Fatalf("echo payload %q, want %q", got, "through the tunnel")
	}
	wgtest.WaitFor(t, 10*time.Second, "the ping forwarder to hold no request awaiting a reply", func() bool { return p.outstanding(s.client.PublicKey) == 0 })
}

// TestEgressPingLimit fills one peer's outstanding pings: the next one is
// dropped, and expired ones are swept.
func TestEgressPingLimit(t *testing.T) {
	s := startServer(t, Config{Policy: allowHostLoopback()})
	p := s.eg.ping.Load()
	if p == nil {
		t.Skip("the host allows neither a ping socket (net.ipv4.ping_group_range) nor a raw ICMP socket (CAP_NET_RAW)")
	}
	peer := s.client.PublicKey
	src := peersite.TheirV4
	// Registered directly, as the packet path does, without sending: the
	// host would answer at once and free the slots.
	p.mu.Lock()
	for i := range maxPingsPerPeer {
		p.pending[pingKey{host: netip.MustParseAddr("198.51.100.1"), seq: uint16(i)}] = pendingPing{peer: peer, src: src, expires: time.Now().Add(-time.Second)}
		p.perPeer[peer]++
	}
	p.mu.Unlock()
	if p.send(peer, src, hostLoopback, 1, 1, []byte("x")) {
		t.Fatal("a ping over the per-peer limit was sent")
	}
	p.sweep()
	if got := p.outstanding(peer); got != 0 {
		t.Fatalf("%d outstanding after the sweep, want 0", got)
	}
}

func TestEgressTwice(t *testing.T) {
	s := startServer(t, Config{})
	if _, err := Start(s.n, Config{}); err == nil {
		t.Fatal("a second egress on one Net started")
	}
}

// TestEgressCloseWaits closes a server with flows in the middle of
// their relays (TCP both ways blocked, a UDP session waiting) and expects
// every goroutine of ours gone when Close returns, and nothing left after
// the client and host servers are gone too.
func TestEgressCloseWaits(t *testing.T) {
	before := peersite.Goroutines()
	s := startServer(t, Config{Policy: allowHostLoopback()})
	l := hostListen(t, hostLoopback)
	hostConns := make(chan net.Conn, 10)
	serveHostTCP(l, func(c net.Conn) {
		hostConns <- c
		io.Copy(io.Discard, c)
	})
	echo := serveHostUDPEcho(t, hostLoopback)
	tc, err := s.dial(t, "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.Write([]byte("held open"))
	<-hostConns
	uc, err := s.dial(t, "udp", echo.String())
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	for try := 0; try < 10; try++ {
		uc.Write([]byte("x"))
		uc.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := uc.Read(make([]byte, 10)); err == nil {
			break
		}
	}
	if err := s.n.Close(); err != nil {
		t.Fatal(err)
	}
	for id, g := range peersite.Goroutines() {
		if _, old := before[id]; !old && (strings.Contains(g, "egress.(*Server)") || strings.Contains(g, "proxy/relay.")) {
			t.Errorf("forwarder goroutine alive after Close:\n%s", g)
		}
	}
	s.client.Device.Close()
	l.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var leaked []string
		for id, g := range peersite.Goroutines() {
			if _, old := before[id]; old || strings.Contains(g, "TestEgressCloseWaits") || strings.Contains(g, "testing.tRunner") ||
				strings.Contains(g, "egress_test.go") {
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
}

// readRefused waits for a connected UDP socket of the client to report an
// ICMP port unreachable. gonet's UDPConn.Read sleeps until the socket is
// readable and an ICMP error does not make it so; the error is returned by
// the next Read instead. So this reads with short deadlines until the
// refusal shows (gonet flattens it to its text) or refusalGuard passes.
func readRefused(c net.Conn) error {
	buf := make([]byte, 2000)
	deadline := time.Now().Add(refusalGuard)
	for time.Now().Before(deadline) {
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		n, err := c.Read(buf)
		switch {
		case err == nil:
			return fmt.Errorf("got a %d-byte answer, want connection refused", n)
		case strings.Contains(err.Error(), "connection was refused"):
			return nil
		case !errors.Is(err, os.ErrDeadlineExceeded) && !isTimeout(err):
			return fmt.Errorf("read: %v, want connection refused", err)
		}
	}
	return fmt.Errorf("no ICMP port unreachable within %v", refusalGuard)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// BenchmarkEgressTCP moves data through one TCP connection from a
// wireguard-go client, through our server's egress, to a sink or source
// on the host's 127.0.0.1. Everything runs in this process, so cpu-s/GB
// counts the client, the server and the host sockets together.
//
// There is no wireguard-go server to compare with in the same run:
// wireguard-go's tun/netstack has no forwarder, so a baseline would be a
// second implementation of server mode, not wireguard-go's. The
// wireguard-go client's own share is measured by BenchmarkTCPThroughput
// (wireguard-go↔wireguard-go, no server mode).
func BenchmarkEgressTCP(b *testing.B) {
	for _, dir := range []string{"download", "upload"} {
		b.Run(dir, func(b *testing.B) {
			s := startServer(b, Config{Policy: allowHostLoopback()})
			l := hostListen(b, hostLoopback)
			block := peersite.Body(1 << 20)
			serveHostTCP(l, func(c net.Conn) {
				if dir == "upload" {
					io.Copy(io.Discard, c)
					return
				}
				for {
					if _, err := c.Write(block); err != nil {
						return
					}
				}
			})
			c, err := s.dial(b, "tcp", l.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			peersite.MeasureStream(b, c, dir == "download")
		})
	}
}

// TestEgressRefusesMappedTunnelDestinations: an address inside some
// peer's AllowedIPs, or one of our own, spelled as IPv4-mapped IPv6 in an
// IPv6 packet, is judged as the IPv4 address it carries: in the tunnel,
// not on the host's network, even where the egress policy allows it.
func TestEgressRefusesMappedTunnelDestinations(t *testing.T) {
	s := startServer(t, Config{
		Policy: Policy{Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.PrefixFrom(peersite.OurV4, 32)}},
		Dial: func(context.Context, string, string) (net.Conn, error) {
			return nil, syscall.ECONNREFUSED
		},
	})
	other, _ := protocol.GeneratePrivateKey()
	if err := s.n.Engine().SetPeer(protocol.PeerConfig{PublicKey: other.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.7.0.0/16")}}); err != nil {
		t.Fatal(err)
	}
	// The flows as the Net describes them (netstack's own test checks
	// that it does): to neither of our addresses as addressed, inside
	// the tunnel once unmapped.
	for _, dst := range []netip.Addr{netip.MustParseAddr("::ffff:10.7.0.1"), netip.AddrFrom16(peersite.OurV4.As16())} {
		f := inbound.Flow{Network: "udp", Peer: s.client.PublicKey, Source: netip.AddrPortFrom(peersite.TheirV6, 1000),
			Destination: netip.AddrPortFrom(dst, 53), InTunnel: true}
		if s.eg.AdmitFlow(f) {
			t.Errorf("a flow to %v may leave", dst)
		}
	}
}

// TestEgressRefusesHostItself: a destination the prefix policy permits
// (public unicast) can still be one of the host's own addresses, which no
// prefix list knows. The test stands a host address in with a Dial that
// lands every flow on a 127.0.0.1 service, as a dial to the host's public
// address would land on a local one: that flow is refused, unless Allow
// names the destination.
func TestEgressRefusesHostItself(t *testing.T) {
	l := hostListen(t, hostLoopback)
	serveHostTCP(l, func(c net.Conn) { io.WriteString(c, "local service") })
	local := l.Addr().String()
	toLocal := func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, local)
	}
	public := "198.51.100.7:80" // documentation range, never dialled

	s := startServer(t, Config{Dial: toLocal})
	if c, err := s.dial(t, "tcp", public); err == nil {
		c.Close()
		t.Fatal("a flow that reached the host itself was let through")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial: %v; want connection refused", err)
	}

	open := startServer(t, Config{Dial: toLocal, Policy: Policy{Allow: []netip.Prefix{netip.MustParsePrefix("198.51.100.7/32")}}})
	c, err := open.dial(t, "tcp", public)
	if err != nil {
		t.Fatalf("with Allow naming the destination: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if got, _ := io.ReadAll(c); string(got) != "local service" {
		t.Fatalf("got %q", got)
	}
}

// TestEgressHostAddresses: a flow to one of the host's own addresses,
// named in Egress.HostAddresses (a cloud's 1:1 NAT address) or found on
// its interfaces, is refused at once without a host dial, unless an
// Allow prefix names it; other public destinations are dialled.
func TestEgressHostAddresses(t *testing.T) {
	natAddr, ifAddr, other := netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("203.0.113.9"), netip.MustParseAddr("198.51.100.8")
	ifaces := func() ([]net.Addr, error) {
		return []net.Addr{&net.IPNet{IP: ifAddr.AsSlice(), Mask: net.CIDRMask(24, 32)}}, nil
	}
	for _, c := range []struct {
		name       string
		allow      []netip.Prefix
		wantDialed []string
	}{
		{"default", nil, []string{"tcp " + netip.AddrPortFrom(other, 80).String()}},
		{"allowed", []netip.Prefix{netip.PrefixFrom(natAddr, 32)}, []string{
			"tcp " + netip.AddrPortFrom(natAddr, 80).String(), "tcp " + netip.AddrPortFrom(other, 80).String()}},
	} {
		t.Run(c.name, func(t *testing.T) {
			// No host traffic: every dial is recorded and fails.
			var dials dialLog
			noNetwork := func(ctx context.Context, network, address string) (net.Conn, error) {
				dials.mu.Lock()
				dials.addrs = append(dials.addrs, network+" "+address)
				dials.mu.Unlock()
				return nil, errors.New("no host network in this test")
			}
			s := startServer(t, Config{Policy: Policy{Allow: c.allow, HostAddresses: []netip.Addr{natAddr}},
				InterfaceAddrs: ifaces, Dial: noNetwork})
			for _, dst := range []netip.Addr{natAddr, ifAddr, other} {
				conn, err := s.dial(t, "tcp", netip.AddrPortFrom(dst, 80).String())
				if err == nil {
					conn.Close()
					t.Fatalf("%v: connected", dst)
				}
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Fatalf("%v: %v, want connection refused at once", dst, err)
				}
			}
			if got := dials.list(); fmt.Sprint(got) != fmt.Sprint(c.wantDialed) {
				t.Errorf("host dials %v, want %v", got, c.wantDialed)
			}
		})
	}
}

// BenchmarkEgressUDP moves datagrams from a wireguard-go client through
// our server's egress to an echo service on the host's 127.0.0.1 and
// back, window of them in flight at a time, so that both directions of a
// server-mode UDP flow are on the path. A datagram lost on the way is
// not sent again: the next window goes, and the losses are reported.
func BenchmarkEgressUDP(b *testing.B) {
	for _, window := range []int{1, 32} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) {
			s := startServer(b, Config{Policy: allowHostLoopback()})
			echo := serveHostUDPEcho(b, hostLoopback)
			c, err := s.dial(b, "udp", echo.String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			const size = 1200
			msg, buf := peersite.Body(size), make([]byte, 2*size)
			// The first datagram makes the handshake and the flow.
			for try := 0; ; try++ {
				c.Write(msg)
				c.SetReadDeadline(time.Now().Add(time.Second))
				if _, err := c.Read(buf); err == nil {
					break
				} else if try == 10 {
					b.Fatal(err)
				}
			}
			b.SetBytes(2 * size)
			b.ResetTimer()
			lost := 0
			for sent := 0; sent < b.N; {
				k := min(window, b.N-sent)
				for range k {
					if _, err := c.Write(msg); err != nil {
						b.Fatal(err)
					}
				}
				sent += k
				c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				for got := 0; got < k; got++ {
					if _, err := c.Read(buf); err != nil {
						lost += k - got
						break
					}
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(lost)/float64(b.N), "lost/op")
		})
	}
}
