package protocol

import (
	"math/rand/v2"
	"sync"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
)

// timer is a re-armable one-shot on the injected clock. It keeps its own
// deadline and re-checks it when the underlying timer fires, so a firing
// that raced with mod or del does nothing instead of acting early.
type timer struct {
	clock    clock.Clock
	fn       func()
	mu       sync.Mutex
	t        clock.Timer
	pending  bool
	deadline time.Time
	stopped  bool
}

func (t *timer) init(clk clock.Clock, fn func()) {
	t.clock = clk
	t.fn = fn
}

// mod (re)arms the timer to fire d from now.
func (t *timer) mod(d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	t.pending = true
	t.deadline = t.clock.Now().Add(d)
	if t.t == nil {
		t.t = t.clock.AfterFunc(d, t.fire)
	} else {
		t.t.Reset(d)
	}
}

func (t *timer) del() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pending = false
	if t.t != nil {
		t.t.Stop()
	}
}

func (t *timer) isPending() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pending
}

func (t *timer) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopped = true
	t.pending = false
	if t.t != nil {
		t.t.Stop()
	}
}

func (t *timer) fire() {
	t.mu.Lock()
	if !t.pending || t.stopped {
		t.mu.Unlock()
		return
	}
	if left := t.deadline.Sub(t.clock.Now()); left > 0 {
		t.t.Reset(left)
		t.mu.Unlock()
		return
	}
	t.pending = false
	t.mu.Unlock()
	t.fn()
}

// resolveAfterUnanswered is how many initiations, at least RekeyTimeout
// apart, go unanswered before a hostname endpoint is looked up again:
// the fourth is sent some 15 s after the first.
const resolveAfterUnanswered = 3

// peerTimers are the five timers of the whitepaper's section 6.
type peerTimers struct {
	retransmitHandshake timer
	sendKeepalive       timer
	newHandshake        timer
	zeroKeyMaterial     timer
	persistentKeepalive timer

	mu                   sync.Mutex
	handshakeAttempts    int
	needAnotherKeepalive bool
	sentLastMinuteRekey  bool
	// unanswered counts initiations sent since the last completed
	// handshake or endpoint lookup. Neither handshakeAttempts nor the
	// retransmission timer can say when to look a hostname up again:
	// new traffic resets the one and re-arms the other before it
	// expires, so a peer whose user kept retrying was never looked up.
	unanswered int
}

func (t *peerTimers) init(p *Peer) {
	clk := p.engine.clock
	t.retransmitHandshake.init(clk, p.expiredRetransmitHandshake)
	t.sendKeepalive.init(clk, p.expiredSendKeepalive)
	t.newHandshake.init(clk, p.expiredNewHandshake)
	t.zeroKeyMaterial.init(clk, p.expiredZeroKeyMaterial)
	t.persistentKeepalive.init(clk, p.expiredPersistentKeepalive)
}

func (t *peerTimers) stopAll() {
	t.retransmitHandshake.stop()
	t.sendKeepalive.stop()
	t.newHandshake.stop()
	t.zeroKeyMaterial.stop()
	t.persistentKeepalive.stop()
}

func (p *Peer) rekeyTimeoutWithJitter() time.Duration {
	return p.engine.params.RekeyTimeout + rand.N(RekeyTimeoutJitterMax)
}

// expiredRetransmitHandshake: no response within RekeyTimeout. Retry
// until RekeyAttemptTime is spent, then give up and drop what was waiting,
// since the packets are stale by then.
func (p *Peer) expiredRetransmitHandshake() {
	if p.removed.Load() {
		return
	}
	p.timers.mu.Lock()
	attempts := p.timers.handshakeAttempts
	giveUp := attempts >= p.engine.params.maxHandshakeAttempts()
	if !giveUp {
		p.timers.handshakeAttempts++
	}
	p.timers.mu.Unlock()
	if giveUp {
		p.stats.handshakeTimeouts.Add(1)
		p.engine.log.Info("handshake did not complete, giving up until there is traffic",
			"peer", p.public, "attempts", attempts+1, "after", p.engine.params.RekeyAttemptTime)
		p.timers.sendKeepalive.del()
		p.flushStaged()
		if !p.timers.zeroKeyMaterial.isPending() {
			p.timers.zeroKeyMaterial.mod(3 * p.engine.params.RejectAfterTime)
		}
		return
	}
	p.engine.log.Debug("handshake did not complete, retrying", "peer", p.public, "attempt", attempts+2)
	p.sendInitiation(true)
}

