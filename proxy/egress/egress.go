// Package egress is server mode's exit to the host's network: it takes
// the flows a tunnel's stack hands over (netstack.Net.Intercept), judges
// them by an egress policy and per-peer and global caps, and relays the
// admitted ones to host sockets; ICMP echo leaves as a real ping.
package egress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wgbore/wgbore/netstack/inbound"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/proxy/internal/openset"
	"github.com/wgbore/wgbore/proxy/relay"
)

// Defaults for Config's zero values.
const (
	defaultDialTimeout     = 30 * time.Second
	defaultMaxFlowsPerPeer = 1024
	defaultUDPIdleTimeout  = 2 * time.Minute
)

// DefaultMaxFlows is Config.MaxFlows' default: flows of all peers
// together, far above what a person's or an office's peers open, and
// below what the host's descriptors and memory can hold.
const DefaultMaxFlows = 65536

// Tunnel is what the egress needs of the tunnel's stack (a
// *netstack.Net has it): the peers' flows handed over, and a way to
// answer their pings.
type Tunnel interface {
	Intercept(inbound.Interceptor) error
	WriteEchoReply(from, to netip.Addr, id, seq uint16, data []byte)
}

// Config is server mode's egress configuration: see Start.
type Config struct {
	Policy Policy
	// Dial opens the host side of a flow; nil means a net.Dialer with a
	// 30 s timeout. Tests inject one to watch or redirect host dials.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// MaxFlowsPerPeer bounds the TCP and UDP flows one peer has open at
	// once (counted together), so one peer cannot exhaust the host's
	// sockets for the others; <= 0 means 1024.
	MaxFlowsPerPeer int
	// MaxFlows bounds the TCP and UDP flows of all peers together, so
	// that many peers cannot together take more memory and host sockets
	// than the machine has; <= 0 means DefaultMaxFlows.
	MaxFlows int
	// UDPIdleTimeout ends a UDP flow that has moved no datagram in either
	// direction for this long: UDP has no close, so idleness is the only
	// end a flow has. 0 means 2 minutes.
	UDPIdleTimeout time.Duration
	// InterfaceAddrs lists the host's own addresses, to which flows are
	// refused unless Allow names them (see Policy.HostAddresses); nil
	// means net.InterfaceAddrs. Tests inject a list.
	InterfaceAddrs func() ([]net.Addr, error)
	// Admit, when set, is asked before each new flow; false refuses the
	// flow as the per-peer limit does. A memory budget uses it to turn
	// flows away before the process runs out.
	Admit  func() bool
	Logger *slog.Logger
}

