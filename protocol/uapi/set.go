package uapi

import (
	"encoding/hex"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/wgbore/wgbore/protocol"
)

// setRequest is one parsed `set=1`. The whole request is parsed before
// anything is applied, so a bad line anywhere leaves the device as it
// was: `wg setconf` with a typo must not leave half a config behind.
type setRequest struct {
	privateKey    *protocol.PrivateKey
	hasListenPort bool
	listenPort    uint16
	replacePeers  bool
	peers         []peerChange
}

// peerChange is one public_key=... section. Unset fields leave the
// peer's current value alone.
type peerChange struct {
	publicKey         protocol.PublicKey
	remove            bool
	updateOnly        bool
	presharedKey      *protocol.PresharedKey
	endpoint          netip.AddrPort // invalid means unchanged
	keepalive         *time.Duration
	replaceAllowedIPs bool
	allowedIPs        []netip.Prefix
}

func parseSet(lines []string) (*setRequest, *Error) {
	req := &setRequest{}
	var peer *peerChange
	for _, line := range lines {
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, errorf(errnoInvalid, "line without '='")
		}
		if key == "public_key" {
			k, err := parseKey(value)
			if err != nil {
				return nil, errorf(errnoInvalid, "public_key: %s", err.Msg)
			}
			req.peers = append(req.peers, peerChange{publicKey: protocol.PublicKey(k)})
			peer = &req.peers[len(req.peers)-1]
			continue
		}
		var err *Error
		if peer == nil {
			err = req.setDevice(key, value)
		} else {
			err = peer.set(key, value)
		}
		if err != nil {
			return nil, err
		}
	}
	return req, nil
}

func (req *setRequest) setDevice(key, value string) *Error {
	switch key {
	case "private_key":
		k, err := parseKey(value)
		if err != nil {
			return errorf(errnoInvalid, "private_key: %s", err.Msg)
		}
		pk := protocol.PrivateKey(k)
		req.privateKey = &pk
	case "listen_port":
		port, err := strconv.ParseUint(value, 10, 16)
		if err != nil {
			return errorf(errnoInvalid, "listen_port: not a port number")
		}
		req.hasListenPort, req.listenPort = true, uint16(port)
	case "fwmark":
		// Userspace wgbore sends from its own UDP sockets, not from a
		// kernel interface, and marks nothing; a nonzero mark would be a
		// routing promise we cannot keep, so only 0 is accepted.
		mark, err := strconv.ParseUint(value, 10, 32)
		if err != nil {
			return errorf(errnoInvalid, "fwmark: not a number")
		}
		if mark != 0 {
			return errorf(errnoNotSupported, "fwmark: socket marks are not supported in userspace mode")
		}
	case "replace_peers":
		if value != "true" {
			return errorf(errnoInvalid, "replace_peers: only \"true\" is valid")
		}
		req.replacePeers = true
	default:
		return errorf(errnoInvalid, "unknown device key %q", truncate(key))
	}
	return nil
}

func (p *peerChange) set(key, value string) *Error {
	switch key {
	case "remove":
		if value != "true" {
			return errorf(errnoInvalid, "remove: only \"true\" is valid")
		}
		p.remove = true
	case "update_only":
		if value != "true" {
			return errorf(errnoInvalid, "update_only: only \"true\" is valid")
		}
		p.updateOnly = true
	case "preshared_key":
		k, err := parseKey(value)
		if err != nil {
			return errorf(errnoInvalid, "preshared_key: %s", err.Msg)
		}
		psk := protocol.PresharedKey(k)
		p.presharedKey = &psk
	case "endpoint":
		// Only a literal address, as wireguard-go takes: `wg` resolves
		// names itself before it sends them.
		ap, err := netip.ParseAddrPort(value)
		if err != nil || ap.Port() == 0 {
			return errorf(errnoInvalid, "endpoint: want ip:port or [ipv6]:port")
		}
		p.endpoint = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case "persistent_keepalive_interval":
		secs, err := strconv.ParseUint(value, 10, 16)
		if err != nil {
			return errorf(errnoInvalid, "persistent_keepalive_interval: want 0..65535")
		}
		d := time.Duration(secs) * time.Second
		p.keepalive = &d
	case "replace_allowed_ips":
		if value != "true" {
			return errorf(errnoInvalid, "replace_allowed_ips: only \"true\" is valid")
		}
		p.replaceAllowedIPs = true
		p.allowedIPs = p.allowedIPs[:0]
	case "allowed_ip":
		prefix, err := netip.ParsePrefix(value)
		if err != nil {
			return errorf(errnoInvalid, "allowed_ip: want address/bits")
		}
		p.allowedIPs = append(p.allowedIPs, prefix.Masked())
	case "protocol_version":
		if value != "1" {
			return errorf(errnoInvalid, "protocol_version: only 1 is supported")
		}
	default:
		return errorf(errnoInvalid, "unknown peer key %q", truncate(key))
	}
	return nil
}

