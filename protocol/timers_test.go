package protocol

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/memnet"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

// The tests in this file check the timers and message limits of section 6
// of the WireGuard whitepaper on the Manual clock over memnet. They judge
// the engines by what crosses the wire, seen through the network's tap,
// with protocol time read from the Manual clock when each datagram is
// sent; engine internals are read only to wait for goroutines or to check
// state that never reaches the wire (zeroed keys, staged packets).

// tmMsg is one datagram as the tap saw it.
type tmMsg struct {
	at       time.Duration // protocol time since testEpoch
	from, to netip.AddrPort
	typ      byte
	size     int
	sender   uint32 // initiation and response
	receiver uint32 // response and transport
	counter  uint64 // transport
}

func (m tmMsg) isInit() bool {
	return m.typ == MessageInitiationType && m.size == MessageInitiationSize
}

func (m tmMsg) isResponse() bool {
	return m.typ == MessageResponseType && m.size == MessageResponseSize
}

func (m tmMsg) isTransport() bool {
	return m.typ == MessageTransportType && m.size >= MessageKeepaliveSize
}

func (m tmMsg) isKeepalive() bool { return m.isTransport() && m.size == MessageKeepaliveSize }

func (m tmMsg) isData() bool { return m.isTransport() && m.size > MessageKeepaliveSize }

func (m tmMsg) kind() string {
	switch {
	case m.isInit():
		return "init"
	case m.isResponse():
		return "response"
	case m.isKeepalive():
		return "keepalive"
	case m.isData():
		return "data"
	}
	return fmt.Sprintf("type%d/%dB", m.typ, m.size)
}

// tmWire records every datagram sent on a memnet network and learns, from
// handshake responses, when each session index was born.
type tmWire struct {
	clk  *clock.Manual
	mu   sync.Mutex
	msgs []tmMsg
	born map[uint32]time.Duration
}

func tmWatch(n *memnet.Network, clk *clock.Manual) *tmWire {
	w := &tmWire{clk: clk, born: make(map[uint32]time.Duration)}
	n.SetTap(w.tap)
	return w
}

func (w *tmWire) tap(from, to netip.AddrPort, b []byte) {
	if len(b) < 4 {
		return
	}
	m := tmMsg{at: w.clk.Now().Sub(testEpoch), from: from, to: to, typ: b[0], size: len(b)}
	switch {
	case m.isInit():
		m.sender = binary.LittleEndian.Uint32(b[4:])
	case m.isResponse():
		m.sender = binary.LittleEndian.Uint32(b[4:])
		m.receiver = binary.LittleEndian.Uint32(b[8:])
	case m.isTransport():
		m.receiver = binary.LittleEndian.Uint32(b[transportOffsetReceiver:])
		m.counter = binary.LittleEndian.Uint64(b[transportOffsetCounter:])
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if m.isResponse() {
		w.born[m.sender] = m.at
		w.born[m.receiver] = m.at
	}
	w.msgs = append(w.msgs, m)
}

func (w *tmWire) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.msgs)
}

func (w *tmWire) filter(f func(tmMsg) bool) []tmMsg {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []tmMsg
	for _, m := range w.msgs {
		if f(m) {
			out = append(out, m)
		}
	}
	return out
}

func (w *tmWire) count(f func(tmMsg) bool) int { return len(w.filter(f)) }

// bornAt is when the session a transport message names was made, as seen
// on the wire.
func (w *tmWire) bornAt(m tmMsg) (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	b, ok := w.born[m.receiver]
	return b, ok
}

// transportBytes is the total size of the transport messages from sent to to.
func (w *tmWire) transportBytes(from, to netip.AddrPort) uint64 {
	var n uint64
	for _, m := range w.filter(func(m tmMsg) bool { return m.from == from && m.to == to && m.isTransport() }) {
		n += uint64(m.size)
	}
	return n
}

// summary describes the datagrams matching f, one string each, in a
// canonical order (by time, then text), so that datagrams sent in the same
// instant by different goroutines compare equal whatever order they took.
func (w *tmWire) summary(names map[netip.AddrPort]string, f func(tmMsg) bool) []string {
	var out []string
	for _, m := range w.filter(f) {
		out = append(out, tmLine(m.at, names[m.from], names[m.to], m.kind()))
	}
	sort.Strings(out)
	return out
}

func tmLine(at time.Duration, from, to, kind string) string {
	return fmt.Sprintf("%9.3fs %s>%s %s", at.Seconds(), from, to, kind)
}

func tmExpect(lines ...string) []string {
	sort.Strings(lines)
	return lines
}

func tmAll(tmMsg) bool { return true }

func tmFrom(n *testNode, kind func(tmMsg) bool) func(tmMsg) bool {
	return func(m tmMsg) bool { return m.from == n.ep && kind(m) }
}

func tmTimes(ms []tmMsg) []time.Duration {
	out := make([]time.Duration, len(ms))
	for i, m := range ms {
		out[i] = m.at
	}
	return out
}

func tmSince(clk *clock.Manual) time.Duration { return clk.Now().Sub(testEpoch) }

func tmPeer(t *testing.T, n, of *testNode) *Peer {
	t.Helper()
	p := n.e.lookupPeer(of.key.PublicKey())
	if p == nil {
		t.Fatalf("%v has no peer for %v", n.ep, of.ep)
	}
	return p
}

// tmBusy says what, if anything, is still in flight among nodes: a queued
// batch or handshake, an initiation without its response, or a transport
// message the tap saw that its receiver has not yet counted. It assumes a
// lossless network on which every node's peers are among nodes.
func tmBusy(w *tmWire, nodes []*testNode) string {
	for _, x := range nodes {
		e := x.e
		if n := len(e.encryptQueue) + len(e.decryptQueue) + len(e.handshakes); n > 0 {
			return fmt.Sprintf("%v has %d queued batches or handshakes", x.ep, n)
		}
		if x.awaitingResponse() {
			return fmt.Sprintf("%v awaits a handshake response", x.ep)
		}
		for _, y := range nodes {
			if y == x {
				continue
			}
			p := e.lookupPeer(y.key.PublicKey())
			if p == nil {
				continue
			}
			if n := len(p.outbound) + len(p.inbound); n > 0 {
				return fmt.Sprintf("%v has %d batches queued for %v", x.ep, n, y.ep)
			}
			if got, sent := p.stats.rxBytes.Load(), w.transportBytes(y.ep, x.ep); got != sent {
				return fmt.Sprintf("%v has received %d of the %d transport bytes %v sent", x.ep, got, sent, y.ep)
			}
		}
	}
	return ""
}

