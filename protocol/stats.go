package protocol

import "sync/atomic"

// DropReason says why the engine discarded a packet. Every discard is
// counted under exactly one reason, so the counters explain where traffic
// went.
type DropReason int

const (
	DropMalformedMessage   DropReason = iota // datagram is not a WireGuard message
	DropMalformedPacket                      // plaintext is not a whole IP packet
	DropUnknownIndex                         // no session or handshake has that receiver index
	DropAuthFailed                           // transport message did not decrypt (bad key or tampering)
	DropReplay                               // counter seen before or left of the replay window
	DropNotAllowedIP                         // inner source address not in the peer's AllowedIPs
	DropNoRoute                              // outbound destination in no peer's AllowedIPs
	DropTooLarge                             // outbound packet larger than the MTU
	DropExpiredKeypair                       // session older than RejectAfterTime
	DropPeerRemoved                          // peer removed while its packets were queued
	DropHandshakeQueueFull                   // handshake queue full
	DropStagedOverflow                       // staged queue full: waiting for a handshake, or the socket behind
	DropNoEndpoint                           // peer has no endpoint yet
	DropSendFailed                           // the Bind refused the datagram
	DropBadMAC1                              // handshake message with a wrong MAC1
	DropCookieRequired                       // under load and MAC2 missing: answered with a cookie reply
	DropRateLimited                          // under load and the source exceeded its handshake rate
	DropHandshakeFailed                      // handshake did not authenticate or was a replay
	DropBadCookieReply                       // cookie reply that did not decrypt
	DropMartianSource                        // inner source no peer may use: loopback, unspecified, multicast, broadcast, ours
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{
	"malformed_message", "malformed_packet", "unknown_index", "auth_failed", "replay",
	"not_allowed_ip", "no_route", "too_large", "expired_keypair", "peer_removed",
	"handshake_queue_full", "staged_overflow", "no_endpoint", "send_failed", "bad_mac1",
	"cookie_required", "rate_limited", "handshake_failed", "bad_cookie_reply",
	"martian_source",
}

func (r DropReason) String() string {
	if r < 0 || r >= numDropReasons {
		return "unknown"
	}
	return dropReasonNames[r]
}

// Stats are the engine-wide counters.
type Stats struct {
	drops             [numDropReasons]atomic.Uint64
	cookieRepliesSent atomic.Uint64
}

func (s *Stats) drop(r DropReason)         { s.drops[r].Add(1) }
func (s *Stats) dropN(r DropReason, n int) { s.drops[r].Add(uint64(n)) }

// StatsSnapshot is a copy of the counters at one moment.
type StatsSnapshot struct {
	Drops             map[DropReason]uint64
	CookieRepliesSent uint64
}

// Dropped returns the count for one reason.
func (s StatsSnapshot) Dropped(r DropReason) uint64 { return s.Drops[r] }

// Stats returns the engine-wide counters.
func (e *Engine) Stats() StatsSnapshot {
	out := StatsSnapshot{Drops: make(map[DropReason]uint64), CookieRepliesSent: e.stats.cookieRepliesSent.Load()}
	for r := DropReason(0); r < numDropReasons; r++ {
		if n := e.stats.drops[r].Load(); n != 0 {
			out.Drops[r] = n
		}
	}
	return out
}
