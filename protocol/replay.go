package protocol

// The replay window remembers which counters of a keypair were accepted.
// Transport messages arrive out of order (parallel decryption, multipath,
// reordering networks), so the window must be wide: at a few Gbit/s a
// narrow window rejects honest late packets. 8192 bits covers well over the
// 2048 packets the whitepaper's minimum asks for, in one kilobyte.
const (
	replayBlockBits  = 64
	replayRingBlocks = 128
	// ReplayWindowSize is how far behind the newest counter a packet may
	// arrive and still be accepted. One block is kept as slack so that
	// moving the window never clears bits still inside it.
	ReplayWindowSize = (replayRingBlocks - 1) * replayBlockBits
)

// replayWindow is a ring of bit blocks (RFC 6479): advancing the window
// clears whole blocks instead of shifting bits. It is not safe for
// concurrent use; each keypair's window is touched only under its peer's
// receive lock.
type replayWindow struct {
	newest uint64
	ring   [replayRingBlocks]uint64
}

// accept records counter and reports whether it is fresh: below limit,
// inside the window and not seen before.
func (w *replayWindow) accept(counter, limit uint64) bool {
	if counter >= limit {
		return false
	}
	block := counter / replayBlockBits
	if counter > w.newest {
		current := w.newest / replayBlockBits
		gap := block - current
		if gap > replayRingBlocks {
			gap = replayRingBlocks
		}
		for i := uint64(1); i <= gap; i++ {
			w.ring[(current+i)%replayRingBlocks] = 0
		}
		w.newest = counter
	} else if w.newest-counter > ReplayWindowSize {
		return false
	}
	bit := uint64(1) << (counter % replayBlockBits)
	slot := &w.ring[block%replayRingBlocks]
	if *slot&bit != 0 {
		return false
	}
	*slot |= bit
	return true
}

func (w *replayWindow) reset() { *w = replayWindow{} }