// expiredSendKeepalive: we received data and sent nothing back for
// KeepaliveTimeout; the peer needs to hear that we are alive.
func (p *Peer) expiredSendKeepalive() {
	if p.removed.Load() {
		return
	}
	p.sendKeepalive()
	p.timers.mu.Lock()
	again := p.timers.needAnotherKeepalive
	p.timers.needAnotherKeepalive = false
	p.timers.mu.Unlock()
	if again {
		p.timers.sendKeepalive.mod(p.engine.params.KeepaliveTimeout)
	}
}

// expiredNewHandshake: we sent data and heard nothing for
// KeepaliveTimeout+RekeyTimeout; the session is probably dead, so start
// a new one (and look up a hostname endpoint again).
func (p *Peer) expiredNewHandshake() {
	if p.removed.Load() {
		return
	}
	p.engine.log.Debug("no reply to sent data, starting a new handshake", "peer", p.public)
	p.resolveEndpoint()
	p.sendInitiation(false)
}

func (p *Peer) expiredZeroKeyMaterial() {
	if p.removed.Load() {
		return
	}
	p.engine.log.Debug("zeroing key material", "peer", p.public)
	p.zeroKeyMaterial()
}

func (p *Peer) expiredPersistentKeepalive() {
	if p.removed.Load() || p.persistentKeepalive.Load() == 0 {
		return
	}
	p.sendKeepalive()
}

// The timer events, named after what happened.

// dataSent: expect a reply within KeepaliveTimeout+RekeyTimeout. The
// jitter keeps two peers that stopped hearing each other at the same
// moment from initiating in lockstep.
func (p *Peer) timersDataSent() {
	if !p.timers.newHandshake.isPending() {
		pr := &p.engine.params
		p.timers.newHandshake.mod(pr.KeepaliveTimeout + p.rekeyTimeoutWithJitter())
	}
}

// dataReceived: owe the peer a keepalive unless we send something first.
func (p *Peer) timersDataReceived() {
	if !p.timers.sendKeepalive.isPending() {
		p.timers.sendKeepalive.mod(p.engine.params.KeepaliveTimeout)
		return
	}
	p.timers.mu.Lock()
	p.timers.needAnotherKeepalive = true
	p.timers.mu.Unlock()
}

func (p *Peer) timersAnyAuthenticatedPacketSent() { p.timers.sendKeepalive.del() }

func (p *Peer) timersAnyAuthenticatedPacketReceived() { p.timers.newHandshake.del() }

// anyAuthenticatedPacketTraversal restarts the persistent keepalive
// interval: it counts from the last packet in either direction.
func (p *Peer) timersAnyAuthenticatedPacketTraversal() {
	if d := time.Duration(p.persistentKeepalive.Load()); d > 0 {
		p.timers.persistentKeepalive.mod(d)
	}
}

func (p *Peer) timersHandshakeInitiated() {
	p.timers.retransmitHandshake.mod(p.rekeyTimeoutWithJitter())
}

func (p *Peer) timersHandshakeComplete() {
	p.timers.retransmitHandshake.del()
	p.timers.mu.Lock()
	p.timers.handshakeAttempts = 0
	p.timers.unanswered = 0
	p.timers.sentLastMinuteRekey = false
	p.timers.mu.Unlock()
	p.stats.lastHandshake.Store(p.engine.clock.Now().UnixNano())
	p.stats.handshakesCompleted.Add(1)
}

func (p *Peer) timersSessionDerived() {
	p.timers.zeroKeyMaterial.mod(3 * p.engine.params.RejectAfterTime)
}
