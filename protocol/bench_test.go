package protocol

import (
	"crypto/rand"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/memnet"
	"github.com/wgbore/wgbore/protocol/udpbind"
)

// benchPacketSize is a full-MTU packet, the size that dominates bulk
// transfers.
const benchPacketSize = DefaultMTU

func benchKeypair(b *testing.B) *keypair {
	var key [32]byte
	rand.Read(key[:])
	kp := &keypair{remoteIndex: 1}
	kp.send, _ = chacha20poly1305.New(key[:])
	kp.receive, _ = chacha20poly1305.New(key[:])
	return kp
}

// BenchmarkChaCha20Poly1305Seal is the reference for BenchmarkEncrypt:
// the bare AEAD sealing the same packet in place, nothing else.
func BenchmarkChaCha20Poly1305Seal(b *testing.B) {
	kp := benchKeypair(b)
	buf := make([]byte, benchPacketSize+tagSize)
	var nonce [chacha20poly1305.NonceSize]byte
	b.SetBytes(benchPacketSize)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		binary.LittleEndian.PutUint64(nonce[4:], uint64(i))
		kp.send.Seal(buf[:0], nonce[:], buf[:benchPacketSize], nil)
	}
}

// BenchmarkEncrypt is the engine's per-packet transport encryption:
// header, padding and the in-place seal.
func BenchmarkEncrypt(b *testing.B) {
	kp := benchKeypair(b)
	el := &element{buf: make([]byte, MessageTransportHeaderSize+paddedLen(benchPacketSize, DefaultMTU)+tagSize)}
	var nonce [chacha20poly1305.NonceSize]byte
	b.SetBytes(benchPacketSize)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		el.msg = el.buf[:MessageTransportHeaderSize+benchPacketSize]
		el.counter = uint64(i)
		sealTransport(kp, el, &nonce, DefaultMTU)
	}
}