// tmQuiesce waits in real time until nothing is in flight among nodes and
// the wire has stayed silent over a few polls. The Manual clock fires
// timers inside Advance but their packets leave from the engines'
// goroutines, which also re-arm timers from the clock they read then; a
// test must let them finish before moving the clock on.
func tmQuiesce(t *testing.T, w *tmWire, nodes ...*testNode) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	stable, last := 0, -1
	for stable < 3 {
		n := w.len()
		why := tmBusy(w, nodes)
		if why == "" && n == last {
			stable++
		} else {
			stable = 0
		}
		last = n
		if time.Now().After(deadline) {
			t.Fatalf("engines not idle after 10s of real time: %s", why)
		}
		time.Sleep(300 * time.Microsecond)
	}
}

// tmStep advances the clock by one second and lets the engines finish
// whatever the timers due in that second started.
func tmStep(t *testing.T, clk *clock.Manual, w *tmWire, nodes ...*testNode) {
	t.Helper()
	clk.Advance(time.Second)
	tmQuiesce(t, w, nodes...)
}

func tmStagedLen(p *Peer) int {
	p.stagedMu.Lock()
	defer p.stagedMu.Unlock()
	return len(p.staged)
}

func tmKeypairs(p *Peer) (previous, current, next *keypair) {
	k := &p.keypairs
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.previous, k.current, k.next
}

// tmHandshakeResidue describes what of a handshake is left in memory, or
// returns "" if it is all zero.
func tmHandshakeResidue(p *Peer) string {
	h := &p.handshake
	h.mu.Lock()
	defer h.mu.Unlock()
	var zero [32]byte
	var left []string
	if h.state != handshakeZeroed {
		left = append(left, fmt.Sprintf("state %d", h.state))
	}
	if h.localIndex != 0 || h.remoteIndex != 0 {
		left = append(left, fmt.Sprintf("indices %d/%d", h.localIndex, h.remoteIndex))
	}
	if h.chainKey != zero {
		left = append(left, "chaining key")
	}
	if h.hash != zero {
		left = append(left, "hash")
	}
	if h.localEphemeral != nil {
		left = append(left, "local ephemeral")
	}
	if !h.remoteEphemeral.IsZero() {
		left = append(left, "remote ephemeral")
	}
	return strings.Join(left, ", ")
}

func tmNames(nodes map[string]*testNode) map[netip.AddrPort]string {
	names := make(map[netip.AddrPort]string)
	for name, n := range nodes {
		names[n.ep] = name
	}
	return names
}

func tmCompare(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s:\ngot\n  %s\nwant\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// TestPassiveKeepaliveAfterReceivingData: B receives one data packet and
// has nothing to send back. After KeepaliveTimeout, and not before, it
// sends exactly one keepalive, which also answers A's data, so A's
// new-handshake timer (KeepaliveTimeout+RekeyTimeout) never fires.
func TestPassiveKeepaliveAfterReceivingData(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	w := tmWatch(net, clk)
	a := newMemNode(t, net, clk, "127.0.0.1:7001", "10.0.0.1", nil)
	b := newMemNode(t, net, clk, "127.0.0.1:7002", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})
	names := tmNames(map[string]*testNode{"A": a, "B": b})

	p := ipPacket(a.addr, b.addr, []byte("one packet"))
	a.e.WritePackets([][]byte{p})
	b.sink.expect(t, p)
	tmQuiesce(t, w, a, b)

	fromB := tmFrom(b, tmMsg.isTransport)
	for range 9 {
		tmStep(t, clk, w, a, b)
	}
	if got := w.filter(fromB); len(got) != 0 {
		t.Fatalf("B sent %d transport messages within 9s of receiving data: %v", len(got), w.summary(names, fromB))
	}
	tmStep(t, clk, w, a, b)
	got := w.filter(fromB)
	if len(got) != 1 {
		t.Fatalf("B sent %d transport messages by 10s, want exactly one keepalive: %v", len(got), w.summary(names, fromB))
	}
	if ka := got[0]; ka.size != MessageKeepaliveSize || ka.to != a.ep || ka.at != KeepaliveTimeout {
		t.Fatalf("B's message: %d bytes to %v at %v, want a %d-byte keepalive to %v at %v",
			ka.size, ka.to, ka.at, MessageKeepaliveSize, a.ep, KeepaliveTimeout)
	}
	for range 50 {
		tmStep(t, clk, w, a, b)
	}
	tmCompare(t, "the wire over 60s", w.summary(names, tmAll), tmExpect(
		tmLine(0, "A", "B", "init"),
		tmLine(0, "B", "A", "response"),
		tmLine(0, "A", "B", "data"),
		tmLine(KeepaliveTimeout, "B", "A", "keepalive"),
	))
}

