package protocol

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"time"
)

// handshakeWorker processes handshake messages off the data path.
func (e *Engine) handshakeWorker() {
	for {
		select {
		case <-e.done:
			return
		case he := <-e.handshakes:
			e.noteQueueWait(he.queued)
			e.handleHandshake(he.buf[:he.n], he.src)
			e.handshakeElements.Put(he)
		}
	}
}

// countHandshake counts a handshake message with a valid MAC1, received
// at now (clock nanoseconds), against the handshake budget and declares
// us under load when the budget is spent. The queue alone is not enough:
// the workers keep up with thousands of spoofed initiations a second, so
// the queue never backs up, and each would cost a Curve25519 operation.
func (e *Engine) countHandshake(now int64) {
	if !e.handshakeBudget.take(now) {
		e.lastUnderLoad.Store(now)
	}
}

// noteQueueWait declares us under load when a handshake message queued
// at queued (clock nanoseconds) waited longer than underLoadQueueWait
// for a worker.
func (e *Engine) noteQueueWait(queued int64) {
	if now := e.clock.Now().UnixNano(); now-queued > int64(underLoadQueueWait) {
		e.lastUnderLoad.Store(now)
	}
}

// handshakeBudget is a token bucket: underLoadBurst tokens, refilled at
// underLoadRate a second. A bucket rather than a count per window lets a
// burst through (every peer of a restarted server at once) while still
// capping the sustained rate.
type handshakeBudget struct {
	mu     sync.Mutex
	tokens float64
	last   int64 // clock nanoseconds of the last refill; 0 before the first
}

func (b *handshakeBudget) take(now int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last == 0 {
		b.tokens = underLoadBurst
	} else if now > b.last {
		b.tokens = min(underLoadBurst, b.tokens+float64(now-b.last)*underLoadRate/float64(time.Second))
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// underLoad reports whether to demand cookies: within UnderLoadAfterTime
// of handshake messages arriving faster than the budget allows, or of
// one waiting too long in the queue.
func (e *Engine) underLoad() bool {
	last := e.lastUnderLoad.Load()
	return last != 0 && e.clock.Now().UnixNano()-last < int64(UnderLoadAfterTime)
}

func (e *Engine) handleHandshake(msg []byte, src netip.AddrPort) {
	if msg[0] == MessageCookieReplyType {
		e.handleCookieReply(msg)
		return
	}
	// MAC1 was checked on receipt: the sender knows our public key,
	// which an Internet-wide scanner does not.
	if e.underLoad() {
		if !e.cookieChecker.checkMAC2(msg, src) {
			e.sendCookieReply(msg, src)
			return
		}
		if !e.rateLimiter.allow(src.Addr()) {
			e.stats.drop(DropRateLimited)
			return
		}
	}
	switch msg[0] {
	case MessageInitiationType:
		e.handleInitiation(msg, src)
	case MessageResponseType:
		e.handleResponse(msg, src)
	}
}

func (e *Engine) sendCookieReply(msg []byte, src netip.AddrPort) {
	e.stats.drop(DropCookieRequired)
	sender := binary.LittleEndian.Uint32(msg[4:8])
	reply, err := e.cookieChecker.createReply(msg, sender, src)
	if err != nil {
		e.log.Warn("cannot create cookie reply", "err", err)
		return
	}
	var buf [MessageCookieReplySize]byte
	reply.marshal(buf[:])
	e.stats.cookieRepliesSent.Add(1)
	if err := e.sock().Send([][]byte{buf[:]}, src); err != nil {
		e.log.Debug("cookie reply send failed", "to", src, "err", err)
	}
}

func (e *Engine) handleCookieReply(msg []byte) {
	var reply messageCookieReply
	if err := reply.unmarshal(msg); err != nil {
		e.stats.drop(DropMalformedMessage)
		return
	}
	entry := e.indices.lookup(reply.receiver)
	if entry.peer == nil {
		e.stats.drop(DropUnknownIndex)
		return
	}
	if !entry.peer.cookies.consumeReply(&reply) {
		e.stats.drop(DropBadCookieReply)
		return
	}
	e.log.Debug("received cookie reply; next handshake carries MAC2", "peer", entry.peer.public)
}

func (e *Engine) handleInitiation(msg []byte, src netip.AddrPort) {
	var m messageInitiation
	if err := m.unmarshal(msg); err != nil {
		e.stats.drop(DropMalformedMessage)
		return
	}
	p, err := e.consumeInitiation(&m)
	if err != nil {
		e.stats.drop(DropHandshakeFailed)
		e.log.Debug("rejected handshake initiation", "from", src, "err", err)
		return
	}
	back := p.heard()
	p.roam(src)
	p.timersAnyAuthenticatedPacketTraversal()
	p.timersAnyAuthenticatedPacketReceived()
	if back {
		defer p.returned()
	}

	resp, kp, err := e.createResponse(p)
	if err != nil {
		// Our own initiation to this peer raced theirs; ours goes on.
		e.log.Debug("cannot create handshake response", "peer", p.public, "err", err)
		return
	}
	var buf [MessageResponseSize]byte
	resp.marshal(buf[:])
	p.cookies.addMACs(buf[:])
	e.installKeypair(p, kp)
	p.timersSessionDerived()
	p.timersAnyAuthenticatedPacketTraversal()
	p.timersAnyAuthenticatedPacketSent()
	e.log.Debug("answered handshake initiation", "peer", p.public, "endpoint", src)
	if err := e.sock().Send([][]byte{buf[:]}, src); err != nil {
		e.log.Debug("handshake response send failed", "peer", p.public, "err", err)
	}
}

func (e *Engine) handleResponse(msg []byte, src netip.AddrPort) {
	var m messageResponse
	if err := m.unmarshal(msg); err != nil {
		e.stats.drop(DropMalformedMessage)
		return
	}
	p, kp, err := e.consumeResponse(&m)
	if err != nil {
		e.stats.drop(DropHandshakeFailed)
		e.log.Debug("rejected handshake response", "from", src, "err", err)
		return
	}
	back := p.heard()
	p.roam(src)
	e.installKeypair(p, kp)
	p.timersSessionDerived()
	p.timersHandshakeComplete()
	p.timersAnyAuthenticatedPacketTraversal()
	p.timersAnyAuthenticatedPacketReceived()
	e.log.Debug("handshake complete", "peer", p.public, "endpoint", src)
	// Confirm the session to the responder right away: a keepalive if
	// nothing is waiting, otherwise the waiting packets themselves.
	p.sendKeepalive()
	if back {
		p.returned()
	}
}