// Start turns server mode's egress on: the peers' flows that t hands over
// (see netstack.Net.Intercept) are relayed to sockets on the host, under
// cfg.Policy.
//
// Each flow becomes one tunnel connection and one host socket, joined by
// the relay (proxy/relay): an idle flow holds no goroutine and no copy
// buffer (on Linux, where a poller of the relay's watches the host
// sockets; elsewhere a goroutine waits on each), and buffers come from a
// pool while bytes move.
//
// A flow is refused at once, in the packet path, when the policy denies
// its destination, when its destination lies inside some peer's
// AllowedIPs (the tunnel, not the host's network, is where that address
// lives; relaying between peers is not server mode's job), and when the
// peer is over MaxFlowsPerPeer, all peers over MaxFlows or Admit says no,
// so the peer's application hears at once rather than after a SYN
// timeout. A flow to one of our own addresses on a port without a
// listener of ours goes to the host's loopback, on the same port, if the
// policy allows loopback (see hostDst).
//
// TCP is dialed on the host first and only then is the peer's handshake
// completed. A closed or unreachable host port thus reaches the peer as
// an RST on its SYN, as if it had connected directly, rather than as a
// connection accepted and then closed; the price is that the peer's SYN
// waits for the host dial.
//
// ICMP echo, IPv4 and IPv6, to an address that is not ours, is forwarded
// as a real ping from the host when the policy permits the destination
// and it is not inside some peer's AllowedIPs: it leaves from a host ICMP
// socket, an unprivileged ping socket if net.ipv4.ping_group_range
// includes our group, otherwise a raw socket if we may open one (root,
// CAP_NET_RAW). The host's echo reply is answered to the peer as an echo
// reply from the pinged address with the peer's own identifier, sequence
// number and payload (see pinger). A reply later than 5 s is dropped, and
// a peer may have 64 pings per IP version awaiting a reply, further ones
// being dropped. Without either socket kind for an IP version, Start logs
// so once at info, and echo requests of that version to other hosts are
// dropped.
//
// A ping that is not forwarded (denied by the egress policy, inside the
// tunnel, over the limit) is dropped with a debug log, not answered with
// an ICMP administratively prohibited: a dropped ping is what a peer sees
// from any filtered host on the Internet, and answering would spend ICMP
// on a prober's sweep of the denied ranges for no benefit to a real
// application, which, unlike a TCP or UDP client, does not wait on the
// answer.
//
// Close ends every flow and waits for every goroutine Start started; the
// tunnel's own Close calls Stop before its stack closes, and Close once
// it has.
func Start(t Tunnel, cfg Config) (*Server, error) {
	if cfg.Dial == nil {
		d := &net.Dialer{Timeout: defaultDialTimeout}
		cfg.Dial = d.DialContext
	}
	if cfg.MaxFlowsPerPeer <= 0 {
		cfg.MaxFlowsPerPeer = defaultMaxFlowsPerPeer
	}
	if cfg.MaxFlows <= 0 {
		cfg.MaxFlows = DefaultMaxFlows
	}
	if cfg.UDPIdleTimeout <= 0 {
		cfg.UDPIdleTimeout = defaultUDPIdleTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.InterfaceAddrs == nil {
		cfg.InterfaceAddrs = net.InterfaceAddrs
	}
	s := &Server{tunnel: t, cfg: cfg, log: cfg.Logger, perPeer: map[protocol.PublicKey]*FlowCounts{},
		hostAddrs: hostAddresses(cfg, cfg.Logger)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if p, err := relay.NewPoller(); err == nil {
		s.poller = p
	} else {
		s.log.Debug("no poller for host sockets: each idle flow keeps a goroutine", "err", err)
	}
	s.startPing()
	if err := t.Intercept(s); err != nil {
		s.Close()
		return nil, fmt.Errorf("egress: %w", err)
	}
	return s, nil
}

// Server is server mode's egress: the flows it relays and their owners.
type Server struct {
	tunnel Tunnel
	cfg    Config
	log    *slog.Logger
	// poller notifies the relays when a host socket becomes readable;
	// nil where there is none (see relay.Poller).
	poller *relay.Poller
	// ping forwards echo requests; nil when no host ICMP socket could
	// be opened.
	ping, ping6 atomic.Pointer[pinger]

	ctx    context.Context // ends on Close, and with it host dials
	cancel context.CancelFunc

	// hostAddrs are the host's own addresses, found when Start runs:
	// see AdmitFlow. One added later is still caught when its flow is
	// dialled (see dialHost).
	hostAddrs map[netip.Addr]bool

	mu     sync.Mutex
	closed bool
	// perPeer has an entry for every peer with a flow open or one
	// refused: a refusal count outlives the peer's last flow, so that it
	// stays a counter. The entries of removed peers that were refused
	// some day stay too; they are a few words each.
	perPeer map[protocol.PublicKey]*FlowCounts
	total   int // flows open, all peers
	wg      sync.WaitGroup

	// open holds the flows' sockets, for Close to shut.
	open openset.Set[*flow]
}

// FlowCounts is one peer's flows through server mode: open now, and
// refused since Start by each limit.
type FlowCounts struct {
	Open int
	// RefusedPeerCap counts flows refused because the peer had
	// MaxFlowsPerPeer open; RefusedGlobalCap because all peers together
	// had MaxFlows; RefusedMemory because Admit said no.
	RefusedPeerCap, RefusedGlobalCap, RefusedMemory uint64
}

// flow is one relayed connection or UDP session: the tunnel side, facing
// the peer, and the host socket.
type flow struct {
	tunnel, host net.Conn
}

// AdmitFlow is the policy every new flow passes, in the packet path.
func (s *Server) AdmitFlow(f inbound.Flow) bool {
	dst := hostDst(f)
	if !s.cfg.Policy.Permits(dst.Addr()) {
		s.log.Debug("flow refused by egress policy", "network", f.Network,
			"src", f.Source, "dst", f.Destination, "host_dst", dst)
		return false
	}
	if !f.ToUs && s.hostAddrs[dst.Addr()] && !s.cfg.Policy.AllowsExplicitly(dst.Addr()) {
		s.log.Debug("flow refused by egress policy: the destination is this host", "network", f.Network, "dst", dst)
		return false
	}
	if !f.ToUs && f.InTunnel {
		s.log.Debug("flow refused: destination is inside the tunnel", "network", f.Network, "dst", dst)
		return false
	}
	return true
}

// hostDst is where a new flow goes on the host.
//
// A flow to our own address on a port no listener of ours holds goes to
// the host's loopback of the same family, on the same port: that is how a
// peer reaches a service on the server's host, as it would dial a kernel
// WireGuard server's tunnel address and find the host's services there.
// The peer cannot dial the host's loopback by name instead: the replies
// would come from a loopback source, which a WireGuard peer must drop as
// spoofed. The loopback destination then passes the egress policy like
// any other, so it is refused unless Allow names it.
//
// Other destinations are unmapped, as the host would reach them: see
// inbound.Flow.InTunnel.
func hostDst(f inbound.Flow) netip.AddrPort {
	if f.ToUs {
		lo := netip.IPv6Loopback()
		if f.Destination.Addr().Is4() {
			lo = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		}
		return netip.AddrPortFrom(lo, f.Destination.Port())
	}
	return netip.AddrPortFrom(f.Destination.Addr().Unmap(), f.Destination.Port())
}

// hostAddresses is the set of the host's own addresses: those on its
// interfaces and those the egress policy names.
func hostAddresses(cfg Config, log *slog.Logger) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	for _, a := range cfg.Policy.HostAddresses {
		out[a.Unmap().WithZone("")] = true
	}
	ifaddrs, err := cfg.InterfaceAddrs()
	if err != nil {
		log.Warn("cannot list the host's addresses; flows to them are still refused when they connect", "err", err)
	}
	for _, ia := range ifaddrs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil {
			out[p.Addr().Unmap().WithZone("")] = true
		} else if a, err := netip.ParseAddr(ia.String()); err == nil {
			out[a.Unmap().WithZone("")] = true
		}
	}
	return out
}

