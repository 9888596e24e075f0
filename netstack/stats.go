package netstack

import (
	"bytes"
	"net/netip"
	"slices"
	"time"

	"github.com/wgbore/wgbore/protocol"
)

// PeerStats is what a health check or a `wg show`-style listing needs to
// know about one peer: whether its session is fresh and whether traffic
// flows, and where it is.
type PeerStats struct {
	PublicKey protocol.PublicKey
	// Endpoint is the peer's current UDP address, which follows it when
	// it roams; invalid until it is configured or the peer first writes.
	Endpoint netip.AddrPort
	// LastHandshake is when the last handshake with the peer completed;
	// zero if none has.
	LastHandshake time.Time
	// RxBytes and TxBytes count the bytes received from and sent to the
	// peer, as `wg show` counts its transfer.
	RxBytes, TxBytes uint64
}

// Stats returns one entry per peer, ordered by public key so successive
// listings line up.
func (n *Net) Stats() []PeerStats {
	peers := n.engine.Peers()
	out := make([]PeerStats, 0, len(peers))
	for _, p := range peers {
		out = append(out, PeerStats{
			PublicKey:     p.PublicKey,
			Endpoint:      p.Endpoint,
			LastHandshake: p.LastHandshake,
			RxBytes:       p.RxBytes,
			TxBytes:       p.TxBytes,
		})
	}
	slices.SortFunc(out, func(a, b PeerStats) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) })
	return out
}

// ResentAcks counts the TCP acknowledgements re-sent to peers that came
// back after a silence (see protocol.PeerReturner): each is one of our
// connections' latest, which the outage may have swallowed.
func (n *Net) ResentAcks() uint64 { return n.link.resentAcks.Load() }

// TCPEndpoints counts the tunnel's TCP connections that hold state:
// those open or closing, TIME_WAIT included, which keeps its endpoint
// after the application has let go. A fall in it is a burst of
// connections ending.
func (n *Net) TCPEndpoints() uint64 { return n.stack.Stats().TCP.CurrentConnected.Value() }
