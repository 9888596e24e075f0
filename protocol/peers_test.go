package protocol

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/curve25519"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/memnet"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// TestInboundSourceNotAllowed: a peer may only send from its AllowedIPs.
// A packet it authenticates but whose source belongs elsewhere is dropped
// and counted, which is what stops one peer impersonating another.
func TestInboundSourceNotAllowed(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	a := newMemNode(t, net, clk, "127.0.0.1:8001", "10.0.0.1", nil)
	b := newMemNode(t, net, clk, "127.0.0.1:8002", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})
	ok := ipPacket(a.addr, b.addr, []byte("fine"))
	a.e.WritePackets([][]byte{ok})
	b.sink.expect(t, ok)

	spoofed := ipPacket(netip.MustParseAddr("10.0.0.99"), b.addr, []byte("not mine"))
	a.e.WritePackets([][]byte{spoofed})
	b.sink.expectNone(t, 100*time.Millisecond)
	if n := b.e.Stats().Dropped(DropNotAllowedIP); n != 1 {
		t.Fatalf("not-allowed drops = %d, want 1", n)
	}
	// The session itself is fine: the next honest packet arrives.
	a.e.WritePackets([][]byte{ok})
	b.sink.expect(t, ok)

	// Outbound, a destination no peer owns is dropped and counted.
	a.e.WritePackets([][]byte{ipPacket(a.addr, netip.MustParseAddr("192.168.77.1"), nil)})
	if n := a.e.Stats().Dropped(DropNoRoute); n != 1 {
		t.Fatalf("no-route drops = %d, want 1", n)
	}
}

// TestPeersChangeUnderTraffic adds, updates and removes other peers and
// swaps AllowedIPs while packets flow to one peer; that peer's session
// must not notice. Run with -race.
func TestPeersChangeUnderTraffic(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	a := newMemNode(t, net, clk, "127.0.0.1:8011", "10.0.0.1", nil)
	b := newMemNode(t, net, clk, "127.0.0.1:8012", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})

	stop := make(chan struct{})
	var churns atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		keys := make([]PublicKey, 8)
		for i := range keys {
			keys[i] = mustKey(t).PublicKey()
		}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			k := keys[i%len(keys)]
			if i%3 == 2 {
				a.e.RemovePeer(k)
			} else {
				pfx := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i % 8), 0}), 24)
				if err := a.e.SetPeer(PeerConfig{PublicKey: k, Endpoint: "127.0.0.1:9", AllowedIPs: []netip.Prefix{pfx}}); err != nil {
					t.Error(err)
					return
				}
			}
			// Re-set b's own entry with the same values: an update must
			// keep the session.
			if err := a.e.SetPeer(PeerConfig{PublicKey: b.key.PublicKey(), Endpoint: b.ep.String(),
				AllowedIPs: []netip.Prefix{netip.PrefixFrom(b.addr, 32)}}); err != nil {
				t.Error(err)
				return
			}
			churns.Add(1)
		}
	}()
	for i := range 2000 {
		p := ipPacket(a.addr, b.addr, fmt.Appendf(nil, "%d", i))
		a.e.WritePackets([][]byte{p})
		b.sink.expect(t, p)
	}
	close(stop)
	wg.Wait()
	st, _ := a.e.Peer(b.key.PublicKey())
	if st.HandshakesCompleted != 1 {
		t.Fatalf("%d handshakes: updating peers disturbed the session", st.HandshakesCompleted)
	}
	t.Logf("2000 packets delivered across %d peer changes", churns.Load())
}

