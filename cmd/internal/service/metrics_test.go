package service

import (
	"context"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/metricstest"
	"github.com/wgbore/wgbore/netstack"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/proxy"
)

// fakeClock is the observer's clock in tests: it moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_800_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// tunnelToSite opens our netstack to a wireguard-go peer site on
// loopback, optionally with a preshared key given to both ends.
func tunnelToSite(t *testing.T) (*netstack.Net, *peersite.Site, protocol.PrivateKey) {
	t.Helper()
	ours, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	tun, err := netstack.Open(context.Background(), netstack.Config{
		PrivateKey:  ours,
		Addresses:   []netip.Prefix{netip.PrefixFrom(peersite.OurV4, 32), netip.PrefixFrom(peersite.OurV6, 128)},
		ListenAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Peers: []protocol.PeerConfig{{
			PublicKey:  site.PublicKey,
			Endpoint:   site.Endpoint(),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(peersite.TheirV4, 32), netip.PrefixFrom(peersite.TheirV6, 128)},
		}},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tun.Close() })
	return tun, site, ours
}

// echoThroughTunnel sends n bytes to the site's TCP echo and reads them
// back.
func echoThroughTunnel(t *testing.T, tun *netstack.Net, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := tun.DialContext(ctx, "tcp", netip.AddrPortFrom(peersite.TheirV4, 7).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	msg := peersite.Body(n)
	go c.Write(msg)
	if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
		t.Fatalf("echo through the tunnel: %v", err)
	}
}

