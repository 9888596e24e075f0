package protocol

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// handshakeElement is a handshake message copied off the receive path, so
// that the Curve25519 work happens in the handshake workers and not in the
// loop that reads transport packets.
type handshakeElement struct {
	buf    [MessageInitiationSize]byte
	n      int
	src    netip.AddrPort
	queued int64 // clock nanoseconds
}

// receiveLoop reads datagrams from one socket and sorts them: transport
// messages go to the crypto workers in per-keypair batches (a small
// batch with nothing queued ahead is decrypted here), handshake messages
// to the handshake queue.
func (e *Engine) receiveLoop(ref *bindRef, recv ReceiveFunc) {
	size := ref.BatchSize()
	els := make([]*element, size)
	bufs := make([][]byte, size)
	sizes := make([]int, size)
	eps := make([]netip.AddrPort, size)
	for i := range els {
		els[i] = e.getElement()
		bufs[i] = els[i].buf
	}
	defer func() {
		for _, el := range els {
			e.putElement(el)
		}
	}()
	var (
		cur      *batch
		curIndex uint32
		fresh    = make([]*element, 0, size)
		nonce    [chacha20poly1305.NonceSize]byte
		deliver  = make([][]byte, 0, inlineBatchMax)
	)
	flush := func() {
		if cur == nil {
			return
		}
		if !e.receiveInline(cur, &nonce, &deliver) {
			e.dispatchInbound(cur)
		}
		cur = nil
	}
	// failingSince starts the current run of back-to-back errors;
	// lastError is the latest error's time. A dead socket fails every
	// call, and the pause below spaces the calls a millisecond apart; an
	// error now and then (an ICMP report for an earlier send) ends no
	// run, so it never counts as a failed socket.
	var failingSince, lastError time.Time
	for {
		n, err := recv(bufs, sizes, eps)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				e.failBind(ref, err)
				return
			}
			select {
			case <-e.done:
				return
			default:
			}
			now := e.clock.Now()
			if failingSince.IsZero() || now.Sub(lastError) > bindErrorGap {
				failingSince = now
			}
			lastError = now
			if now.Sub(failingSince) >= bindFailAfter && e.bindFailed != nil {
				// Someone can give the engine new sockets: stop
				// reading this one and say so. Without BindFailed the
				// loop keeps trying, as there is nothing better to do.
				e.failBind(ref, err)
				return
			}
			e.log.Debug("receive failed", "err", err)
			// A transient socket error (ICMP-induced ECONNREFUSED and
			// the like) must not spin the CPU.
			time.Sleep(time.Millisecond)
			continue
		}
		failingSince = time.Time{}
		taken := 0
		for i := 0; i < n; i++ {
			msg := els[i].buf[:sizes[i]]
			src := netip.AddrPortFrom(eps[i].Addr().Unmap(), eps[i].Port())
			if len(msg) < 4 || msg[1]|msg[2]|msg[3] != 0 {
				e.stats.drop(DropMalformedMessage)
				continue
			}
			switch msg[0] {
			case MessageTransportType:
				h, ok := readTransportHeader(msg)
				if !ok {
					e.stats.drop(DropMalformedMessage)
					continue
				}
				idx := h.receiver
				if cur == nil || idx != curIndex {
					flush()
					entry := e.indices.lookup(idx)
					if entry.keypair == nil {
						e.stats.drop(DropUnknownIndex)
						continue
					}
					cur = e.getBatch()
					cur.kp, cur.peer = entry.keypair, entry.peer
					curIndex = idx
				}
				el := els[i]
				el.msg = msg
				el.src = src
				el.counter = h.counter
				cur.elems = append(cur.elems, el)
				// The batch owns that buffer now; a fresh one replaces
				// it once the whole receive is sorted.
				els[i] = nil
				taken++
			case MessageInitiationType, MessageResponseType, MessageCookieReplyType:
				if !validHandshakeSize(msg) {
					e.stats.drop(DropMalformedMessage)
					continue
				}
				// MAC1 here, before the hand-off: it is cheap, and a
				// flood of messages without it (anyone who does not
				// know our public key) then costs one keyed hash each
				// and no queueing, allocation or wake-up.
				if msg[0] != MessageCookieReplyType && !e.cookieChecker.checkMAC1(msg) {
					e.stats.drop(DropBadMAC1)
					continue
				}
				now := e.clock.Now().UnixNano()
				if msg[0] != MessageCookieReplyType {
					e.countHandshake(now)
					// Under load, a message without a valid MAC2 is
					// answered here with a cookie reply. Handing each
					// to a worker woke a thread per message, and under
					// a flood the scheduling cost more than the replies.
					if e.underLoad() && !e.cookieChecker.checkMAC2(msg, src) {
						e.sendCookieReply(msg, src)
						continue
					}
				}
				he := e.handshakeElements.Get().(*handshakeElement)
				he.n, he.src, he.queued = len(msg), src, now
				copy(he.buf[:], msg)
				select {
				case e.handshakes <- he:
				default:
					e.stats.drop(DropHandshakeQueueFull)
					e.handshakeElements.Put(he)
				}
			default:
				e.stats.drop(DropMalformedMessage)
			}
		}
		flush()
		if taken > 0 {
			fresh = e.elements.getN(fresh[:0], taken)
			for i := range els[:n] {
				if els[i] == nil {
					els[i] = fresh[len(fresh)-1]
					fresh = fresh[:len(fresh)-1]
					bufs[i] = els[i].buf
				}
			}
		}
	}
}

