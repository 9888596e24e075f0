package protocol

import (
	"encoding/binary"
	"net/netip"
	"sync"

	"golang.org/x/crypto/chacha20poly1305"
)

// element is one packet on its way through the engine. buf is a pooled
// buffer big enough for a whole transport message, so the header is
// written in front of the plaintext and the tag behind it without a copy.
type element struct {
	buf     []byte
	msg     []byte // the datagram: header, ciphertext, tag
	plain   []byte // inbound only: the decrypted packet, inside buf
	counter uint64
	ok      bool
	src     netip.AddrPort
}

// batch is a run of one peer's packets under one keypair. When it is
// handed to the crypto workers its mutex is held until they are done
// with it, and the peer's in-order goroutine waits on it: that is how
// parallel crypto keeps per-peer order. A batch sealed or opened inline
// never takes it.
type batch struct {
	mu    sync.Mutex
	elems []*element
	peer  *Peer
	kp    *keypair
}

func (e *Engine) getElement() *element { return e.elements.get() }

func (el *element) reset() { el.msg, el.plain, el.ok, el.src = nil, nil, false, netip.AddrPort{} }

func (e *Engine) putElement(el *element) {
	el.reset()
	e.elements.put(el)
}

func (e *Engine) getBatch() *batch { return e.batches.get() }

// putBatch recycles a batch and all its elements under one lock each.
func (e *Engine) putBatch(b *batch) {
	for _, el := range b.elems {
		el.reset()
	}
	e.elements.putN(b.elems)
	clear(b.elems)
	b.elems = b.elems[:0]
	b.peer, b.kp = nil, nil
	e.batches.put(b)
}

// paddedLen rounds a packet up to a multiple of 16, capped at the MTU,
// so that ciphertext lengths leak less about what is inside.
func paddedLen(n, mtu int) int {
	p := (n + 15) &^ 15
	if p > mtu && n <= mtu {
		return mtu
	}
	return p
}

// destination reads an IP packet's destination address without
// allocating. It returns false for anything that is not a whole IPv4 or
// IPv6 header.
func destination(pkt []byte) (netip.Addr, bool) {
	if len(pkt) == 0 {
		return netip.Addr{}, false
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return netip.Addr{}, false
		}
		return netip.AddrFrom4([4]byte(pkt[16:20])), true
	case 6:
		if len(pkt) < 40 {
			return netip.Addr{}, false
		}
		return netip.AddrFrom16([16]byte(pkt[24:40])), true
	}
	return netip.Addr{}, false
}

// outboundScratch groups one WritePackets call's packets by peer.
type outboundScratch struct {
	peers  []*Peer
	groups [][]*element
	spare  []*element
}

// ScatteredPackets is a batch of outbound IP packets each held in pieces,
// as network stacks keep them (headers in one buffer, payload in others).
// The engine gathers each packet straight into its own buffer, the one
// copy it makes anyway, instead of the caller flattening it first.
type ScatteredPackets interface {
	Len() int
	// Size is the length of packet i.
	Size(i int) int
	// CopyTo gathers packet i into dst, which is Size(i) bytes long.
	CopyTo(i int, dst []byte)
}

// flatPackets adapts WritePackets' contiguous packets.
type flatPackets [][]byte

func (f flatPackets) Len() int                 { return len(f) }
func (f flatPackets) Size(i int) int           { return len(f[i]) }
func (f flatPackets) CopyTo(i int, dst []byte) { copy(dst, f[i]) }

// WritePackets encrypts IP packets for the peers that AllowedIPs route
// them to and sends them. Packets without a route, or larger than the MTU,
// are dropped and counted; packets for a peer without a session wait in
// its bounded staging queue while a handshake runs. The engine keeps no
// reference to pkts after the call.
func (e *Engine) WritePackets(pkts [][]byte) { writeBatch(e, flatPackets(pkts)) }

// WriteScattered is WritePackets for packets held in pieces.
func (e *Engine) WriteScattered(pkts ScatteredPackets) { writeBatch(e, pkts) }

