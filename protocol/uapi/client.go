package uapi

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/wgbore/wgbore/protocol"
)

// DeviceState is a device as a `get` reply describes it, for clients such
// as `wgbore show` that cannot ask the engine directly.
//
// It holds no secret: the private key is read only to derive PublicKey,
// and the preshared keys only to note that they are set, so a caller
// cannot print or log a key by mistake.
type DeviceState struct {
	// HasPrivateKey is false for a device not yet given a key; then
	// PublicKey is zero.
	HasPrivateKey bool
	PublicKey     protocol.PublicKey
	ListenPort    uint16
	FwMark        uint32
	// Peers are in the reply's order. Of each PeerStatus only the fields
	// the protocol carries are set: PublicKey, HasPresharedKey, Endpoint,
	// AllowedIPs, PersistentKeepalive, LastHandshake, RxBytes, TxBytes.
	Peers []protocol.PeerStatus
}

// Get sends `get=1` on rw and parses the reply. A reply with a non-zero
// errno is an *Error. Keys the parser does not know are skipped, as wg
// skips them, so a newer server still answers an older client.
// Error messages name a line's key but never its value, which may be a
// private key.
func Get(rw io.ReadWriter) (*DeviceState, error) {
	if _, err := io.WriteString(rw, "get=1\n\n"); err != nil {
		return nil, fmt.Errorf("uapi: sending get: %w", err)
	}
	r := bufio.NewReaderSize(rw, maxLine)
	d := &DeviceState{}
	var peer *protocol.PeerStatus
	var hsSec, hsNsec int64
	// endPeer completes the peer being read: its handshake time comes in
	// two lines, and zero seconds means never.
	endPeer := func() {
		if peer == nil {
			return
		}
		if hsSec != 0 || hsNsec != 0 {
			peer.LastHandshake = time.Unix(hsSec, hsNsec)
		}
		d.Peers = append(d.Peers, *peer)
		peer, hsSec, hsNsec = nil, 0, 0
	}
	for {
		line, err := readLine(r)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("uapi: reading the get reply: %w", err)
		}
		if line == "" {
			return nil, errors.New("uapi: get reply ended without errno")
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, errors.New("uapi: get reply has a line without '='")
		}
		bad := func(err error) error {
			var ue *Error
			if errors.As(err, &ue) {
				err = errors.New(ue.Msg) // parseKey's, whose errno is for servers
			}
			return fmt.Errorf("uapi: get reply: bad %s: %w", key, err)
		}
		if key == "errno" {
			errno, err := strconv.Atoi(value)
			if err != nil {
				return nil, bad(err)
			}
			if end, err := readLine(r); err != nil || end != "" {
				return nil, errors.New("uapi: get reply: errno not followed by an empty line")
			}
			if errno != 0 {
				return nil, &Error{Errno: errno, Msg: "get refused"}
			}
			endPeer()
			return d, nil
		}
		if key == "public_key" {
			endPeer()
			k, err := parseKey(value)
			if err != nil {
				return nil, bad(err)
			}
			peer = &protocol.PeerStatus{PublicKey: k}
			continue
		}
		if peer == nil {
			err = d.setDevice(key, value)
		} else {
			err = setPeerState(peer, &hsSec, &hsNsec, key, value)
		}
		if err != nil {
			return nil, bad(err)
		}
	}
}

func (d *DeviceState) setDevice(key, value string) error {
	switch key {
	case "private_key":
		k, err := parseKey(value)
		if err != nil {
			return err
		}
		priv := protocol.PrivateKey(k)
		d.HasPrivateKey = !priv.IsZero()
		if d.HasPrivateKey {
			d.PublicKey = priv.PublicKey()
		}
		clear(priv[:])
		clear(k[:])
	case "listen_port":
		n, err := strconv.ParseUint(value, 10, 16)
		if err != nil {
			return err
		}
		d.ListenPort = uint16(n)
	case "fwmark":
		n, err := strconv.ParseUint(value, 10, 32)
		if err != nil {
			return err
		}
		d.FwMark = uint32(n)
	}
	return nil
}

func setPeerState(p *protocol.PeerStatus, hsSec, hsNsec *int64, key, value string) error {
	var err error
	switch key {
	case "preshared_key":
		k, kerr := parseKey(value)
		if kerr != nil {
			return kerr
		}
		p.HasPresharedKey = !protocol.PresharedKey(k).IsZero()
		clear(k[:])
	case "endpoint":
		p.Endpoint, err = netip.ParseAddrPort(value)
	case "allowed_ip":
		var pfx netip.Prefix
		if pfx, err = netip.ParsePrefix(value); err == nil {
			p.AllowedIPs = append(p.AllowedIPs, pfx)
		}
	case "last_handshake_time_sec":
		*hsSec, err = strconv.ParseInt(value, 10, 64)
	case "last_handshake_time_nsec":
		*hsNsec, err = strconv.ParseInt(value, 10, 64)
	case "rx_bytes":
		p.RxBytes, err = strconv.ParseUint(value, 10, 64)
	case "tx_bytes":
		p.TxBytes, err = strconv.ParseUint(value, 10, 64)
	case "persistent_keepalive_interval":
		var n uint64
		n, err = strconv.ParseUint(value, 10, 16)
		p.PersistentKeepalive = time.Duration(n) * time.Second
	}
	return err
}