func validHandshakeSize(msg []byte) bool {
	switch msg[0] {
	case MessageInitiationType:
		return len(msg) == MessageInitiationSize
	case MessageResponseType:
		return len(msg) == MessageResponseSize
	case MessageCookieReplyType:
		return len(msg) == MessageCookieReplySize
	}
	return false
}

// usable reports whether a batch may still be decrypted and delivered:
// its peer is in place and its session not past RejectAfterTime. A batch
// that is not is dropped, counted and recycled.
func (e *Engine) usable(b *batch) bool {
	var reason DropReason
	switch {
	case b.peer.removed.Load():
		reason = DropPeerRemoved
	case e.clock.Now().Sub(b.kp.created) >= e.params.RejectAfterTime:
		reason = DropExpiredKeypair
	default:
		return true
	}
	e.stats.dropN(reason, len(b.elems))
	e.putBatch(b)
	return false
}

// receiveInline decrypts and delivers a small batch in the receiving
// goroutine, skipping the hand-offs to a crypto worker and to the peer's
// in-order goroutine. It does so only when none of the peer's batches is
// queued ahead, and reports whether it took the batch.
func (e *Engine) receiveInline(b *batch, nonce *[chacha20poly1305.NonceSize]byte, deliver *[][]byte) bool {
	p := b.peer
	if len(b.elems) > inlineBatchMax || p.rxPending.Load() != 0 || !p.rxMu.TryLock() {
		return false
	}
	if p.rxPending.Load() != 0 {
		p.rxMu.Unlock()
		return false
	}
	if e.usable(b) {
		for _, el := range b.elems {
			openTransport(b.kp, el, nonce)
		}
		*deliver = p.consume(b, *deliver)
		e.putBatch(b)
	}
	p.rxMu.Unlock()
	return true
}

// dispatchInbound hands a batch to its peer's in-order queue and to the
// decryption workers. When the peer's queue is full it waits: the socket's
// receive buffer is then the queue, and the kernel drops there, before we
// spend a system call and a decryption on packets we would drop anyway.
// Only authenticated sessions reach this point, and every peer delivers
// into the same stack, so one busy peer slows the others no more than the
// stack itself would.
func (e *Engine) dispatchInbound(b *batch) {
	p := b.peer
	if !e.usable(b) {
		return
	}
	b.mu.Lock()
	p.rxPending.Add(1)
	select {
	case p.inbound <- b:
		p.startLoop(&p.rxRunning, p.runReceive)
	case <-p.done:
		p.rxPending.Add(-1)
		b.mu.Unlock()
		e.stats.dropN(DropPeerRemoved, len(b.elems))
		e.putBatch(b)
		return
	case <-e.done:
		p.rxPending.Add(-1)
		b.mu.Unlock()
		e.putBatch(b)
		return
	}
	select {
	case e.decryptQueue <- b:
	case <-e.done:
		b.mu.Unlock()
	}
}

func (e *Engine) decryptWorker() {
	var nonce [chacha20poly1305.NonceSize]byte
	for {
		select {
		case <-e.done:
			return
		case b := <-e.decryptQueue:
			for _, el := range b.elems {
				openTransport(b.kp, el, &nonce)
			}
			b.mu.Unlock()
		}
	}
}

// openTransport decrypts in place; el.plain is the padded plaintext.
func openTransport(kp *keypair, el *element, nonce *[chacha20poly1305.NonceSize]byte) {
	binary.LittleEndian.PutUint64(nonce[4:], el.counter)
	ct := el.msg[MessageTransportHeaderSize:]
	plain, err := kp.receive.Open(ct[:0], nonce[:], ct, nil)
	el.ok = err == nil
	el.plain = plain
}

// receiveLoop is the peer's in-order half of the receive path for
// batches that went through the decryption workers.
func (p *Peer) receiveLoop() {
	e := p.engine
	deliverp := e.receiveScratch.Get().(*[][]byte)
	deliver := (*deliverp)[:0]
	defer func() {
		*deliverp = deliver[:0]
		e.receiveScratch.Put(deliverp)
	}()
	for {
		var b *batch
		select {
		case <-p.done:
			return
		case b = <-p.inbound:
		default:
			if loopIdle(&p.rxRunning, p.inbound) {
				return
			}
			continue
		}
		b.mu.Lock()
		p.rxMu.Lock()
		deliver = p.consume(b, deliver)
		p.rxMu.Unlock()
		p.rxPending.Add(-1)
		b.mu.Unlock()
		e.putBatch(b)
	}
}

