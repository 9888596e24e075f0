// Package dnsserver answers DNS for a tunnel's peers on our tunnel
// addresses: the server's own names from its records, the rest asked of
// the host's resolvers, which a peer could not reach itself.
package dnsserver

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/wgbore/wgbore/protocol"
)

// dnsUpstreamTimeout bounds one forwarded query: a resolver that has not
// answered by then will not, and the peer's own resolver retries.
const dnsUpstreamTimeout = 5 * time.Second

// Config configures the DNS server that Serve runs for peers.
type Config struct {
	// Records are answered here, authoritatively: lower-case, fully
	// qualified names ("demo.wg.") to their A and AAAA addresses. A
	// name may also be given without the final dot.
	Records map[string][]netip.Addr
	// Upstream are the host-side resolvers every other query goes to.
	// Empty means the nameservers of /etc/resolv.conf.
	Upstream []netip.AddrPort
	// Dial opens the host-side sockets to Upstream; nil means net.Dialer.
	Dial   func(ctx context.Context, network, address string) (net.Conn, error)
	Logger *slog.Logger
}

// Server answers DNS on our tunnel addresses, port 53, over UDP and TCP.
// Peers of a server can then say DNS = <its tunnel address>: the server's
// own names are answered from Records, and the rest are asked of the
// host's resolvers, which a peer could not reach itself.
type Server struct {
	records  map[string][]netip.Addr
	upstream []netip.AddrPort
	dial     func(ctx context.Context, network, address string) (net.Conn, error)
	log      *slog.Logger

	ctx    context.Context // ends on Close, and with it upstream queries
	cancel context.CancelFunc
	mu     sync.Mutex
	open   map[io.Closer]struct{} // listeners and TCP connections
	wg     sync.WaitGroup
	// peerOf names the peer a query came from, by its source address;
	// nil (tests that call Answer) counts every query as one peer's.
	peerOf func(netip.Addr) (protocol.PublicKey, bool)
	// inFlight bounds the UDP queries answered at once: each may wait
	// dnsUpstreamTimeout for an upstream, and a peer sending faster than
	// that must not grow goroutines without end. Past it, queries are
	// dropped, and the peer's resolver retries.
	inFlight *shares
	// tcpConns bounds the TCP connections served at once: each holds a
	// goroutine, a gVisor endpoint and, while a query is forwarded, a
	// host socket, and a peer's connections to port 53 are ours, not
	// flows that the egress's per-peer cap counts. Past it, a new connection is
	// closed at once.
	tcpConns *shares
}

// The DNS server's bounds: in all, and for one peer, so that a peer
// flooding queries at a slow upstream uses its own share of the slots
// and leaves the rest to the others.
const (
	maxDNSInFlight        = 256 // UDP queries answered at once
	maxDNSInFlightPerPeer = 16
	maxDNSTCPConns        = 256 // TCP connections served at once
	maxDNSTCPConnsPerPeer = 16
)

// shares bounds work in progress in all and per peer.
type shares struct {
	mu            sync.Mutex
	total         int
	limit, perKey int
	held          map[protocol.PublicKey]int
}

func newShares(limit, perKey int) *shares {
	return &shares{limit: limit, perKey: perKey, held: map[protocol.PublicKey]int{}}
}

// take claims a slot for k, unless k holds its share or all are taken.
func (s *shares) take(k protocol.PublicKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.total >= s.limit || s.held[k] >= s.perKey {
		return false
	}
	s.total++
	s.held[k]++
	return true
}

// heldBy is how many slots k holds.
func (s *shares) heldBy(k protocol.PublicKey) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held[k]
}

// give returns a slot take claimed.
func (s *shares) give(k protocol.PublicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total--
	if s.held[k]--; s.held[k] <= 0 {
		delete(s.held, k)
	}
}

// peerAt names the peer a query from a came from: the zero key when no
// peer routes a (which cryptokey routing rules out for a real packet) or
// when the server has no Net to ask.
func (d *Server) peerAt(a net.Addr) protocol.PublicKey {
	// *net.UDPAddr and *net.TCPAddr, what the tunnel's sockets give.
	ap, ok := a.(interface{ AddrPort() netip.AddrPort })
	if ok && d.peerOf != nil {
		if k, ok := d.peerOf(ap.AddrPort().Addr().Unmap()); ok {
			return k
		}
	}
	return protocol.PublicKey{}
}

// udpBuffers hold one upstream UDP answer while it is read; the answer
// is copied out at its own size.
var udpBuffers = sync.Pool{New: func() any { return new([65535]byte) }}

