package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wgbore/wgbore/proxy/internal/openset"
	"github.com/wgbore/wgbore/proxy/relay"
)

// udpBufferSize holds the largest UDP payload (65,507 bytes over IPv4),
// so no datagram is ever truncated.
const udpBufferSize = 64 << 10

// UDPForwardConfig configures a UDPForwarder.
type UDPForwardConfig struct {
	// InactivityTimeout ends a client's session after no datagram has
	// moved either way for this long. UDP has no close, so this is the
	// only thing that frees a session; 0 keeps sessions until Close.
	InactivityTimeout time.Duration

	// MaxSessions caps the clients one PacketConn serves at once; a new
	// client past it is dropped until a session expires. Each session
	// holds a 64 KiB buffer, an upstream socket and a goroutine. <= 0
	// means DefaultMaxConnections.
	MaxSessions int

	// Logger receives dial failures at warn level and per-session events
	// at debug level; nil discards them.
	Logger *slog.Logger
}

// UDPForwarder relays datagrams between the clients of a local
// PacketConn and one fixed target. Each client address gets a session:
// its own connected upstream conn, dialed with dial("udp", target), so
// the target's replies can be told apart and sent back to that client
// from the same local PacketConn.
//
// It serves both directions of a tunnel: a host net.ListenPacket with the
// tunnel's DialContext forwards a local port into the tunnel
// (UDPProxyTunnel), and the tunnel's ListenPacket("udp", ":port") with a
// host dialer exposes a host service to the tunnel's peers
// (UDPServerTunnel).
type UDPForwarder struct {
	dial        func(ctx context.Context, network, address string) (net.Conn, error)
	target      string
	timeout     time.Duration
	maxSessions int
	log         *slog.Logger
	sessions    connCounter // summed over every Serve

	// ctx is cancelled by Close, which ends dials in flight.
	ctx    context.Context
	cancel context.CancelFunc

	// buffers recycles the sessions' 64 KiB buffers, so clients that come
	// and go do not each cost a fresh allocation.
	buffers sync.Pool

	// draining is set by Shutdown: sessions carry on, new clients are
	// turned away.
	draining atomic.Bool
	// drainActive is set, while draining, by every datagram moved, so
	// Shutdown can tell a session still talking from one merely open.
	drainActive atomic.Bool

	// ports are the PacketConns being served, for Close to end.
	ports openset.Set[*udpPort]
}

// NewUDPForwarder returns a forwarder that relays the datagrams of every
// client to target ("host:port") through conns made by dial. It starts
// nothing; call Serve.
func NewUDPForwarder(dial func(ctx context.Context, network, address string) (net.Conn, error), target string, cfg UDPForwardConfig) *UDPForwarder {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	maxSessions := cfg.MaxSessions
	if maxSessions <= 0 {
		maxSessions = DefaultMaxConnections
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &UDPForwarder{
		dial:        dial,
		target:      target,
		timeout:     cfg.InactivityTimeout,
		maxSessions: maxSessions,
		log:         log,
		ctx:         ctx,
		cancel:      cancel,
		buffers:     sync.Pool{New: func() any { return new([udpBufferSize]byte) }},
	}
}

// Serve relays the datagrams arriving on pc until pc fails or Close is
// called. It closes pc and ends its sessions when it returns, and returns
// nil after Close.
func (f *UDPForwarder) Serve(pc net.PacketConn) error {
	p := &udpPort{
		f:        f,
		pc:       pc,
		sessions: make(map[netip.AddrPort]*udpSession),
	}
	p.fast, _ = pc.(udpAddrPortConn)
	if !f.ports.Add(p) {
		pc.Close()
		return nil
	}
	defer f.ports.Remove(p)
	defer p.wg.Wait()
	defer p.close()
	return p.serve()
}

// Stats counts client sessions, of every Serve together, for metrics:
// UDP has no connections, and a session is what holds a socket.
func (f *UDPForwarder) Stats() ConnStats { return f.sessions.stats() }

// Close stops every Serve, ends every session and dial in flight, and
// returns once all goroutines the forwarder started have exited. It is
// safe to call more than once.
func (f *UDPForwarder) Close() error {
	ports := f.ports.Close()
	f.cancel()
	for _, p := range ports {
		p.close()
	}
	for _, p := range ports {
		p.wg.Wait()
	}
	return nil
}

// udpDrainQuiet is how long Shutdown waits for silence: UDP has no end of
// stream, so a session that has moved nothing for this long is taken to
// be done (an answer to a query comes back well within it), rather than
// holding the process until its InactivityTimeout.
const udpDrainQuiet = 500 * time.Millisecond

// Shutdown turns new clients away while the sessions already open carry
// on, until none has moved a datagram for udpDrainQuiet or ctx is done;
// then it does what Close does. It returns ctx's error if ctx ended
// first, nil otherwise.
func (f *UDPForwarder) Shutdown(ctx context.Context) error {
	f.draining.Store(true)
	quiet := time.NewTicker(udpDrainQuiet)
	defer quiet.Stop()
	var err error
	for f.sessionCount() > 0 {
		f.drainActive.Store(false)
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-quiet.C:
			if f.drainActive.Load() {
				continue
			}
		}
		break
	}
	f.Close()
	return err
}

