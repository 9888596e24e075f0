package protocol

import (
	"encoding/binary"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/memnet"
)

// ipPacket builds a minimal IPv4 or IPv6 UDP-protocol packet. The engine
// never looks past the IP header, so no checksum is needed.
func ipPacket(src, dst netip.Addr, payload []byte) []byte {
	if src.Is4() {
		pkt := make([]byte, 20+len(payload))
		pkt[0] = 0x45
		binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
		pkt[8] = 64
		pkt[9] = 17
		s, d := src.As4(), dst.As4()
		copy(pkt[12:], s[:])
		copy(pkt[16:], d[:])
		copy(pkt[20:], payload)
		return pkt
	}
	pkt := make([]byte, 40+len(payload))
	pkt[0] = 0x60
	binary.BigEndian.PutUint16(pkt[4:], uint16(len(payload)))
	pkt[6] = 17
	pkt[7] = 64
	s, d := src.As16(), dst.As16()
	copy(pkt[8:], s[:])
	copy(pkt[24:], d[:])
	copy(pkt[40:], payload)
	return pkt
}

// sink collects delivered packets.
type sink struct{ ch chan []byte }

func newSink() *sink { return &sink{ch: make(chan []byte, 1<<16)} }

func (s *sink) DeliverPackets(pkts [][]byte) {
	for _, p := range pkts {
		s.ch <- append([]byte(nil), p...)
	}
}

func (s *sink) expect(t testing.TB, want []byte) {
	t.Helper()
	select {
	case got := <-s.ch:
		if string(got) != string(want) {
			t.Fatalf("delivered %x, want %x", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("packet not delivered within 10s")
	}
}

// wait reports whether want is the next delivery within limit.
func (s *sink) wait(want []byte, limit time.Duration) bool {
	select {
	case got := <-s.ch:
		return string(got) == string(want)
	case <-time.After(limit):
		return false
	}
}

func (s *sink) expectNone(t testing.TB, wait time.Duration) {
	t.Helper()
	select {
	case got := <-s.ch:
		t.Fatalf("unexpected delivery %x", got)
	case <-time.After(wait):
	}
}

type testNode struct {
	e    *Engine
	key  PrivateKey
	addr netip.Addr // tunnel address
	ep   netip.AddrPort
	sink *sink
	bind *memnet.Bind
}

func mustKey(t testing.TB) PrivateKey {
	t.Helper()
	k, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newMemNode(t testing.TB, net *memnet.Network, clk clock.Clock, ep string, tunnel string, params *Params) *testNode {
	t.Helper()
	return newMemNodeWith(t, net, clk, ep, tunnel, func(c *Config) { c.Params = params })
}

// newMemNodeWith is newMemNode with a chance to change the engine's Config.
func newMemNodeWith(t testing.TB, net *memnet.Network, clk clock.Clock, ep string, tunnel string, change func(*Config)) *testNode {
	t.Helper()
	n := &testNode{key: mustKey(t), addr: netip.MustParseAddr(tunnel), ep: netip.MustParseAddrPort(ep), sink: newSink()}
	b, err := net.Listen(n.ep)
	if err != nil {
		t.Fatal(err)
	}
	n.bind = b
	cfg := Config{PrivateKey: n.key, Bind: b, Packets: n.sink, Clock: clk, Workers: 2, Logger: testLogger(t)}
	change(&cfg)
	n.e, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.e.Close() })
	return n
}

// connect makes a and b peers; a knows b's endpoint, b learns a's.
func connect(t testing.TB, a, b *testNode, psk PresharedKey) {
	t.Helper()
	bits := 32
	if !a.addr.Is4() {
		bits = 128
	}
	if err := a.e.SetPeer(PeerConfig{PublicKey: b.key.PublicKey(), PresharedKey: psk, Endpoint: b.ep.String(),
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(b.addr, bits)}}); err != nil {
		t.Fatal(err)
	}
	if err := b.e.SetPeer(PeerConfig{PublicKey: a.key.PublicKey(), PresharedKey: psk,
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(a.addr, bits)}}); err != nil {
		t.Fatal(err)
	}
}

// testLogger logs through t at debug level when WGBORE_TEST_DEBUG is set,
// and discards otherwise, so failures can be replayed with full detail.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("WGBORE_TEST_DEBUG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b))
	return len(b), nil
}

// awaitingResponse reports whether any of e's peers has an initiation out
// whose session is not installed yet.
func awaitingResponse(e *Engine) bool {
	e.peersMu.RLock()
	defer e.peersMu.RUnlock()
	for _, p := range e.peers {
		p.handshake.mu.Lock()
		lastSent := p.handshake.lastSentHandshake
		p.handshake.mu.Unlock()
		if lastSent.IsZero() {
			continue
		}
		// Done once a session at least as new as the last initiation is
		// installed: consuming the response and installing its keypair
		// are two steps.
		if kp := p.keypairs.currentKeypair(); kp == nil || kp.created.Before(lastSent) {
			return true
		}
	}
	return false
}

// settle gives in-flight handshakes up to limit of real time to finish.
// On the Manual clock a handshake takes no protocol time at all, as it
// takes a negligible part of RekeyTimeout on a real path; without
// settling, a test stepping the clock faster than goroutines run would
// see every handshake time out.
func settle(limit time.Duration, nodes ...*testNode) bool {
	engines := make([]*Engine, len(nodes))
	for i, n := range nodes {
		engines[i] = n.e
	}
	return settleEngines(limit, engines...)
}

func settleEngines(limit time.Duration, engines ...*Engine) bool {
	deadline := time.Now().Add(limit)
	for {
		busy := false
		for _, e := range engines {
			if awaitingResponse(e) {
				busy = true
			}
		}
		if !busy {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Microsecond)
	}
}

func (n *testNode) awaitingResponse() bool { return awaitingResponse(n.e) }
