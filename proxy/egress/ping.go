package egress

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/wgbore/wgbore/netstack/inbound"
	"github.com/wgbore/wgbore/protocol"
)

// Bounds on forwarded pings.
const (
	// echoHeader is the ICMP echo header, the same 8 bytes in ICMPv4
	// and ICMPv6: type, code, checksum, identifier, sequence number.
	echoHeader = 8
	// pingReplyTimeout is how long a forwarded echo request waits for the
	// host's reply; a later reply is dropped.
	pingReplyTimeout = 5 * time.Second
	// maxPingsPerPeer bounds one peer's echo requests awaiting a reply,
	// so a flood from one peer cannot crowd out the others.
	maxPingsPerPeer = 64
	// maxPingsOutstanding bounds them for all peers together, well below
	// the 65536 sequence numbers a pending request is keyed by.
	maxPingsOutstanding = 4096
	// pingSendQueue is how many echo requests may wait for the host
	// socket; the packet path drops rather than waits when it is full.
	pingSendQueue = 256
	// pingSweepInterval is how often expired requests are forgotten.
	pingSweepInterval = time.Second
)

// pinger sends peers' ICMP echo requests of one IP version from a
// host ICMP socket and answers them with the host's replies.
//
// Every request leaves with a sequence number of ours, unique among the
// outstanding ones, and the identifier of our socket: the kernel's for a
// ping socket (it rewrites whatever we write), a random one chosen at
// start for a raw socket. A reply is matched by its source address and
// that sequence number (and, on a raw socket, which sees every echo reply
// on the host, our identifier), and is answered to the peer with the
// peer's own identifier and sequence number, from the address it pinged.
// Renumbering is what lets one socket carry every peer's pings without a
// collision between two peers pinging the same host with the same
// identifier, and makes both socket kinds work the same way.
type pinger struct {
	s    *Server
	log  *slog.Logger
	conn *icmp.PacketConn
	raw  bool
	v6   bool
	id   uint16 // raw socket only: the identifier our requests carry
	out  chan pingOut
	done chan struct{}

	mu      sync.Mutex
	closed  bool
	nextSeq uint16
	pending map[pingKey]pendingPing
	perPeer map[protocol.PublicKey]int
}

// pingKey identifies an outstanding request by what its reply carries.
type pingKey struct {
	host netip.Addr
	seq  uint16
}

// pendingPing is a peer's request awaiting the host's reply.
type pendingPing struct {
	peer    protocol.PublicKey
	src     netip.Addr // the peer's address, where the reply goes
	id, seq uint16     // the peer's
	expires time.Time
}

type pingOut struct {
	key pingKey
	msg []byte
}

// openPingConn opens a host socket for echo requests: an unprivileged
// ping socket if net.ipv4.ping_group_range includes our group (it governs
// ICMPv6 ping sockets too), otherwise a raw socket if we may open one
// (root, or CAP_NET_RAW).
func openPingConn(v6 bool) (conn *icmp.PacketConn, raw bool, err error) {
	dgram, rawNet, addr := "udp4", "ip4:icmp", "0.0.0.0"
	if v6 {
		dgram, rawNet, addr = "udp6", "ip6:ipv6-icmp", "::"
	}
	conn, err = icmp.ListenPacket(dgram, addr)
	if err == nil {
		return conn, false, nil
	}
	conn, rawErr := icmp.ListenPacket(rawNet, addr)
	if rawErr == nil {
		return conn, true, nil
	}
	return nil, false, errors.Join(err, rawErr)
}

// startPing turns on ping forwarding for s, for IPv4 and IPv6 each, or
// logs once why it cannot. It starts nothing once Close has begun.
func (s *Server) startPing() {
	s.startPingFamily(false)
	s.startPingFamily(true)
}

func (s *Server) startPingFamily(v6 bool) {
	family := "IPv4"
	if v6 {
		family = "IPv6"
	}
	conn, raw, err := openPingConn(v6)
	if err != nil {
		s.log.Info("ping forwarding unavailable: no ICMP socket (needs net.ipv4.ping_group_range to include our group, or CAP_NET_RAW); echo requests to other hosts are dropped", "family", family, "err", err)
		return
	}
	p := &pinger{
		s: s, log: s.log.With("family", family), conn: conn, raw: raw, v6: v6,
		out:     make(chan pingOut, pingSendQueue),
		done:    make(chan struct{}),
		pending: map[pingKey]pendingPing{},
		perPeer: map[protocol.PublicKey]int{},
	}
	var b [4]byte
	rand.Read(b[:])
	p.id = binary.BigEndian.Uint16(b[:2])
	p.nextSeq = binary.BigEndian.Uint16(b[2:])

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		conn.Close()
		return
	}
	if v6 {
		s.ping6.Store(p)
	} else {
		s.ping.Store(p)
	}
	s.wg.Add(2)
	s.mu.Unlock()
	kind := "ping socket"
	if raw {
		kind = "raw socket"
	}
	p.log.Debug("ping forwarding on", "socket", kind)
	go func() {
		defer s.wg.Done()
		p.sendLoop()
	}()
	go func() {
		defer s.wg.Done()
		p.readLoop()
	}()
}

// stop ends both goroutines and forgets every outstanding request.
func (p *pinger) stop() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.pending = map[pingKey]pendingPing{}
	p.perPeer = map[protocol.PublicKey]int{}
	p.mu.Unlock()
	close(p.done)
	p.conn.Close()
}

