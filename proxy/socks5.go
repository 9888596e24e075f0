package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	socks5 "github.com/things-go/go-socks5"
	"github.com/things-go/go-socks5/statute"

	"github.com/wgbore/wgbore/proxy/relay"
)

const (
	// DefaultSOCKSHandshakeTimeout bounds the time from accept to a
	// CONNECT or UDP ASSOCIATE request when SOCKS5Config does not say, so
	// a client that opens a connection and says nothing (or trickles
	// bytes) cannot hold a goroutine, a descriptor and a connection slot
	// for longer. Real clients send the whole handshake in one round trip
	// or two.
	DefaultSOCKSHandshakeTimeout = 30 * time.Second

	// socksResolveTimeout bounds a name lookup on the Network's side. The
	// tunnel's resolver has its own per-query timeouts; this is the backstop
	// for the whole lookup, fallbacks included.
	socksResolveTimeout = 15 * time.Second
)

// SOCKS5Config configures a SOCKS5 server.
type SOCKS5Config struct {
	// Username and Password turn on RFC 1929 username/password
	// authentication when Username is not empty; the server then offers
	// no other method. With an empty Username any client is served, so the
	// listener must only be reachable by trusted clients (loopback by
	// default). Both are limited to 255 bytes by the protocol.
	Username, Password string

	// Logger receives per-connection events at debug level. Nil discards
	// them.
	Logger *slog.Logger

	// MaxConnections caps the client connections served at once, per
	// listener given to Serve; <= 0 means DefaultMaxConnections. Past
	// the cap, new clients are refused at once (reply 01).
	MaxConnections int

	// Admit, when set, is asked before each new connection is served;
	// false refuses it as the cap does. A memory budget uses it to turn
	// clients away before the process runs out.
	Admit func() bool

	// HandshakeTimeout bounds the time from accept to the client's
	// request, authentication included; 0 means
	// DefaultSOCKSHandshakeTimeout. A relay, once started, has no
	// timeout.
	HandshakeTimeout time.Duration

	// DialTimeout bounds a CONNECT's dial to its target, across all of
	// a name's addresses; 0 means DefaultDialTimeout. When the tunnel's
	// path is down, this is how long a client waits for its failure
	// reply.
	DialTimeout time.Duration
}

// SOCKS5 is a SOCKS5 server (RFC 1928) whose outbound side is a Network:
// every target is dialed, and every name resolved, on that network, never
// on the host's.
//
// CONNECT is served to IPv4 and IPv6 addresses and to domain names. UDP
// ASSOCIATE is served when the Network can also carry datagrams (it has
// ListenPacket, as a Tunnel does), and refused with "command not
// supported" otherwise. BIND is always refused: the tunnel's peers would
// have to reach back to a port of ours, which nothing in wgbore needs.
type SOCKS5 struct {
	nw  Network
	log *slog.Logger
	// creds, when set, is the login every client must give (RFC 1929).
	creds *socksCredentials
	// readers are the handshakes' readers (socks5_negotiate.go).
	readers          handshakeReaders
	maxConns         int
	admit            func() bool
	handshakeTimeout time.Duration
	conns            connCounter // summed over every Serve

	// ctx is cancelled by Close, which ends lookups and dials in flight.
	ctx    context.Context
	cancel context.CancelFunc

	dialTimeout time.Duration
	// relays hands CONNECT relays over once many are open, so that an
	// idle one holds no goroutine.
	relays handOver
	// workers serve the connections (workers.go).
	workers *workers

	// connTracker holds the listeners and the client connections, each
	// marked busy once its handshake is over (Shutdown ends those still
	// in it and waits for the others), and the WaitGroup counting every
	// goroutine the server starts, relay halves included, and each relay
	// handed over until it ends.
	*connTracker
}

