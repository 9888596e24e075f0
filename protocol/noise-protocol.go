package protocol

import (
	"crypto/ecdh"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
)

type handshakeState int

const (
	handshakeZeroed handshakeState = iota
	handshakeInitiationCreated
	handshakeInitiationConsumed
	handshakeResponseCreated
	handshakeResponseConsumed
)

// Handshake failures. They say which check failed and never carry key
// material.
var (
	errUnknownPeer       = errors.New("initiation from unknown peer")
	errDecryptStatic     = errors.New("initiation: cannot decrypt static key")
	errDecryptTimestamp  = errors.New("initiation: cannot decrypt timestamp")
	errReplayedInit      = errors.New("initiation: timestamp not newer than the last one (replay)")
	errInitiationFlood   = errors.New("initiation: faster than the initiation rate")
	errLowOrderPoint     = errors.New("handshake: low-order Curve25519 point")
	errUnexpectedMessage = errors.New("handshake message not expected in this state")
	errDecryptEmpty      = errors.New("response: authentication failed (wrong key or preshared key)")
)

// handshake is one peer's Noise_IKpsk2 state. The static-static DH is
// computed once, when the peer or our private key is set, since it is the
// same for every handshake with that peer.
type handshake struct {
	mu              sync.Mutex
	state           handshakeState
	hash            [blake2s.Size]byte
	chainKey        [blake2s.Size]byte
	presharedKey    PresharedKey
	localEphemeral  *ecdh.PrivateKey // see newEphemeral
	localIndex      uint32
	remoteIndex     uint32
	remoteStatic    PublicKey
	remoteStaticKey *ecdh.PublicKey // remoteStatic for crypto/ecdh, made on first use
	remoteEphemeral PublicKey
	staticStatic    [32]byte
	staticStaticOK  bool
	// initiatorHash is HASH(initial hash || remote static), the start of
	// every initiation we send to this peer.
	initiatorHash [blake2s.Size]byte

	lastTimestamp          timestamp
	lastInitiationConsumed time.Time
	lastSentHandshake      time.Time
}

// clearLocked wipes the chaining secrets and drops the ephemeral key
// (which cannot be wiped; see newEphemeral). Called when a session is
// derived and when keys are zeroed after 3×RejectAfterTime.
func (h *handshake) clearLocked() {
	h.localEphemeral = nil
	wipe(h.chainKey[:])
	wipe(h.hash[:])
	h.remoteEphemeral = PublicKey{}
	h.remoteIndex = 0
	h.state = handshakeZeroed
}

// remoteStaticKeyLocked wraps the peer's static key for crypto/ecdh once:
// wrapping copies it into two heap objects, and each handshake uses it
// twice (our initiation, our response). remoteStatic never changes.
func (h *handshake) remoteStaticKeyLocked() (*ecdh.PublicKey, error) {
	if h.remoteStaticKey == nil {
		k, err := ecdh.X25519().NewPublicKey(h.remoteStatic[:])
		if err != nil {
			return nil, err
		}
		h.remoteStaticKey = k
	}
	return h.remoteStaticKey, nil
}

var zeroNonce [chacha20poly1305.NonceSize]byte

func aeadSeal(dst []byte, key [32]byte, plaintext, ad []byte) {
	aead, _ := chacha20poly1305.New(key[:])
	aead.Seal(dst[:0], zeroNonce[:], plaintext, ad)
}

func aeadOpen(dst []byte, key [32]byte, ciphertext, ad []byte) error {
	aead, _ := chacha20poly1305.New(key[:])
	_, err := aead.Open(dst[:0], zeroNonce[:], ciphertext, ad)
	return err
}

// createInitiation starts a handshake with peer as the initiator.
func (e *Engine) createInitiation(p *Peer) (*messageInitiation, error) {
	id := e.identity()
	if id.dh == nil {
		return nil, errors.New("handshake: no private key set")
	}
	h := &p.handshake
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.staticStaticOK {
		return nil, errLowOrderPoint
	}
	eph, ephPub, err := newEphemeral()
	if err != nil {
		return nil, err
	}
	h.localEphemeral = eph
	h.hash = h.initiatorHash
	h.chainKey = initialChainKey

	msg := &messageInitiation{}
	msg.ephemeral = ephPub
	h.chainKey = kdf1(h.chainKey, msg.ephemeral[:])
	h.hash = mixHash(h.hash, msg.ephemeral[:])

	remote, err := h.remoteStaticKeyLocked()
	if err != nil {
		return nil, err
	}
	ss, ok := dhKey(h.localEphemeral, remote)
	if !ok {
		return nil, errLowOrderPoint
	}
	var key [32]byte
	h.chainKey, key = kdf2(h.chainKey, ss[:])
	wipe(ss[:])
	aeadSeal(msg.static[:], key, id.public[:], h.hash[:])
	h.hash = mixHash(h.hash, msg.static[:])

	h.chainKey, key = kdf2(h.chainKey, h.staticStatic[:])
	ts := makeTimestamp(e.clock.Now())
	aeadSeal(msg.timestamp[:], key, ts[:], h.hash[:])
	h.hash = mixHash(h.hash, msg.timestamp[:])
	wipe(key[:])

	e.indices.remove(h.localIndex)
	h.localIndex = e.indices.newIndex(p)
	msg.sender = h.localIndex
	h.state = handshakeInitiationCreated
	return msg, nil
}