// noteDrainActivity marks traffic for Shutdown; outside a shutdown it is
// one atomic load.
func (f *UDPForwarder) noteDrainActivity() {
	if f.draining.Load() && !f.drainActive.Load() {
		f.drainActive.Store(true)
	}
}

func (f *UDPForwarder) sessionCount() int {
	n := 0
	for _, p := range f.ports.All() {
		p.mu.Lock()
		n += len(p.sessions)
		p.mu.Unlock()
	}
	return n
}

// udpAddrPortConn is what *net.UDPConn offers beyond net.PacketConn:
// addresses as values, so a datagram costs no allocation.
type udpAddrPortConn interface {
	ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error)
	WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error)
}

// udpPort is one PacketConn being served, with its clients' sessions.
type udpPort struct {
	f    *UDPForwarder
	pc   net.PacketConn
	fast udpAddrPortConn // pc, when it has the allocation-free methods

	mu       sync.Mutex
	closed   bool
	sessions map[netip.AddrPort]*udpSession

	wg sync.WaitGroup // the sessions' goroutines
}

// udpSession is one client's flow: the upstream conn dialed for it and
// the goroutine that carries the target's replies back.
type udpSession struct {
	client netip.AddrPort
	addr   net.Addr // client as pc gave it, for replies on a slow-path pc
	buf    *[udpBufferSize]byte

	// ready is closed once up is set; the datagrams that arrive before
	// are dropped, as the network might have.
	ready chan struct{}
	up    net.Conn

	// idle ends the session after InactivityTimeout without a datagram
	// either way; nil without a timeout.
	idle *relay.IdleWatch

	mu     sync.Mutex
	ended  bool
	cancel context.CancelFunc // ends the dial
}

func (p *udpPort) serve() error {
	bufp := p.f.buffers.Get().(*[udpBufferSize]byte)
	defer p.f.buffers.Put(bufp)
	for {
		n, from, addr, err := p.readFrom(bufp[:])
		if err != nil {
			if p.isClosed() {
				return nil
			}
			// An ICMP error for an earlier reply can surface on the
			// listening socket on some systems; it concerns one client,
			// not the port.
			if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) {
				continue
			}
			return fmt.Errorf("udp forward to %s: %w", p.f.target, err)
		}
		if !from.IsValid() {
			p.f.log.Debug("udp forward: datagram from an unusable address dropped", "target", p.f.target, "client", addr)
			continue
		}
		p.forward(bufp[:n], from, addr)
	}
}

func (p *udpPort) readFrom(b []byte) (int, netip.AddrPort, net.Addr, error) {
	if p.fast != nil {
		n, from, err := p.fast.ReadFromUDPAddrPort(b)
		return n, from, nil, err
	}
	n, addr, err := p.pc.ReadFrom(b)
	if err != nil {
		return n, netip.AddrPort{}, nil, err
	}
	switch a := addr.(type) {
	case *net.UDPAddr:
		return n, a.AddrPort(), addr, nil
	case nil:
		return n, netip.AddrPort{}, nil, nil // dropped by the caller
	}
	from, _ := netip.ParseAddrPort(addr.String())
	return n, from, addr, nil
}

func (p *udpPort) writeTo(b []byte, s *udpSession) (int, error) {
	if p.fast != nil {
		return p.fast.WriteToUDPAddrPort(b, s.client)
	}
	return p.pc.WriteTo(b, s.addr)
}

// forward sends a client's datagram upstream, opening a session for a
// new client.
func (p *udpPort) forward(b []byte, from netip.AddrPort, addr net.Addr) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	s := p.sessions[from]
	if s == nil {
		if p.f.draining.Load() {
			p.mu.Unlock()
			p.f.log.Debug("udp forward: shutting down, new client dropped", "target", p.f.target, "client", from)
			return
		}
		if len(p.sessions) >= p.f.maxSessions {
			p.mu.Unlock()
			p.f.log.Debug("udp forward: session cap reached, datagram dropped", "target", p.f.target, "client", from, "max_sessions", p.f.maxSessions)
			return
		}
		p.startSession(from, addr, b)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()

	p.moved(s)
	select {
	case <-s.ready:
		if _, err := s.up.Write(b); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			p.f.log.Debug("udp forward: send upstream", "target", p.f.target, "client", from, "err", err)
		}
	default:
	}
}

