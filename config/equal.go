package config

import (
	"crypto/subtle"
	"maps"
	"slices"
)

// The Equal methods say whether two sections say the same, so that a
// reload can keep running what did not change. Pos never counts: where a
// section sits in the file is not what it says, and inserting a line
// above it must not restart it.

// Equal reports whether two secrets are the same, in time that does not
// depend on where they first differ. Comparing two configurations is no
// login, but a password should not hint at itself even so, and constant
// time costs nothing here.
func (s Secret) Equal(o Secret) bool {
	return subtle.ConstantTimeCompare([]byte(s), []byte(o)) == 1
}

// Equal reports whether two [Socks5] sections say the same, Pos aside;
// the passwords are compared as secrets.
func (s Socks5) Equal(o Socks5) bool {
	samePassword := s.Password.Equal(o.Password)
	s.Pos, o.Pos = Position{}, Position{}
	s.Password, o.Password = "", ""
	return samePassword && s == o
}

// Equal reports whether two [http] sections say the same, Pos aside; the
// passwords are compared as secrets. The certificate is compared by its
// file names only: what they hold is for the caller to compare.
func (h HTTP) Equal(o HTTP) bool {
	samePassword := h.Password.Equal(o.Password)
	h.Pos, o.Pos = Position{}, Position{}
	h.Password, o.Password = "", ""
	return samePassword && h == o
}

// Equal reports whether two [TCPClientTunnel] sections say the same, Pos
// aside.
func (t TCPClientTunnel) Equal(o TCPClientTunnel) bool {
	t.Pos, o.Pos = Position{}, Position{}
	return t == o
}

// Equal reports whether two [TCPServerTunnel] sections say the same, Pos
// aside.
func (t TCPServerTunnel) Equal(o TCPServerTunnel) bool {
	t.Pos, o.Pos = Position{}, Position{}
	return t == o
}

// Equal reports whether two [UDPProxyTunnel] sections say the same, Pos
// aside.
func (t UDPProxyTunnel) Equal(o UDPProxyTunnel) bool {
	t.Pos, o.Pos = Position{}, Position{}
	return t == o
}

// Equal reports whether two [UDPServerTunnel] sections say the same, Pos
// aside.
func (t UDPServerTunnel) Equal(o UDPServerTunnel) bool {
	t.Pos, o.Pos = Position{}, Position{}
	return t == o
}

// Equal reports whether two [Egress] sections say the same, Pos aside.
// Its lists make it not comparable with ==, so it names every field; an
// empty list and an absent one say the same.
func (e Egress) Equal(o Egress) bool {
	return slices.Equal(e.Allow, o.Allow) &&
		slices.Equal(e.Deny, o.Deny) &&
		slices.Equal(e.HostAddresses, o.HostAddresses) &&
		e.MaxFlowsPerPeer == o.MaxFlowsPerPeer &&
		e.MaxFlows == o.MaxFlows &&
		e.FlowMemory == o.FlowMemory &&
		e.UDPTimeout == o.UDPTimeout
}

// Equal reports whether two [DNSServer] sections say the same, Pos aside:
// the same upstreams in the same order, and the same names with the same
// addresses in the same order. It names every field, as Egress.Equal
// does.
func (d DNSServer) Equal(o DNSServer) bool {
	return slices.Equal(d.Upstream, o.Upstream) &&
		maps.EqualFunc(d.Records, o.Records, slices.Equal)
}
