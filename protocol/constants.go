package protocol

import (
	"math"
	"time"
)

// The protocol's limits, named and valued as in section 6 of the WireGuard
// whitepaper so the code can be read next to it.
const (
	RekeyAfterMessages  = uint64(1) << 60
	RejectAfterMessages = math.MaxUint64 - (1 << 13) - 1
	RekeyAfterTime      = 120 * time.Second
	RejectAfterTime     = 180 * time.Second
	RekeyAttemptTime    = 90 * time.Second
	RekeyTimeout        = 5 * time.Second
	KeepaliveTimeout    = 10 * time.Second
	CookieRefreshTime   = 120 * time.Second

	// RekeyTimeoutJitterMax spreads retransmissions so that two peers that
	// lost the path together do not retry in lockstep.
	RekeyTimeoutJitterMax = 334 * time.Millisecond

	// HandshakeInitiationRate is the fastest a peer may initiate; faster
	// initiations, even authentic ones, only cost the responder CPU.
	HandshakeInitiationRate = time.Second / 50

	// UnderLoadAfterTime keeps demanding cookies for a while after the
	// handshake queue drains, so an attacker cannot toggle the mode.
	UnderLoadAfterTime = time.Second
)

// Params are the protocol's timing and message limits. Production uses
// DefaultParams; tests shorten them to provoke rekeys and rejections
// without sending 2^60 messages. Changing them breaks interoperability
// expectations, so only tests should.
type Params struct {
	RekeyAfterMessages  uint64
	RejectAfterMessages uint64
	RekeyAfterTime      time.Duration
	RejectAfterTime     time.Duration
	RekeyAttemptTime    time.Duration
	RekeyTimeout        time.Duration
	KeepaliveTimeout    time.Duration
}

// DefaultParams are the whitepaper's values.
func DefaultParams() Params {
	return Params{
		RekeyAfterMessages:  RekeyAfterMessages,
		RejectAfterMessages: RejectAfterMessages,
		RekeyAfterTime:      RekeyAfterTime,
		RejectAfterTime:     RejectAfterTime,
		RekeyAttemptTime:    RekeyAttemptTime,
		RekeyTimeout:        RekeyTimeout,
		KeepaliveTimeout:    KeepaliveTimeout,
	}
}

// maxHandshakeAttempts is how many retransmissions fit in RekeyAttemptTime.
func (p *Params) maxHandshakeAttempts() int {
	return int(p.RekeyAttemptTime / p.RekeyTimeout)
}

// Queue sizes. They bound memory under any load: past them packets are
// dropped and counted, never buffered without limit.
const (
	// bindFailAfter is how long a socket's receives may fail back to back
	// before the socket counts as failed: transient errors come and go
	// within it, a dead socket fails every call.
	bindFailAfter = time.Second

	// bindErrorGap is the longest pause between two receive errors that
	// still counts as back to back; the receive loop retries a failed
	// receive after a millisecond.
	bindErrorGap = 100 * time.Millisecond

	// maxStagedPackets waiting per peer for a handshake to finish.
	maxStagedPackets = 1024
	// handshakeQueueSize is how many handshake messages, of all peers
	// together, may wait for the workers.
	handshakeQueueSize = 4096
	// underLoadQueueWait: a handshake message that waited longer than
	// this in the queue means the workers fall behind, and we are under
	// load. The test is the wait and not the depth: a server's peers
	// coming back at once after a restart fill the queue deep while the
	// workers still answer each in time, and a cookie reply would cost
	// each of them a retry RekeyTimeout later. An answer after
	// RekeyTimeout is too late, as the initiator has started over; this
	// is well short of that.
	underLoadQueueWait = time.Second
	// Handshake messages with a valid MAC1 also put us under load once
	// they come faster than a budget allows: underLoadBurst at once,
	// refilled at underLoadRate a second. A peer initiates at most once
	// per RekeyTimeout, so the rate is some 2,500 peers handshaking in
	// turn, and the burst lets a server's peers all come back at once
	// after a restart, each on its first try. Beyond the budget, full
	// handshakes would cost more than a sixth of a core for as long as
	// they last, and a cookie round trip (a few seconds for a real
	// peer's retry) is the better price.
	underLoadBurst = 2048
	underLoadRate  = 500
	// peerQueueBatches is how many batches one peer may have between the
	// crypto workers and its in-order goroutine: with batches of 64, some
	// 4096 packets, enough to keep both cores busy without hoarding
	// memory.
	peerQueueBatches = 64
	// cryptoQueueBatches is the shared queue into the crypto workers.
	cryptoQueueBatches = 1024
	// inlineBatchMax is the largest batch that the goroutine holding it
	// encrypts or decrypts and passes on itself, when none of the peer's
	// batches is queued ahead of it. Small batches are ACKs, handshakes of
	// TCP and request/response traffic: for them the two goroutine
	// wake-ups of the worker path cost more than the crypto, and on a
	// virtual CPU each wake-up of an idle core is tens of microseconds.
	// Bulk data arrives and leaves in batches of tens of packets, which
	// still go to the workers so that crypto runs beside the TCP stack.
	inlineBatchMax = 8
	// maxFreeElements is how many idle packet buffers the engine keeps
	// for reuse: enough for two peers' full queues, about 12 MB at the
	// default MTU once reached.
	maxFreeElements = 8192
	// trimKeep is how many idle packet buffers Trim leaves: a couple of
	// full batches, so the next bulk transfer starts without allocating.
	trimKeep = 256
)