// consumeInitiation authenticates an initiation and finds its peer. Until
// the static key decrypts, the sender is anonymous, so every failure before
// that point is indistinguishable from noise and gets no answer.
func (e *Engine) consumeInitiation(msg *messageInitiation) (*Peer, error) {
	id := e.identity()
	if id.dh == nil {
		return nil, errors.New("handshake: no private key set")
	}
	hash := id.responderHash
	chainKey := kdf1(initialChainKey, msg.ephemeral[:])
	hash = mixHash(hash, msg.ephemeral[:])

	ss, ok := dh(id.dh, &msg.ephemeral)
	if !ok {
		return nil, errLowOrderPoint
	}
	var key [32]byte
	chainKey, key = kdf2(chainKey, ss[:])
	wipe(ss[:])
	var peerKey PublicKey
	if err := aeadOpen(peerKey[:], key, msg.static[:], hash[:]); err != nil {
		return nil, errDecryptStatic
	}
	hash = mixHash(hash, msg.static[:])

	p := e.lookupPeer(peerKey)
	if p == nil {
		return nil, errUnknownPeer
	}
	h := &p.handshake
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.staticStaticOK {
		return nil, errLowOrderPoint
	}
	chainKey, key = kdf2(chainKey, h.staticStatic[:])
	var ts timestamp
	if err := aeadOpen(ts[:], key, msg.timestamp[:], hash[:]); err != nil {
		return nil, errDecryptTimestamp
	}
	wipe(key[:])
	hash = mixHash(hash, msg.timestamp[:])

	now := e.clock.Now()
	if !ts.after(h.lastTimestamp) {
		return nil, errReplayedInit
	}
	if !h.lastInitiationConsumed.IsZero() && now.Sub(h.lastInitiationConsumed) < HandshakeInitiationRate {
		return nil, errInitiationFlood
	}

	h.hash = hash
	h.chainKey = chainKey
	h.remoteIndex = msg.sender
	h.remoteEphemeral = msg.ephemeral
	h.lastTimestamp = ts
	h.lastInitiationConsumed = now
	h.state = handshakeInitiationConsumed
	return p, nil
}

// createResponse answers the initiation consumed last.
func (e *Engine) createResponse(p *Peer) (*messageResponse, *keypair, error) {
	h := &p.handshake
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state != handshakeInitiationConsumed {
		return nil, nil, errUnexpectedMessage
	}
	// The responder's ephemeral lives only in this function.
	eph, ephPub, err := newEphemeral()
	if err != nil {
		return nil, nil, err
	}
	e.indices.remove(h.localIndex)
	h.localIndex = e.indices.newIndex(p)

	msg := &messageResponse{sender: h.localIndex, receiver: h.remoteIndex}
	msg.ephemeral = ephPub
	h.chainKey = kdf1(h.chainKey, msg.ephemeral[:])
	h.hash = mixHash(h.hash, msg.ephemeral[:])

	ss, ok := dh(eph, (*[32]byte)(&h.remoteEphemeral))
	if !ok {
		return nil, nil, errLowOrderPoint
	}
	h.chainKey = kdf1(h.chainKey, ss[:])
	remote, err := h.remoteStaticKeyLocked()
	if err != nil {
		return nil, nil, err
	}
	ss, ok = dhKey(eph, remote)
	if !ok {
		return nil, nil, errLowOrderPoint
	}
	h.chainKey = kdf1(h.chainKey, ss[:])
	wipe(ss[:])

	var tau, key [32]byte
	h.chainKey, tau, key = kdf3(h.chainKey, h.presharedKey[:])
	h.hash = mixHash(h.hash, tau[:])
	aeadSeal(msg.empty[:], key, nil, h.hash[:])
	h.hash = mixHash(h.hash, msg.empty[:])
	wipe(tau[:])
	wipe(key[:])
	h.state = handshakeResponseCreated
	return msg, e.sessionLocked(p), nil
}