// startSession opens a session for a new client, whose first datagram is
// b. It runs under p.mu, after p.closed was checked, so the WaitGroup
// never grows once close has begun.
func (p *udpPort) startSession(from netip.AddrPort, addr net.Addr, b []byte) {
	ctx, cancel := context.WithTimeout(p.f.ctx, forwardDialTimeout)
	s := &udpSession{
		client: from,
		addr:   addr,
		buf:    p.f.buffers.Get().(*[udpBufferSize]byte),
		ready:  make(chan struct{}),
		cancel: cancel,
	}
	if p.f.timeout > 0 {
		s.idle = relay.NewIdleWatch(nil, p.f.timeout, func() {
			p.f.log.Debug("udp forward: session expired", "target", p.f.target, "client", s.client, "inactivity_timeout", p.f.timeout)
			p.endSession(s)
		})
	}
	// The caller's buffer is reused for the next datagram, so the first
	// one waits for the dial in the session's own.
	first := copy(s.buf[:], b)
	p.sessions[from] = s
	p.f.sessions.opened()
	p.wg.Add(1)
	go p.runSession(ctx, s, first)
}

// runSession dials the target for a session, sends its first datagram
// and then carries the target's replies back to the client until the
// session ends.
func (p *udpPort) runSession(ctx context.Context, s *udpSession, first int) {
	defer p.wg.Done()
	defer p.f.sessions.closed()
	defer p.f.buffers.Put(s.buf)
	defer p.endSession(s)
	if s.idle != nil {
		defer s.idle.Stop()
	}

	up, err := p.f.dial(ctx, "udp", p.f.target)
	if err != nil {
		if p.f.ctx.Err() == nil && !s.isEnded() {
			p.f.log.Warn("udp forward: cannot reach target", "target", p.f.target, "client", s.client, "err", err)
		}
		return
	}
	if !s.attach(up) {
		up.Close()
		return
	}
	p.f.log.Debug("udp forward: session open", "target", p.f.target, "client", s.client)
	if _, err := up.Write(s.buf[:first]); err != nil {
		p.f.log.Debug("udp forward: send upstream", "target", p.f.target, "client", s.client, "err", err)
	}
	for {
		n, err := up.Read(s.buf[:])
		if err != nil {
			// A connected UDP socket reports the ICMP port unreachable
			// an earlier datagram drew; the target may come up later.
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue
			}
			if !s.isEnded() {
				p.f.log.Debug("udp forward: session ended", "target", p.f.target, "client", s.client, "err", err)
			}
			return
		}
		p.moved(s)
		if _, err := p.writeTo(s.buf[:n], s); err != nil {
			if p.isClosed() {
				return
			}
			p.f.log.Debug("udp forward: reply to client", "target", p.f.target, "client", s.client, "err", err)
		}
	}
}

// moved notes a datagram of s, either way, for its idle watch and for
// Shutdown.
func (p *udpPort) moved(s *udpSession) {
	if s.idle != nil {
		s.idle.Moved()
	}
	p.f.noteDrainActivity()
}

// endSession removes s from the port, unless a newer session has taken
// its client's place, and ends it.
func (p *udpPort) endSession(s *udpSession) {
	p.mu.Lock()
	if p.sessions[s.client] == s {
		delete(p.sessions, s.client)
	}
	p.mu.Unlock()
	s.end()
}

// close stops serve and ends every session; p.wg then drains.
func (p *udpPort) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	sessions := p.sessions
	p.sessions = nil
	p.mu.Unlock()

	p.pc.Close()
	for _, s := range sessions {
		s.end()
	}
}

func (p *udpPort) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// attach makes up the session's upstream conn. It reports false once the
// session has ended, so a dial that finished late cannot outlive it.
func (s *udpSession) attach(up net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return false
	}
	s.up = up
	close(s.ready)
	return true
}

// end stops the session's dial or closes its upstream conn, which ends
// its goroutine. It is safe to call more than once.
func (s *udpSession) end() {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.ended = true
	up := s.up
	s.mu.Unlock()
	s.cancel()
	if up != nil {
		up.Close()
	}
}

func (s *udpSession) isEnded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended
}
