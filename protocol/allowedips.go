package protocol

import (
	"net/netip"
	"slices"
)

// allowedIPs is cryptokey routing: the longest AllowedIPs prefix that
// contains an address names the one peer that address belongs to. Outbound,
// it picks the peer to encrypt for; inbound, it checks that the peer a
// packet authenticated as may use the packet's source address.
//
// The table is immutable once built and swapped atomically on change, so
// the per-packet lookup takes no lock and a reconfiguration never stalls
// traffic. Lookups probe one hash map per distinct prefix length in use,
// longest first; real configurations use a handful of lengths (/32, /128,
// /24, /0), which keeps that to a few probes.
type allowedIPs struct {
	v4, v6 prefixSet
	// owner maps each prefix back to its peer for rebuilding.
	owner map[netip.Prefix]*Peer
}

type prefixSet struct {
	lengths []int // distinct lengths, longest first
	byLen   map[netip.Prefix]*Peer
}

func (s *prefixSet) lookup(a netip.Addr) *Peer {
	for _, l := range s.lengths {
		p, err := a.Prefix(l)
		if err != nil {
			continue
		}
		if peer, ok := s.byLen[p]; ok {
			return peer
		}
	}
	return nil
}

func (t *allowedIPs) lookup(a netip.Addr) *Peer {
	if t == nil {
		return nil
	}
	if a.Is4() {
		return t.v4.lookup(a)
	}
	return t.v6.lookup(a)
}

// ownership is a peer's prefixes, all of them.
type ownership struct {
	peer     *Peer
	prefixes []netip.Prefix
}

// withAll returns a new table in which each peer of changes, each named
// once, owns exactly its prefixes (none drops it from the table), with
// one rebuild. A prefix that belonged to another peer moves to this one,
// as with `wg set ... allowed-ips`, and one that two of them name goes
// to the later.
func (t *allowedIPs) withAll(changes []ownership) *allowedIPs {
	changed := make(map[*Peer]bool, len(changes))
	for _, c := range changes {
		changed[c.peer] = true
	}
	n := 0
	if t != nil {
		n = len(t.owner)
	}
	owner := make(map[netip.Prefix]*Peer, n)
	if t != nil {
		for p, o := range t.owner {
			if !changed[o] {
				owner[p] = o
			}
		}
	}
	for _, c := range changes {
		for _, p := range c.prefixes {
			owner[canonicalPrefix(p)] = c.peer
		}
	}
	return buildAllowedIPs(owner)
}

// prefixesOf lists peer's prefixes in a stable order.
func (t *allowedIPs) prefixesOf(peer *Peer) []netip.Prefix {
	var out []netip.Prefix
	if t == nil {
		return nil
	}
	for p, o := range t.owner {
		if o == peer {
			out = append(out, p)
		}
	}
	sortPrefixes(out)
	return out
}

// prefixesByPeer lists every peer's prefixes, each in a stable order, in
// one pass over the table: asking prefixesOf for each peer in turn
// would cost the number of peers times the table's size, which for a
// server with thousands of peers is paid on every metrics scrape.
func (t *allowedIPs) prefixesByPeer() map[*Peer][]netip.Prefix {
	if t == nil {
		return nil
	}
	out := make(map[*Peer][]netip.Prefix)
	for p, o := range t.owner {
		out[o] = append(out[o], p)
	}
	for _, ps := range out {
		sortPrefixes(ps)
	}
	return out
}

func sortPrefixes(ps []netip.Prefix) {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
}

// canonicalPrefix masks host bits, unmaps 4in6 and drops zones, so that
// 10.0.0.1/24 and 10.0.0.0/24 are one entry, as the kernel treats them.
func canonicalPrefix(p netip.Prefix) netip.Prefix {
	addr := p.Addr().WithZone("")
	bits := p.Bits()
	if addr.Is4In6() && bits >= 96 {
		addr = addr.Unmap()
		bits -= 96
	}
	m, err := addr.Prefix(bits)
	if err != nil {
		return p
	}
	return m
}

func buildAllowedIPs(owner map[netip.Prefix]*Peer) *allowedIPs {
	t := &allowedIPs{
		owner: owner,
		v4:    prefixSet{byLen: make(map[netip.Prefix]*Peer)},
		v6:    prefixSet{byLen: make(map[netip.Prefix]*Peer)},
	}
	for p, peer := range owner {
		s := &t.v6
		if p.Addr().Is4() {
			s = &t.v4
		}
		s.byLen[p] = peer
		if !slices.Contains(s.lengths, p.Bits()) {
			s.lengths = append(s.lengths, p.Bits())
		}
	}
	for _, s := range []*prefixSet{&t.v4, &t.v6} {
		slices.SortFunc(s.lengths, func(a, b int) int { return b - a })
	}
	return t
}
