package protocol

import (
	"crypto/cipher"
	"sync"
	"sync/atomic"
	"time"
)

// keypair is one session's pair of transport keys. The receive side's
// replay window is touched only under the owning peer's receive lock
// (its in-order goroutine, or the inline path for a small batch);
// everything else is fixed at creation or atomic.
type keypair struct {
	send        cipher.AEAD
	receive     cipher.AEAD
	sendNonce   atomic.Uint64
	replay      replayWindow
	created     time.Time
	isInitiator bool
	localIndex  uint32
	remoteIndex uint32
	peer        *Peer
}

// keypairs holds a peer's sessions. next is a responder's session that the
// initiator has not yet confirmed by sending on it; previous keeps the old
// session alive for packets still in flight during a rekey.
type keypairs struct {
	mu       sync.RWMutex
	previous *keypair
	current  *keypair
	next     *keypair
}

func (k *keypairs) currentKeypair() *keypair {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.current
}