// BenchmarkChaCha20Poly1305Open is the reference for BenchmarkDecrypt.
// Both copy a fresh ciphertext in first, since opening in place consumes
// it; the copy is in both so their ratio is fair.
func BenchmarkChaCha20Poly1305Open(b *testing.B) {
	kp := benchKeypair(b)
	var nonce [chacha20poly1305.NonceSize]byte
	ct := kp.send.Seal(nil, nonce[:], make([]byte, benchPacketSize), nil)
	buf := make([]byte, len(ct))
	b.SetBytes(benchPacketSize)
	b.ReportAllocs()
	for b.Loop() {
		copy(buf, ct)
		if _, err := kp.receive.Open(buf[:0], nonce[:], buf, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecrypt is the engine's per-packet transport decryption.
func BenchmarkDecrypt(b *testing.B) {
	kp := benchKeypair(b)
	el := &element{buf: make([]byte, MessageTransportHeaderSize+benchPacketSize+tagSize)}
	var nonce [chacha20poly1305.NonceSize]byte
	el.msg = el.buf[:MessageTransportHeaderSize+benchPacketSize]
	sealTransport(kp, el, &nonce, DefaultMTU)
	msg := append([]byte(nil), el.msg...)
	b.SetBytes(benchPacketSize)
	b.ReportAllocs()
	for b.Loop() {
		el.msg = el.buf[:len(msg)]
		copy(el.msg, msg)
		el.counter = 0
		openTransport(kp, el, &nonce)
		if !el.ok {
			b.Fatal("decryption failed")
		}
	}
}

// discardBind counts what the engine sends and receives nothing.
type discardBind struct {
	packets atomic.Uint64
	closed  chan struct{}
	once    sync.Once
}

func newDiscardBind() *discardBind { return &discardBind{closed: make(chan struct{})} }

func (d *discardBind) Receivers() []ReceiveFunc {
	return []ReceiveFunc{func([][]byte, []int, []netip.AddrPort) (int, error) {
		<-d.closed
		return 0, net.ErrClosed
	}}
}
func (d *discardBind) Send(bufs [][]byte, _ netip.AddrPort) error {
	d.packets.Add(uint64(len(bufs)))
	return nil
}
func (d *discardBind) BatchSize() int { return 64 }
func (d *discardBind) Close() error   { d.once.Do(func() { close(d.closed) }); return nil }

// BenchmarkSendPath measures the whole outbound engine: routing by
// AllowedIPs, staging, nonce assignment, the parallel encryption workers
// and the per-peer in-order sender, into a Bind that discards. allocs/op
// counts every goroutine, so 0 means the data path does not allocate.
func BenchmarkSendPath(b *testing.B) {
	bind := newDiscardBind()
	e, err := New(Config{PrivateKey: mustKey(b), Bind: bind, Packets: newSink()})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	peerKey := mustKey(b).PublicKey()
	if err := e.SetPeer(PeerConfig{PublicKey: peerKey, Endpoint: "127.0.0.1:9",
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")}}); err != nil {
		b.Fatal(err)
	}
	p := e.lookupPeer(peerKey)
	kp := benchKeypair(b)
	kp.created = time.Now()
	kp.isInitiator = true
	kp.peer = p
	p.keypairs.mu.Lock()
	p.keypairs.current = kp
	p.keypairs.mu.Unlock()

	const batchSize = 64
	pkt := ipPacket(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), make([]byte, benchPacketSize-20))
	batch := make([][]byte, batchSize)
	for i := range batch {
		batch[i] = pkt
	}
	// Warm the pools so the measurement sees the steady state.
	for range 64 {
		e.WritePackets(batch)
	}
	for bind.packets.Load() < 64*batchSize {
		time.Sleep(time.Millisecond)
	}
	start := bind.packets.Load()
	b.SetBytes(benchPacketSize * batchSize)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		e.WritePackets(batch)
	}
	for bind.packets.Load() < start+uint64(b.N*batchSize) {
		time.Sleep(10 * time.Microsecond)
	}
}

// BenchmarkHandshake is one complete handshake: the initiator creates an
// initiation, the responder checks MAC1 and consumes it, creates the
// response, and the initiator consumes that; both derive their session.
func BenchmarkHandshake(b *testing.B) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	x := newMemNode(b, net, clk, "127.0.0.1:6001", "10.0.0.1", nil)
	y := newMemNode(b, net, clk, "127.0.0.1:6002", "10.0.0.2", nil)
	connect(b, x, y, PresharedKey{})
	px := x.e.lookupPeer(y.key.PublicKey())
	var buf [MessageInitiationSize]byte
	b.ReportAllocs()
	for b.Loop() {
		// Initiations closer than HandshakeInitiationRate are refused.
		clk.Advance(HandshakeInitiationRate + time.Millisecond)
		init, err := x.e.createInitiation(px)
		if err != nil {
			b.Fatal(err)
		}
		init.marshal(buf[:])
		px.cookies.addMACs(buf[:])
		if !y.e.cookieChecker.checkMAC1(buf[:]) {
			b.Fatal("mac1")
		}
		var got messageInitiation
		if err := got.unmarshal(buf[:]); err != nil {
			b.Fatal(err)
		}
		py, err := y.e.consumeInitiation(&got)
		if err != nil {
			b.Fatal(err)
		}
		resp, kpy, err := y.e.createResponse(py)
		if err != nil {
			b.Fatal(err)
		}
		_, kpx, err := x.e.consumeResponse(resp)
		if err != nil {
			b.Fatal(err)
		}
		y.e.installKeypair(py, kpy)
		x.e.installKeypair(px, kpx)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}

// countingSink counts delivered packets and bytes without keeping them.
type countingSink struct{ packets, bytes atomic.Uint64 }

func (c *countingSink) DeliverPackets(pkts [][]byte) {
	var n uint64
	for _, p := range pkts {
		n += uint64(len(p))
	}
	c.packets.Add(uint64(len(pkts)))
	c.bytes.Add(n)
}

// BenchmarkEngineToEngineUDP pushes full-MTU packets from one engine to
// another through real UDP sockets on 127.0.0.1: both crypto directions,
// both engines' pipelines and the kernel's loopback, on the same cores.
// Loopback UDP drops when the receiver falls behind, so it reports what
// was delivered (delivered-MB/s) and the loss, not what was offered.
func BenchmarkEngineToEngineUDP(b *testing.B) {
	lo := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	ba, err := udpbind.Listen(udpbind.Config{Addrs: lo})
	if err != nil {
		b.Fatal(err)
	}
	bb, err := udpbind.Listen(udpbind.Config{Addrs: lo})
	if err != nil {
		b.Fatal(err)
	}
	ka, kb := mustKey(b), mustKey(b)
	sinkB := &countingSink{}
	ea, err := New(Config{PrivateKey: ka, Bind: ba, Packets: &countingSink{}})
	if err != nil {
		b.Fatal(err)
	}
	defer ea.Close()
	eb, err := New(Config{PrivateKey: kb, Bind: bb, Packets: sinkB})
	if err != nil {
		b.Fatal(err)
	}
	defer eb.Close()
	ea.SetPeer(PeerConfig{PublicKey: kb.PublicKey(), Endpoint: netip.AddrPortFrom(lo[0], bb.Port()).String(),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")}})
	eb.SetPeer(PeerConfig{PublicKey: ka.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/32")}})

	pkt := ipPacket(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), make([]byte, benchPacketSize-20))
	batch := make([][]byte, 64)
	for i := range batch {
		batch[i] = pkt
	}
	ea.WritePackets(batch[:1])
	deadline := time.Now().Add(5 * time.Second)
	for sinkB.packets.Load() == 0 {
		if time.Now().After(deadline) {
			b.Fatal("no handshake")
		}
		time.Sleep(time.Millisecond)
	}
	startBytes := sinkB.bytes.Load()
	startPackets := sinkB.packets.Load()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		ea.WritePackets(batch)
	}
	// Wait for the pipeline to drain: delivery stops growing.
	last := uint64(0)
	for {
		time.Sleep(20 * time.Millisecond)
		now := sinkB.packets.Load()
		if now == last {
			break
		}
		last = now
	}
	b.StopTimer()
	delivered := sinkB.packets.Load() - startPackets
	b.ReportMetric(float64(sinkB.bytes.Load()-startBytes)/1e6/b.Elapsed().Seconds(), "delivered-MB/s")
	b.ReportMetric(100*(1-float64(delivered)/float64(b.N*len(batch))), "loss-%")
}