// TestRemovedPeerStopsEverything: after RemovePeer, traffic to the peer is
// unroutable, its sessions are gone from the index table and its
// goroutines have exited.
func TestRemovedPeerStopsEverything(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	a := newMemNode(t, net, clk, "127.0.0.1:8021", "10.0.0.1", nil)
	b := newMemNode(t, net, clk, "127.0.0.1:8022", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})
	p := ipPacket(a.addr, b.addr, []byte("x"))
	a.e.WritePackets([][]byte{p})
	b.sink.expect(t, p)
	if !a.e.RemovePeer(b.key.PublicKey()) || a.e.RemovePeer(b.key.PublicKey()) {
		t.Fatal("RemovePeer should report true once, then false")
	}
	if n := a.e.indices.len(); n != 0 {
		t.Fatalf("%d index entries left after removing the only peer", n)
	}
	a.e.WritePackets([][]byte{p})
	if a.e.Stats().Dropped(DropNoRoute) != 1 {
		t.Fatal("traffic to a removed peer was not dropped as unroutable")
	}
	// b's packets to a now fail authentication lookup on a.
	b.e.WritePackets([][]byte{ipPacket(b.addr, a.addr, []byte("y"))})
	wgtest.WaitFor(t, 5*time.Second, "unknown-index drop", func() bool { return a.e.Stats().Dropped(DropUnknownIndex) == 1 })
}

// TestEndpointRoaming: the peer comes back from a new address (a new
// process with the same key behind a rebinding NAT). The first
// authenticated packet from there moves the endpoint, and replies follow.
func TestEndpointRoaming(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	a := newMemNode(t, net, clk, "127.0.0.1:8031", "10.0.0.1", nil)
	b := newMemNode(t, net, clk, "127.0.0.1:8032", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})
	p := ipPacket(a.addr, b.addr, []byte("from the old address"))
	a.e.WritePackets([][]byte{p})
	b.sink.expect(t, p)
	if st, _ := b.e.Peer(a.key.PublicKey()); st.Endpoint != a.ep {
		t.Fatalf("b learned endpoint %v, want %v", st.Endpoint, a.ep)
	}

	// The same identity, a new source port.
	moved := netip.MustParseAddrPort("127.0.0.1:8033")
	var sawOld atomic.Int64
	net.SetTap(func(from, to netip.AddrPort, _ []byte) {
		if from == b.ep && to == a.ep {
			sawOld.Add(1)
		}
	})
	bind2, err := net.Listen(moved)
	if err != nil {
		t.Fatal(err)
	}
	sink2 := newSink()
	a2, err := New(Config{PrivateKey: a.key, Bind: bind2, Packets: sink2, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	a.e.Close()
	sawOld.Store(0)
	if err := a2.SetPeer(PeerConfig{PublicKey: b.key.PublicKey(), Endpoint: b.ep.String(),
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(b.addr, 32)}}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second) // initiations closer than 20 ms apart are refused
	p2 := ipPacket(a.addr, b.addr, []byte("from the new address"))
	a2.WritePackets([][]byte{p2})
	b.sink.expect(t, p2)
	st, _ := b.e.Peer(a.key.PublicKey())
	if st.Endpoint != moved || st.EndpointChanges != 2 {
		t.Fatalf("b's endpoint for a is %v after %d changes, want %v after 2", st.Endpoint, st.EndpointChanges, moved)
	}
	q := ipPacket(b.addr, a.addr, []byte("reply"))
	b.e.WritePackets([][]byte{q})
	sink2.expect(t, q)
	if n := sawOld.Load(); n != 0 {
		t.Fatalf("%d datagrams still went to the old address after the peer roamed", n)
	}
}

// fakeResolver answers from a map the test changes.
type fakeResolver struct {
	mu      sync.Mutex
	answers map[string]netip.Addr
	asked   atomic.Int64
}

func (r *fakeResolver) set(host string, a netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.answers[host] = a
}

func (r *fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	r.asked.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	a, ok := r.answers[host]
	if !ok {
		return nil, errors.New("no such host")
	}
	return []netip.Addr{a}, nil
}