// TestPassiveKeepaliveNotSentWhenReplying: if B sends data of its own
// within KeepaliveTimeout of receiving, it owes no keepalive; A, which now
// received data and sends nothing, owes one instead, KeepaliveTimeout after
// B's data.
func TestPassiveKeepaliveNotSentWhenReplying(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	w := tmWatch(net, clk)
	a := newMemNode(t, net, clk, "127.0.0.1:7003", "10.0.0.1", nil)
	b := newMemNode(t, net, clk, "127.0.0.1:7004", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})
	names := tmNames(map[string]*testNode{"A": a, "B": b})

	p := ipPacket(a.addr, b.addr, []byte("ping"))
	a.e.WritePackets([][]byte{p})
	b.sink.expect(t, p)
	tmQuiesce(t, w, a, b)
	for range 5 {
		tmStep(t, clk, w, a, b)
	}
	q := ipPacket(b.addr, a.addr, []byte("pong"))
	b.e.WritePackets([][]byte{q})
	a.sink.expect(t, q)
	tmQuiesce(t, w, a, b)
	for range 25 {
		tmStep(t, clk, w, a, b)
	}
	if n := w.count(tmFrom(b, tmMsg.isKeepalive)); n != 0 {
		t.Errorf("B sent %d keepalives although it answered with data", n)
	}
	tmCompare(t, "the wire over 30s", w.summary(names, tmAll), tmExpect(
		tmLine(0, "A", "B", "init"),
		tmLine(0, "B", "A", "response"),
		tmLine(0, "A", "B", "data"),
		tmLine(5*time.Second, "B", "A", "data"),
		tmLine(5*time.Second+KeepaliveTimeout, "A", "B", "keepalive"),
	))
}

// TestNewHandshakeAfterUnansweredData: A sends data to a B that has gone
// away; KeepaliveTimeout+RekeyTimeout later, and not before, A starts a
// new handshake.
func TestNewHandshakeAfterUnansweredData(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	w := tmWatch(net, clk)
	a := newMemNode(t, net, clk, "127.0.0.1:7005", "10.0.0.1", nil)
	b := newMemNode(t, net, clk, "127.0.0.1:7006", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})
	names := tmNames(map[string]*testNode{"A": a, "B": b})

	// A session with traffic both ways, then 20s of quiet: every timer
	// the exchange armed has run out or been cancelled.
	p := ipPacket(a.addr, b.addr, []byte("hello"))
	a.e.WritePackets([][]byte{p})
	b.sink.expect(t, p)
	q := ipPacket(b.addr, a.addr, []byte("hello back"))
	b.e.WritePackets([][]byte{q})
	a.sink.expect(t, q)
	tmQuiesce(t, w, a, b)
	for range 20 {
		tmStep(t, clk, w, a, b)
	}
	tmCompare(t, "the wire before B goes away", w.summary(names, tmAll), tmExpect(
		tmLine(0, "A", "B", "init"),
		tmLine(0, "B", "A", "response"),
		tmLine(0, "A", "B", "data"),
		tmLine(0, "B", "A", "data"),
		tmLine(KeepaliveTimeout, "A", "B", "keepalive"),
	))

	if err := b.e.Close(); err != nil {
		t.Fatal(err)
	}
	sentAt := tmSince(clk)
	a.e.WritePackets([][]byte{ipPacket(a.addr, b.addr, []byte("anyone there?"))})
	fromA := tmFrom(a, tmMsg.isData)
	wgtest.WaitFor(t, 5*time.Second, "A's second data packet on the wire", func() bool { return w.count(fromA) == 2 })

	inits := tmFrom(a, tmMsg.isInit)
	deadline := sentAt + KeepaliveTimeout + RekeyTimeout
	for tmSince(clk) < deadline-time.Second {
		clk.Advance(time.Second)
		if n := w.count(inits); n != 1 {
			t.Fatalf("A sent a new initiation %v after unanswered data, before KeepaliveTimeout+RekeyTimeout: %v",
				tmSince(clk)-sentAt, tmTimes(w.filter(inits)))
		}
	}
	// The timer may carry up to RekeyTimeoutJitterMax of jitter (see
	// TestNewHandshakeTimerJitter), so it fires within the next two steps.
	for range 2 {
		clk.Advance(time.Second)
	}
	got := w.filter(inits)
	if len(got) != 2 || got[1].to != b.ep || got[1].at < deadline || got[1].at >= deadline+RekeyTimeoutJitterMax {
		t.Fatalf("initiations from A: %v, want a second one to %v in [%v, %v)", w.summary(names, inits), b.ep, deadline, deadline+RekeyTimeoutJitterMax)
	}
	t.Logf("unanswered data at %v, new initiation at %v (%v later)", sentAt, got[1].at, got[1].at-sentAt)
	tmCompare(t, "the wire after B went away", w.summary(names, func(m tmMsg) bool { return m.at >= sentAt }), tmExpect(
		tmLine(sentAt, "A", "B", "data"),
		tmLine(got[1].at, "A", "B", "init"),
	))
}

// TestNewHandshakeTimerJitter: the new-handshake timer sends an
// initiation when it expires, so by section 6.1 of the whitepaper
// ("Whenever a handshake initiation message is sent as the result of an
// expiring timer, an additional amount of jitter is added to the
// expiration") it must fire KeepaliveTimeout+RekeyTimeout plus a random
// jitter below RekeyTimeoutJitterMax after the unanswered data, as
// wireguard-go and the Linux module do; otherwise two peers that lose the
// path together re-initiate in lockstep. Five independent trials: with
// jitter, all five landing exactly on 15.000s has probability ~0.
//
// Regression test: before 833cb83, timersDataSent (protocol/timers.go)
// armed newHandshake with exactly KeepaliveTimeout+RekeyTimeout, and
// every trial fired exactly 15s after the data.
func TestNewHandshakeTimerJitter(t *testing.T) {
	var offsets []time.Duration
	for trial := range 5 {
		clk := clock.NewManual(testEpoch)
		net := memnet.NewNetwork(clk, uint64(trial))
		w := tmWatch(net, clk)
		a := newMemNode(t, net, clk, fmt.Sprintf("127.0.0.1:%d", 7022+2*trial), "10.0.0.1", nil)
		b := newMemNode(t, net, clk, fmt.Sprintf("127.0.0.1:%d", 7023+2*trial), "10.0.0.2", nil)
		connect(t, a, b, PresharedKey{})
		p := ipPacket(a.addr, b.addr, []byte("unanswered"))
		a.e.WritePackets([][]byte{p})
		b.sink.expect(t, p)
		tmQuiesce(t, w, a, b)
		// B vanishes before its passive keepalive could answer.
		if err := b.e.Close(); err != nil {
			t.Fatal(err)
		}
		data := w.filter(tmFrom(a, tmMsg.isData))
		inits := tmFrom(a, tmMsg.isInit)
		for i := 0; i < 20 && w.count(inits) < 2; i++ {
			clk.Advance(time.Second)
		}
		got := w.filter(inits)
		if len(data) != 1 || len(got) != 2 {
			t.Fatalf("trial %d: %d data messages, initiations at %v", trial, len(data), tmTimes(got))
		}
		d := got[1].at - data[0].at
		if d < KeepaliveTimeout+RekeyTimeout || d >= KeepaliveTimeout+RekeyTimeout+RekeyTimeoutJitterMax {
			t.Errorf("trial %d: new handshake %v after the data, want [%v, %v)", trial, d,
				KeepaliveTimeout+RekeyTimeout, KeepaliveTimeout+RekeyTimeout+RekeyTimeoutJitterMax)
		}
		offsets = append(offsets, d)
	}
	t.Logf("new-handshake delays: %v", offsets)
	if slices.IndexFunc(offsets, func(d time.Duration) bool { return d != KeepaliveTimeout+RekeyTimeout }) < 0 {
		t.Errorf("all %d new-handshake timers fired exactly %v after the data: no jitter", len(offsets), KeepaliveTimeout+RekeyTimeout)
	}
}