// writeBatch is generic so that WritePackets' slice is not boxed into an
// interface, which would allocate on every call.
func writeBatch[B ScatteredPackets](e *Engine, pkts B) {
	table := e.allowed.Load()
	s, _ := e.scratch.Get().(*outboundScratch)
	if s == nil {
		s = new(outboundScratch)
	}
	n := pkts.Len()
	s.spare = e.elements.getN(s.spare[:0], n)
	for i := range n {
		size := pkts.Size(i)
		if size > e.mtu {
			e.stats.drop(DropTooLarge)
			continue
		}
		el := s.spare[len(s.spare)-1]
		el.msg = el.buf[:MessageTransportHeaderSize+size]
		pkt := el.msg[MessageTransportHeaderSize:]
		pkts.CopyTo(i, pkt)
		dst, ok := destination(pkt)
		if !ok {
			e.stats.drop(DropMalformedPacket)
			continue
		}
		p := table.lookup(dst)
		if p == nil {
			e.stats.drop(DropNoRoute)
			continue
		}
		s.spare[len(s.spare)-1] = nil
		s.spare = s.spare[:len(s.spare)-1]
		j := 0
		for j < len(s.peers) && s.peers[j] != p {
			j++
		}
		if j == len(s.peers) {
			s.peers = append(s.peers, p)
			if j < cap(s.groups) {
				s.groups = s.groups[:j+1]
			} else {
				s.groups = append(s.groups, nil)
			}
		}
		s.groups[j] = append(s.groups[j], el)
	}
	for i, p := range s.peers {
		p.stage(s.groups[i])
		p.sendStaged()
		clear(s.groups[i])
		s.groups[i] = s.groups[i][:0]
		s.peers[i] = nil
	}
	s.peers = s.peers[:0]
	s.groups = s.groups[:0]
	if len(s.spare) > 0 { // packets that were dropped left these unused
		e.elements.putN(s.spare)
		clear(s.spare)
		s.spare = s.spare[:0]
	}
	e.scratch.Put(s)
}

// stage queues packets until a session can carry them. The queue is
// bounded; the oldest packets go first, since they are the likeliest to
// be retransmitted by whoever sent them anyway.
func (p *Peer) stage(els []*element) {
	p.stagedMu.Lock()
	p.staged = append(p.staged, els...)
	var dropped []*element
	if over := len(p.staged) - maxStagedPackets; over > 0 {
		dropped = append(dropped, p.staged[:over]...)
		n := copy(p.staged, p.staged[over:])
		clear(p.staged[n:])
		p.staged = p.staged[:n]
	}
	p.stagedMu.Unlock()
	for _, el := range dropped {
		p.engine.stats.drop(DropStagedOverflow)
		p.engine.putElement(el)
	}
}

func (p *Peer) flushStaged() {
	p.stagedMu.Lock()
	els := p.staged
	p.staged = nil
	p.stagedMu.Unlock()
	for _, el := range els {
		p.engine.putElement(el)
	}
}

// sendKeepalive sends an empty transport message, which proves liveness
// and keeps NAT mappings open.
func (p *Peer) sendKeepalive() {
	p.stagedMu.Lock()
	empty := len(p.staged) == 0
	p.stagedMu.Unlock()
	if empty {
		el := p.engine.getElement()
		el.msg = el.buf[:MessageTransportHeaderSize]
		p.stage([]*element{el})
	}
	p.sendStaged()
}

