//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Sizes and masks x/sys/unix does not name.
const (
	sizeofGenlHeader = 4      // struct genlmsghdr
	nlaTypeMask      = 0x3fff // ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)
)

// netlinkConn speaks just enough rtnetlink and generic netlink to set up
// a WireGuard interface: the guest has no ip or wg programs, and the few
// messages it needs are simpler to write than a dependency is to carry.
type netlinkConn struct {
	fd  int
	seq uint32
	buf []byte
}

func dialNetlink(proto int) (*netlinkConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	return &netlinkConn{fd: fd, buf: make([]byte, 1<<16)}, nil
}

func (c *netlinkConn) close() { unix.Close(c.fd) }

// attrs builds a netlink attribute list.
type attrs []byte

func (a *attrs) add(typ uint16, v []byte) {
	*a = binary.NativeEndian.AppendUint16(*a, uint16(unix.SizeofNlAttr+len(v)))
	*a = binary.NativeEndian.AppendUint16(*a, typ)
	*a = append(*a, v...)
	for len(*a)%4 != 0 {
		*a = append(*a, 0)
	}
}

func (a *attrs) nest(typ uint16, build func(*attrs)) {
	var inner attrs
	build(&inner)
	a.add(typ|unix.NLA_F_NESTED, inner)
}

func (a *attrs) string(typ uint16, s string) { a.add(typ, append([]byte(s), 0)) }

func (a *attrs) u16(typ uint16, v uint16) { a.add(typ, binary.NativeEndian.AppendUint16(nil, v)) }

// parseAttrs splits an attribute list into its values by type, the
// nested flag masked off. A truncated list ends the parse.
func parseAttrs(b []byte) map[uint16][]byte {
	m := make(map[uint16][]byte)
	for len(b) >= unix.SizeofNlAttr {
		l := int(binary.NativeEndian.Uint16(b))
		if l < unix.SizeofNlAttr || l > len(b) {
			break
		}
		m[binary.NativeEndian.Uint16(b[2:])&nlaTypeMask] = b[unix.SizeofNlAttr:l]
		b = b[min(len(b), (l+3)&^3):]
	}
	return m
}

// list splits a nested list (whose element types are indices).
func list(b []byte) [][]byte {
	var out [][]byte
	for len(b) >= unix.SizeofNlAttr {
		l := int(binary.NativeEndian.Uint16(b))
		if l < unix.SizeofNlAttr || l > len(b) {
			break
		}
		out = append(out, b[unix.SizeofNlAttr:l])
		b = b[min(len(b), (l+3)&^3):]
	}
	return out
}