// acquire counts a new flow against the peer that sent it and registers
// it with the goroutines Close waits for. It fails when the peer or the
// server is at its limit, or the server is closing.
func (s *Server) acquire(f inbound.Flow) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	pf := s.perPeer[f.Peer]
	if pf == nil {
		pf = &FlowCounts{}
		s.perPeer[f.Peer] = pf
	}
	refused := ""
	switch {
	case pf.Open >= s.cfg.MaxFlowsPerPeer:
		pf.RefusedPeerCap++
		refused = "peer at its flow limit"
	case s.total >= s.cfg.MaxFlows:
		pf.RefusedGlobalCap++
		refused = "server at its flow limit"
	case s.cfg.Admit != nil && !s.cfg.Admit():
		pf.RefusedMemory++
		refused = "memory budget spent"
	}
	if refused != "" {
		s.log.Debug("flow refused: "+refused, "network", f.Network, "peer", f.Peer,
			"peer_limit", s.cfg.MaxFlowsPerPeer, "limit", s.cfg.MaxFlows, "dst", f.Destination)
		return false
	}
	pf.Open++
	s.total++
	s.wg.Add(1)
	return true
}

// release undoes acquire once the flow's goroutines are done with it.
func (s *Server) release(peer protocol.PublicKey) {
	s.mu.Lock()
	pf := s.perPeer[peer]
	pf.Open--
	s.total--
	if *pf == (FlowCounts{}) {
		delete(s.perPeer, peer)
	}
	s.mu.Unlock()
	s.wg.Done()
}