// sendStaged moves staged packets onto the current session, or starts a
// handshake if there is none usable. It also starts a rekey when the
// session has carried enough messages or (for its initiator) is old,
// while still sending on it: the old session stays valid until
// RejectAfterTime.
func (p *Peer) sendStaged() {
	if p.removed.Load() {
		p.flushStaged()
		return
	}
	e := p.engine
	pr := &e.params
	for {
		kp := p.keypairs.currentKeypair()
		now := e.clock.Now()
		if kp == nil || now.Sub(kp.created) >= pr.RejectAfterTime || kp.sendNonce.Load() >= pr.RejectAfterMessages {
			p.sendInitiation(false)
			return
		}
		// Either side rekeys after RekeyAfterMessages; only the
		// initiator rekeys on age, so both ends never race to replace
		// the same session every two minutes.
		if kp.sendNonce.Load() >= pr.RekeyAfterMessages || (kp.isInitiator && now.Sub(kp.created) >= pr.RekeyAfterTime) {
			p.sendInitiation(false)
		}

		p.sendMu.Lock()
		p.stagedMu.Lock()
		if len(p.staged) == 0 {
			p.stagedMu.Unlock()
			p.sendMu.Unlock()
			return
		}
		b := e.getBatch()
		b.peer, b.kp = p, kp
		exhausted := false
		taken := 0
		for _, el := range p.staged {
			n := kp.sendNonce.Add(1) - 1
			if n >= pr.RejectAfterMessages {
				kp.sendNonce.Store(pr.RejectAfterMessages)
				exhausted = true
				break
			}
			el.counter = n
			b.elems = append(b.elems, el)
			taken++
		}
		rest := copy(p.staged, p.staged[taken:])
		clear(p.staged[rest:])
		p.staged = p.staged[:rest]
		p.stagedMu.Unlock()

		switch {
		case len(b.elems) == 0:
			p.sendMu.Unlock()
			e.putBatch(b)
		case len(b.elems) <= inlineBatchMax && p.txPending.Load() == 0:
			// Nothing of this peer's is waiting in sendLoop: seal and
			// send here, still under sendMu, which keeps nonce order.
			for _, el := range b.elems {
				sealTransport(kp, el, &p.txNonce, e.mtu)
			}
			p.txBufs = p.transmit(b, p.txBufs)
			p.sendMu.Unlock()
			e.putBatch(b)
		default:
			b.mu.Lock()
			p.txPending.Add(1)
			select {
			case p.outbound <- b:
				p.startLoop(&p.txRunning, p.runSend)
			case <-p.done:
				p.txPending.Add(-1)
				p.sendMu.Unlock()
				b.mu.Unlock()
				e.putBatch(b)
				return
			}
			p.sendMu.Unlock()
			select {
			case e.encryptQueue <- b:
			case <-e.done:
				b.mu.Unlock()
				return
			}
		}
		if !exhausted {
			return
		}
		// The session ran out of nonces with packets left: loop, which
		// finds it unusable and starts a handshake for the rest.
	}
}

// encryptWorker seals batches in place. The nonce buffer lives outside
// the loop so that passing it to the AEAD does not allocate per packet.
func (e *Engine) encryptWorker() {
	var nonce [chacha20poly1305.NonceSize]byte
	for {
		select {
		case <-e.done:
			return
		case b := <-e.encryptQueue:
			for _, el := range b.elems {
				sealTransport(b.kp, el, &nonce, e.mtu)
			}
			b.mu.Unlock()
		}
	}
}

// sealTransport turns el.msg (header room plus plaintext) into a transport
// message, padding with zeros and sealing in place.
func sealTransport(kp *keypair, el *element, nonce *[chacha20poly1305.NonceSize]byte, mtu int) {
	plainLen := len(el.msg) - MessageTransportHeaderSize
	padded := plainLen
	if plainLen > 0 {
		padded = paddedLen(plainLen, mtu)
	}
	buf := el.buf[:MessageTransportHeaderSize+padded+tagSize]
	clear(buf[MessageTransportHeaderSize+plainLen : MessageTransportHeaderSize+padded])
	buf[0], buf[1], buf[2], buf[3] = MessageTransportType, 0, 0, 0
	binary.LittleEndian.PutUint32(buf[transportOffsetReceiver:], kp.remoteIndex)
	binary.LittleEndian.PutUint64(buf[transportOffsetCounter:], el.counter)
	binary.LittleEndian.PutUint64(nonce[4:], el.counter)
	plain := buf[MessageTransportHeaderSize : MessageTransportHeaderSize+padded]
	kp.send.Seal(plain[:0], nonce[:], plain, nil)
	el.msg = buf
}

