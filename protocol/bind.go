package protocol

import "net/netip"

// ReceiveFunc fills bufs with received datagrams, one per slot, and reports
// how many slots it used. sizes[i] is the length of datagram i and eps[i]
// the address it came from. It blocks until at least one datagram is there,
// and returns net.ErrClosed once the Bind is closed.
//
// It is an alias, not a named type, so that Binds in other packages (the
// in-memory network used by tests, for one) satisfy Bind without importing
// this package.
type ReceiveFunc = func(bufs [][]byte, sizes []int, eps []netip.AddrPort) (n int, err error)

// Bind is the engine's only way to the outside world: UDP datagrams, moved in
// batches so that one system call carries many packets. Endpoints are plain
// netip.AddrPort values, which are comparable and never allocate.
type Bind interface {
	// Receivers returns one receive function per underlying socket. The
	// engine runs one goroutine on each.
	Receivers() []ReceiveFunc

	// Send writes every buffer in bufs as one datagram to ep. It may keep no
	// reference to bufs after it returns.
	Send(bufs [][]byte, ep netip.AddrPort) error

	// BatchSize is the largest number of datagrams one receive or send
	// call moves.
	BatchSize() int

	// Close unblocks every receive function and releases the sockets. A
	// second call must do no harm: the engine closes a Bind it replaces
	// even when something else closed it first.
	Close() error
}