// TestHostnameEndpointFollowed: an endpoint given as a name is resolved at
// start and again while handshakes fail, so a peer whose address changes
// behind its name is found again without a restart.
func TestHostnameEndpointFollowed(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	res := &fakeResolver{answers: map[string]netip.Addr{"peer.test": netip.MustParseAddr("127.0.0.2")}}
	sinkA := newSink()
	bindA, _ := net.Listen(netip.MustParseAddrPort("127.0.0.1:8041"))
	keyA := mustKey(t)
	a, err := New(Config{PrivateKey: keyA, Bind: bindA, Packets: sinkA, Clock: clk, Resolver: res, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	// b really lives at 127.0.0.3; the name first points elsewhere.
	b := newMemNode(t, net, clk, "127.0.0.3:8042", "10.0.0.2", nil)
	if err := b.e.SetPeer(PeerConfig{PublicKey: keyA.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/32")}}); err != nil {
		t.Fatal(err)
	}
	if err := a.SetPeer(PeerConfig{PublicKey: b.key.PublicKey(), Endpoint: "peer.test:8042",
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")}}); err != nil {
		t.Fatal(err)
	}
	wgtest.WaitFor(t, 5*time.Second, "initial resolution", func() bool {
		st, _ := a.Peer(b.key.PublicKey())
		return st.Endpoint == netip.MustParseAddrPort("127.0.0.2:8042")
	})
	p := ipPacket(netip.MustParseAddr("10.0.0.1"), b.addr, []byte("find me"))
	a.WritePackets([][]byte{p})
	b.sink.expectNone(t, 50*time.Millisecond)

	// The name moves; retries look it up again and the handshake lands.
	res.set("peer.test", netip.MustParseAddr("127.0.0.3"))
	asked := res.asked.Load()
	for i := 0; i < 30; i++ {
		clk.Advance(RekeyTimeout + RekeyTimeoutJitterMax)
		// The lookup runs in the background, and an answered initiation
		// needs real time to complete; unanswered ones wait for the clock.
		time.Sleep(2 * time.Millisecond)
		settleEngines(200*time.Millisecond, a)
		select {
		case got := <-b.sink.ch:
			if !bytes.Equal(got, p) {
				t.Fatalf("delivered %x", got)
			}
			if res.asked.Load() == asked {
				t.Fatal("delivered without a new lookup")
			}
			return
		default:
		}
	}
	t.Fatalf("peer not found again after its name moved; %d lookups", res.asked.Load())
}

// TestStagedQueueBounded: packets for a peer without a session wait, but
// only up to a bound; the excess is dropped and counted, not buffered.
func TestStagedQueueBounded(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	a := newMemNode(t, net, clk, "127.0.0.1:8051", "10.0.0.1", nil)
	peer := mustKey(t).PublicKey()
	if err := a.e.SetPeer(PeerConfig{PublicKey: peer, Endpoint: "127.0.0.1:9",
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")}}); err != nil {
		t.Fatal(err)
	}
	pkt := ipPacket(a.addr, netip.MustParseAddr("10.0.0.2"), []byte("waiting"))
	for range maxStagedPackets + 100 {
		a.e.WritePackets([][]byte{pkt})
	}
	p := a.e.lookupPeer(peer)
	p.stagedMu.Lock()
	n := len(p.staged)
	p.stagedMu.Unlock()
	if n != maxStagedPackets {
		t.Fatalf("%d packets staged, want the bound %d", n, maxStagedPackets)
	}
	if d := a.e.Stats().Dropped(DropStagedOverflow); d != 100 {
		t.Fatalf("%d staged-overflow drops, want 100", d)
	}
}

// TestSecretsStayOutOfLogs runs handshakes, rekeys, failures and errors
// with debug logging on and searches everything logged for any encoding
// of the private keys and the preshared key.
func TestSecretsStayOutOfLogs(t *testing.T) {
	var buf bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewJSONHandler(lockedWriter{&mu, &buf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	psk, _ := GeneratePresharedKey()
	mk := func(ep string) (*Engine, PrivateKey, *sink) {
		k := mustKey(t)
		bd, _ := net.Listen(netip.MustParseAddrPort(ep))
		s := newSink()
		e, err := New(Config{PrivateKey: k, Bind: bd, Packets: s, Clock: clk, Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		return e, k, s
	}
	a, ka, _ := mk("127.0.0.1:8061")
	b, kb, sb := mk("127.0.0.1:8062")
	a.SetPeer(PeerConfig{PublicKey: kb.PublicKey(), PresharedKey: psk, Endpoint: "127.0.0.1:8062", AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")}})
	b.SetPeer(PeerConfig{PublicKey: ka.PublicKey(), PresharedKey: psk, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/32")}})
	for i := range 300 {
		clk.Advance(time.Second)
		p := ipPacket(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), []byte{byte(i)})
		a.WritePackets([][]byte{p})
		sb.expect(t, p)
		if !settleEngines(5*time.Second, a) {
			t.Fatal("handshake unanswered after 5s of real time")
		}
	}
	// A wrong PSK, a bad key string and a peer error, all logged or returned.
	a.SetPeer(PeerConfig{PublicKey: kb.PublicKey(), PresharedKey: PresharedKey{1}, Endpoint: "127.0.0.1:8062", AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")}})
	clk.Advance(RejectAfterTime)
	a.WritePackets([][]byte{ipPacket(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), nil)})
	time.Sleep(50 * time.Millisecond)
	_, err1 := ParsePrivateKey(ka.Base64()[:43] + "!")
	err2 := a.SetPeer(PeerConfig{PublicKey: ka.PublicKey()})
	logger.Info("errors", "err1", err1, "err2", err2, "key", ka, "psk", psk, "fmt", fmt.Sprintf("%v %x %+v %#v", ka, ka, kb, psk))

	mu.Lock()
	out := buf.String()
	mu.Unlock()
	if !strings.Contains(out, "handshake") {
		t.Fatal("nothing was logged; the test would prove nothing")
	}
	for name, secret := range map[string][32]byte{"a's private key": ka, "b's private key": kb, "psk": psk} {
		for _, enc := range []string{
			PrivateKey(secret).Base64(), hex.EncodeToString(secret[:]), strings.ToUpper(hex.EncodeToString(secret[:])),
			PrivateKey(secret).Base64()[:20], hex.EncodeToString(secret[:12]), fmt.Sprint(secret[:8]),
		} {
			if strings.Contains(out, enc) {
				t.Fatalf("%s leaked into the log as %q", name, enc)
			}
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// TestCloseUnderTraffic closes an engine while packets pour through it;
// Close must return, which means every engine goroutine has exited.
func TestCloseUnderTraffic(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	a := newMemNode(t, net, clk, "127.0.0.1:8071", "10.0.0.1", nil)
	b := newMemNode(t, net, clk, "127.0.0.1:8072", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})
	p := ipPacket(a.addr, b.addr, make([]byte, 1000))
	a.e.WritePackets([][]byte{p})
	b.sink.expect(t, p)
	batch := make([][]byte, 64)
	for i := range batch {
		batch[i] = p
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				a.e.WritePackets(batch)
			}
		}
	}()
	// Drain b so its queues keep moving, then close both mid-stream.
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for {
			select {
			case <-b.sink.ch:
			case <-stop:
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond)
	closed := make(chan struct{})
	go func() {
		a.e.Close()
		b.e.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return under traffic")
	}
	close(stop)
	<-done
	<-drained
}

// TestPrivateKeyChange: a new private key ends every session made with
// the old one. A peer that still knows only the old public key cannot
// handshake; once it learns the new one, traffic flows again.
func TestPrivateKeyChange(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	a := newMemNode(t, net, clk, "127.0.0.1:8081", "10.0.0.1", nil)
	b := newMemNode(t, net, clk, "127.0.0.1:8082", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})
	p := ipPacket(a.addr, b.addr, []byte("old key"))
	a.e.WritePackets([][]byte{p})
	b.sink.expect(t, p)

	oldPub := b.key.PublicKey()
	newKey := mustKey(t)
	b.e.SetPrivateKey(newKey)
	if b.e.PublicKey() != newKey.PublicKey() {
		t.Fatal("public key did not follow the private key")
	}
	if n := b.e.indices.len(); n != 0 {
		t.Fatalf("%d sessions survived the key change", n)
	}
	// a's session is gone on b's side: its packets hit unknown indices,
	// and its new handshakes carry a MAC1 for the old key.
	clk.Advance(RejectAfterTime) // a's session expires too
	a.e.WritePackets([][]byte{p})
	b.sink.expectNone(t, 100*time.Millisecond)
	if b.e.Stats().Dropped(DropBadMAC1) == 0 {
		t.Fatalf("initiation for the old key was not refused at MAC1: %v", b.e.Stats().Drops)
	}

	a.e.RemovePeer(oldPub)
	b.key = newKey
	connect(t, a, b, PresharedKey{})
	clk.Advance(time.Second)
	a.e.WritePackets([][]byte{p})
	b.sink.expect(t, p)
}

// TestPeerFor: the lookup netstack's server mode makes per packet picks
// the longest matching prefix, follows peer changes, and does not
// allocate.
func TestPeerFor(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	n := newMemNode(t, net, clk, "192.168.7.1:51820", "10.0.0.1", nil)
	wide, narrow := mustKey(t).PublicKey(), mustKey(t).PublicKey()
	for _, pc := range []PeerConfig{
		{PublicKey: wide, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/64")}},
		{PublicKey: narrow, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.1.2.0/24")}},
	} {
		if err := n.e.SetPeer(pc); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		addr string
		want PublicKey
		ok   bool
	}{
		{"10.9.9.9", wide, true},
		{"10.1.2.3", narrow, true},
		{"fd00::7", wide, true},
		{"198.51.100.1", PublicKey{}, false},
		{"::ffff:10.1.2.3", PublicKey{}, false}, // mapped: looked up as IPv6
	} {
		got, ok := n.e.PeerFor(netip.MustParseAddr(tc.addr))
		if ok != tc.ok || !got.Equal(tc.want) {
			t.Errorf("PeerFor(%s) = %v, %v; want %v, %v", tc.addr, got, ok, tc.want, tc.ok)
		}
	}
	n.e.RemovePeer(narrow)
	if got, _ := n.e.PeerFor(netip.MustParseAddr("10.1.2.3")); !got.Equal(wide) {
		t.Errorf("after removing the narrow peer, 10.1.2.3 goes to %v; want the wide one", got)
	}
	a := netip.MustParseAddr("10.1.2.3")
	if allocs := testing.AllocsPerRun(100, func() { n.e.PeerFor(a) }); allocs != 0 {
		t.Errorf("PeerFor allocates %v times per call", allocs)
	}
}

// BenchmarkMartianCheck is the per-packet cost of refusing martian
// sources, for an ordinary source that passes, with two local addresses.
func BenchmarkMartianCheck(b *testing.B) {
	e := &Engine{local: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}}
	srcs := []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::2")}
	n := 0
	for i := 0; b.Loop(); i++ {
		if e.martian(srcs[i&1]) {
			n++
		}
	}
	if n != 0 {
		b.Fatal("an ordinary source was taken for a martian")
	}
}

// TestPeersListEachPeersPrefixes: the status of all peers at once gives
// each its own AllowedIPs, sorted, as asking for one peer does.
func TestPeersListEachPeersPrefixes(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	n := newMemNode(t, net, clk, "192.168.7.1:51820", "10.0.0.1", nil)
	want := map[PublicKey][]netip.Prefix{}
	for i := range 50 {
		k := mustKey(t).PublicKey()
		ps := []netip.Prefix{
			netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i), 0}), 24),
			netip.PrefixFrom(netip.AddrFrom16([16]byte{0: 0xfd, 15: byte(i)}), 128),
		}
		if i%2 == 0 {
			ps = append(ps, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 2, byte(i), 7}), 32))
		}
		if err := n.e.SetPeer(PeerConfig{PublicKey: k, AllowedIPs: ps}); err != nil {
			t.Fatal(err)
		}
		sortPrefixes(ps)
		want[k] = ps
	}
	all := n.e.Peers()
	if len(all) != len(want) {
		t.Fatalf("%d peers, want %d", len(all), len(want))
	}
	for _, st := range all {
		if !slices.Equal(st.AllowedIPs, want[st.PublicKey]) {
			t.Errorf("Peers: %v has %v, want %v", st.PublicKey, st.AllowedIPs, want[st.PublicKey])
		}
		one, _ := n.e.Peer(st.PublicKey)
		if !slices.Equal(one.AllowedIPs, st.AllowedIPs) {
			t.Errorf("Peer(%v) has %v, Peers %v", st.PublicKey, one.AllowedIPs, st.AllowedIPs)
		}
	}
}

// BenchmarkPeers is the status of every peer of a server with a
// thousand, which a metrics scrape and a reload ask for.
func BenchmarkPeers(b *testing.B) {
	e, err := New(Config{PrivateKey: mustKey(b), Bind: newDiscardBind(), Packets: newSink()})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	for i := range 1000 {
		if err := e.SetPeer(PeerConfig{PublicKey: mustKey(b).PublicKey(),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 32)}}); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		if len(e.Peers()) != 1000 {
			b.Fatal("peers missing")
		}
	}
}

// TestUpdatePeers: many peers set and removed at once end as SetPeer and
// RemovePeer one after the other would leave them, and a peer with a bad
// configuration is refused alone.
func TestUpdatePeers(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	n := newMemNode(t, net, clk, "192.168.7.1:51820", "10.0.0.1", nil)
	a, b, c, d, bad := mustKey(t).PublicKey(), mustKey(t).PublicKey(), mustKey(t).PublicKey(), mustKey(t).PublicKey(), mustKey(t).PublicKey()
	pfx := netip.MustParsePrefix
	for _, pc := range []PeerConfig{
		{PublicKey: a, AllowedIPs: []netip.Prefix{pfx("10.0.1.0/24")}},
		{PublicKey: b, AllowedIPs: []netip.Prefix{pfx("10.0.2.0/24")}},
		{PublicKey: c, AllowedIPs: []netip.Prefix{pfx("10.0.9.0/24")}},
	} {
		if err := n.e.SetPeer(pc); err != nil {
			t.Fatal(err)
		}
	}
	gone := mustKey(t).PublicKey() // never a peer
	errs, removed := n.e.UpdatePeers([]PeerConfig{
		{PublicKey: a, AllowedIPs: []netip.Prefix{pfx("10.0.3.0/24")}, Endpoint: "127.0.0.1:7"},
		{PublicKey: d, AllowedIPs: []netip.Prefix{pfx("10.0.2.0/24")}},                     // taken from b
		{PublicKey: bad, AllowedIPs: []netip.Prefix{pfx("10.0.4.0/24")}, Endpoint: "nope"}, // no port
		{PublicKey: d, AllowedIPs: []netip.Prefix{pfx("10.0.5.0/24")}},                     // d again
		{PublicKey: c, AllowedIPs: []netip.Prefix{pfx("10.0.6.0/24")}},                     // c is removed too
	}, []PublicKey{c, gone})
	if len(errs) != 5 || errs[0] != nil || errs[1] != nil || errs[2] == nil || errs[3] == nil || errs[4] == nil {
		t.Fatalf("errors %v; want the last three refused", errs)
	}
	if len(removed) != 1 || !removed[0].Equal(c) {
		t.Errorf("removed %v; want c alone, as the other key was never a peer", removed)
	}
	for _, tc := range []struct {
		addr string
		want PublicKey
		ok   bool
	}{
		{"10.0.1.1", PublicKey{}, false}, // a's old prefix
		{"10.0.3.1", a, true},
		{"10.0.2.1", d, true},
		{"10.0.9.1", PublicKey{}, false}, // c's, removed
		{"10.0.4.1", PublicKey{}, false}, // refused
		{"10.0.5.1", PublicKey{}, false}, // d's second entry, refused
		{"10.0.6.1", PublicKey{}, false}, // c's, refused as c goes
	} {
		got, ok := n.e.PeerFor(netip.MustParseAddr(tc.addr))
		if ok != tc.ok || !got.Equal(tc.want) {
			t.Errorf("PeerFor(%s) = %v, %v; want %v, %v", tc.addr, got, ok, tc.want, tc.ok)
		}
	}
	if _, ok := n.e.Peer(c); ok {
		t.Error("the removed peer is still there")
	}
	if _, ok := n.e.Peer(bad); ok {
		t.Error("the refused peer was added")
	}
	if st, _ := n.e.Peer(b); len(st.AllowedIPs) != 0 {
		t.Errorf("b kept %v after d took its prefix", st.AllowedIPs)
	}
	if st, _ := n.e.Peer(a); st.Endpoint != netip.MustParseAddrPort("127.0.0.1:7") {
		t.Errorf("a's endpoint is %v", st.Endpoint)
	}
	if n.e.NumPeers() != 3 {
		t.Errorf("%d peers, want a, b and d", n.e.NumPeers())
	}
}

// BenchmarkPeerChurn adds a thousand peers to a server with a thousand
// and removes them again, as a reload does: one by one, and in one
// UpdatePeers each way.
func BenchmarkPeerChurn(b *testing.B) {
	e, err := New(Config{PrivateKey: mustKey(b), Bind: newDiscardBind(), Packets: newSink()})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	cfgs := func(from int) []PeerConfig {
		out := make([]PeerConfig, 1000)
		for i := range out {
			out[i] = PeerConfig{PublicKey: mustKey(b).PublicKey(),
				AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte((from + i) >> 8), byte(from + i)}), 32)}}
		}
		return out
	}
	e.UpdatePeers(cfgs(0), nil)
	extra := cfgs(1000)
	keys := make([]PublicKey, len(extra))
	for i, c := range extra {
		keys[i] = c.PublicKey
	}
	b.Run("one-by-one", func(b *testing.B) {
		for b.Loop() {
			for _, c := range extra {
				e.SetPeer(c)
			}
			for _, k := range keys {
				e.RemovePeer(k)
			}
		}
	})
	b.Run("at-once", func(b *testing.B) {
		for b.Loop() {
			e.UpdatePeers(extra, nil)
			e.UpdatePeers(nil, keys)
		}
	})
}

// BenchmarkCloseManyPeers closes an engine with two thousand peers, as a
// server's shutdown does.
func BenchmarkCloseManyPeers(b *testing.B) {
	cfgs := make([]PeerConfig, 2000)
	for i := range cfgs {
		cfgs[i] = PeerConfig{PublicKey: mustKey(b).PublicKey(),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 32)}}
	}
	for b.Loop() {
		b.StopTimer()
		e, err := New(Config{PrivateKey: mustKey(b), Bind: newDiscardBind(), Packets: newSink()})
		if err != nil {
			b.Fatal(err)
		}
		e.UpdatePeers(cfgs, nil)
		b.StartTimer()
		e.Close()
	}
}

