package netstack

import (
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// Retransmission timeout bounds, chosen with an impairment relay between
// wgbore's stack and a wireguard-go peer:
//   - tcpMaxRTO: the timeout doubles while a path is down, so with
//     gVisor's 120 s ceiling the first retransmission after a long
//     blackout could come many seconds after the path returned. Capped at
//     2 s, it comes within 2 s of any outage's end. 2 s and not 1: a path
//     whose smoothed RTT plus four deviations passes the cap times out
//     spuriously, and 2 s leaves room for geostationary satellite paths.
//   - tcpMaxRetries: gVisor gives up after 15 timeouts, which with 2 s
//     timeouts would drop every connection in an outage of under half a
//     minute. 460 keeps Linux's reach (tcp_retries2 = 15 gives about 15
//     minutes).
//   - tcpMinRTO: on a lossy path of a few milliseconds, a lost
//     retransmission waits out a whole timeout, and gVisor's default of
//     200 ms is dozens of round trips: uploads over such a path kept pace
//     with wireguard-go's with this floor and fell far behind with 200 ms.
//     The timer is SRTT + 4 RTTVAR, so the floor only binds on paths of a
//     few milliseconds; a peer that delays its ACKs (Linux does, for a
//     lone segment) adds those delays to the samples. Thousands of FINs
//     sent at once wait behind each other for their acknowledgements
//     longer than the floor, and time out: in such a burst the link
//     endpoint keeps their repeats to Linux's floor (finresend.go).
const (
	tcpMinRTO     = 20 * time.Millisecond
	tcpMaxRTO     = 2 * time.Second
	tcpMaxRetries = 460
)

// recoveryOptions are the stack's TCP options that decide how a
// connection recovers from loss and outages (the package documentation
// tells how they fit with the link endpoint's changes):
//   - SACK, so one lost segment does not cost a window of retransmissions
//     (gVisor's default, set explicitly because everything depends on it);
//   - loss detection by SACK and three duplicates (RFC 6675), not RACK:
//     after a timeout, gVisor's RACK marks the whole flight lost and
//     re-enters SACK recovery with a congestion window of 5 while counting
//     that flight as still in the pipe (its scoreboard was cleared), so
//     it sends about two segments per timeout: an upload through a relay
//     that blacked out for a few seconds crawled for many seconds after
//     the path came back, where without RACK it resumed at once. Without
//     RACK a lossy path is a little slower: minutes of stall traded for a
//     slightly slower crawl;
//   - Reno instead of CUBIC: gVisor's CUBIC truncates the window to an
//     integer after each ACK's fractional increase (cubic.go, getCwnd), so
//     a small window hardly grows, and on a lossy path Reno uploaded more
//     than twice as fast. On clean paths nothing was lost;
//   - the RTO bounds and retries above.
func recoveryOptions() []tcpOption {
	return []tcpOption{
		{"SACK", ptr(tcpip.TCPSACKEnabled(true))},
		{"loss detection", ptr(tcpip.TCPRecovery(0))},
		{"congestion control", ptr(tcpip.CongestionControlOption("reno"))},
		{"minimum RTO", ptr(tcpip.TCPMinRTOOption(tcpMinRTO))},
		{"maximum RTO", ptr(tcpip.TCPMaxRTOOption(tcpMaxRTO))},
		{"maximum retries", ptr(tcpip.TCPMaxRetriesOption(tcpMaxRetries))},
	}
}