// TestPersistentKeepalive: setting PersistentKeepalive sends a keepalive
// at once (here it first needs a handshake), then one after every
// interval of idle time; clearing it stops them.
func TestPersistentKeepalive(t *testing.T) {
	const interval = 25 * time.Second
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	w := tmWatch(net, clk)
	a := newMemNode(t, net, clk, "127.0.0.1:7007", "10.0.0.1", nil)
	b := newMemNode(t, net, clk, "127.0.0.1:7008", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})
	names := tmNames(map[string]*testNode{"A": a, "B": b})

	cfg := PeerConfig{PublicKey: b.key.PublicKey(), Endpoint: b.ep.String(),
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(b.addr, 32)}, PersistentKeepalive: interval}
	if err := a.e.SetPeer(cfg); err != nil {
		t.Fatal(err)
	}
	tmQuiesce(t, w, a, b)
	for range 100 {
		tmStep(t, clk, w, a, b)
	}
	kas := w.filter(tmFrom(a, tmMsg.isKeepalive))
	var gaps []time.Duration
	for i := 1; i < len(kas); i++ {
		gaps = append(gaps, kas[i].at-kas[i-1].at)
	}
	t.Logf("A's keepalives at %v, spacing %v", tmTimes(kas), gaps)
	tmCompare(t, "the wire over 100s", w.summary(names, tmAll), tmExpect(
		tmLine(0, "A", "B", "init"),
		tmLine(0, "B", "A", "response"),
		tmLine(0, "A", "B", "keepalive"),
		tmLine(1*interval, "A", "B", "keepalive"),
		tmLine(2*interval, "A", "B", "keepalive"),
		tmLine(3*interval, "A", "B", "keepalive"),
		tmLine(4*interval, "A", "B", "keepalive"),
	))

	cfg.PersistentKeepalive = 0
	if err := a.e.SetPeer(cfg); err != nil {
		t.Fatal(err)
	}
	before := w.len()
	for range 100 {
		tmStep(t, clk, w, a, b)
	}
	if n := w.len() - before; n != 0 {
		t.Fatalf("%d datagrams in the 100s after PersistentKeepalive was cleared: %v", n,
			w.summary(names, func(m tmMsg) bool { return m.at > 4*interval }))
	}
}

