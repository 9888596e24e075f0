// Package socksclient is the client side of SOCKS5 (RFC 1928) with its
// username and password login (RFC 1929): CONNECT, UDP ASSOCIATE and the
// UDP request header. The benchmark tool and the tests use it to drive
// wgbore's proxies as a client would. It is written from the RFCs and
// shares no code with the server in package proxy, so a test that uses
// it does not share the server's assumptions.
package socksclient

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"time"
)

// Auth is the login offered to the server; the zero Auth offers none.
type Auth struct {
	User, Pass string
}

// ErrNoAcceptableMethod means the server accepts none of the methods
// offered: no login when Auth is zero, username and password otherwise.
var ErrNoAcceptableMethod = errors.New("SOCKS5 server accepts no offered method")

// ErrLoginRefused means the server refused the username and password.
var ErrLoginRefused = errors.New("SOCKS5 server refused the login")

// ReplyError is a request the server answered with a failure code.
type ReplyError struct {
	Code byte
}

func (e *ReplyError) Error() string {
	return fmt.Sprintf("SOCKS5 request refused: reply code %d (%s)", e.Code, replyText(e.Code))
}

func replyText(code byte) string {
	texts := [...]string{1: "general failure", 2: "not allowed by ruleset", 3: "network unreachable",
		4: "host unreachable", 5: "connection refused", 6: "TTL expired", 7: "command not supported",
		8: "address type not supported"}
	if int(code) < len(texts) && texts[code] != "" {
		return texts[code]
	}
	return "unknown"
}

// Commands of a request.
const (
	cmdConnect   = 1
	cmdAssociate = 3
)

// Connect dials the proxy at proxyAddr and opens a CONNECT tunnel to
// target. The returned conn is the plain TCP conn, so a caller can
// half-close it.
func Connect(ctx context.Context, proxyAddr string, auth Auth, target netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return nil, err
	}
	if deadline, ok := ctx.Deadline(); ok {
		c.SetDeadline(deadline)
		defer c.SetDeadline(time.Time{})
	}
	if _, err := ConnectOn(c, auth, target); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// ConnectOn opens a CONNECT tunnel to target over c, a connection to
// the proxy that the caller dialed, and returns the address the server
// bound for it. The greeting, the login and the request go out in one
// write, so the tunnel costs one round trip. A server that refuses the
// method or the login closes with the request unread, and its kernel may
// then reset the connection before the refusal is read: a refusal can
// show as a reset.
func ConnectOn(c net.Conn, auth Auth, target netip.AddrPort) (netip.AddrPort, error) {
	return request(c, auth, cmdConnect, target, true)
}

// Associate asks over c, a connection to the proxy, for a UDP
// association, and returns the address of the server's relay socket as
// the server gave it: a test checks what the server said, and RelayAddr
// makes it usable. from is the address the client will send from, or the
// zero AddrPort when it does not know it yet (the server then takes it
// from the first datagram). The association lasts as long as c. Each
// step waits for the server's answer, so a refusal is always read as one.
func Associate(c net.Conn, auth Auth, from netip.AddrPort) (netip.AddrPort, error) {
	if !from.IsValid() {
		from = netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
	}
	return request(c, auth, cmdAssociate, from, false)
}

// RelayAddr is where to send datagrams for an association whose reply
// named relay over c: an unspecified address means the proxy's own
// address, as servers commonly answer.
func RelayAddr(c net.Conn, relay netip.AddrPort) netip.AddrPort {
	if !relay.Addr().IsUnspecified() {
		return relay
	}
	if proxy, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return netip.AddrPortFrom(proxy.AddrPort().Addr().Unmap(), relay.Port())
	}
	return relay
}