// TestUpdatePeersPrecomputesStaticStatic checks the static-static DH of
// peers that an update adds: computed before the update takes the lock,
// it must be X25519 of our key and theirs, and an identity changed in
// between must not leave a peer with the old key's.
func TestUpdatePeersPrecomputesStaticStatic(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	n := newMemNode(t, net, clk, "192.168.7.1:51820", "10.0.0.1", nil)
	check := func(k PublicKey, priv PrivateKey) {
		t.Helper()
		want, err := curve25519.X25519(priv[:], k[:])
		if err != nil {
			t.Fatal(err)
		}
		p := n.e.lookupPeer(k)
		if p == nil {
			t.Fatalf("peer %s missing", k)
		}
		p.handshake.mu.Lock()
		got, ok := p.handshake.staticStatic, p.handshake.staticStaticOK
		p.handshake.mu.Unlock()
		if !ok || !bytes.Equal(got[:], want) {
			t.Fatalf("peer %s: static-static %x (%v), want X25519 of our key and theirs %x", k, got, ok, want)
		}
	}

	var set []PeerConfig
	for range 5 {
		set = append(set, PeerConfig{PublicKey: mustKey(t).PublicKey()})
	}
	if errs, _ := n.e.UpdatePeers(set, nil); errs[0] != nil {
		t.Fatal(errs)
	}
	for _, pc := range set {
		check(pc.PublicKey, n.key)
	}

	// Computed with one identity, applied after another took its place.
	k := mustKey(t).PublicKey()
	ups := []peerUpdate{{cfg: PeerConfig{PublicKey: k}}}
	n.e.precomputeNew(ups)
	if !ups[0].staticStaticOK {
		t.Fatal("nothing precomputed for a new peer")
	}
	newKey := mustKey(t)
	n.e.SetPrivateKey(newKey)
	if _, err := n.e.applyPeers(ups, nil); err != nil {
		t.Fatal(err)
	}
	check(k, newKey)
	check(set[0].PublicKey, newKey)
}