// TestHandshakeRetransmitGiveUp: with nobody at the endpoint, an
// initiation is retried every RekeyTimeout plus jitter until
// RekeyAttemptTime is spent, then the packet that was waiting is dropped
// and nothing more is sent until new traffic starts a new round.
func TestHandshakeRetransmitGiveUp(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	w := tmWatch(net, clk)
	a := newMemNode(t, net, clk, "127.0.0.1:7009", "10.0.0.1", nil)
	dead := netip.MustParseAddrPort("127.0.0.1:9") // no Bind there
	peerKey := mustKey(t).PublicKey()
	if err := a.e.SetPeer(PeerConfig{PublicKey: peerKey, Endpoint: dead.String(),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")}}); err != nil {
		t.Fatal(err)
	}
	p := a.e.lookupPeer(peerKey)
	wantInits := 1 + a.e.params.maxHandshakeAttempts()
	if wantInits != 19 {
		t.Fatalf("maxHandshakeAttempts implies %d initiations per round, whitepaper timing gives 1+90s/5s = 19", wantInits)
	}
	inits := func(m tmMsg) bool { return m.from == a.ep && m.to == dead && m.isInit() }
	pkt := ipPacket(a.addr, netip.MustParseAddr("10.0.0.2"), []byte("into the void"))

	for round := 1; round <= 2; round++ {
		before := w.count(inits)
		start := tmSince(clk)
		a.e.WritePackets([][]byte{pkt})
		if n := tmStagedLen(p); n != 1 {
			t.Fatalf("round %d: %d packets staged, want 1", round, n)
		}
		// Everything here runs inside Advance: initiations are sent by
		// the retransmit timer itself, so the tap sees them on time.
		for i := 0; i < 200 && p.stats.handshakeTimeouts.Load() < uint64(round); i++ {
			clk.Advance(time.Second)
		}
		gaveUp := tmSince(clk)
		st, _ := a.e.Peer(peerKey)
		if st.HandshakeTimeouts != uint64(round) {
			t.Fatalf("round %d: HandshakeTimeouts = %d after %v", round, st.HandshakeTimeouts, gaveUp-start)
		}
		got := w.filter(inits)[before:]
		if len(got) != wantInits {
			t.Fatalf("round %d: %d initiations sent before giving up at %v, want %d: %v",
				round, len(got), gaveUp-start, wantInits, tmTimes(got))
		}
		if got[0].at != start {
			t.Errorf("round %d: first initiation at %v, want %v when the packet was written", round, got[0].at, start)
		}
		var gaps []time.Duration
		for i := 1; i < len(got); i++ {
			gap := got[i].at - got[i-1].at
			gaps = append(gaps, gap)
			if gap < RekeyTimeout || gap >= RekeyTimeout+RekeyTimeoutJitterMax {
				t.Errorf("round %d: retry %d came %v after the previous initiation, want [%v, %v)",
					round, i, gap, RekeyTimeout, RekeyTimeout+RekeyTimeoutJitterMax)
			}
		}
		last := got[len(got)-1].at
		// Giving up is the retransmit timer expiring once more; the loop
		// notices it within the one-second step.
		if d := gaveUp - last; d < RekeyTimeout || d >= RekeyTimeout+RekeyTimeoutJitterMax+time.Second {
			t.Errorf("round %d: gave up %v after the last initiation", round, d)
		}
		t.Logf("round %d: %d initiations from %v to %v (%v of retrying), gave up by %v; spacing %v",
			round, len(got), got[0].at, last, last-got[0].at, gaveUp, gaps)
		if last-got[0].at < RekeyAttemptTime {
			t.Errorf("round %d: retried for only %v, want at least RekeyAttemptTime %v", round, last-got[0].at, RekeyAttemptTime)
		}
		if n := tmStagedLen(p); n != 0 {
			t.Errorf("round %d: %d packets still staged after giving up", round, n)
		}
		if st.HandshakeAttempts != uint64(round*wantInits) {
			t.Errorf("round %d: HandshakeAttempts = %d, want %d", round, st.HandshakeAttempts, round*wantInits)
		}
		for range 200 {
			clk.Advance(time.Second)
		}
		if n := w.count(inits) - before; n != wantInits {
			t.Fatalf("round %d: %d initiations in the 200s after giving up", round, n-wantInits)
		}
		if st, _ := a.e.Peer(peerKey); st.HandshakeTimeouts != uint64(round) {
			t.Fatalf("round %d: HandshakeTimeouts = %d 200s after giving up", round, st.HandshakeTimeouts)
		}
	}
	if n := w.count(func(m tmMsg) bool { return !inits(m) }); n != 0 {
		t.Fatalf("%d datagrams other than initiations to %v", n, dead)
	}
}

// TestZeroKeyMaterialAfterIdle: 3×RejectAfterTime after the last session
// was made, both ends forget every keypair, index and handshake secret;
// traffic afterwards simply starts a new handshake.
func TestZeroKeyMaterialAfterIdle(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	w := tmWatch(net, clk)
	a := newMemNode(t, net, clk, "127.0.0.1:7010", "10.0.0.1", nil)
	b := newMemNode(t, net, clk, "127.0.0.1:7011", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})
	pa, pb := tmPeer(t, a, b), tmPeer(t, b, a)
	exchange := func(what string) {
		t.Helper()
		p := ipPacket(a.addr, b.addr, []byte(what))
		a.e.WritePackets([][]byte{p})
		b.sink.expect(t, p)
		q := ipPacket(b.addr, a.addr, []byte(what+" back"))
		b.e.WritePackets([][]byte{q})
		a.sink.expect(t, q)
		tmQuiesce(t, w, a, b)
	}

	// A first session, then a rekey after RekeyAfterTime, so each side
	// has a previous and a current keypair, made at 125s.
	exchange("first")
	for tmSince(clk) < 125*time.Second {
		tmStep(t, clk, w, a, b)
	}
	exchange("after rekey")
	derived := tmSince(clk)
	sides := []struct {
		name string
		node *testNode
		p    *Peer
	}{{"A", a, pa}, {"B", b, pb}}
	for _, n := range sides {
		prev, cur, next := tmKeypairs(n.p)
		if prev == nil || cur == nil || next != nil || cur.created.Sub(testEpoch) != derived {
			t.Fatalf("%s after the rekey: previous %v current %v next %v; want previous and current made at %v", n.name, prev != nil, cur != nil, next != nil, derived)
		}
	}
	zeroAt := derived + 3*RejectAfterTime
	for tmSince(clk) < zeroAt-time.Second {
		tmStep(t, clk, w, a, b)
	}
	if quiet := w.filter(func(m tmMsg) bool { return m.at > derived+KeepaliveTimeout }); len(quiet) != 0 {
		t.Fatalf("traffic did not stop: %d datagrams after %v", len(quiet), derived+KeepaliveTimeout)
	}
	for _, n := range sides {
		if prev, cur, _ := tmKeypairs(n.p); prev == nil || cur == nil {
			t.Fatalf("%s lost its keypairs before 3×RejectAfterTime (at %v)", n.name, tmSince(clk))
		}
		if got := n.node.e.indices.len(); got != 2 {
			t.Fatalf("%s's index table has %d entries at %v, want 2", n.name, got, tmSince(clk))
		}
	}

	clk.Advance(time.Second) // the zeroing timers run inside Advance
	for _, n := range sides {
		if prev, cur, next := tmKeypairs(n.p); prev != nil || cur != nil || next != nil {
			t.Errorf("%s at %v: previous %v current %v next %v, want no keypairs", n.name, tmSince(clk), prev != nil, cur != nil, next != nil)
		}
		if got := n.node.e.indices.len(); got != 0 {
			t.Errorf("%s at %v: %d entries left in the index table", n.name, tmSince(clk), got)
		}
		if left := tmHandshakeResidue(n.p); left != "" {
			t.Errorf("%s at %v: handshake not zeroed: %s", n.name, tmSince(clk), left)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	exchange("after zeroing")
	newInits := w.filter(func(m tmMsg) bool { return m.isInit() && m.at >= zeroAt })
	if len(newInits) != 1 || newInits[0].from != a.ep || newInits[0].at != zeroAt {
		t.Fatalf("initiations after zeroing: %+v, want one from A at %v", newInits, zeroAt)
	}
	if _, cur, _ := tmKeypairs(pb); cur == nil || cur.created.Sub(testEpoch) != zeroAt {
		t.Fatalf("B has no session made at %v", zeroAt)
	}
}

// tmTransportAges checks every transport message from n against the age
// of the session it names and returns the oldest age seen.
func tmTransportAges(t *testing.T, w *tmWire, n *testNode) time.Duration {
	t.Helper()
	var oldest time.Duration
	for _, m := range w.filter(tmFrom(n, tmMsg.isTransport)) {
		born, ok := w.bornAt(m)
		if !ok {
			t.Errorf("transport from %v at %v names index %d, which no response on the wire created", n.ep, m.at, m.receiver)
			continue
		}
		age := m.at - born
		oldest = max(oldest, age)
		if age >= RejectAfterTime {
			t.Errorf("transport from %v at %v (counter %d) on a session %v old: RejectAfterTime is %v", n.ep, m.at, m.counter, age, RejectAfterTime)
		}
	}
	return oldest
}

// TestRejectAfterTimeResponderStopsSending: a responder never rekeys on
// time when it sends, but it must stop using a session RejectAfterTime
// after it was made; its next packet starts a handshake instead.
//
// Normally the initiator rekeys first (on sending after RekeyAfterTime or
// on receiving near RejectAfterTime), so A gets long limits here: it keeps
// the session alive without ever rekeying, which leaves B's own limit as
// the only thing that ends it. B has the whitepaper's values.
func TestRejectAfterTimeResponderStopsSending(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	w := tmWatch(net, clk)
	lenient := DefaultParams()
	lenient.RekeyAfterTime = 1000 * time.Second
	lenient.RejectAfterTime = 2000 * time.Second
	a := newMemNode(t, net, clk, "127.0.0.1:7012", "10.0.0.1", &lenient)
	b := newMemNode(t, net, clk, "127.0.0.1:7013", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})

	p := ipPacket(a.addr, b.addr, []byte("start"))
	a.e.WritePackets([][]byte{p})
	b.sink.expect(t, p)
	tmQuiesce(t, w, a, b)
	first := w.filter(tmMsg.isResponse)
	if len(first) != 1 || first[0].at != 0 {
		t.Fatalf("first session: %+v", first)
	}
	s1 := first[0].receiver // A's index: what B's messages on the session name

	for s := 1; s <= int(RejectAfterTime/time.Second); s++ {
		clk.Advance(time.Second)
		q := ipPacket(b.addr, a.addr, fmt.Appendf(nil, "b %d", s))
		b.e.WritePackets([][]byte{q})
		a.sink.expect(t, q)
		tmQuiesce(t, w, a, b)
	}

	onS1 := w.filter(func(m tmMsg) bool { return m.from == b.ep && m.isTransport() && m.receiver == s1 })
	if len(onS1) == 0 {
		t.Fatalf("B sent nothing on the first session")
	}
	lastOnS1 := onS1[len(onS1)-1].at
	if len(onS1) != 179 || lastOnS1 != RejectAfterTime-time.Second {
		t.Errorf("B sent %d messages on the first session, the last at %v; want 179, 1s..179s", len(onS1), lastOnS1)
	}
	bInits := w.filter(tmFrom(b, tmMsg.isInit))
	if len(bInits) != 1 || bInits[0].at != RejectAfterTime {
		t.Errorf("B's initiations at %v, want one at %v", tmTimes(bInits), RejectAfterTime)
	}
	bData := w.filter(tmFrom(b, tmMsg.isData))
	if m := bData[len(bData)-1]; m.receiver == s1 {
		t.Errorf("B's packet at %v went on the first session, %v old", m.at, m.at)
	} else if born, _ := w.bornAt(m); born != RejectAfterTime || m.at != RejectAfterTime {
		t.Errorf("B's packet at %v went on a session made at %v, want one made at %v", m.at, born, RejectAfterTime)
	}
	oldest := tmTransportAges(t, w, b)
	t.Logf("B: %d messages on the first session up to %v, initiations at %v; oldest session B used: %v",
		len(onS1), lastOnS1, tmTimes(bInits), oldest)
}

// TestRejectAfterTimeInitiatorThatOnlyReceives: an initiator that only
// receives never sees its session age on the send path, so it starts a
// handshake on receiving once the session is
// RejectAfterTime-KeepaliveTimeout-RekeyTimeout (165s) old, before the
// responder would have to stop using it. Whitepaper values on both sides.
func TestRejectAfterTimeInitiatorThatOnlyReceives(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	w := tmWatch(net, clk)
	a := newMemNode(t, net, clk, "127.0.0.1:7014", "10.0.0.1", nil)
	b := newMemNode(t, net, clk, "127.0.0.1:7015", "10.0.0.2", nil)
	connect(t, a, b, PresharedKey{})
	lastMinute := RejectAfterTime - KeepaliveTimeout - RekeyTimeout

	p := ipPacket(a.addr, b.addr, []byte("start"))
	a.e.WritePackets([][]byte{p})
	b.sink.expect(t, p)
	tmQuiesce(t, w, a, b)

	// B sends data every second for 80s; A answers only with passive
	// keepalives, the last well before RekeyAfterTime (a keepalive after
	// it would rekey on the send path and hide the rule under test).
	// Then B is quiet until just before and after the 165s mark.
	sendAt := map[time.Duration]bool{lastMinute - time.Second: true, lastMinute: true, lastMinute + time.Second: true}
	for s := time.Second; s <= 80*time.Second; s += time.Second {
		sendAt[s] = true
	}
	for tmSince(clk) < lastMinute+time.Second {
		clk.Advance(time.Second)
		if sendAt[tmSince(clk)] {
			q := ipPacket(b.addr, a.addr, fmt.Appendf(nil, "b %v", tmSince(clk)))
			b.e.WritePackets([][]byte{q})
			a.sink.expect(t, q)
		}
		tmQuiesce(t, w, a, b)
	}

	aSent := w.filter(func(m tmMsg) bool { return m.from == a.ep && m.at > 0 })
	var before []tmMsg
	for _, m := range aSent {
		if m.at < lastMinute {
			before = append(before, m)
		}
	}
	for _, m := range before {
		if !m.isKeepalive() || m.at >= RekeyAfterTime {
			t.Fatalf("A sent a %s at %v; the test needs A to send only keepalives, all before %v", m.kind(), m.at, RekeyAfterTime)
		}
	}
	aInits := w.filter(tmFrom(a, tmMsg.isInit))
	if len(aInits) != 2 || aInits[0].at != 0 || aInits[1].at != lastMinute {
		t.Fatalf("A's initiations at %v, want 0s and %v (the session %v old when B's data arrived)", tmTimes(aInits), lastMinute, lastMinute)
	}
	bData := w.filter(tmFrom(b, tmMsg.isData))
	if m := bData[len(bData)-1]; m.at != lastMinute+time.Second {
		t.Errorf("B's last packet at %v, want %v", m.at, lastMinute+time.Second)
	} else if born, _ := w.bornAt(m); born != lastMinute {
		t.Errorf("B's packet at %v went on a session made at %v, want the one made at %v", m.at, born, lastMinute)
	}
	oldest := max(tmTransportAges(t, w, a), tmTransportAges(t, w, b))
	t.Logf("A's keepalives before the rekey at %v; A's initiations at %v; oldest session used %v",
		tmTimes(before), tmTimes(aInits), oldest)
}

// tmLimitParams are the whitepaper's values with small message limits.
func tmLimitParams() *Params {
	p := DefaultParams()
	p.RekeyAfterMessages = 100
	p.RejectAfterMessages = 150
	return &p
}

// TestMessageLimitRekey: with RekeyAfterMessages=100 and
// RejectAfterMessages=150, an initiator sending one packet a second
// starts a rekey as soon as a session has carried 100 messages, keeps
// using the old session meanwhile, and no message ever carries a counter
// of 150 or more. Every packet arrives.
func TestMessageLimitRekey(t *testing.T) {
	const packets = 400
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	w := tmWatch(net, clk)
	params := tmLimitParams()
	a := newMemNode(t, net, clk, "127.0.0.1:7016", "10.0.0.1", params)
	b := newMemNode(t, net, clk, "127.0.0.1:7017", "10.0.0.2", params)
	connect(t, a, b, PresharedKey{})

	for i := range packets {
		clk.Advance(time.Second)
		p := ipPacket(a.addr, b.addr, fmt.Appendf(nil, "packet %d", i))
		a.e.WritePackets([][]byte{p})
		if !b.sink.wait(p, 10*time.Second) {
			t.Fatalf("packet %d not delivered; a: %+v", i, a.e.Stats().Drops)
		}
		if !settle(5*time.Second, a, b) {
			t.Fatalf("handshake unanswered after packet %d", i)
		}
		tmQuiesce(t, w, a, b)
	}

	for _, m := range w.filter(tmAll) {
		if m.isTransport() && m.counter >= params.RejectAfterMessages {
			t.Errorf("transport from %v at %v carries counter %d >= RejectAfterMessages", m.from, m.at, m.counter)
		}
	}
	if n := w.count(tmFrom(b, tmMsg.isInit)); n != 0 {
		t.Errorf("the responder sent %d initiations", n)
	}

	// Walk A's messages in wire order: each initiation after the first
	// must come right after the 100th message of the session A was
	// using, and the old session may carry at most one more message (the
	// one whose send started the rekey), with counter 100.
	aMsgs := w.filter(func(m tmMsg) bool { return m.from == a.ep })
	var (
		sessions int
		rekeys   []string
		maxCtr   uint64
	)
	for i, m := range aMsgs {
		if m.isTransport() {
			maxCtr = max(maxCtr, m.counter)
		}
		if !m.isInit() {
			continue
		}
		sessions++
		if sessions == 1 {
			continue
		}
		var inUse uint32
		for j := i - 1; j >= 0; j-- {
			if aMsgs[j].isTransport() {
				inUse = aMsgs[j].receiver
				break
			}
		}
		before, after := 0, []uint64(nil)
		for j, o := range aMsgs {
			if o.isTransport() && o.receiver == inUse {
				if j < i {
					before++
				} else {
					after = append(after, o.counter)
				}
			}
		}
		rekeys = append(rekeys, fmt.Sprintf("%v after %d messages", m.at, before))
		if before != int(params.RekeyAfterMessages) {
			t.Errorf("rekey initiation at %v after %d messages on the session, want %d", m.at, before, params.RekeyAfterMessages)
		}
		if len(after) > 1 || len(after) == 1 && after[0] != params.RekeyAfterMessages {
			t.Errorf("after the rekey at %v the old session carried counters %v, want at most [%d]", m.at, after, params.RekeyAfterMessages)
		}
	}
	// 400 packets, one a second, 100 messages a session: handshakes at
	// 1s, 101s, 201s and 301s.
	if sessions != 4 {
		t.Errorf("A started %d handshakes (rekeys: %v), want 4", sessions, rekeys)
	}
	t.Logf("A's handshakes: %d; rekeys at %v; highest counter %d; %d transports on the wire", sessions, rekeys, maxCtr, w.count(tmMsg.isTransport))
}

// TestMessageLimitRejectWithoutRekey: when the rekey cannot complete, the
// initiator stops using the session at RejectAfterMessages and keeps the
// packets staged; once the path is back, the retried handshake carries
// them on a new session.
func TestMessageLimitRejectWithoutRekey(t *testing.T) {
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	w := tmWatch(net, clk)
	params := tmLimitParams()
	a := newMemNode(t, net, clk, "127.0.0.1:7018", "10.0.0.1", params)
	b := newMemNode(t, net, clk, "127.0.0.1:7019", "10.0.0.2", params)
	connect(t, a, b, PresharedKey{})
	pa := tmPeer(t, a, b)

	clk.Advance(time.Second)
	p0 := ipPacket(a.addr, b.addr, []byte("packet 0"))
	a.e.WritePackets([][]byte{p0})
	b.sink.expect(t, p0)
	tmQuiesce(t, w, a, b)
	_, s1, _ := tmKeypairs(pa)

	// The tap sees what is sent before the network loses it.
	net.SetImpairment(memnet.Impairment{Loss: 1})
	fromA := tmFrom(a, tmMsg.isTransport)
	const total = 170
	reject := int(params.RejectAfterMessages)
	var pkts [][]byte
	for i := 1; i <= total; i++ {
		clk.Advance(time.Second)
		p := ipPacket(a.addr, b.addr, fmt.Appendf(nil, "packet %d", i))
		pkts = append(pkts, p)
		a.e.WritePackets([][]byte{p})
		if i < reject {
			wgtest.WaitFor(t, 5*time.Second, fmt.Sprintf("packet %d on the wire", i), func() bool { return w.count(fromA) == i+1 })
		} else {
			time.Sleep(time.Millisecond)
		}
	}
	time.Sleep(20 * time.Millisecond)
	onS1 := w.filter(func(m tmMsg) bool { return m.from == a.ep && m.isTransport() && m.receiver == s1.remoteIndex })
	if n := w.count(fromA); n != reject || len(onS1) != reject {
		t.Fatalf("A sent %d transport messages (%d on the first session), want %d: the session must stop at RejectAfterMessages", n, len(onS1), reject)
	}
	for i, m := range onS1 {
		if m.counter != uint64(i) {
			t.Fatalf("message %d on the first session has counter %d", i, m.counter)
		}
	}
	if n := tmStagedLen(pa); n != total-reject+1 {
		t.Fatalf("%d packets staged, want the %d the session could not carry", n, total-reject+1)
	}
	// With nothing coming back, A also tried handshakes all along (the
	// new-handshake timer, then the rekey); none could complete.
	lostInits := tmTimes(w.filter(tmFrom(a, tmMsg.isInit)))

	net.SetImpairment(memnet.Impairment{})
	for i := 0; ; i++ {
		if i == 10 {
			t.Fatalf("no handshake completed within 10s after the path came back")
		}
		clk.Advance(time.Second)
		if settle(200*time.Millisecond, a, b) {
			break
		}
	}
	for i := reject - 1; i < total; i++ {
		if !b.sink.wait(pkts[i], 5*time.Second) {
			t.Fatalf("staged packet %d not delivered in order on the new session", i+1)
		}
	}
	for _, m := range w.filter(tmMsg.isTransport) {
		if m.counter >= params.RejectAfterMessages {
			t.Errorf("transport from %v at %v carries counter %d", m.from, m.at, m.counter)
		}
	}
	t.Logf("first session: %d messages, counters 0..%d; initiations while lossy at %v; %d staged packets delivered after the path came back at %v",
		len(onS1), onS1[len(onS1)-1].counter, lostInits, total-reject+1, tmSince(clk))
}

// TestMessageLimitRekeyByResponder: the message limit applies to whoever
// sends, not only to the initiator. Section 6.2 of the whitepaper: "After
// a secure session has first been established, WireGuard will try to
// create a new session ... after it has sent Rekey-After-Messages
// transport data messages"; only the time-based rekey is restricted to
// the initiator (wireguard-go: nonce > RekeyAfterMessages ||
// (isInitiator && age > RekeyAfterTime)). Here B, the responder, sends
// 200 packets half a second apart (the session never gets near
// RekeyAfterTime); it must start a handshake once it has sent 100
// messages on the session A made.
//
// Regression test: before 833cb83, Peer.sendStaged (protocol/send.go)
// tested "kp.isInitiator && (age >= RekeyAfterTime || sendNonce >=
// RekeyAfterMessages)", so a responder ran the session to
// RejectAfterMessages (150 messages here) and only then initiated,
// staging its packets until the new handshake completed.
func TestMessageLimitRekeyByResponder(t *testing.T) {
	const packets = 200
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	w := tmWatch(net, clk)
	params := tmLimitParams()
	a := newMemNode(t, net, clk, "127.0.0.1:7032", "10.0.0.1", params)
	b := newMemNode(t, net, clk, "127.0.0.1:7033", "10.0.0.2", params)
	connect(t, a, b, PresharedKey{})

	p := ipPacket(a.addr, b.addr, []byte("A makes the session"))
	a.e.WritePackets([][]byte{p})
	b.sink.expect(t, p)
	tmQuiesce(t, w, a, b)
	if _, cur, _ := tmKeypairs(tmPeer(t, b, a)); cur == nil || cur.isInitiator {
		t.Fatalf("B should hold the session as responder")
	}
	s1 := w.filter(tmMsg.isResponse)[0].receiver // A's index, named by B's messages

	for i := range packets {
		clk.Advance(500 * time.Millisecond)
		q := ipPacket(b.addr, a.addr, fmt.Appendf(nil, "packet %d", i))
		b.e.WritePackets([][]byte{q})
		if !a.sink.wait(q, 10*time.Second) {
			t.Fatalf("packet %d not delivered", i)
		}
		tmQuiesce(t, w, a, b)
	}

	for _, m := range w.filter(tmMsg.isTransport) {
		if m.counter >= params.RejectAfterMessages {
			t.Errorf("transport from %v at %v carries counter %d >= RejectAfterMessages", m.from, m.at, m.counter)
		}
	}
	bMsgs := w.filter(func(m tmMsg) bool { return m.from == b.ep })
	first := slices.IndexFunc(bMsgs, tmMsg.isInit)
	if first < 0 {
		t.Fatalf("B, the responder, sent %d packets and never initiated a handshake", packets)
	}
	onS1 := 0
	for _, m := range bMsgs[:first] {
		if m.isTransport() && m.receiver == s1 {
			onS1++
		}
	}
	t.Logf("B's first initiation at %v, after %d messages on the session it responded to", bMsgs[first].at, onS1)
	if onS1 != int(params.RekeyAfterMessages) {
		t.Errorf("B started its rekey after sending %d messages on the session, want RekeyAfterMessages = %d", onS1, params.RekeyAfterMessages)
	}
}
