package main

import (
	"cmp"
	"slices"
	"time"
)

// wirePacket is one UDP datagram seen on the loopback interface: when the
// kernel handed it over, and its ports.
type wirePacket struct {
	at       time.Duration // since the capture began
	src, dst uint16
}

// wireSplit divides an echo's round trips, as seen on the wire, between
// the two WireGuard endpoints: the peer's answer runs from the client
// side's last datagram to the peer's last datagram before the client side
// sends again, and the client side's from there to its own next last
// datagram. The two sum to the round trip on the wire. The client side is
// everything on our end of the tunnel: for a proxy pair, the proxy and its
// client together.
//
// A side's datagrams between two of the other's are one answer (a pure
// acknowledgement may come before the echo itself). The client side is
// the port that exchanged the most datagrams with peerPort; traffic on
// other ports (another measurement's keepalives) is ignored. The
// connection's opening and closing exchanges count as answers too: a
// handful among thousands, they barely move a median.
func wireSplit(pkts []wirePacket, peerPort uint16) (client, peer []time.Duration) {
	pkts = slices.Clone(pkts)
	slices.SortStableFunc(pkts, func(a, b wirePacket) int { return cmp.Compare(a.at, b.at) })
	count := map[uint16]int{}
	for _, p := range pkts {
		switch {
		case p.dst == peerPort && p.src != peerPort:
			count[p.src]++
		case p.src == peerPort && p.dst != peerPort:
			count[p.dst]++
		}
	}
	var side uint16
	for port, n := range count {
		if n > count[side] || n == count[side] && port < side {
			side = port
		}
	}
	if side == 0 {
		return nil, nil
	}
	var last, prevLast *wirePacket // the current burst's latest; the previous burst's last
	// end closes the burst that last ended.
	end := func() {
		if prevLast != nil {
			d := last.at - prevLast.at
			if last.src == peerPort {
				peer = append(peer, d)
			} else {
				client = append(client, d)
			}
		}
		prevLast = last
	}
	for i := range pkts {
		p := &pkts[i]
		if !(p.src == side && p.dst == peerPort || p.src == peerPort && p.dst == side) {
			continue
		}
		if last != nil && last.src != p.src {
			end()
		}
		last = p
	}
	if last != nil {
		// The echo is over when the capture stops: its last answer is whole.
		end()
	}
	return client, peer
}

// p50 is the median of ds, taken by the nearest rank as every other
// percentile here is, so that a split sits beside its echo's p50; 0 for
// none.
func p50(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return percentile(s, 50)
}