// request sends the greeting, the login if any and one request, in one
// write when pipelined and otherwise each after the server's answer to
// the one before, and reads the answers in turn.
func request(c net.Conn, auth Auth, cmd byte, dst netip.AddrPort, pipelined bool) (netip.AddrPort, error) {
	method := byte(0)
	var login []byte
	if auth != (Auth{}) {
		if len(auth.User) == 0 || len(auth.User) > 255 || len(auth.Pass) == 0 || len(auth.Pass) > 255 {
			return netip.AddrPort{}, errors.New("SOCKS5 login: user name and password must each be 1 to 255 bytes")
		}
		method = 2
		login = append([]byte{1, byte(len(auth.User))}, auth.User...)
		login = append(login, byte(len(auth.Pass)))
		login = append(login, auth.Pass...)
	}
	greeting := []byte{5, 1, method}
	req := AppendAddr([]byte{5, cmd, 0}, dst)
	send := func(parts ...[]byte) error {
		_, err := c.Write(slices.Concat(parts...))
		return err
	}
	var err error
	if pipelined {
		err = send(greeting, login, req)
	} else {
		err = send(greeting)
	}
	if err != nil {
		return netip.AddrPort{}, err
	}
	var choice [2]byte
	if _, err := io.ReadFull(c, choice[:]); err != nil {
		return netip.AddrPort{}, fmt.Errorf("SOCKS5 method selection: %w", err)
	}
	if choice[0] != 5 || choice[1] != method {
		return netip.AddrPort{}, ErrNoAcceptableMethod
	}
	if method == 2 {
		if !pipelined {
			if err := send(login); err != nil {
				return netip.AddrPort{}, err
			}
		}
		var status [2]byte
		if _, err := io.ReadFull(c, status[:]); err != nil {
			return netip.AddrPort{}, fmt.Errorf("SOCKS5 login: %w", err)
		}
		if status[1] != 0 {
			return netip.AddrPort{}, ErrLoginRefused
		}
	}
	if !pipelined {
		if err := send(req); err != nil {
			return netip.AddrPort{}, err
		}
	}
	var head [3]byte
	if _, err := io.ReadFull(c, head[:]); err != nil {
		return netip.AddrPort{}, fmt.Errorf("SOCKS5 reply: %w", err)
	}
	if head[0] != 5 {
		return netip.AddrPort{}, fmt.Errorf("SOCKS5 reply of version %d", head[0])
	}
	bound, err := readAddr(c)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("SOCKS5 reply address: %w", err)
	}
	if head[1] != 0 {
		return netip.AddrPort{}, &ReplyError{Code: head[1]}
	}
	return bound, nil
}

// AppendAddr appends a SOCKS5 address (ATYP, address, port) to b.
func AppendAddr(b []byte, a netip.AddrPort) []byte {
	if a.Addr().Is4() || a.Addr().Is4In6() {
		b = append(b, 1)
		ip := a.Addr().Unmap().As4()
		b = append(b, ip[:]...)
	} else {
		b = append(b, 4)
		ip := a.Addr().As16()
		b = append(b, ip[:]...)
	}
	return binary.BigEndian.AppendUint16(b, a.Port())
}

// readAddr reads a SOCKS5 address. A domain name, which a reply may
// carry, is read and returned as the zero address with its port.
func readAddr(r io.Reader) (netip.AddrPort, error) {
	var atyp [1]byte
	if _, err := io.ReadFull(r, atyp[:]); err != nil {
		return netip.AddrPort{}, err
	}
	var n int
	switch atyp[0] {
	case 1:
		n = 4
	case 4:
		n = 16
	case 3:
		var l [1]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return netip.AddrPort{}, err
		}
		n = int(l[0])
	default:
		return netip.AddrPort{}, fmt.Errorf("address type %d", atyp[0])
	}
	buf := make([]byte, n+2)
	if _, err := io.ReadFull(r, buf); err != nil {
		return netip.AddrPort{}, err
	}
	port := binary.BigEndian.Uint16(buf[n:])
	if atyp[0] == 3 {
		return netip.AddrPortFrom(netip.Addr{}, port), nil
	}
	ip, _ := netip.AddrFromSlice(buf[:n])
	return netip.AddrPortFrom(ip, port), nil
}

// AppendDatagram appends a UDP request header for dst (RSV, FRAG 0 and
// the address) and payload to b: one datagram for the relay.
func AppendDatagram(b []byte, dst netip.AddrPort, payload []byte) []byte {
	b = append(b, 0, 0, 0)
	b = AppendAddr(b, dst)
	return append(b, payload...)
}

// ParseDatagram splits a datagram from the relay into the address it
// came from and its payload; a source given as a domain name is returned
// as the zero address with its port. A fragment (FRAG other than 0) is an
// error: this client never asks for fragmentation.
func ParseDatagram(d []byte) (src netip.AddrPort, payload []byte, err error) {
	if len(d) < 4 {
		return netip.AddrPort{}, nil, fmt.Errorf("SOCKS5 datagram of %d bytes", len(d))
	}
	if d[2] != 0 {
		return netip.AddrPort{}, nil, fmt.Errorf("SOCKS5 datagram fragment %d", d[2])
	}
	start, n := 4, 0
	switch d[3] {
	case 1:
		n = 4
	case 4:
		n = 16
	case 3:
		if len(d) < 5 {
			return netip.AddrPort{}, nil, fmt.Errorf("SOCKS5 datagram of %d bytes", len(d))
		}
		start, n = 5, int(d[4])
	default:
		return netip.AddrPort{}, nil, fmt.Errorf("SOCKS5 datagram address type %d", d[3])
	}
	end := start + n + 2
	if len(d) < end {
		return netip.AddrPort{}, nil, fmt.Errorf("SOCKS5 datagram of %d bytes, header %d", len(d), end)
	}
	port := binary.BigEndian.Uint16(d[start+n:])
	if d[3] == 3 {
		return netip.AddrPortFrom(netip.Addr{}, port), d[end:], nil
	}
	ip, _ := netip.AddrFromSlice(d[start : start+n])
	return netip.AddrPortFrom(ip, port), d[end:], nil
}
