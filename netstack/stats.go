package netstack

import (
	"bytes"
	"slices"

	"github.com/wgbore/wgbore/protocol"
)

// Stats returns each peer's status, as the engine reports it, ordered by
// public key so that successive listings line up: whether its session
// is fresh, whether traffic flows, and where it is.
func (n *Net) Stats() []protocol.PeerStatus {
	peers := n.engine.Peers()
	slices.SortFunc(peers, func(a, b protocol.PeerStatus) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) })
	return peers
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