// Tunnel is what the server needs of the tunnel's network (a
// *netstack.Net has it all): its sockets on our addresses, the peer a
// query came from, and a way to stop with it.
type Tunnel interface {
	Listen(network, address string) (net.Listener, error)
	ListenPacket(network, address string) (net.PacketConn, error)
	// Addresses are ours in the tunnel: the server listens on each.
	Addresses() []netip.Addr
	// PeerFor names the peer that routes an address: a query's source
	// tells whose share of the server's slots it takes.
	PeerFor(netip.Addr) (protocol.PublicKey, bool)
	// OnClose has the tunnel's own Close close the server too, so
	// closing the tunnel alone leaves none of its goroutines behind.
	OnClose(io.Closer) error
}

// Serve starts a DNS server on every tunnel address of ours, port 53,
// over UDP and TCP. It runs until its Close or the tunnel's, either of
// which waits for its goroutines.
func Serve(t Tunnel, cfg Config) (*Server, error) {
	d := newServer(cfg)
	d.peerOf = t.PeerFor
	if err := t.OnClose(d); err != nil {
		return nil, fmt.Errorf("dns server: %w", err)
	}
	for _, a := range t.Addresses() {
		ap := netip.AddrPortFrom(a, 53).String()
		pc, err := t.ListenPacket("udp", ap)
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("dns server: %w", err)
		}
		if !d.track(pc, 1) {
			return nil, net.ErrClosed
		}
		l, err := t.Listen("tcp", ap)
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("dns server: %w", err)
		}
		if !d.track(l, 1) {
			d.wg.Done() // serveUDP, counted but never started
			return nil, net.ErrClosed
		}
		go d.serveUDP(pc)
		go d.serveTCP(l)
	}
	return d, nil
}

// newServer is a server with nothing to serve on yet: Serve adds the
// sockets, and tests and the fuzz target call Answer directly.
func newServer(cfg Config) *Server {
	d := &Server{
		records:  make(map[string][]netip.Addr, len(cfg.Records)),
		upstream: cfg.Upstream,
		dial:     cfg.Dial,
		log:      cfg.Logger,
		open:     map[io.Closer]struct{}{},
		inFlight: newShares(maxDNSInFlight, maxDNSInFlightPerPeer),
		tcpConns: newShares(maxDNSTCPConns, maxDNSTCPConnsPerPeer),
	}
	for name, addrs := range cfg.Records {
		name = strings.ToLower(name)
		if !strings.HasSuffix(name, ".") {
			name += "."
		}
		d.records[name] = append(d.records[name], addrs...)
	}
	if d.dial == nil {
		d.dial = (&net.Dialer{}).DialContext
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if len(d.upstream) == 0 {
		d.upstream = hostResolvers("/etc/resolv.conf")
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d
}

// Close stops the server and waits for its goroutines. It may be called
// more than once, and before or after the tunnel's Close.
func (d *Server) Close() error {
	d.stop()
	d.wg.Wait()
	return nil
}

// stop ends the upstream queries and closes every socket, which ends the
// goroutines serving them.
func (d *Server) stop() {
	d.cancel()
	d.mu.Lock()
	open := d.open
	d.open = map[io.Closer]struct{}{}
	d.mu.Unlock()
	for c := range open {
		c.Close()
	}
}

// track registers c to be closed by Close and counts the goroutines
// about to serve it, both under the lock Close takes first, so Close never
// waits on a count that is still growing.
func (d *Server) track(c io.Closer, goroutines int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ctx.Err() != nil {
		c.Close()
		return false
	}
	d.open[c] = struct{}{}
	d.wg.Add(goroutines)
	return true
}

func (d *Server) untrack(c io.Closer) {
	d.mu.Lock()
	delete(d.open, c)
	d.mu.Unlock()
	c.Close()
}

func (d *Server) serveUDP(pc net.PacketConn) {
	defer d.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		peer := d.peerAt(from)
		if !d.inFlight.take(peer) {
			continue
		}
		query := append([]byte(nil), buf[:n]...)
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			defer d.inFlight.give(peer)
			if resp := d.Answer(d.ctx, query, false); resp != nil {
				pc.WriteTo(resp, from)
			}
		}()
	}
}

func (d *Server) serveTCP(l net.Listener) {
	defer d.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		peer := d.peerAt(c.RemoteAddr())
		if !d.tcpConns.take(peer) {
			c.Close()
			continue
		}
		if !d.track(c, 1) {
			d.tcpConns.give(peer)
			return
		}
		go func() {
			defer d.wg.Done()
			defer d.tcpConns.give(peer)
			defer d.untrack(c)
			// RFC 7766: several queries may follow one another on a
			// connection; an idle one is closed.
			r := bufio.NewReader(c)
			for {
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				var l [2]byte
				if _, err := io.ReadFull(r, l[:]); err != nil {
					return
				}
				query := make([]byte, binary.BigEndian.Uint16(l[:]))
				if _, err := io.ReadFull(r, query); err != nil {
					return
				}
				resp := d.Answer(d.ctx, query, true)
				if resp == nil {
					return
				}
				c.SetWriteDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write(binary.BigEndian.AppendUint16(nil, uint16(len(resp)))); err != nil {
					return
				}
				if _, err := c.Write(resp); err != nil {
					return
				}
			}
		}()
	}
}

