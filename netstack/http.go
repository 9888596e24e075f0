package netstack

import (
	"context"
	"net"
	"net/http"
	"time"
)

// HTTP client timeouts. Each bounds one phase that can hang on a silent
// peer; none bounds the whole exchange, so a large download is limited
// only by the caller's context or http.Client.Timeout.
const (
	httpDialTimeout         = 30 * time.Second
	httpTLSHandshakeTimeout = 10 * time.Second
	httpIdleConnTimeout     = 90 * time.Second
	httpExpectContinue      = 1 * time.Second
)

// HTTPClient returns an http.Client whose connections all go through the
// tunnel, so net/http code works unchanged.
//
// Its Transport has no Proxy: HTTP_PROXY and friends name proxies on the
// host's network, which a request inside the tunnel must not leak to.
// Each call builds a new Transport with its own connection pool; keep the
// client and reuse it, as with any http.Client.
func (n *Net) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:                 nil,
		DialContext:           n.dialWithTimeout,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   httpTLSHandshakeTimeout,
		IdleConnTimeout:       httpIdleConnTimeout,
		ExpectContinueTimeout: httpExpectContinue,
		MaxIdleConns:          100,
	}}
}

// dialWithTimeout is DialContext bounded the way net.Dialer.Timeout bounds
// it, so a request to a peer that never answers fails instead of hanging.
func (n *Net) dialWithTimeout(ctx context.Context, network, address string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, httpDialTimeout)
	defer cancel()
	return n.DialContext(ctx, network, address)
}
