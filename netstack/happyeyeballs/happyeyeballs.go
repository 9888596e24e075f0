// Package happyeyeballs dials the first of a name's addresses that
// answers, racing its two IP versions as RFC 8305 describes, simplified:
// the preferred version first, the other once the first has had
// FallbackDelay or has failed. Within a version the addresses are tried
// one after another, each with a share of the time left.
//
// It is the one place where wgbore dials a list of addresses: the
// netstack's DialContext, after resolving a name through the tunnel, and
// the proxies, whose SOCKS5 library resolves a name before it dials. It
// knows no network of its own: the caller's DialFunc connects to one
// address.
package happyeyeballs

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"
)

// FallbackDelay is how long the preferred version gets a head start
// before the other is tried too. RFC 8305 section 5 recommends 250 ms;
// package net uses 300 ms, and a dial through wgbore should feel like
// one through package net.
const FallbackDelay = 300 * time.Millisecond

// minPerAddress keeps a dial to several addresses from starving each
// one: the time left is shared among them, but never below this.
const minPerAddress = 2 * time.Second

// ErrNoAddresses is the error of a dial given no address to try.
var ErrNoAddresses = errors.New("no addresses to dial")

// DialFunc connects to one address. Called with a context that is
// already done, it returns the error that the caller wants a dial cut
// short to report.
type DialFunc func(ctx context.Context, ap netip.AddrPort) (net.Conn, error)

// Dial connects to the first of addrs that answers. The IP version of
// addrs[0] is preferred: the caller orders addrs as its resolver, or its
// own addresses, suggest. The first connection wins and the other
// attempt is cancelled; when both versions fail, the error is the
// preferred version's, as package net reports it.
func Dial(ctx context.Context, addrs []netip.AddrPort, dial DialFunc) (net.Conn, error) {
	if len(addrs) == 0 {
		return nil, ErrNoAddresses
	}
	var primaries, fallbacks []netip.AddrPort
	first := addrs[0].Addr().Unmap().Is4()
	for _, ap := range addrs {
		if ap.Addr().Unmap().Is4() == first {
			primaries = append(primaries, ap)
		} else {
			fallbacks = append(fallbacks, ap)
		}
	}
	if len(fallbacks) == 0 {
		return serial(ctx, primaries, dial)
	}
	return parallel(ctx, primaries, fallbacks, dial)
}

// parallel races primaries against fallbacks; see Dial.
func parallel(ctx context.Context, primaries, fallbacks []netip.AddrPort, dial DialFunc) (net.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		conn    net.Conn
		err     error
		primary bool
	}
	results := make(chan result)
	returned := make(chan struct{})
	defer close(returned)
	race := func(primary bool) {
		addrs := fallbacks
		if primary {
			addrs = primaries
		}
		c, err := serial(ctx, addrs, dial)
		select {
		case results <- result{c, err, primary}:
		case <-returned:
			// The other version won; this connection is the loser.
			if c != nil {
				c.Close()
			}
		}
	}
	go race(true)
	fallbackTimer := time.NewTimer(FallbackDelay)
	defer fallbackTimer.Stop()
	var primaryErr error
	fallbackStarted, primaryDone, fallbackDone := false, false, false
	startFallback := func() {
		if !fallbackStarted {
			fallbackStarted = true
			go race(false)
		}
	}
	for {
		select {
		case <-fallbackTimer.C:
			startFallback()
		case r := <-results:
			if r.err == nil {
				return r.conn, nil
			}
			if r.primary {
				primaryDone, primaryErr = true, r.err
				// No reason to keep the fallback waiting for a
				// version that already failed.
				startFallback()
			} else {
				fallbackDone = true
			}
			if primaryDone && fallbackDone {
				return nil, primaryErr
			}
		}
	}
}

// serial tries addrs one after another, sharing the time left among
// them, never below minPerAddress each, and returns the first connection
// or the first error.
func serial(ctx context.Context, addrs []netip.AddrPort, dial DialFunc) (net.Conn, error) {
	var firstErr error
	for i, ap := range addrs {
		if ctx.Err() != nil {
			if firstErr == nil {
				_, firstErr = dial(ctx, ap)
			}
			break
		}
		dctx, cancel := ctx, context.CancelFunc(func() {})
		if d, ok := ctx.Deadline(); ok {
			share := max(time.Until(d)/time.Duration(len(addrs)-i), minPerAddress)
			if partial := time.Now().Add(share); partial.Before(d) {
				dctx, cancel = context.WithDeadline(ctx, partial)
			}
		}
		c, err := dial(dctx, ap)
		cancel()
		if err == nil {
			return c, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if firstErr == nil {
		firstErr = ErrNoAddresses
	}
	return nil, firstErr
}
