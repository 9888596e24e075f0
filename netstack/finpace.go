package netstack

import (
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// finPacer keeps the half-closes (TCPConn.CloseWrite) whose FINs wait
// for an acknowledgement to a window, and starts the rest as those are
// acknowledged.
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
// timeout.
//
// The window is the Net's, but the half-closes that wait queue by the
// address their FIN goes to, and places go round those addresses, one
// each in turn, each address's oldest first. In a server, where each
// peer has its own addresses, a peer that went away with a thousand
// connections closing thus holds up another peer's half-close by one
// round at most, not by its whole backlog. A round has a place for each
// address, so a peer whose connections come from many addresses (a
// routed subnet) takes as many.
//
// FINs sent by Close, and by connections accepted through Listen, are
// not paced: the FIN floor (finresend.go) is what bounds their repeats.
type finPacer struct {
	clock  tcpip.Clock
	window int
	hold   time.Duration // finHold, but for tests

	mu   sync.Mutex
	sent []sentFIN // oldest first; some may be acknowledged already
	// waiting holds the half-closes without a place yet, by the address
	// their FIN goes to; turns lists those addresses in the order they
	// came, and turn is the next to be served. An address whose queue
	// has run dry leaves both at the end of a round.
	waiting map[netip.Addr]*finQueue
	turns   []netip.Addr
	turn    int
	queued  int // half-closes in waiting
	// timer runs poll: every finPoll while closes wait, every finHold
	// while sent holds FINs, so that it never keeps a closed endpoint
	// (and its memory) long; armed is its period, 0 while it is stopped.
	timer  tcpip.Timer
	armed  time.Duration
	closed bool
}

// finQueue is one address's half-closes waiting for a place, oldest
// first from head.
type finQueue struct {
	closes []waitingFIN
	head   int
}

func (q *finQueue) pop() waitingFIN {
	w := q.closes[q.head]
	q.closes[q.head] = waitingFIN{}
	q.head++
	switch {
	case q.head == len(q.closes):
		q.closes, q.head = q.closes[:0], 0
	case q.head >= 32 && 2*q.head >= len(q.closes):
		// Move the rest down, or a queue that never runs dry (closes
		// still coming to a peer that went away) would keep every
		// close it ever held in its array.
		n := copy(q.closes, q.closes[q.head:])
		clear(q.closes[n:])
		q.closes, q.head = q.closes[:n], 0
	}
	return w
}

func (q *finQueue) empty() bool { return len(q.closes) == 0 }

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

// admit reports whether ep's FIN, to the address to, may go now: the
// window has room and no close waits. If not, start, which sends the
// FIN, runs later, in to's turn, once it has.
func (p *finPacer) admit(ep finState, to netip.Addr, start func()) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return true
	}
	if p.queued == 0 && len(p.sent) >= p.window {
		p.prune()
	}
	if p.queued == 0 && len(p.sent) < p.window {
		p.sent = append(p.sent, sentFIN{ep: ep, at: p.clock.NowMonotonic()})
		if p.armed == 0 {
			p.arm(p.hold)
		}
		return true
	}
	if p.waiting == nil {
		p.waiting = make(map[netip.Addr]*finQueue)
	}
	q := p.waiting[to]
	if q == nil {
		q = &finQueue{}
		p.waiting[to] = q
		p.turns = append(p.turns, to)
	}
	q.closes = append(q.closes, waitingFIN{ep: ep, start: start})
	p.queued++
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

// poll starts the waiting closes the window has room for, one from
// each address in turn, and looks again after finPoll while some still
// wait.
func (p *finPacer) poll() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.prune()
	n := max(0, min(p.queued, p.window-len(p.sent)))
	now := p.clock.NowMonotonic()
	start := make([]func(), 0, n)
	for len(start) < n {
		if p.turn == len(p.turns) {
			p.endRound()
		}
		q := p.waiting[p.turns[p.turn]]
		p.turn++
		if q.empty() {
			continue
		}
		w := q.pop()
		p.queued--
		p.sent = append(p.sent, sentFIN{ep: w.ep, at: now})
		start = append(start, w.start)
	}
	switch {
	case p.queued > 0:
		p.arm(finPoll)
	case len(p.sent) > 0:
		p.arm(p.hold)
	default:
		p.armed = 0
	}
	if p.queued == 0 {
		// A burst's queues are not kept.
		p.waiting, p.turn = nil, 0
		clear(p.turns)
		p.turns = p.turns[:0]
		if cap(p.turns) > p.window {
			p.turns = nil
		}
	}
	if len(p.sent) == 0 && cap(p.sent) > p.window {
		p.sent = nil
	}
	p.mu.Unlock()
	for _, f := range start {
		f()
	}
}

// endRound drops the addresses whose queues have run dry and starts the
// next round from the first. Called with p.mu held.
func (p *finPacer) endRound() {
	kept := p.turns[:0]
	for _, to := range p.turns {
		if p.waiting[to].empty() {
			delete(p.waiting, to)
			continue
		}
		kept = append(kept, to)
	}
	clear(p.turns[len(kept):])
	p.turns, p.turn = kept, 0
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
	p.sent, p.waiting, p.turns, p.queued = nil, nil, nil, 0
}