// HandleEcho decides, in the packet path, whether an echo request leaves
// as a host ping, and queues it if so.
func (s *Server) HandleEcho(e inbound.EchoRequest) bool {
	if !s.cfg.Policy.Permits(e.Destination) {
		s.log.Debug("ping dropped by egress policy", "src", e.Source, "dst", e.Destination)
		return false
	}
	if e.InTunnel {
		s.log.Debug("ping dropped: destination is inside the tunnel", "src", e.Source, "dst", e.Destination)
		return false
	}
	// The request's IP version is its source's: the destination may be
	// an IPv4 address a peer spelled IPv4-mapped in an IPv6 packet.
	p := s.ping.Load()
	if e.Source.Is6() {
		p = s.ping6.Load()
	}
	if p == nil {
		s.log.Debug("ping dropped: ping forwarding unavailable", "src", e.Source, "dst", e.Destination)
		return false
	}
	return p.send(e.Peer, e.Source, e.Destination, e.ID, e.Seq, e.Payload())
}

// send registers a request and queues it for the host socket.
func (p *pinger) send(peer protocol.PublicKey, src, dst netip.Addr, id, seq uint16, data []byte) bool {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return false
	}
	if p.perPeer[peer] >= maxPingsPerPeer || len(p.pending) >= maxPingsOutstanding {
		p.mu.Unlock()
		p.log.Debug("ping dropped: too many outstanding", "peer", peer, "dst", dst)
		return false
	}
	p.nextSeq++
	key := pingKey{host: dst, seq: p.nextSeq}
	if _, busy := p.pending[key]; busy {
		// Only after 65536 requests within the reply timeout.
		p.mu.Unlock()
		return false
	}
	p.pending[key] = pendingPing{peer: peer, src: src, id: id, seq: seq, expires: time.Now().Add(pingReplyTimeout)}
	p.perPeer[peer]++
	p.mu.Unlock()

	// For ICMPv6, Marshal leaves the checksum to the kernel, which
	// computes it for ping and raw ICMPv6 sockets alike.
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if p.v6 {
		typ = ipv6.ICMPTypeEchoRequest
	}
	msg, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: int(p.id), Seq: int(key.seq), Data: data}}).Marshal(nil)
	if err == nil {
		select {
		case p.out <- pingOut{key: key, msg: msg}:
			return true
		default:
		}
	}
	p.forget(key)
	p.log.Debug("ping dropped: send queue full", "peer", peer, "dst", dst)
	return false
}

// take removes and returns a pending request, if it has not expired.
func (p *pinger) take(key pingKey) (pendingPing, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pp, ok := p.pending[key]
	if !ok {
		return pendingPing{}, false
	}
	p.remove(key, pp)
	return pp, time.Now().Before(pp.expires)
}

func (p *pinger) forget(key pingKey) { p.take(key) }

// remove drops a pending request; p.mu is held.
func (p *pinger) remove(key pingKey, pp pendingPing) {
	delete(p.pending, key)
	if p.perPeer[pp.peer]--; p.perPeer[pp.peer] <= 0 {
		delete(p.perPeer, pp.peer)
	}
}

// sweep forgets the requests whose reply is overdue.
func (p *pinger) sweep() {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, pp := range p.pending {
		if !now.Before(pp.expires) {
			p.remove(key, pp)
		}
	}
}

// outstanding is how many of peer's requests await a reply, for tests.
func (p *pinger) outstanding(peer protocol.PublicKey) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.perPeer[peer]
}

// sendLoop writes queued requests to the host socket, so the packet path
// never waits for it.
func (p *pinger) sendLoop() {
	for {
		select {
		case <-p.done:
			return
		case o := <-p.out:
			var to net.Addr = &net.UDPAddr{IP: o.key.host.AsSlice()}
			if p.raw {
				to = &net.IPAddr{IP: o.key.host.AsSlice()}
			}
			p.conn.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := p.conn.WriteTo(o.msg, to); err != nil {
				p.forget(o.key)
				p.log.Debug("host ping failed", "dst", o.key.host, "err", err)
			}
		}
	}
}

// readLoop answers the host's echo replies to the peers that asked, until
// the socket is closed.
func (p *pinger) readLoop() {
	buf := make([]byte, 1<<16)
	for {
		p.conn.SetReadDeadline(time.Now().Add(pingSweepInterval))
		n, from, err := p.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				p.sweep()
				continue
			}
			p.mu.Lock()
			closed := p.closed
			p.mu.Unlock()
			if !closed {
				p.log.Info("ping forwarding stopped: host socket failed", "err", err)
			}
			return
		}
		p.reply(buf[:n], from)
	}
}

// reply answers one message from the host socket, if it is the reply to
// an outstanding request.
func (p *pinger) reply(b []byte, from net.Addr) {
	echoReply := byte(ipv4.ICMPTypeEchoReply)
	if p.v6 {
		echoReply = byte(ipv6.ICMPTypeEchoReply)
	}
	if len(b) < echoHeader || b[0] != echoReply {
		return // on a raw socket, every ICMP message the host receives
	}
	var host netip.Addr
	switch a := from.(type) {
	case *net.IPAddr:
		host, _ = netip.AddrFromSlice(a.IP)
	case *net.UDPAddr:
		host, _ = netip.AddrFromSlice(a.IP)
	}
	if p.raw && binary.BigEndian.Uint16(b[4:6]) != p.id {
		return // some other program's ping
	}
	if !p.v6 {
		host = host.Unmap()
	}
	pp, ok := p.take(pingKey{host: host, seq: binary.BigEndian.Uint16(b[6:8])})
	if !ok {
		return
	}
	p.s.tunnel.WriteEchoReply(host, pp.src, pp.id, pp.seq, b[echoHeader:])
}