// request sends one message and returns the payloads of the replies
// that came before the kernel's acknowledgement or the end of a dump.
func (c *netlinkConn) request(typ, flags uint16, body []byte) ([][]byte, error) {
	c.seq++
	msg := binary.NativeEndian.AppendUint32(nil, uint32(unix.SizeofNlMsghdr+len(body)))
	msg = binary.NativeEndian.AppendUint16(msg, typ)
	msg = binary.NativeEndian.AppendUint16(msg, flags|unix.NLM_F_REQUEST)
	msg = binary.NativeEndian.AppendUint32(msg, c.seq)
	msg = binary.NativeEndian.AppendUint32(msg, 0)
	msg = append(msg, body...)
	if err := unix.Sendto(c.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	var replies [][]byte
	for {
		n, _, err := unix.Recvfrom(c.fd, c.buf, 0)
		if err != nil {
			return nil, err
		}
		for b := c.buf[:n]; len(b) >= unix.SizeofNlMsghdr; {
			l := int(binary.NativeEndian.Uint32(b))
			if l < unix.SizeofNlMsghdr || l > len(b) {
				return nil, fmt.Errorf("netlink: truncated reply")
			}
			mtype, seq := binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint32(b[8:])
			payload := b[unix.SizeofNlMsghdr:l]
			b = b[min(len(b), (l+3)&^3):]
			if seq != c.seq {
				continue
			}
			switch mtype {
			case unix.NLMSG_ERROR:
				if errno := int32(binary.NativeEndian.Uint32(payload)); errno != 0 {
					return nil, unix.Errno(-errno)
				}
				return replies, nil
			case unix.NLMSG_DONE:
				return replies, nil
			default:
				replies = append(replies, append([]byte(nil), payload...))
			}
		}
	}
}

func ifinfo(index int, flags, change uint32) []byte {
	b := make([]byte, unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint32(b[4:], uint32(index))
	binary.NativeEndian.PutUint32(b[8:], flags)
	binary.NativeEndian.PutUint32(b[12:], change)
	return b
}

func (c *netlinkConn) newWireGuardLink(name string) error {
	a := attrs(ifinfo(0, 0, 0))
	a.string(unix.IFLA_IFNAME, name)
	a.nest(unix.IFLA_LINKINFO, func(li *attrs) { li.string(unix.IFLA_INFO_KIND, "wireguard") })
	_, err := c.request(unix.RTM_NEWLINK, unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL, a)
	return err
}

func (c *netlinkConn) setUp(index int) error {
	_, err := c.request(unix.RTM_NEWLINK, unix.NLM_F_ACK, ifinfo(index, unix.IFF_UP, unix.IFF_UP))
	return err
}

func (c *netlinkConn) addAddress(index int, p netip.Prefix) error {
	a := attrs{unix.AF_INET, byte(p.Bits()), 0, 0}
	a = binary.NativeEndian.AppendUint32(a, uint32(index))
	ip := p.Addr().As4()
	a.add(unix.IFA_LOCAL, ip[:])
	a.add(unix.IFA_ADDRESS, ip[:])
	_, err := c.request(unix.RTM_NEWADDR, unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL, a)
	return err
}

func genlHeader(cmd, version uint8) attrs { return attrs{cmd, version, 0, 0} }

func (c *netlinkConn) familyID(name string) (uint16, error) {
	a := genlHeader(unix.CTRL_CMD_GETFAMILY, 1)
	a.string(unix.CTRL_ATTR_FAMILY_NAME, name)
	replies, err := c.request(unix.GENL_ID_CTRL, unix.NLM_F_ACK, a)
	if err != nil {
		return 0, err
	}
	for _, r := range replies {
		if id, ok := parseAttrs(r[sizeofGenlHeader:])[unix.CTRL_ATTR_FAMILY_ID]; ok && len(id) >= 2 {
			return binary.NativeEndian.Uint16(id), nil
		}
	}
	return 0, fmt.Errorf("no family id in the reply")
}

// configure gives wg0 its key, port and one peer: wgbore, with its
// preshared key, its endpoint and 10.77.0.1/32.
func (c *netlinkConn) configure(family uint16, conf config) error {
	a := genlHeader(unix.WG_CMD_SET_DEVICE, unix.WG_GENL_VERSION)
	a.string(unix.WGDEVICE_A_IFNAME, iface)
	a.add(unix.WGDEVICE_A_PRIVATE_KEY, conf.private)
	a.u16(unix.WGDEVICE_A_LISTEN_PORT, listenPort)
	a.nest(unix.WGDEVICE_A_PEERS, func(peers *attrs) {
		peers.nest(0, func(p *attrs) {
			p.add(unix.WGPEER_A_PUBLIC_KEY, conf.peer)
			p.add(unix.WGPEER_A_PRESHARED_KEY, conf.psk)
			sa := make([]byte, unix.SizeofSockaddrInet4)
			binary.NativeEndian.PutUint16(sa, unix.AF_INET)
			binary.BigEndian.PutUint16(sa[2:], conf.endpoint.Port())
			ip := conf.endpoint.Addr().As4()
			copy(sa[4:], ip[:])
			p.add(unix.WGPEER_A_ENDPOINT, sa)
			p.nest(unix.WGPEER_A_ALLOWEDIPS, func(ips *attrs) {
				ips.nest(0, func(ip *attrs) {
					ip.u16(unix.WGALLOWEDIP_A_FAMILY, unix.AF_INET)
					addr := wgborePrefix.Addr().As4()
					ip.add(unix.WGALLOWEDIP_A_IPADDR, addr[:])
					ip.add(unix.WGALLOWEDIP_A_CIDR_MASK, []byte{byte(wgborePrefix.Bits())})
				})
			})
		})
	})
	_, err := c.request(family, unix.NLM_F_ACK, a)
	return err
}

// peerStats reads what `wg show` would: the one peer's latest handshake
// (Unix seconds, 0 for never) and its byte counters.
func (c *netlinkConn) peerStats(family uint16) (handshake int64, rx, tx uint64, err error) {
	a := genlHeader(unix.WG_CMD_GET_DEVICE, unix.WG_GENL_VERSION)
	a.string(unix.WGDEVICE_A_IFNAME, iface)
	replies, err := c.request(family, unix.NLM_F_DUMP, a)
	if err != nil {
		return 0, 0, 0, err
	}
	for _, r := range replies {
		for _, peer := range list(parseAttrs(r[sizeofGenlHeader:])[unix.WGDEVICE_A_PEERS]) {
			p := parseAttrs(peer)
			if v := p[unix.WGPEER_A_LAST_HANDSHAKE_TIME]; len(v) >= 8 {
				handshake = int64(binary.NativeEndian.Uint64(v))
			}
			if v := p[unix.WGPEER_A_RX_BYTES]; len(v) == 8 {
				rx = binary.NativeEndian.Uint64(v)
			}
			if v := p[unix.WGPEER_A_TX_BYTES]; len(v) == 8 {
				tx = binary.NativeEndian.Uint64(v)
			}
			return handshake, rx, tx, nil
		}
	}
	return 0, 0, 0, fmt.Errorf("%s has no peer", iface)
}