// flows is how many flows peer has open, for tests.
func (s *Server) flows(peer protocol.PublicKey) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pf := s.perPeer[peer]; pf != nil {
		return pf.Open
	}
	return 0
}

// FlowCounts reports server mode's flows per peer, for metrics: the peers
// with a flow open now or one refused since Start. A nil Server, server
// mode not started, reports nil.
func (s *Server) FlowCounts() map[protocol.PublicKey]FlowCounts {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[protocol.PublicKey]FlowCounts, len(s.perPeer))
	for k, v := range s.perPeer {
		out[k] = *v
	}
	return out
}

// track registers a flow's sockets for Close to shut. It fails, closing
// them itself, when Close has begun.
func (s *Server) track(fl *flow) bool {
	if !s.open.Add(fl) {
		fl.close()
		return false
	}
	return true
}

func (s *Server) untrack(fl *flow) {
	s.open.Remove(fl)
	fl.close()
}

// close shuts both sockets. The deadline first: it wakes a goroutine
// blocked reading the tunnel side, which closing alone might not.
func (fl *flow) close() {
	fl.tunnel.SetDeadline(time.Now())
	fl.tunnel.Close()
	fl.host.Close()
}

// Stop refuses new flows, cuts short the host dials under way, and ends
// every open flow and the pings, without waiting for their goroutines.
// The tunnel's Close calls it before its stack closes, so that nothing is
// admitted while the stack shuts down. It may be called more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	open := s.open.Close()
	s.cancel()
	for _, fl := range open {
		fl.close()
	}
	for _, p := range []*pinger{s.ping.Load(), s.ping6.Load()} {
		if p != nil {
			p.stop()
		}
	}
}

// Close stops the server, as Stop does, and waits for every goroutine
// Start started. It may be called more than once. The tunnel's Close
// calls it too, once its stack has closed, which is the way to end server
// mode at once: a peer's TCP handshake that is under way (see HandleTCP)
// holds a Close called before until it completes or times out.
func (s *Server) Close() error {
	s.Stop()
	s.wg.Wait()
	if s.poller != nil {
		s.poller.Close()
	}
	return nil
}

// HandleTCP relays an admitted TCP flow: it runs in a goroutine the
// tunnel starts for each new connection request, dials the host and only
// then accepts the peer's connection. Returning without accepting answers
// the peer with an RST: when the flow is refused or the host dial fails.
func (s *Server) HandleTCP(f inbound.Flow, accept func() (net.Conn, error)) {
	if !s.acquire(f) {
		return
	}
	relaying := false
	defer func() {
		if !relaying {
			s.release(f.Peer)
		}
	}()
	dst := hostDst(f)
	host, err := s.dialHost("tcp", dst)
	if err != nil {
		s.log.Debug("host dial failed", "network", "tcp", "peer", f.Peer, "dst", dst, "err", err)
		return
	}
	tunnel, err := accept()
	if err != nil {
		// The peer gave up, or the handshake failed; it has its answer.
		host.Close()
		return
	}
	fl := &flow{tunnel: tunnel, host: s.watch(host)}
	if !s.track(fl) {
		return
	}
	relaying = true
	h, hok := fl.host.(relay.ReadNotifier)
	t, tok := tunnel.(relay.ReadNotifier)
	if hok && tok {
		// Both sides notify: an idle flow holds no goroutine and no
		// buffer, and this one, whose stack the host dial has grown,
		// ends.
		relay.Start(h, t, &s.wg, nil, func() {
			s.untrack(fl)
			s.release(f.Peer)
		})
		return
	}
	// Without a poller the relay gets a goroutine of its own, which
	// copies host to tunnel and holds no buffer while the host is
	// silent; the tunnel's bytes are copied by goroutines started only
	// when it has some (see relay.Both).
	go func() {
		defer s.release(f.Peer)
		defer s.untrack(fl)
		relay.Both(fl.host, fl.tunnel, &s.wg)
	}()
}

