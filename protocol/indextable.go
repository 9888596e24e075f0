package protocol

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
)

// indexTable maps our 32-bit session indices, which peers echo back as
// the receiver index, to the handshake or keypair they name. Indices are
// random so that they say nothing about how many sessions exist.
type indexTable struct {
	mu      sync.RWMutex
	entries map[uint32]indexEntry
}

type indexEntry struct {
	peer    *Peer
	keypair *keypair // nil while the index names a handshake in progress
}

func (t *indexTable) init() { t.entries = make(map[uint32]indexEntry) }

// newIndex reserves a fresh index for peer's handshake.
func (t *indexTable) newIndex(peer *Peer) uint32 {
	var b [4]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic("crypto/rand failed: " + err.Error()) // cannot happen on Linux; never carries secrets
		}
		idx := binary.LittleEndian.Uint32(b[:])
		if idx == 0 {
			continue // 0 means "no index" throughout the engine
		}
		t.mu.Lock()
		if _, taken := t.entries[idx]; !taken {
			t.entries[idx] = indexEntry{peer: peer}
			t.mu.Unlock()
			return idx
		}
		t.mu.Unlock()
	}
}

func (t *indexTable) lookup(idx uint32) indexEntry {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.entries[idx]
}

// promote points a handshake's index at the keypair it produced.
func (t *indexTable) promote(idx uint32, kp *keypair) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.entries[idx]; ok {
		e.keypair = kp
		t.entries[idx] = e
	}
}

func (t *indexTable) remove(idx uint32) {
	if idx == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.entries, idx)
}

func (t *indexTable) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.entries)
}