// sendLoop writes one peer's batches to the Bind in nonce order.
func (p *Peer) sendLoop() {
	e := p.engine
	bufsp := e.sendScratch.Get().(*[][]byte)
	bufs := (*bufsp)[:0]
	defer func() {
		*bufsp = bufs[:0]
		e.sendScratch.Put(bufsp)
	}()
	for {
		var b *batch
		select {
		case <-p.done:
			return
		case b = <-p.outbound:
		default:
			if loopIdle(&p.txRunning, p.outbound) {
				return
			}
			continue
		}
		b.mu.Lock()
		bufs = p.transmit(b, bufs)
		p.txPending.Add(-1)
		b.mu.Unlock()
		p.engine.putBatch(b)
	}
}

// transmit sends a sealed batch to the peer's endpoint. bufs is scratch
// space, given back empty.
func (p *Peer) transmit(b *batch, bufs [][]byte) [][]byte {
	e := p.engine
	// The endpoint is held, shared, until the batch is handed to the
	// socket: roam waits for it, so once a packet from the peer's new
	// address has been taken in, nothing more leaves for the old one.
	p.endpointMu.RLock()
	ep := p.endpoint
	var bytes uint64
	dataSent := false
	for _, el := range b.elems {
		bufs = append(bufs, el.msg)
		bytes += uint64(len(el.msg))
		if len(el.msg) > MessageKeepaliveSize {
			dataSent = true
		}
	}
	if !ep.IsValid() {
		e.stats.dropN(DropNoEndpoint, len(b.elems))
	} else {
		// Arm the timers before the packets leave: a reply can arrive
		// before Send returns, and its "packet received" event must
		// find the "data sent" timer already running to cancel it.
		p.timersAnyAuthenticatedPacketTraversal()
		p.timersAnyAuthenticatedPacketSent()
		if dataSent {
			p.timersDataSent()
		}
		if err := e.sock().Send(bufs, ep); err != nil {
			e.stats.dropN(DropSendFailed, len(b.elems))
			e.log.Debug("send failed", "peer", p.public, "endpoint", ep, "err", err)
		} else {
			p.stats.txBytes.Add(bytes)
		}
	}
	p.endpointMu.RUnlock()
	clear(bufs)
	return bufs[:0]
}

// sendInitiation starts (or, with isRetry, repeats) a handshake, at most
// once per RekeyTimeout.
func (p *Peer) sendInitiation(isRetry bool) {
	if p.removed.Load() {
		return
	}
	e := p.engine
	if !isRetry {
		p.timers.mu.Lock()
		p.timers.handshakeAttempts = 0
		p.timers.mu.Unlock()
	}
	now := e.clock.Now()
	p.handshake.mu.Lock()
	if !p.handshake.lastSentHandshake.IsZero() && now.Sub(p.handshake.lastSentHandshake) < e.params.RekeyTimeout {
		p.handshake.mu.Unlock()
		return
	}
	p.handshake.lastSentHandshake = now
	p.handshake.mu.Unlock()
	// Unanswered initiations mean a silent path, and the usual reason
	// for that behind a hostname endpoint is that the name moved.
	p.timers.mu.Lock()
	p.timers.unanswered++
	lookup := p.timers.unanswered > resolveAfterUnanswered
	if lookup {
		p.timers.unanswered = 0
	}
	p.timers.mu.Unlock()
	if lookup {
		p.resolveEndpoint()
	}

	msg, err := e.createInitiation(p)
	if err != nil {
		e.log.Warn("cannot create handshake initiation", "peer", p.public, "err", err)
		return
	}
	var buf [MessageInitiationSize]byte
	msg.marshal(buf[:])
	p.cookies.addMACs(buf[:])
	p.stats.handshakeAttempts.Add(1)
	p.timersAnyAuthenticatedPacketTraversal()
	p.timersAnyAuthenticatedPacketSent()
	p.timersHandshakeInitiated()
	p.endpointMu.RLock() // as in transmit
	defer p.endpointMu.RUnlock()
	ep := p.endpoint
	if !ep.IsValid() {
		e.log.Debug("no endpoint for handshake initiation", "peer", p.public)
		return
	}
	e.log.Debug("sending handshake initiation", "peer", p.public, "endpoint", ep, "retry", isRetry, "now", now)
	if err := e.sock().Send([][]byte{buf[:]}, ep); err != nil {
		e.log.Debug("handshake initiation send failed", "peer", p.public, "endpoint", ep, "err", err)
	}
}