// watch has the poller notify for a host socket, when there is a poller
// (Linux) and the socket has a descriptor; otherwise it returns host.
func (s *Server) watch(host net.Conn) net.Conn {
	if s.poller != nil {
		if w := s.poller.Watch(host); w != nil {
			return w
		}
	}
	return host
}

// HandleUDP runs in the packet path for the first datagram of an admitted
// flow: it takes the flow's connection, which holds that datagram and
// the flow's later ones, and starts the session's goroutine. Returning
// without accepting refuses the flow with an ICMP port unreachable.
func (s *Server) HandleUDP(f inbound.Flow, accept func() (net.Conn, error)) {
	if !s.acquire(f) {
		return
	}
	tunnel, err := accept()
	if err != nil {
		s.release(f.Peer)
		return
	}
	go s.relayUDP(f.Peer, hostDst(f), tunnel)
}

// errHostItself refuses a flow that reached one of the host's own
// addresses without the operator's Allow.
var errHostItself = errors.New("destination is this host itself, which [Egress] Allow does not name")

// dialHost opens the host side of a flow. The egress policy has judged
// dst by its prefixes, but cannot know every address the host itself
// answers on (its public IP, a Docker bridge): a socket whose two ends
// are the same address reached a local service, and that is refused
// unless an Allow prefix names the destination. For TCP the host service
// has then seen a connection open and close; no data crosses.
func (s *Server) dialHost(network string, dst netip.AddrPort) (net.Conn, error) {
	host, err := s.cfg.Dial(s.ctx, network, dst.String())
	if err != nil {
		return nil, err
	}
	if reachesHostItself(host) && !s.cfg.Policy.AllowsExplicitly(dst.Addr()) {
		host.Close()
		s.log.Debug("flow refused by egress policy: the destination is this host", "network", network, "dst", dst)
		return nil, errHostItself
	}
	return host, nil
}

// relayUDP dials the host side of a UDP flow and copies datagrams both
// ways until the flow has been idle for UDPIdleTimeout, then releases
// the flow. A relay.IdleWatch sees to the idleness, so a datagram costs
// no timer or deadline change.
func (s *Server) relayUDP(peer protocol.PublicKey, dst netip.AddrPort, tunnel net.Conn) {
	host, err := s.dialHost("udp", dst)
	if err != nil {
		s.log.Debug("host dial failed", "network", "udp", "peer", peer, "dst", dst, "err", err)
		tunnel.Close()
		s.release(peer)
		return
	}
	fl := &flow{tunnel: tunnel, host: s.watch(host)}
	if !s.track(fl) {
		s.release(peer)
		return
	}

	idle := relay.NewIdleWatch(nil, s.cfg.UDPIdleTimeout, fl.close)
	moved := idle.Moved
	end := func() {
		idle.Stop()
		s.untrack(fl)
		s.release(peer)
	}
	h, hok := fl.host.(relay.ReadNotifier)
	t, tok := tunnel.(relay.ReadNotifier)
	if hok && tok {
		// As for TCP: no goroutine while the flow idles.
		relay.Start(h, t, &s.wg, moved, end)
		return
	}
	// Without a poller, this goroutine copies host to tunnel without a
	// buffer while the host is silent, and the tunnel's datagrams are
	// copied by goroutines started when it has some.
	relay.Datagrams(fl.host, tunnel, &s.wg, moved)
	end()
}
