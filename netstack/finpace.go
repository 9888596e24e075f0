package netstack

import (
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// finPacer keeps the half-closes (TCPConn.CloseWrite) whose FINs wait
// for an acknowledgement to a window, and starts the rest, in the order
// they came, as those are acknowledged.
//
// When thousands of clients close their proxied connections at once,
// every relay half-closes its tunnel side at once, and the FINs queue
// behind each other, in the engine and at the peer, for far longer than
// the retransmission timeout. Each connection then times out again and
// again: gVisor rebuilds the segment and its SACK scoreboard on every
// timeout, and that garbage and the queued packets took the process's
// memory well past what the open connections held. With the FINs in
// flight kept to a window, each is acknowledged about a round trip after
// it went rather than after the whole burst. A half-close waits only
// while the window is full. A FIN unacknowledged for longer than Linux's
// minimum retransmission timeout gives up its place, so FINs to a peer
// that has gone away let a window's worth of the others through per
// timeout; the window is the Net's, not each peer's.
//
// FINs sent by Close, and by connections accepted through Listen, are
// not paced: the FIN floor (finresend.go) is what bounds their repeats.
type finPacer struct {
	clock  tcpip.Clock
	window int
	hold   time.Duration // finHold, but for tests

	mu      sync.Mutex
	sent    []sentFIN    // oldest first; some may be acknowledged already
	waiting []waitingFIN // oldest first
	// timer runs poll: every finPoll while closes wait, every finHold
	// while sent holds FINs, so that it never keeps a closed endpoint
	// (and its memory) long; armed is its period, 0 while it is stopped.
	timer  tcpip.Timer
	armed  time.Duration
	closed bool
}

const (
	// finWindow is how many FINs may wait for their acknowledgements at
	// once before the next half-close waits: enough that closes at an
	// everyday rate never wait, few enough that a burst's FINs do not
	// queue behind each other past the retransmission timeout.
	finWindow = 256
	// finHold is how long a FIN holds its place in the window at most:
	// Linux's minimum retransmission timeout (finResendFloor).
	finHold = finResendFloor
	// finPoll is how often the window is looked at while closes wait: a
	// round trip on a loopback or LAN path.
	finPoll = 2 * time.Millisecond
)

// finState is what the pacer asks of an endpoint: gVisor's TCP state.
type finState interface{ State() uint32 }

type sentFIN struct {
	ep finState
	at tcpip.MonotonicTime
}

type waitingFIN struct {
	ep    finState
	start func()
}

func newFINPacer(clock tcpip.Clock, window int) *finPacer {
	return &finPacer{clock: clock, window: window, hold: finHold}
}

// admit reports whether ep's FIN may go now: the window has room and
// no close waits before it. If not, start, which sends the FIN, runs
// later, in order, once it has.
func (p *finPacer) admit(ep finState, start func()) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return true
	}
	if len(p.waiting) == 0 && len(p.sent) >= p.window {
		p.prune()
	}
	if len(p.waiting) == 0 && len(p.sent) < p.window {
		p.sent = append(p.sent, sentFIN{ep: ep, at: p.clock.NowMonotonic()})
		if p.armed == 0 {
			p.arm(p.hold)
		}
		return true
	}
	p.waiting = append(p.waiting, waitingFIN{ep: ep, start: start})
	if p.armed != finPoll {
		p.arm(finPoll)
	}
	return false
}

// arm runs poll after d. Called with p.mu held.
func (p *finPacer) arm(d time.Duration) {
	p.armed = d
	if p.timer == nil {
		p.timer = p.clock.AfterFunc(d, p.poll)
	} else {
		p.timer.Reset(d)
	}
}

// prune drops the FINs that have been acknowledged, or have held their
// place for p.hold. Called with p.mu held.
func (p *finPacer) prune() {
	now := p.clock.NowMonotonic()
	kept := p.sent[:0]
	for _, s := range p.sent {
		if holdsPlace(s.ep) && now.Sub(s.at) < p.hold {
			kept = append(kept, s)
		}
	}
	clear(p.sent[len(kept):])
	p.sent = kept
}

// holdsPlace reports whether an admitted half-close still holds its
// place in the window: its FIN awaits an acknowledgement, or it has not
// been sent yet. Admission and the shutdown are not one step (the
// shutdown runs outside the pacer's lock), and gVisor leaves ESTABLISHED
// or CLOSE_WAIT in the shutdown itself, even for a FIN queued behind
// data.
func holdsPlace(ep finState) bool {
	switch tcp.EndpointState(ep.State()) {
	case tcp.StateEstablished, tcp.StateCloseWait, tcp.StateFinWait1, tcp.StateClosing, tcp.StateLastAck:
		return true
	}
	return false
}

// paceable reports whether a half-close of ep would send a FIN now:
// otherwise (the connection is already shut, reset or closed) the
// shutdown runs at once and its error is the caller's.
func paceable(ep finState) bool {
	switch tcp.EndpointState(ep.State()) {
	case tcp.StateEstablished, tcp.StateCloseWait:
		return true
	}
	return false
}

// poll starts the waiting closes the window has room for, and looks
// again after finPoll while some still wait.
func (p *finPacer) poll() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.prune()
	n := max(0, min(len(p.waiting), p.window-len(p.sent)))
	now := p.clock.NowMonotonic()
	start := make([]func(), 0, n)
	for _, w := range p.waiting[:n] {
		p.sent = append(p.sent, sentFIN{ep: w.ep, at: now})
		start = append(start, w.start)
	}
	rest := copy(p.waiting, p.waiting[n:])
	clear(p.waiting[rest:])
	p.waiting = p.waiting[:rest]
	switch {
	case rest > 0:
		p.arm(finPoll)
	case len(p.sent) > 0:
		p.arm(p.hold)
	default:
		p.armed = 0
	}
	if rest == 0 && cap(p.waiting) > 4*p.window {
		p.waiting = nil // a burst's queue is not kept
	}
	if len(p.sent) == 0 && cap(p.sent) > p.window {
		p.sent = nil
	}
	p.mu.Unlock()
	for _, f := range start {
		f()
	}
}

// close stops the pacer: the closes still waiting are dropped, as the
// stack that would send their FINs is closing, and later ones start at
// once.
func (p *finPacer) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.timer != nil {
		p.timer.Stop()
	}
	p.sent, p.waiting = nil, nil
}