// NewSOCKS5 returns a SOCKS5 server that reaches targets through nw. It
// starts nothing; call Serve.
func NewSOCKS5(nw Network, cfg SOCKS5Config) *SOCKS5 {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	handshakeTimeout := cfg.HandshakeTimeout
	if handshakeTimeout <= 0 {
		handshakeTimeout = DefaultSOCKSHandshakeTimeout
	}
	dialTimeout := cfg.DialTimeout
	if dialTimeout <= 0 {
		dialTimeout = DefaultDialTimeout
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &SOCKS5{
		nw:               nw,
		log:              logger,
		maxConns:         cfg.MaxConnections,
		admit:            cfg.Admit,
		handshakeTimeout: handshakeTimeout,
		dialTimeout:      dialTimeout,
		ctx:              ctx,
		cancel:           cancel,
		connTracker:      newConnTracker(),
		relays:           handOver{from: defaultHandOverFrom, log: logger},
		workers:          newWorkers(),
	}

	if cfg.Username != "" {
		s.creds = newSOCKSCredentials(cfg.Username, cfg.Password, logger)
	}
	return s
}

// Serve accepts connections on l and serves each on a goroutine of its
// own while it is served (which a CONNECT's relay may outlive: see
// handOver.try), at most SOCKS5Config.MaxConnections at a time. It
// returns when l fails or is closed, and closes l; connections already being served carry on
// until their clients leave or Close is called. After Close or Shutdown,
// Serve returns nil.
func (s *SOCKS5) Serve(l net.Listener) error {
	return s.acceptLoop(s.ctx, limitConnections(l, s.maxConns, s.admit, &s.conns, refuseSOCKS), s.log, "socks5: accept", func(conn net.Conn) bool {
		// start counts the goroutine under the lock Close takes, so
		// Close either sees the connection and waits for it, or the
		// connection is refused.
		if !s.start(conn) {
			return false
		}
		s.workers.run(func() {
			defer s.wg.Done()
			h := &handoff{Conn: conn}
			s.serveConn(h)
			if !h.taken.Load() {
				// serveConn has closed conn already; closing it again
				// in untrack is harmless.
				s.untrack(conn)
			}
		})
		return true
	})
}

// Stats counts the client connections of every Serve together, for
// metrics.
func (s *SOCKS5) Stats() ConnStats { return s.conns.stats() }

// Close stops every listener given to Serve, ends every connection and
// relay in flight, and returns once all goroutines the server started have
// exited. It is safe to call more than once.
func (s *SOCKS5) Close() error {
	// Every client socket and target is tracked, so closing them all
	// ends every relay, handed over or not: a closed side fails its
	// half's read at once, and a failure closes both sides.
	s.closeAll()
	s.cancel()
	s.wg.Wait()
	s.relays.close()
	s.workers.stop()
	return nil
}

// Shutdown stops the server gracefully: it closes every listener, ends
// the connections still in their handshake (they have nothing in flight),
// and waits for the relays and associations already running to finish on
// their own. When ctx is done first, it ends them as Close does and
// returns ctx's error. Either way, every goroutine the server started has
// exited when it returns.
func (s *SOCKS5) Shutdown(ctx context.Context) error {
	s.drain()
	s.closeIdle()

	err := s.waitForConns(ctx)
	s.Close()
	return err
}

// waitForConns returns once every client connection is gone, or with
// ctx's error when ctx is done first. Connections leave s.conns as their
// goroutines finish, with no event to wait on, so it polls: quickly at
// first, as http.Server.Shutdown does.
func (s *SOCKS5) waitForConns(ctx context.Context) error {
	poll := time.Millisecond
	timer := time.NewTimer(poll)
	defer timer.Stop()
	for s.count() > 0 {
		select {
		case <-timer.C:
			poll = min(2*poll, 250*time.Millisecond)
			timer.Reset(poll)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// endHandshake clears the handshake deadline once a CONNECT or UDP
// ASSOCIATE request has been read (from here on a relay may idle as long
// as the client likes) and marks the connection as serving, for
// Shutdown. Once the server is shutting down it refuses: a new relay
// would only prolong the wait.
func (s *SOCKS5) endHandshake(c net.Conn) error {
	key := c
	if h, ok := c.(*handoff); ok {
		key = h.Conn
		h.answered = true
	}
	if !s.markBusy(key) {
		return errors.New("server shutting down")
	}
	return c.SetDeadline(time.Time{})
}

func (s *SOCKS5) serveConn(conn net.Conn) {
	// Cleared by endHandshake once a request has been read.
	conn.SetDeadline(time.Now().Add(s.handshakeTimeout))
	err := s.negotiate(conn)
	conn.Close()
	if err != nil && !s.isDraining() {
		// The errors name the target and the failing step; none carries
		// credentials.
		s.log.Debug("socks5: connection ended", "client", conn.RemoteAddr(), "err", err)
	}
}

// connect serves a CONNECT request, with an idle relay kept cheap.
// go-socks5's own relay costs three goroutines per connection (the one
// serving it waits for the two copying) and two pooled 32 KiB buffers
// held by the blocked reads. Here the handshake's reader goes back to its
// pool once the bytes it buffered past the request are sent on, and the
// relay holds no buffer while idle. Where the client's socket can be
// watched (handOver.try), the relay holds no goroutine either and the
// serving goroutine ends; elsewhere it copies one direction itself, and
// relay.Both copies out of the tunnel connection with no goroutine while
// it idles.
//
// Dial failures are answered as go-socks5 answers them.
func (s *SOCKS5) connect(ctx context.Context, client net.Conn, req *socks5.Request) error {
	br, ok := req.Reader.(*bufio.Reader)
	if !ok {
		return fmt.Errorf("socks5: request read through a %T", req.Reader)
	}
	target, err := s.dial(ctx, "tcp", req.DestAddr.String(), req)
	if err != nil {
		rep := statute.RepHostUnreachable
		if msg := err.Error(); strings.Contains(msg, "refused") {
			rep = statute.RepConnectionRefused
		} else if strings.Contains(msg, "network is unreachable") {
			rep = statute.RepNetworkUnreachable
		}
		if err := socks5.SendReply(client, rep, nil); err != nil {
			return fmt.Errorf("failed to send reply, %v", err)
		}
		return fmt.Errorf("connect to %v failed, %v", req.RawDestAddr, err)
	}
	// Close must end the relay, whichever way it is waiting: tracking
	// the target too, as the HTTP proxy and the forwarders do, lets it
	// close this end as well. Tracking the client alone left a relay
	// whose client had half-closed waiting for ever on a tunnel peer that
	// had gone away, and Close waiting on the relay.
	if !s.track(target) {
		target.Close()
		socks5.SendReply(client, statute.RepServerFailure, nil)
		return errors.New("socks5: shutting down")
	}
	if err := socks5.SendReply(client, statute.RepSuccess, target.LocalAddr()); err != nil {
		s.untrack(target)
		return fmt.Errorf("failed to send reply, %v", err)
	}
	// A client may send its first bytes right behind the request without
	// waiting for the reply; the handshake's reader holds them.
	if n := br.Buffered(); n > 0 {
		early, _ := br.Peek(n)
		if _, err := target.Write(early); err != nil {
			s.untrack(target)
			return err
		}
	}
	req.Reader = nil
	s.readers.put(br)

	if h, ok := client.(*handoff); ok {
		if lc, ok := h.Conn.(*limitedConn); ok && s.relays.try(s.connTracker, s.conns.active.Load(), lc, target) {
			h.taken.Store(true)
			return nil
		}
	}
	// This goroutine holds a count of s.wg, so relay.Both may add to it.
	// It copies the client to the target here: writing into the tunnel
	// runs deep (gVisor's send path down to the engine), and this stack
	// already grew as deep dialing.
	relay.Both(client, target, &s.wg)
	s.untrack(target)
	return nil
}

// handoff is the client connection as the handshake sees it. serveConn
// closes its connection once the request's handler returns; a relay
// that goes on without the serving goroutine (handOver.try) takes the
// connection over first, and that Close then leaves it be.
//
// It also holds the handshake's answers (the method chosen, a login's
// status) back until the server needs more from the client, and sends
// them with the request's reply when the client has already sent the
// request. A client that pipelines its greeting and request (RFC 1928
// does not forbid it, and a client that offers one method knows the
// answer) then reads one segment instead of two or three, and the server
// makes one write. Such a client sees the method's answer only with the
// reply, after the name lookup and the dial. A client that waits for
// each answer gets it as before: the answers go out before the server
// waits to read.
type handoff struct {
	net.Conn
	taken atomic.Bool

	// answered is set once a request has been read, on the serving
	// goroutine before any relay starts: from then on nothing is held.
	answered bool
	// held are the answers not sent yet.
	held  [heldMax]byte
	nheld int
}

// heldMax is room for the answers before a request: the method chosen
// and a login's status, two bytes each.
const heldMax = 8

func (h *handoff) Write(p []byte) (int, error) {
	if !h.answered && h.nheld+len(p) <= len(h.held) {
		h.nheld += copy(h.held[h.nheld:], p)
		return len(p), nil
	}
	if h.nheld == 0 {
		return h.Conn.Write(p)
	}
	// Once per connection: the held answers and this one in one write.
	b := append(h.held[:h.nheld:h.nheld], p...)
	held := h.nheld
	h.nheld = 0
	n, err := h.Conn.Write(b)
	return max(n-held, 0), err
}

// Read sends the held answers first: the client may be waiting for them
// before it sends what this read waits for.
func (h *handoff) Read(p []byte) (int, error) {
	if h.nheld > 0 {
		if err := h.flush(); err != nil {
			return 0, err
		}
	}
	return h.Conn.Read(p)
}

func (h *handoff) flush() error {
	b := h.held[:h.nheld]
	h.nheld = 0
	_, err := h.Conn.Write(b)
	return err
}

func (h *handoff) Close() error {
	if h.taken.Load() {
		return nil
	}
	if h.nheld > 0 {
		// A refusal's answer, held like any other; the close follows it.
		h.flush()
	}
	return h.Conn.Close()
}

// CloseWrite passes a relay's half-close on, as limitedConn does.
func (h *handoff) CloseWrite() error {
	if cw, ok := h.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return h.Close()
}

// dial connects to the request's target on the Network. For a domain name,
// resolve has already looked it up on the Network and left every
// address in ctx, so a name whose first address is unreachable still
// connects through the next one.
func (s *SOCKS5) dial(ctx context.Context, network, addr string, req *socks5.Request) (net.Conn, error) {
	ctx, cancel := s.bound(ctx, s.dialTimeout)
	defer cancel()

	dest := req.DestAddr
	// go-socks5's parser accepts a domain name of length 0, which
	// would have the Network dial an address with no host, and some
	// networks take that as their own.
	if dest != nil && dest.AddrType == statute.ATYPDomain && dest.FQDN == "" {
		return nil, errors.New("empty domain name")
	}
	addrs, _ := ctx.Value(socksResolvedKey{}).(socksResolvedAddrs)
	if dest == nil || dest.FQDN == "" || addrs.name != dest.FQDN || len(addrs.addrs) == 0 {
		c, err := s.nw.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return socksTarget(c), nil
	}
	return socksDialSerial(ctx, s.nw, network, addrs.addrs, uint16(dest.Port))
}

// socksDialSerial dials the resolved addresses and makes the connection
// one go-socks5 can describe in its reply.
func socksDialSerial(ctx context.Context, nw Network, network string, addrs []netip.Addr, port uint16) (net.Conn, error) {
	c, err := dialAddrs(ctx, nw, network, addrs, port)
	if err != nil {
		return nil, err
	}
	return socksTarget(c), nil
}

// bound derives a context from ctx that also ends when the server closes
// and after timeout. A request is served under context.Background(), so
// without this a lookup or dial would outlive Close.
func (s *SOCKS5) bound(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	stop := context.AfterFunc(s.ctx, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// socksResolvedKey keys the addresses resolve found, for dial.
type socksResolvedKey struct{}

type socksResolvedAddrs struct {
	name  string
	addrs []netip.Addr
}

// resolve looks up a request's domain name on the Network, before the
// dial; the host's resolver must never see names meant for the tunnel.
// It leaves every address in the returned context, for dial.
func (s *SOCKS5) resolve(ctx context.Context, name string) (context.Context, net.IP, error) {
	lookupCtx, cancel := s.bound(ctx, socksResolveTimeout)
	defer cancel()
	addrs, err := s.nw.LookupNetIP(lookupCtx, "ip", name)
	if err != nil {
		return ctx, nil, err
	}
	if len(addrs) == 0 {
		return ctx, nil, &net.DNSError{Err: "no addresses", Name: name, IsNotFound: true}
	}
	ctx = context.WithValue(ctx, socksResolvedKey{}, socksResolvedAddrs{name: name, addrs: addrs})
	return ctx, addrs[0].Unmap().AsSlice(), nil
}

// newSOCKSCredentials adapts the shared constant-time credentials to
// go-socks5's CredentialStore, adding a log line for failures.
func newSOCKSCredentials(username, password string, log *slog.Logger) *socksCredentials {
	return &socksCredentials{creds: newCredentials(username, password), log: log}
}

type socksCredentials struct {
	creds *credentials
	log   *slog.Logger
}

func (c *socksCredentials) Valid(user, password, clientAddr string) bool {
	if !c.creds.match(user, password) {
		// Neither name nor password is logged: a password typed into
		// the username field is still a password.
		c.log.Debug("socks5: authentication failed", "client", clientAddr)
		return false
	}
	return true
}

// socksRefuseCommand answers a command the server does not serve with "command
// not supported", as RFC 1928 asks, and ends the connection.
func socksRefuseCommand(w io.Writer, req *socks5.Request) error {
	if err := socks5.SendReply(w, statute.RepCommandNotSupported, nil); err != nil {
		return err
	}
	return fmt.Errorf("command %d refused", req.Command)
}

// socksTarget makes sure the target's local address is a *net.TCPAddr:
// go-socks5 puts it in the success reply and, for any other type, replies
// "address type not supported" instead, failing a connection that worked.
func socksTarget(c net.Conn) net.Conn {
	if _, ok := c.LocalAddr().(*net.TCPAddr); ok {
		return c
	}
	var local *net.TCPAddr
	if ap, err := netip.ParseAddrPort(c.LocalAddr().String()); err == nil {
		local = net.TCPAddrFromAddrPort(ap)
	} else {
		local = &net.TCPAddr{IP: net.IPv4zero}
	}
	return &socksTCPAddrConn{Conn: c, local: local}
}

type socksTCPAddrConn struct {
	net.Conn
	local *net.TCPAddr
}

func (c *socksTCPAddrConn) LocalAddr() net.Addr { return c.local }

// CloseWrite passes a half-close through, so a client that finishes
// sending still gets the rest of the response.
func (c *socksTCPAddrConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// refuseSOCKS answers a client over the listener's MaxConnections with
// reply 0x01, general SOCKS server failure, which clients report as a
// failure rather than hang. The request is read only to be answered in
// turn; nothing is ever dialled. A client that offers no method we
// could answer without authenticating it gets "no acceptable methods".
func refuseSOCKS(c net.Conn) {
	var head [2]byte
	if _, err := io.ReadFull(c, head[:]); err != nil || head[0] != statute.VersionSocks5 {
		return
	}
	methods := make([]byte, head[1])
	if _, err := io.ReadFull(c, methods); err != nil {
		return
	}
	if !bytes.Contains(methods, []byte{statute.MethodNoAuth}) {
		c.Write([]byte{statute.VersionSocks5, statute.MethodNoAcceptable})
		return
	}
	if _, err := c.Write([]byte{statute.VersionSocks5, statute.MethodNoAuth}); err != nil {
		return
	}
	var req [5]byte // VER CMD RSV ATYP, and the first address byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return
	}
	rest := 0
	switch req[3] {
	case statute.ATYPIPv4:
		rest = 4 - 1 + 2
	case statute.ATYPDomain:
		rest = int(req[4]) + 2
	case statute.ATYPIPv6:
		rest = 16 - 1 + 2
	default:
		return
	}
	if _, err := io.ReadFull(c, make([]byte, rest)); err != nil {
		return
	}
	c.Write([]byte{statute.VersionSocks5, statute.RepServerFailure, 0, statute.ATYPIPv4, 0, 0, 0, 0, 0, 0})
}