// consumeResponse authenticates a response to our initiation.
func (e *Engine) consumeResponse(msg *messageResponse) (*Peer, *keypair, error) {
	entry := e.indices.lookup(msg.receiver)
	p := entry.peer
	if p == nil || entry.keypair != nil {
		return nil, nil, fmt.Errorf("response: %w", errUnexpectedMessage)
	}
	id := e.identity()
	h := &p.handshake
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state != handshakeInitiationCreated || h.localIndex != msg.receiver {
		return nil, nil, fmt.Errorf("response: %w", errUnexpectedMessage)
	}
	chainKey := kdf1(h.chainKey, msg.ephemeral[:])
	hash := mixHash(h.hash, msg.ephemeral[:])

	ss, ok := dh(h.localEphemeral, &msg.ephemeral)
	if !ok {
		return nil, nil, errLowOrderPoint
	}
	chainKey = kdf1(chainKey, ss[:])
	ss, ok = dh(id.dh, &msg.ephemeral)
	if !ok {
		return nil, nil, errLowOrderPoint
	}
	chainKey = kdf1(chainKey, ss[:])
	wipe(ss[:])

	var tau, key [32]byte
	chainKey, tau, key = kdf3(chainKey, h.presharedKey[:])
	hash = mixHash(hash, tau[:])
	if err := aeadOpen(nil, key, msg.empty[:], hash[:]); err != nil {
		return nil, nil, errDecryptEmpty
	}
	hash = mixHash(hash, msg.empty[:])
	wipe(tau[:])
	wipe(key[:])

	h.hash = hash
	h.chainKey = chainKey
	h.remoteIndex = msg.sender
	h.state = handshakeResponseConsumed
	// Derive under the same lock: an initiation created in between would
	// otherwise overwrite the chaining key this response just finished.
	return p, e.sessionLocked(p), nil
}

// sessionLocked turns a finished handshake into transport keys. The
// handshake's secrets are wiped: a handshake yields one session, never
// two. The caller holds p.handshake.mu and installs the keypair after
// releasing it.
func (e *Engine) sessionLocked(p *Peer) *keypair {
	h := &p.handshake
	var send, recv [32]byte
	isInitiator := h.state == handshakeResponseConsumed
	if isInitiator {
		send, recv = kdf2(h.chainKey, nil)
	} else {
		recv, send = kdf2(h.chainKey, nil)
	}
	kp := &keypair{
		created:     e.clock.Now(),
		isInitiator: isInitiator,
		localIndex:  h.localIndex,
		remoteIndex: h.remoteIndex,
		peer:        p,
	}
	kp.send, _ = chacha20poly1305.New(send[:])
	kp.receive, _ = chacha20poly1305.New(recv[:])
	wipe(send[:])
	wipe(recv[:])
	h.clearLocked()
	h.localIndex = 0 // the index now belongs to the keypair
	return kp
}

// installKeypair files a new session as the initiator's current or the
// responder's unconfirmed next, and retires what it replaces.
func (e *Engine) installKeypair(p *Peer, kp *keypair) {
	e.indices.promote(kp.localIndex, kp)
	k := &p.keypairs
	k.mu.Lock()
	// At most two are retired; a fixed array keeps them off the heap
	// (two allocations per handshake, one per side, before).
	var retiredBuf [2]*keypair
	retired := retiredBuf[:0]
	if kp.isInitiator {
		if k.next != nil {
			// The responder session we never confirmed becomes previous,
			// since the peer may already be sending on it.
			retired = append(retired, k.previous, k.current)
			k.previous = k.next
			k.next = nil
		} else {
			retired = append(retired, k.previous)
			k.previous = k.current
		}
		k.current = kp
	} else {
		retired = append(retired, k.next, k.previous)
		k.next = kp
		k.previous = nil
	}
	k.mu.Unlock()
	for _, old := range retired {
		if old != nil {
			e.indices.remove(old.localIndex)
		}
	}
}

// confirmNext promotes the responder's next keypair on the first packet
// the initiator sends with it: only then do we know both ends have it.
func (p *Peer) confirmNext(kp *keypair) bool {
	k := &p.keypairs
	k.mu.RLock()
	isNext := k.next == kp
	k.mu.RUnlock()
	if !isNext {
		return false
	}
	k.mu.Lock()
	if k.next != kp {
		k.mu.Unlock()
		return false
	}
	old := k.previous
	k.previous = k.current
	k.current = kp
	k.next = nil
	k.mu.Unlock()
	if old != nil {
		p.engine.indices.remove(old.localIndex)
	}
	return true
}