// consume is what every decrypted batch goes through, in order: replay
// check, session confirmation, roaming, timers, cryptokey routing's source
// check, and delivery to the packet side. deliver is scratch space, given
// back empty.
func (p *Peer) consume(b *batch, deliver [][]byte) [][]byte {
	e := p.engine
	kp := b.kp
	pr := &e.params
	var (
		authenticated bool
		dataReceived  bool
		lastSrc       netip.AddrPort
		bytes         uint64
	)
	table := e.allowed.Load()
	for _, el := range b.elems {
		if !el.ok {
			e.stats.drop(DropAuthFailed)
			continue
		}
		if !kp.replay.accept(el.counter, pr.RejectAfterMessages) {
			e.stats.drop(DropReplay)
			continue
		}
		authenticated = true
		lastSrc = el.src
		bytes += uint64(len(el.msg))
		if len(el.plain) == 0 {
			continue // keepalive
		}
		pkt, ok := innerPacket(el.plain)
		if !ok {
			e.stats.drop(DropMalformedPacket)
			continue
		}
		src, _ := source(pkt)
		if e.martian(src) {
			e.stats.drop(DropMartianSource)
			continue
		}
		if table.lookup(src) != p {
			e.stats.drop(DropNotAllowedIP)
			continue
		}
		dataReceived = true
		deliver = append(deliver, pkt)
	}
	back := false
	if authenticated {
		back = p.heard()
		p.roam(lastSrc)
		p.stats.rxBytes.Add(bytes)
		if p.confirmNext(kp) {
			p.timersHandshakeComplete()
			p.sendStaged()
		}
		p.timersAnyAuthenticatedPacketReceived()
		p.timersAnyAuthenticatedPacketTraversal()
		if dataReceived {
			p.timersDataReceived()
		}
		p.maybeRekeyOnReceive(kp)
	}
	if len(deliver) > 0 {
		e.packets.DeliverPackets(deliver)
		clear(deliver)
		deliver = deliver[:0]
	}
	if back && !dataReceived {
		// With data, the packet side hears from the peer directly: its
		// stack answers the data with what it would otherwise re-send.
		p.returned()
	}
	return deliver
}

// maybeRekeyOnReceive covers the initiator that only receives: without
// sending it would never notice its session ageing, so it rekeys shortly
// before the responder would stop accepting the session.
func (p *Peer) maybeRekeyOnReceive(kp *keypair) {
	pr := &p.engine.params
	if !kp.isInitiator || p.keypairs.currentKeypair() != kp {
		return
	}
	if p.engine.clock.Now().Sub(kp.created) < pr.RejectAfterTime-pr.KeepaliveTimeout-pr.RekeyTimeout {
		return
	}
	p.timers.mu.Lock()
	already := p.timers.sentLastMinuteRekey
	p.timers.sentLastMinuteRekey = true
	p.timers.mu.Unlock()
	if !already {
		p.sendInitiation(false)
	}
}

// innerPacket trims a decrypted payload to the IP packet's own length,
// dropping the padding. It rejects anything whose header claims more than
// arrived.
func innerPacket(plain []byte) ([]byte, bool) {
	switch plain[0] >> 4 {
	case 4:
		if len(plain) < 20 {
			return nil, false
		}
		n := int(binary.BigEndian.Uint16(plain[2:4]))
		if n < 20 || n > len(plain) {
			return nil, false
		}
		return plain[:n], true
	case 6:
		if len(plain) < 40 {
			return nil, false
		}
		n := 40 + int(binary.BigEndian.Uint16(plain[4:6]))
		if n > len(plain) {
			return nil, false
		}
		return plain[:n], true
	}
	return nil, false
}

func source(pkt []byte) (netip.Addr, bool) {
	switch pkt[0] >> 4 {
	case 4:
		return netip.AddrFrom4([4]byte(pkt[12:16])), true
	case 6:
		return netip.AddrFrom16([16]byte(pkt[8:24])), true
	}
	return netip.Addr{}, false
}

// martian reports an inner source address that no peer may send from,
// whatever its AllowedIPs say (0.0.0.0/0 covers all of these): loopback,
// unspecified, multicast, the IPv4 broadcast address, an IPv4-mapped
// IPv6 address, and our own tunnel addresses. Delivered, such a packet
// would pass for one from this host itself.
func (e *Engine) martian(src netip.Addr) bool {
	if src.IsLoopback() || src.IsUnspecified() || src.IsMulticast() || src.Is4In6() || src == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return true
	}
	for _, a := range e.local {
		if src == a {
			return true
		}
	}
	return false
}
