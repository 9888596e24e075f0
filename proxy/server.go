package proxy

import "context"

// Server is what a proxy or forwarder offers the process that runs it: a
// graceful stop, an immediate one, and its connection counts. Each type
// serves on its own kind of socket (a listener, a packet socket), so
// Serve is not part of it; stopping and counting are the same for all.
type Server interface {
	// Shutdown stops accepting and lets open connections finish until
	// ctx ends.
	Shutdown(ctx context.Context) error
	// Close ends everything at once.
	Close() error
	// Stats counts the clients served, for metrics.
	Stats() ConnStats
}

var (
	_ Server = (*SOCKS5)(nil)
	_ Server = (*HTTP)(nil)
	_ Server = (*TCPForwarder)(nil)
	_ Server = (*UDPForwarder)(nil)
)