func TestMetricsMoveWithTraffic(t *testing.T) {
	tun, site, ours := tunnelToSite(t)
	eng := tun.Engine()
	// A second peer with a preshared key, never reached: its secret must
	// not show either.
	other, _ := protocol.GeneratePrivateKey()
	psk, err := protocol.GeneratePresharedKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.SetPeer(protocol.PeerConfig{PublicKey: other.PublicKey(), PresharedKey: psk,
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.9.9.9/32")}}); err != nil {
		t.Fatal(err)
	}

	// The listener counts come from a real forwarder into the tunnel.
	fwd := proxy.NewTCPForwarder(tun.DialContext, netip.AddrPortFrom(peersite.TheirV4, 7).String(), proxy.ForwardConfig{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go fwd.Serve(l)
	t.Cleanup(func() { fwd.Close() })
	listeners := func() []listenerStat {
		return []listenerStat{{Kind: "tcp_client_tunnel", Addr: l.Addr().String(), ConnStats: fwd.Stats()},
			{Kind: "socks5", Addr: `odd "addr"\` + "\n", ConnStats: proxy.ConnStats{Active: 1, Total: 2}}}
	}
	o := newObserver(observerConfig{Peers: eng.Peers, Stats: eng.Stats, ResentAcks: tun.ResentAcks, Listeners: listeners})
	h := o.Handler()

	fams, body := metricstest.Parse(t, h)
	peer := site.PublicKey.String()
	if got := metricstest.Value(t, fams, "wgbore_peer_receive_bytes_total", "peer", peer); got != 0 {
		t.Errorf("rx before any traffic = %v", got)
	}
	if got := metricstest.Value(t, fams, "wgbore_peers"); got != 2 {
		t.Errorf("wgbore_peers = %v, want 2", got)
	}
	// Every drop reason is there from the start, zeros included.
	for r := protocol.DropReason(0); r.String() != "unknown"; r++ {
		metricstest.Value(t, fams, "wgbore_dropped_packets_total", "reason", r.String())
	}
	if got := metricstest.Value(t, fams, "wgbore_listener_connections_active", "kind", "socks5", "addr", `odd "addr"\`+"\n"); got != 1 {
		t.Errorf("escaped label round trip: active = %v", got)
	}
	for _, name := range []string{"go_goroutines", "go_info", "go_memstats_heap_alloc_bytes", "go_memstats_sys_bytes", "go_memstats_stack_inuse_bytes", "go_gc_cycles_total"} {
		metricstest.Value(t, fams, name)
	}
	for _, name := range []string{"process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total"} {
		if _, err := os.Stat("/proc/self/stat"); err != nil {
			break // not Linux: the process families are left out
		}
		if _, ok := fams[name]; !ok {
			t.Errorf("no %s", name)
		}
	}

	echoThroughTunnel(t, tun, 64<<10)
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}

	fams, body = metricstest.Parse(t, h)
	if got := metricstest.Value(t, fams, "wgbore_peer_receive_bytes_total", "peer", peer); got < 64<<10 {
		t.Errorf("rx after a 64 KiB echo = %v", got)
	}
	if got := metricstest.Value(t, fams, "wgbore_peer_transmit_bytes_total", "peer", peer); got < 64<<10 {
		t.Errorf("tx after a 64 KiB echo = %v", got)
	}
	if got := metricstest.Value(t, fams, "wgbore_peer_last_handshake_seconds", "peer", peer); got < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last handshake = %v, want about now", got)
	}
	if got := metricstest.Value(t, fams, "wgbore_peer_handshakes_total", "peer", peer); got < 1 {
		t.Errorf("handshakes = %v", got)
	}
	if got := metricstest.Value(t, fams, "wgbore_peer_handshake_attempts_total", "peer", peer); got < 1 {
		t.Errorf("handshake attempts = %v", got)
	}
	// Both are there from the start, at zero: no outage in this test.
	if got := metricstest.Value(t, fams, "wgbore_peer_returns_total", "peer", peer); got != 0 {
		t.Errorf("returns = %v, want 0", got)
	}
	if got := metricstest.Value(t, fams, "wgbore_tcp_acks_resent_total"); got != 0 {
		t.Errorf("acknowledgements re-sent = %v, want 0", got)
	}
	if got := metricstest.Value(t, fams, "wgbore_peer_last_handshake_seconds", "peer", other.PublicKey().String()); got != 0 {
		t.Errorf("last handshake of a peer never reached = %v, want 0", got)
	}
	kind := []string{"kind", "tcp_client_tunnel", "addr", l.Addr().String()}
	if got := metricstest.Value(t, fams, "wgbore_listener_connections_active", kind...); got != 1 {
		t.Errorf("active forwarder connections = %v, want 1", got)
	}
	if got := metricstest.Value(t, fams, "wgbore_listener_connections_total", kind...); got != 1 {
		t.Errorf("total forwarder connections = %v, want 1", got)
	}
	c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for fwd.Stats().Active != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	fams, _ = metricstest.Parse(t, h)
	if got := metricstest.Value(t, fams, "wgbore_listener_connections_active", kind...); got != 0 {
		t.Errorf("active forwarder connections after close = %v, want 0", got)
	}

	// Public keys are public; private and preshared keys are not, in any
	// encoding.
	for name, secret := range map[string][]byte{"our private key": ours[:], "preshared key": psk[:]} {
		for _, enc := range []string{protocol.PrivateKey(secret).Base64(), hex.EncodeToString(secret)} {
			if strings.Contains(body, enc) {
				t.Errorf("/metrics shows the %s", name)
			}
		}
	}
	if _, body, _ := metricstest.Get(t, h, "/readyz"); strings.Contains(body, ours.Base64()) || strings.Contains(body, psk.Base64()) {
		t.Error("/readyz shows a secret")
	}
}

func TestHealthz(t *testing.T) {
	o := newObserver(observerConfig{Peers: func() []protocol.PeerStatus { return nil }, Stats: func() protocol.StatsSnapshot { return protocol.StatsSnapshot{} }})
	code, body, _ := metricstest.Get(t, o.Handler(), "/healthz")
	if code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, _, _ := metricstest.Get(t, o.Handler(), "/nothing"); code != http.StatusNotFound {
		t.Errorf("/nothing = %d, want 404", code)
	}
}

func TestReadyzHandshakes(t *testing.T) {
	clock := newFakeClock()
	k1, _ := protocol.GeneratePrivateKey()
	k2, _ := protocol.GeneratePrivateKey()
	var mu sync.Mutex
	peers := []protocol.PeerStatus{{PublicKey: k1.PublicKey()}, {PublicKey: k2.PublicKey()}}
	update := func(i int, f func(p *protocol.PeerStatus)) {
		mu.Lock()
		f(&peers[i])
		mu.Unlock()
	}
	o := newObserver(observerConfig{
		Peers: func() []protocol.PeerStatus {
			mu.Lock()
			defer mu.Unlock()
			return append([]protocol.PeerStatus(nil), peers...)
		},
		Stats: func() protocol.StatsSnapshot { return protocol.StatsSnapshot{} },
		Now:   clock.Now,
	})
	h := o.Handler()

	if r := metricstest.Readyz(t, h); !r.Ready || r.Basis != "handshakes" {
		t.Fatalf("no traffic: %+v, want ready", r)
	}

	// Traffic with a fresh handshake.
	update(0, func(p *protocol.PeerStatus) { p.TxBytes, p.RxBytes, p.LastHandshake = 1000, 900, clock.Now() })
	if r := metricstest.Readyz(t, h); !r.Ready {
		t.Fatalf("traffic, fresh handshake: %+v", r)
	}

	// Traffic keeps flowing but the handshake grows old: the peer went
	// away, and our sends into the old session are all that moves.
	clock.advance(181 * time.Second)
	update(0, func(p *protocol.PeerStatus) { p.TxBytes += 500 })
	r := metricstest.Readyz(t, h)
	if r.Ready || len(r.Reasons) != 1 || !strings.Contains(r.Reasons[0], k1.PublicKey().String()) || !strings.Contains(r.Reasons[0], "3m1s") {
		t.Fatalf("traffic, stale handshake: %+v, want one reason naming peer 1 and the age", r)
	}

	// Once the session is gone, our handshake attempts are what moves:
	// still not ready.
	clock.advance(100 * time.Second)
	update(0, func(p *protocol.PeerStatus) { p.HandshakeAttempts += 3 })
	if r := metricstest.Readyz(t, h); r.Ready {
		t.Fatalf("handshakes retried, none completes: %+v", r)
	}

	// The peer is back.
	update(0, func(p *protocol.PeerStatus) { p.LastHandshake = clock.Now() })
	if r := metricstest.Readyz(t, h); !r.Ready {
		t.Fatalf("peer back: %+v", r)
	}

	// A peer whose traffic stopped long ago is idle, not broken, however
	// old its handshake.
	clock.advance(10 * time.Minute)
	if r := metricstest.Readyz(t, h); !r.Ready {
		t.Fatalf("idle peers: %+v", r)
	}

	// Traffic to a peer that never answered.
	update(1, func(p *protocol.PeerStatus) { p.HandshakeAttempts = 1 })
	r = metricstest.Readyz(t, h)
	if r.Ready || len(r.Reasons) != 1 || !strings.Contains(r.Reasons[0], k2.PublicKey().String()) || !strings.Contains(r.Reasons[0], "no handshake") {
		t.Fatalf("peer never answered: %+v", r)
	}
}

func TestReadyzCheckAlive(t *testing.T) {
	clock := newFakeClock()
	tracker := newAliveTracker(clock.Now)
	stale := []protocol.PeerStatus{{TxBytes: 1, LastHandshake: clock.Now().Add(-time.Hour)}}
	o := newObserver(observerConfig{
		Peers: func() []protocol.PeerStatus { return stale },
		Stats: func() protocol.StatsSnapshot { return protocol.StatsSnapshot{} },
		Alive: tracker,
		Now:   clock.Now,
	})
	h := o.Handler()
	// Without CheckAlive running, the handshakes decide.
	if r := metricstest.Readyz(t, h); r.Ready || r.Basis != "handshakes" {
		t.Fatalf("tracker without targets: %+v, want the handshake rule", r)
	}

	a, b := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	tracker.start([]netip.Addr{a, b}, 5*time.Second)
	r := metricstest.Readyz(t, h)
	if r.Ready || r.Basis != "check_alive" || len(r.Reasons) != 2 || !strings.Contains(r.Reasons[0], "no ping yet") {
		t.Fatalf("before the first round: %+v", r)
	}

	tracker.record(a, 3*time.Millisecond, nil)
	tracker.record(b, 0, errors.New("deadline exceeded"))
	r = metricstest.Readyz(t, h)
	if r.Ready || len(r.Reasons) != 1 || !strings.Contains(r.Reasons[0], "10.0.0.3") || !strings.Contains(r.Reasons[0], "deadline exceeded") {
		t.Fatalf("one target silent: %+v", r)
	}
	fams, _ := metricstest.Parse(t, h)
	if got := metricstest.Value(t, fams, "wgbore_check_alive_up", "addr", "10.0.0.2"); got != 1 {
		t.Errorf("up for the answering target = %v", got)
	}
	if got := metricstest.Value(t, fams, "wgbore_check_alive_up", "addr", "10.0.0.3"); got != 0 {
		t.Errorf("up for the silent target = %v", got)
	}
	if got := metricstest.Value(t, fams, "wgbore_check_alive_rtt_seconds", "addr", "10.0.0.2"); got != 0.003 {
		t.Errorf("rtt = %v, want 0.003", got)
	}

	clock.advance(5 * time.Second)
	tracker.record(a, time.Millisecond, nil)
	tracker.record(b, time.Millisecond, nil)
	if r := metricstest.Readyz(t, h); !r.Ready {
		t.Fatalf("both answer: %+v", r)
	}

	// The pinger stalls: answers older than two intervals no longer
	// count.
	clock.advance(11 * time.Second)
	r = metricstest.Readyz(t, h)
	if r.Ready || len(r.Reasons) != 2 || !strings.Contains(r.Reasons[0], "11s ago") {
		t.Fatalf("answers too old: %+v", r)
	}

	tracker.stop()
	if r := metricstest.Readyz(t, h); r.Basis != "handshakes" {
		t.Fatalf("after CheckAlive stopped: %+v", r)
	}
	var nilTracker *aliveTracker
	nilTracker.start([]netip.Addr{a}, time.Second)
	nilTracker.record(a, 0, nil)
	nilTracker.stop()
}

// TestReadyzCheckAliveFollowsPeer runs the real CheckAlive pings through
// a tunnel to a wireguard-go peer, and takes the peer away and back on
// our side: /readyz must follow.
func TestReadyzCheckAliveFollowsPeer(t *testing.T) {
	tun, site, _ := tunnelToSite(t)
	eng := tun.Engine()
	tracker := newAliveTracker(time.Now)
	o := newObserver(observerConfig{Peers: eng.Peers, Stats: eng.Stats, Alive: tracker})
	h := o.Handler()
	s := &Service{log: slog.New(slog.DiscardHandler), tun: tun}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.checkAlive(ctx, []netip.Addr{peersite.TheirV4}, 200*time.Millisecond, tracker)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	metricstest.WaitReady(t, h, true, 30*time.Second, "peer up")

	peer, _ := eng.Peer(site.PublicKey)
	eng.RemovePeer(site.PublicKey)
	metricstest.WaitReady(t, h, false, 30*time.Second, "peer removed")
	fams, _ := metricstest.Parse(t, h)
	if got := metricstest.Value(t, fams, "wgbore_check_alive_up", "addr", peersite.TheirV4.String()); got != 0 {
		t.Errorf("check_alive_up with the peer gone = %v", got)
	}

	if err := eng.SetPeer(protocol.PeerConfig{PublicKey: peer.PublicKey, Endpoint: site.Endpoint(), AllowedIPs: peer.AllowedIPs}); err != nil {
		t.Fatal(err)
	}
	metricstest.WaitReady(t, h, true, 30*time.Second, "peer back")
}

// TestReadyzFollowsPeerGoingAway stops the wireguard-go peer itself, not
// our configuration of it, and starts it again: CheckAlive and /readyz
// must notice both.
func TestReadyzFollowsPeerGoingAway(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the engine to give up on a session: about 15 s")
	}
	t.Parallel()
	tun, site, _ := tunnelToSite(t)
	eng := tun.Engine()
	tracker := newAliveTracker(time.Now)
	h := newObserver(observerConfig{Peers: eng.Peers, Stats: eng.Stats, Alive: tracker}).Handler()
	s := &Service{log: slog.New(slog.DiscardHandler), tun: tun}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.checkAlive(ctx, []netip.Addr{peersite.TheirV4}, 250*time.Millisecond, tracker)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	start := time.Now()
	metricstest.WaitReady(t, h, true, 30*time.Second, "peer up")
	if err := site.Device.Down(); err != nil {
		t.Fatal(err)
	}
	metricstest.WaitReady(t, h, false, 30*time.Second, "peer down")
	if err := site.Device.Up(); err != nil {
		t.Fatal(err)
	}
	metricstest.WaitReady(t, h, true, 60*time.Second, "peer back")
	t.Logf("down and back in %v", time.Since(start))
}

func TestMetricsRemoteEndpoints(t *testing.T) {
	o := newObserver(observerConfig{Peers: func() []protocol.PeerStatus { return nil }, Stats: func() protocol.StatsSnapshot { return protocol.StatsSnapshot{} }})
	srv := httptest.NewServer(o.Handler())
	t.Cleanup(srv.Close)
	h := metricstest.Remote(srv.URL)
	if r := metricstest.Readyz(t, h); !r.Ready {
		t.Errorf("remote /readyz: %+v", r)
	}
	fams, _ := metricstest.Parse(t, h)
	metricstest.Value(t, fams, "wgbore_peers")
}
