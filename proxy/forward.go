package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/wgbore/wgbore/proxy/relay"
)

const (
	// forwardDialTimeout bounds one dial to a forwarder's target. A dial
	// into the tunnel may have to wait for a WireGuard handshake that is
	// retried (rekey-timeout 5 s, with jitter), so it is generous.
	forwardDialTimeout = 30 * time.Second
)

// ForwardConfig configures a TCPForwarder.
type ForwardConfig struct {
	// MaxConnections caps the relays one listener serves at once; past it
	// clients are closed at once. <= 0 means DefaultMaxConnections.
	MaxConnections int

	// Admit, when set, is asked before each new connection is served;
	// false refuses it as the cap does. A memory budget uses it to turn
	// clients away before the process runs out.
	Admit func() bool

	// IdleTimeout closes a relay after no byte has moved either way for
	// this long, so peers that vanished without a FIN (a laptop put to
	// sleep, a NAT that forgot the flow) do not hold a slot forever.
	// 0 keeps relays open as long as their two ends do.
	IdleTimeout time.Duration

	// Logger receives dial failures at warn level and per-relay events at
	// debug level; nil discards them.
	Logger *slog.Logger
}

// TCPForwarder accepts connections on listeners and relays each, bytes
// and half-closes both ways, to one fixed target reached through dial.
//
// It serves both directions of a tunnel: a host net.Listener with the
// tunnel's DialContext forwards a local port into the tunnel
// (TCPClientTunnel), and the tunnel's Listen("tcp", ":port") with a host
// (&net.Dialer{}).DialContext exposes a host service to the tunnel's peers
// (TCPServerTunnel).
type TCPForwarder struct {
	dial     func(ctx context.Context, network, address string) (net.Conn, error)
	target   string
	maxConns int
	admit    func() bool
	conns    connCounter // summed over every Serve
	idle     time.Duration
	log      *slog.Logger

	// ctx is cancelled by Close, which ends dials in flight.
	ctx    context.Context
	cancel context.CancelFunc

	// connTracker holds the listeners, both ends of every relay, and
	// the WaitGroup counting every goroutine the forwarder starts.
	*connTracker
}

// NewTCPForwarder returns a forwarder that relays every accepted
// connection to target ("host:port") dialed with dial. It starts nothing;
// call Serve.
func NewTCPForwarder(dial func(ctx context.Context, network, address string) (net.Conn, error), target string, cfg ForwardConfig) *TCPForwarder {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &TCPForwarder{
		dial:        dial,
		target:      target,
		maxConns:    cfg.MaxConnections,
		admit:       cfg.Admit,
		idle:        cfg.IdleTimeout,
		log:         log,
		ctx:         ctx,
		cancel:      cancel,
		connTracker: newConnTracker(),
	}
}

// Serve accepts connections on l, at most MaxConnections at once, and
// relays each in its own goroutines. It closes l when it returns, and
// returns nil once Close or Shutdown has been called; relays already
// running carry on until their ends finish or Close is called.
func (f *TCPForwarder) Serve(l net.Listener) error {
	err := f.acceptLoop(f.ctx, limitConnections(l, f.maxConns, f.admit, &f.conns, nil), f.log.With("target", f.target), "forward: accept", f.startRelay)
	if err != nil {
		return fmt.Errorf("forward to %s: %w", f.target, err)
	}
	return nil
}

// Stats counts the accepted connections of every Serve together, for
// metrics.
func (f *TCPForwarder) Stats() ConnStats { return f.conns.stats() }

// Close stops every Serve, ends every relay and dial in flight, and
// returns once all goroutines the forwarder started have exited. It is
// safe to call more than once, and after Shutdown.
func (f *TCPForwarder) Close() error {
	// Closing both ends fails both halves of each relay at once.
	f.closeAll()
	f.cancel()
	f.wg.Wait()
	return nil
}

// Shutdown stops accepting and lets the relays in flight finish on their
// own. If ctx ends first, it closes them as Close does and returns ctx's
// error. Either way every goroutine of the forwarder has exited when it
// returns.
func (f *TCPForwarder) Shutdown(ctx context.Context) error {
	f.drain()

	// No goroutine is added once draining is set, except by a relay that
	// is itself counted, so the group can be waited on now.
	drained := make(chan struct{})
	go func() {
		f.wg.Wait()
		close(drained)
	}()
	select {
	case <-drained:
		f.cancel()
		return nil
	case <-ctx.Done():
		f.Close()
		<-drained
		return fmt.Errorf("forward to %s: shutdown: %w", f.target, ctx.Err())
	}
}

// startRelay hands c to a new relay goroutine. It reports false once
// Shutdown or Close has begun.
func (f *TCPForwarder) startRelay(c net.Conn) bool {
	if !f.start(c) {
		return false
	}
	go f.relay(c)
	return true
}

// relay dials the target for client and copies both ways until each side
// has finished sending.
func (f *TCPForwarder) relay(client net.Conn) {
	defer f.wg.Done()
	defer f.untrack(client)

	ctx, cancel := context.WithTimeout(f.ctx, forwardDialTimeout)
	upstream, err := f.dial(ctx, "tcp", f.target)
	cancel()
	if err != nil {
		if f.ctx.Err() == nil {
			f.log.Warn("forward: cannot reach target", "target", f.target, "client", client.RemoteAddr(), "err", err)
		}
		return // closing client tells it there is nothing behind the port
	}
	if !f.track(upstream) {
		return
	}
	defer f.untrack(upstream)
	f.log.Debug("forward: relay open", "target", f.target, "client", client.RemoteAddr())

	src, dst := client, upstream
	if f.idle > 0 {
		w := relay.NewIdleWatch(nil, f.idle, func() {
			f.log.Debug("forward: idle relay closed", "target", f.target, "client", client.RemoteAddr(), "idle_timeout", f.idle)
			client.Close()
			upstream.Close()
		})
		defer w.Stop()
		src, dst = &activityConn{Conn: client, w: w}, &activityConn{Conn: upstream, w: w}
	}

	// This goroutine holds a count of f.wg, so the group is not at zero.
	relay.Both(src, dst, &f.wg)
}

// activityConn tells its IdleWatch about every read that returned bytes:
// each byte a relay moves is read from one of its two conns first.
type activityConn struct {
	net.Conn
	w *relay.IdleWatch
}

func (c *activityConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.w.Moved()
	}
	return n, err
}

// CloseWrite passes a half-close through, as the relay needs; a conn
// that cannot half-close is closed, as limitedConn does.
func (c *activityConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
