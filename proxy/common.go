package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"net"
	"net/netip"
	"time"
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

// dialAddrs tries addrs in the Network's order. Each attempt gets an even
// share of the time left, as net.Dialer does, so one black-holed address
// cannot use up the whole budget.
func dialAddrs(ctx context.Context, nw Network, network string, addrs []netip.Addr, port uint16) (net.Conn, error) {
	var firstErr error
	for i, ip := range addrs {
		attemptCtx, cancel := ctx, context.CancelFunc(func() {})
		if deadline, ok := ctx.Deadline(); ok {
			share := time.Until(deadline) / time.Duration(len(addrs)-i)
			attemptCtx, cancel = context.WithTimeout(ctx, share)
		}
		c, err := nw.DialContext(attemptCtx, network, netip.AddrPortFrom(ip.Unmap(), port).String())
		cancel()
		if err == nil {
			return c, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, firstErr
}
