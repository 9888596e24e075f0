package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"net"
	"net/netip"

	"github.com/wgbore/wgbore/netstack/happyeyeballs"
)

// credentials holds a proxy's username and password as hashes, so that
// checking a login takes the same time whatever the client sent: neither
// the content nor the length of either value leaks through timing.
type credentials struct {
	user, pass [sha256.Size]byte
}

func newCredentials(username, password string) *credentials {
	return &credentials{user: sha256.Sum256([]byte(username)), pass: sha256.Sum256([]byte(password))}
}

// match compares both values every time, so a right username with a
// wrong password takes as long as a wrong username.
func (c *credentials) match(username, password string) bool {
	u := sha256.Sum256([]byte(username))
	p := sha256.Sum256([]byte(password))
	return subtle.ConstantTimeCompare(u[:], c.user[:])&subtle.ConstantTimeCompare(p[:], c.pass[:]) == 1
}

// dialAddrs connects to the first of addrs that answers, racing their IP
// versions as the netstack races a name's (package happyeyeballs), the
// version of the Network's first address leading.
func dialAddrs(ctx context.Context, nw Network, network string, addrs []netip.Addr, port uint16) (net.Conn, error) {
	aps := make([]netip.AddrPort, len(addrs))
	for i, ip := range addrs {
		aps[i] = netip.AddrPortFrom(ip.Unmap(), port)
	}
	return happyeyeballs.Dial(ctx, aps, func(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
		return nw.DialContext(ctx, network, ap.String())
	})
}