// Answer returns the response to one DNS message, or nil when the message
// is not a query worth answering (a response, or too short to have an
// ID). A name in Records is answered here; any other is forwarded.
func (d *Server) Answer(ctx context.Context, query []byte, overTCP bool) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil
	}
	if h.Response {
		return nil
	}
	if h.OpCode != 0 {
		// Only standard queries: NOTIFY, UPDATE and the rest are not
		// a forwarder's to pass on.
		return d.reply(h, nil, dnsmessage.RCodeNotImplemented, nil)
	}
	q, err := p.Question()
	if err != nil {
		return d.reply(h, nil, dnsmessage.RCodeFormatError, nil)
	}
	// One question per query is all resolvers send; a second one would
	// make the local answer ambiguous.
	if _, err := p.Question(); !errors.Is(err, dnsmessage.ErrSectionDone) {
		return d.reply(h, &q, dnsmessage.RCodeFormatError, nil)
	}
	name := strings.ToLower(q.Name.String())
	if addrs, ok := d.records[name]; ok && q.Class == dnsmessage.ClassINET {
		return d.reply(h, &q, dnsmessage.RCodeSuccess, addrs)
	}
	resp, err := d.forward(ctx, query, overTCP)
	if err != nil {
		d.log.Debug("dns server: upstream failed", "name", name, "err", err)
		return d.reply(h, &q, dnsmessage.RCodeServerFailure, nil)
	}
	return resp
}

// reply builds a response to h; with q and addrs, an authoritative answer
// with the addresses of q's type.
func (d *Server) reply(h dnsmessage.Header, q *dnsmessage.Question, rcode dnsmessage.RCode, addrs []netip.Addr) []byte {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{
		ID: h.ID, Response: true, OpCode: h.OpCode, RecursionDesired: h.RecursionDesired,
		RecursionAvailable: true, Authoritative: rcode == dnsmessage.RCodeSuccess, RCode: rcode,
	})
	b.EnableCompression()
	if q == nil {
		out, _ := b.Finish()
		return out
	}
	b.StartQuestions()
	b.Question(*q)
	b.StartAnswers()
	hdr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}
	for _, a := range addrs {
		switch {
		case a.Is4() && (q.Type == dnsmessage.TypeA || q.Type == dnsmessage.TypeALL):
			b.AResource(hdr, dnsmessage.AResource{A: a.As4()})
		case a.Is6() && (q.Type == dnsmessage.TypeAAAA || q.Type == dnsmessage.TypeALL):
			b.AAAAResource(hdr, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

// forward asks the upstream resolvers in turn, over the transport the
// query came by, so a truncated UDP answer sends the peer to TCP as it
// would from the upstream itself.
func (d *Server) forward(ctx context.Context, query []byte, overTCP bool) ([]byte, error) {
	if len(d.upstream) == 0 {
		return nil, errors.New("no upstream resolver")
	}
	var firstErr error
	for _, up := range d.upstream {
		resp, err := d.ask(ctx, up, query, overTCP)
		if err == nil {
			return resp, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, firstErr
}

func (d *Server) ask(ctx context.Context, up netip.AddrPort, query []byte, overTCP bool) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, dnsUpstreamTimeout)
	defer cancel()
	network := "udp"
	if overTCP {
		network = "tcp"
	}
	c, err := d.dial(ctx, network, up.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	// Close ends the context: it must end the wait for an answer too.
	defer context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })()
	if overTCP {
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(query))), query...)); err != nil {
			return nil, err
		}
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return nil, err
		}
		resp := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, resp); err != nil {
			return nil, err
		}
		if !isResponseTo(resp, query) {
			return nil, errors.New("upstream answered with something other than a response to the query")
		}
		return resp, nil
	}
	if _, err := c.Write(query); err != nil {
		return nil, err
	}
	buf := udpBuffers.Get().(*[65535]byte)
	defer udpBuffers.Put(buf)
	for {
		n, err := c.Read(buf[:])
		if err != nil {
			return nil, err
		}
		// Only a response with this query's ID counts; anything else on
		// the socket is stale, spoofed or an echo.
		if isResponseTo(buf[:n], query) {
			return append([]byte(nil), buf[:n]...), nil
		}
	}
}

// isResponseTo reports whether resp parses as a DNS response carrying
// query's ID: what a peer is sent must be an answer, whatever the
// upstream said.
func isResponseTo(resp, query []byte) bool {
	var p dnsmessage.Parser
	h, err := p.Start(resp)
	return err == nil && h.Response && len(query) >= 2 && h.ID == binary.BigEndian.Uint16(query)
}

// hostResolvers reads the nameserver lines of a resolv.conf.
func hostResolvers(path string) []netip.AddrPort {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []netip.AddrPort
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if a, err := netip.ParseAddr(fields[1]); err == nil {
				out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
			}
		}
	}
	return out
}