// parseKey decodes a 32-byte key in hex; UAPI never uses base64. The
// error never repeats the value, which may be a private key.
func parseKey(s string) ([protocol.KeySize]byte, *Error) {
	var k [protocol.KeySize]byte
	if len(s) != 2*protocol.KeySize {
		return k, errorf(errnoInvalid, "want %d hex digits", 2*protocol.KeySize)
	}
	if _, err := hex.Decode(k[:], []byte(s)); err != nil {
		return k, errorf(errnoInvalid, "not hex")
	}
	return k, nil
}

// truncate keeps an unknown key's echo in an error message short.
func truncate(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}

// peerState is what a set builds for one peer before handing it to
// Device.UpdatePeers: the peer's current config with the request's changes
// laid over it.
type peerState struct {
	cfg     protocol.PeerConfig
	touched bool
}

// apply makes the request's changes. It first merges them into a picture
// of the final peer set, checks that picture, and only then calls the
// device, so that a refusal costs nothing. Peers the request does not
// name are never set again, and a named peer is updated in place rather
// than removed and added, so established sessions survive every change
// but a new private key.
//
// replace_peers differs from wireguard-go in one respect: instead of
// removing every peer and creating the named ones anew, wgbore removes
// the peers the request does not name and updates the others in place.
// The resulting config is the same, except that a named peer without an
// endpoint= line keeps the endpoint it has (configured or learnt from
// its packets) instead of forgetting it, and its sessions survive.
//
// listen_port can only be confirmed: the engine's sockets are opened
// once, before the engine starts, so asking for the port it already has
// succeeds and any other port is refused with EOPNOTSUPP.
// The caller serialises applies on one device (Handler.setMu).
func (req *setRequest) apply(dev Device) *Error {
	if req.hasListenPort && req.listenPort != dev.ListenPort() {
		return errorf(errnoNotSupported, "listen_port: wgbore cannot change its port while running")
	}
	ownPublic := dev.PublicKey()
	if req.privateKey != nil {
		ownPublic = protocol.PublicKey{}
		if !req.privateKey.IsZero() {
			ownPublic = req.privateKey.PublicKey()
		}
	}

	current := dev.Peers()
	state := make(map[protocol.PublicKey]*peerState, len(current))
	if !req.replacePeers {
		for _, p := range current {
			psk, ok := dev.PeerPresharedKey(p.PublicKey)
			if !ok {
				continue
			}
			state[p.PublicKey] = &peerState{cfg: protocol.PeerConfig{
				PublicKey:           p.PublicKey,
				PresharedKey:        psk,
				AllowedIPs:          p.AllowedIPs,
				PersistentKeepalive: p.PersistentKeepalive,
			}}
		}
	}
	for i := range req.peers {
		pc := &req.peers[i]
		if pc.remove {
			delete(state, pc.publicKey)
			continue
		}
		st := state[pc.publicKey]
		if st == nil {
			if pc.updateOnly {
				continue
			}
			if pc.publicKey.Equal(ownPublic) {
				// wireguard-go ignores such a peer too: a
				// handshake with ourselves can never complete.
				continue
			}
			st = &peerState{cfg: protocol.PeerConfig{PublicKey: pc.publicKey}}
			state[pc.publicKey] = st
		}
		st.touched = true
		if pc.presharedKey != nil {
			st.cfg.PresharedKey = *pc.presharedKey
		}
		if pc.endpoint.IsValid() {
			st.cfg.Endpoint = pc.endpoint.String()
		}
		if pc.keepalive != nil {
			st.cfg.PersistentKeepalive = *pc.keepalive
		}
		if pc.replaceAllowedIPs {
			st.cfg.AllowedIPs = nil
		}
		st.cfg.AllowedIPs = mergePrefixes(st.cfg.AllowedIPs, pc.allowedIPs)
	}
	// A prefix belongs to one peer only: as in wg(8), the peer set last
	// takes it from any other. Engine.UpdatePeers does that itself, so
	// the peers are passed in the request's order below.

	if req.privateKey != nil && !req.privateKey.Equal(dev.PrivateKey()) {
		// Only a real change: `wg setconf` and `wg syncconf` always send
		// the key, and re-setting it would drop every session.
		dev.SetPrivateKey(*req.privateKey)
	}
	var remove []protocol.PublicKey
	for _, p := range current {
		if _, kept := state[p.PublicKey]; !kept {
			remove = append(remove, p.PublicKey)
		}
	}
	var set []protocol.PeerConfig
	for i := range req.peers {
		st := state[req.peers[i].publicKey]
		if st == nil || !st.touched {
			continue
		}
		st.touched = false // a key named twice is set once
		set = append(set, st.cfg)
	}
	// One update for all, which rebuilds the routing table once: `wg
	// syncconf` with thousands of peers would otherwise rebuild it per
	// peer.
	errs, _ := dev.UpdatePeers(set, remove)
	for i, err := range errs {
		if err != nil {
			return errorf(errnoIO, "peer %s: refused by the engine", set[i].PublicKey)
		}
	}
	return nil
}

// mergePrefixes adds the prefixes of add that have is missing, in order.
func mergePrefixes(have, add []netip.Prefix) []netip.Prefix {
	out := append([]netip.Prefix(nil), have...)
	seen := make(map[netip.Prefix]bool, len(out)+len(add))
	for _, a := range out {
		seen[a] = true
	}
	for _, a := range add {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}
