package netstack

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

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/proxy/relay"
)

// Defaults for ForwardConfig's zero values.
const (
	defaultForwardDialTimeout = 30 * time.Second
	defaultMaxFlowsPerPeer    = 1024
	defaultMaxFlows           = 65536
	defaultUDPIdleTimeout     = 2 * time.Minute
)

// Keepalive timing for forwarded TCP flows on the peer's side: after a
// minute of silence, probes every 15 s, and gVisor's default 9 unanswered
// probes end the flow, about 3 minutes after the peer went away.
const (
	forwardKeepaliveIdle     = time.Minute
	forwardKeepaliveInterval = 15 * time.Second
)

// ForwardConfig is server mode's configuration: see Net.Forward.
type ForwardConfig struct {
	Egress Egress
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
	// refused unless Allow names them (see Egress.HostAddresses); nil
	// means net.InterfaceAddrs. Tests inject a list.
	InterfaceAddrs func() ([]net.Addr, error)
	// Admit, when set, is asked before each new flow; false refuses the
	// flow as the per-peer limit does. A memory budget uses it to turn
	// flows away before the process runs out.
	Admit  func() bool
	Logger *slog.Logger
}

// Forward turns on server mode: flows from peers to any destination are
// accepted and relayed to sockets on the host, under cfg.Egress.
//
// The design is gVisor's own: the NIC is put in promiscuous mode, so it
// accepts packets for addresses that are not ours, and spoofing, so it
// may answer from them; TCP and UDP packets that no endpoint of ours
// claims then reach the per-protocol handlers Open installed, which pass
// them here. Each flow becomes one gVisor endpoint and one host socket,
// joined by the relay (proxy/relay): an idle flow holds no goroutine and
// no copy buffer (on Linux, where a poller of the relay's watches the host
// sockets; elsewhere a goroutine waits on each), and buffers come from a
// pool while bytes move. The alternative, rewriting packets and
// forwarding them to a host raw or TUN socket, needs privileges server
// mode exists to avoid; terminating TCP here also means the host's kernel,
// not ours, does congestion control towards the destination.
//
// A refused flow is refused at once, in the packet path: the handler
// declines the packet, and gVisor answers as for a port nobody listens
// on, with a TCP RST (tcp's HandleUnknownDestinationPacket) or an ICMP
// port unreachable (udp's, through the IP layer's DeliverTransportPacket
// result). That is how a destination the egress policy denies and an
// address inside some peer's AllowedIPs (the tunnel, not the host's
// network, is where that address lives; relaying between peers is not
// server mode's job) are answered. A flow to one of our own addresses on a
// port without a listener of ours goes to the host's loopback, on the same
// port, if the policy allows loopback (see forwarder.hostDst). A peer over MaxFlowsPerPeer is refused the same way, so
// its application hears at once rather than after a SYN timeout. ICMP
// errors go through gVisor's stack-wide rate limiter (1000/s, bursts of
// 50), so a flood of refused datagrams is partly answered with silence.
//
// TCP is dialed on the host first and only then is the peer's handshake
// completed (ForwarderRequest.CreateEndpoint). A closed or unreachable
// host port thus reaches the peer as an RST on its SYN, as if it had
// connected directly, rather than as a connection accepted and then
// closed; the price is that the peer's SYN waits for the host dial.
//
// ICMP echo, IPv4 and IPv6, is forwarded as a real ping from the host. An
// echo request to one of our tunnel addresses is answered by gVisor, so a
// peer can ping the server. One to any other address reaches the ICMP
// handlers Open installed and, when the egress policy permits the
// destination and it is not inside some peer's AllowedIPs, leaves from a
// host ICMP socket: an unprivileged ping socket if
// net.ipv4.ping_group_range includes our group, otherwise a raw socket if
// we may open one (root, CAP_NET_RAW). The host's echo reply is answered
// to the peer as an echo reply from the pinged address with the peer's
// own identifier, sequence number and payload (see pingForwarder). A
// reply later than 5 s is dropped, and a peer may have 64 pings per IP
// version awaiting a reply, further ones being dropped. Without either
// socket kind for an IP version, Forward logs so once at info, and echo
// requests of that version to other hosts are dropped.
//
// A ping that is not forwarded (denied by the egress policy, inside the
// tunnel, over the limit) is dropped with a debug log, not answered with
// an ICMP administratively prohibited: a dropped ping is what a peer sees
// from any filtered host on the Internet, and answering would spend ICMP
// on a prober's sweep of the denied ranges for no benefit to a real
// application, which, unlike a TCP or UDP client, does not wait on the
// answer. For IPv6 the handler claims such a request so that it is
// dropped: the gVisor we pin answers ICMPv6 echo to any address of
// promiscuous mode as if it were ours unless a handler claims it (for
// IPv4 it leaves a temporary address's echo to the handler).
//
// A listener of ours on the unspecified address also catches flows to
// its port on every other destination, since gVisor matches it before
// these handlers: bind listeners to a tunnel address in server mode.
//
// Forward may be called once. Close ends every flow and waits for every
// goroutine Forward started.
func (n *Net) Forward(cfg ForwardConfig) error {
	if cfg.Dial == nil {
		d := &net.Dialer{Timeout: defaultForwardDialTimeout}
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
	f := &forwarder{n: n, cfg: cfg, log: cfg.Logger, perPeer: map[protocol.PublicKey]*FlowCounts{}, open: map[*flow]struct{}{},
		hostAddrs: hostAddresses(cfg, cfg.Logger)}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	if p, err := relay.NewPoller(); err == nil {
		f.poller = p
	} else {
		f.log.Debug("no poller for host sockets: each idle flow keeps a goroutine", "err", err)
	}
	// maxInFlight is unbounded here: MaxFlowsPerPeer already bounds the
	// handshakes each peer can have pending, and gVisor's own bound would
	// drop SYNs silently, which is what refusing at once avoids.
	f.tcp = tcp.NewForwarder(n.stack, 0, 1<<30, f.handleTCP)
	// addService also makes f the one forwarder the handlers consult.
	if err := n.addService(f); err != nil {
		f.cancel()
		if f.poller != nil {
			f.poller.Close()
		}
		return err
	}
	if err := n.stack.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("netstack: spoofing: %s", err)
	}
	if err := n.stack.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("netstack: promiscuous mode: %s", err)
	}
	f.startPing()
	return nil
}

// forwarder is server mode's state: the flows it relays and their owners.
type forwarder struct {
	n   *Net
	cfg ForwardConfig
	log *slog.Logger
	tcp *tcp.Forwarder
	// poller notifies the relays when a host socket becomes readable;
	// nil where there is none (see relay.Poller).
	poller *relay.Poller
	// ping forwards echo requests; nil when no host ICMP socket could
	// be opened.
	ping, ping6 atomic.Pointer[pingForwarder]

	ctx    context.Context // ends on Close, and with it host dials
	cancel context.CancelFunc

	// hostAddrs are the host's own addresses, found when Forward
	// starts: see mayLeave. One added later is still caught when its
	// flow is dialled (see dialHost).
	hostAddrs map[netip.Addr]bool

	mu     sync.Mutex
	closed bool
	// perPeer has an entry for every peer with a flow open or one
	// refused: a refusal count outlives the peer's last flow, so that it
	// stays a counter. The entries of removed peers that were refused
	// some day stay too; they are a few words each.
	perPeer map[protocol.PublicKey]*FlowCounts
	total   int // flows open, all peers
	open    map[*flow]struct{}
	wg      sync.WaitGroup
}

// DefaultMaxFlows is ForwardConfig.MaxFlows' default.
const DefaultMaxFlows = defaultMaxFlows

// FlowCounts is one peer's flows through server mode: open now, and
// refused since the Net started by each limit.
type FlowCounts struct {
	Open int
	// RefusedPeerCap counts flows refused because the peer had
	// MaxFlowsPerPeer open; RefusedGlobalCap because all peers together
	// had MaxFlows; RefusedMemory because Admit said no.
	RefusedPeerCap, RefusedGlobalCap, RefusedMemory uint64
}

// flow is one relayed connection or UDP session: the gVisor side, facing
// the peer, and the host socket.
type flow struct {
	tunnel, host net.Conn
}

// tcpPacket is the stack's TCP handler for segments no endpoint claims.
// Returning false makes gVisor answer with an RST.
func (n *Net) tcpPacket(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	f := n.forward.Load()
	if f == nil || !f.mayLeave(id, "tcp") {
		return false
	}
	return f.tcp.HandlePacket(id, pkt)
}

// udpPacket is the stack's UDP handler for datagrams no endpoint claims.
// Returning false makes gVisor answer with ICMP port unreachable.
//
// It decides before building a udp.ForwarderRequest rather than going
// through udp.Forwarder, whose HandlePacket clones the packet before
// asking and never releases the clone of a flow its handler declines.
// The request can borrow pkt: CreateEndpoint uses it synchronously and
// the new endpoint queues a clone of its own.
func (n *Net) udpPacket(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	f := n.forward.Load()
	if f == nil || !f.mayLeave(id, "udp") {
		return false
	}
	return f.startUDP(udp.NewForwarderRequest(n.stack, id, pkt))
}

// mayLeave is the policy every new flow passes, in the packet path.
func (f *forwarder) mayLeave(id stack.TransportEndpointID, network string) bool {
	dst, self := f.hostDst(id)
	if !f.cfg.Egress.Permits(dst.Addr()) {
		f.log.Debug("flow refused by egress policy", "network", network,
			"src", netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort),
			"dst", netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort), "host_dst", dst)
		return false
	}
	if !self && f.hostAddrs[dst.Addr()] && !f.cfg.Egress.AllowsExplicitly(dst.Addr()) {
		f.log.Debug("flow refused by egress policy: the destination is this host", "network", network, "dst", dst)
		return false
	}
	if !self && f.inTunnel(dst.Addr()) {
		f.log.Debug("flow refused: destination is inside the tunnel", "network", network, "dst", dst)
		return false
	}
	return true
}

// hostDst is where a new flow goes on the host, and whether it was
// addressed to one of our own tunnel addresses.
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
// inTunnel.
func (f *forwarder) hostDst(id stack.TransportEndpointID) (dst netip.AddrPort, self bool) {
	if f.n.link.owns(id.LocalAddress) {
		lo := netip.IPv6Loopback()
		if id.LocalAddress.Len() == 4 {
			lo = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		}
		return netip.AddrPortFrom(lo, id.LocalPort), true
	}
	return netip.AddrPortFrom(addrFrom(id.LocalAddress).Unmap(), id.LocalPort), false
}

// inTunnel reports whether dst, unmapped, lives in the tunnel rather than
// on the host's network: one of our addresses or inside some peer's
// AllowedIPs. It is given dst unmapped because a peer may spell an IPv4
// destination as IPv4-mapped IPv6 (::ffff:10.7.0.1) in an IPv6 packet,
// which neither our addresses nor an IPv4 AllowedIPs prefix contain, but
// which a host socket reaches as the IPv4 address.
func (f *forwarder) inTunnel(dst netip.Addr) bool {
	if dst.Is4() && f.n.link.owns(tcpip.AddrFrom4(dst.As4())) {
		return true
	}
	_, ok := f.n.PeerFor(dst)
	return ok
}

// hostAddresses is the set of the host's own addresses: those on its
// interfaces and those the egress policy names.
func hostAddresses(cfg ForwardConfig, log *slog.Logger) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	for _, a := range cfg.Egress.HostAddresses {
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

func addrFrom(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}

// acquire counts a new flow against the peer that sent it (found by its
// source address, which cryptokey routing guarantees is in that peer's
// AllowedIPs) and registers it with the goroutines Close waits for. It
// fails when the peer is at its limit or the Net is closing.
func (f *forwarder) acquire(id stack.TransportEndpointID, network string) (protocol.PublicKey, bool) {
	src := addrFrom(id.RemoteAddress)
	peer, ok := f.n.PeerFor(src)
	if !ok {
		return protocol.PublicKey{}, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return protocol.PublicKey{}, false
	}
	pf := f.perPeer[peer]
	if pf == nil {
		pf = &FlowCounts{}
		f.perPeer[peer] = pf
	}
	refused := ""
	switch {
	case pf.Open >= f.cfg.MaxFlowsPerPeer:
		pf.RefusedPeerCap++
		refused = "peer at its flow limit"
	case f.total >= f.cfg.MaxFlows:
		pf.RefusedGlobalCap++
		refused = "server at its flow limit"
	case f.cfg.Admit != nil && !f.cfg.Admit():
		pf.RefusedMemory++
		refused = "memory budget spent"
	}
	if refused != "" {
		f.log.Debug("flow refused: "+refused, "network", network, "peer", peer,
			"peer_limit", f.cfg.MaxFlowsPerPeer, "limit", f.cfg.MaxFlows,
			"dst", netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort))
		return protocol.PublicKey{}, false
	}
	pf.Open++
	f.total++
	f.wg.Add(1)
	return peer, true
}

// release undoes acquire once the flow's goroutines are done with it.
func (f *forwarder) release(peer protocol.PublicKey) {
	f.mu.Lock()
	pf := f.perPeer[peer]
	pf.Open--
	f.total--
	if *pf == (FlowCounts{}) {
		delete(f.perPeer, peer)
	}
	f.mu.Unlock()
	f.wg.Done()
}

// flows is how many flows peer has open, for tests.
func (f *forwarder) flows(peer protocol.PublicKey) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if pf := f.perPeer[peer]; pf != nil {
		return pf.Open
	}
	return 0
}

// FlowCounts reports server mode's flows per peer: the peers with a flow
// open now or one refused since Forward. It is nil before Forward.
func (n *Net) FlowCounts() map[protocol.PublicKey]FlowCounts {
	f := n.forward.Load()
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[protocol.PublicKey]FlowCounts, len(f.perPeer))
	for k, v := range f.perPeer {
		out[k] = *v
	}
	return out
}

// track registers a flow's sockets for Close to shut. It fails, closing
// them itself, when Close has begun.
func (f *forwarder) track(fl *flow) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		fl.close()
		return false
	}
	f.open[fl] = struct{}{}
	return true
}

func (f *forwarder) untrack(fl *flow) {
	f.mu.Lock()
	delete(f.open, fl)
	f.mu.Unlock()
	fl.close()
}

// close shuts both sockets. The deadline first: it wakes a goroutine
// blocked reading the gVisor side, which closing alone might not.
func (fl *flow) close() {
	fl.tunnel.SetDeadline(time.Now())
	fl.tunnel.Close()
	fl.host.Close()
}

// stop ends every flow and refuses new ones; wait then waits for their
// goroutines. Net.Close calls stop before it closes the stack and wait
// after.
func (f *forwarder) stop() {
	f.mu.Lock()
	f.closed = true
	open := f.open
	f.open = map[*flow]struct{}{}
	f.mu.Unlock()
	f.cancel()
	for fl := range open {
		fl.close()
	}
	for _, p := range []*pingForwarder{f.ping.Load(), f.ping6.Load()} {
		if p != nil {
			p.stop()
		}
	}
}

func (f *forwarder) wait() {
	f.wg.Wait()
	if f.poller != nil {
		f.poller.Close()
	}
}

// handleTCP runs in a goroutine gVisor's forwarder starts for each new
// connection request. Every path ends the request with Complete: with an
// RST when the flow is refused or the host dial fails.
func (f *forwarder) handleTCP(req *tcp.ForwarderRequest) {
	id := req.ID()
	peer, ok := f.acquire(id, "tcp")
	if !ok {
		req.Complete(true)
		return
	}
	relaying := false
	defer func() {
		if !relaying {
			f.release(peer)
		}
	}()
	dst, _ := f.hostDst(id)
	host, err := f.dialHost("tcp", dst)
	if err != nil {
		f.log.Debug("host dial failed", "network", "tcp", "peer", peer, "dst", dst, "err", err)
		req.Complete(true)
		return
	}
	var wq waiter.Queue
	ep, terr := req.CreateEndpoint(&wq)
	if terr != nil {
		// The peer gave up, or the handshake failed; it has its answer.
		req.Complete(true)
		host.Close()
		return
	}
	req.Complete(false)
	// Keepalives on the peer's side: a peer that vanishes (roams away,
	// is removed) sends no FIN, and without them its flows would hold
	// host sockets and its flow count until the host side closed. The
	// host side gets Go's default keepalives from net.Dialer.
	ep.SocketOptions().SetKeepAlive(true)
	idle, interval := tcpip.KeepaliveIdleOption(forwardKeepaliveIdle), tcpip.KeepaliveIntervalOption(forwardKeepaliveInterval)
	ep.SetSockOpt(&idle)
	ep.SetSockOpt(&interval)
	tunnel := newTCPConn(&wq, ep)
	fl := &flow{tunnel: tunnel, host: f.watch(host)}
	if !f.track(fl) {
		return
	}
	relaying = true
	if h, ok := fl.host.(relay.ReadNotifier); ok {
		// Both sides notify: an idle flow holds no goroutine and no
		// buffer, and this one, whose stack the host dial has grown,
		// ends.
		relay.Start(h, tunnel, &f.wg, nil, func() {
			f.untrack(fl)
			f.release(peer)
		})
		return
	}
	// Without a poller the relay gets a goroutine of its own, which
	// copies host to tunnel and holds no buffer while the host is
	// silent; the tunnel's bytes are copied by goroutines started only
	// when it has some (see relay.Both).
	go func() {
		defer f.release(peer)
		defer f.untrack(fl)
		relay.Both(fl.host, fl.tunnel, &f.wg)
	}()
}

// watch has the poller notify for a host socket, when there is a poller
// (Linux) and the socket has a descriptor; otherwise it returns host.
func (f *forwarder) watch(host net.Conn) net.Conn {
	if f.poller != nil {
		if w := f.poller.Watch(host); w != nil {
			return w
		}
	}
	return host
}

// startUDP runs in the packet path for the first datagram of a flow: it
// creates the gVisor endpoint, which takes that datagram and the flow's
// later ones, and starts the session's goroutine.
func (f *forwarder) startUDP(req *udp.ForwarderRequest) bool {
	id := req.ID()
	peer, ok := f.acquire(id, "udp")
	if !ok {
		return false
	}
	var wq waiter.Queue
	ep, terr := req.CreateEndpoint(&wq)
	if terr != nil {
		f.release(peer)
		return false
	}
	tunnel := newUDPConn(&wq, ep)
	go func() {
		dst, _ := f.hostDst(id)
		f.relayUDP(peer, dst, tunnel)
	}()
	return true
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
func (f *forwarder) dialHost(network string, dst netip.AddrPort) (net.Conn, error) {
	host, err := f.cfg.Dial(f.ctx, network, dst.String())
	if err != nil {
		return nil, err
	}
	if reachesHostItself(host) && !f.cfg.Egress.AllowsExplicitly(dst.Addr()) {
		host.Close()
		f.log.Debug("flow refused by egress policy: the destination is this host", "network", network, "dst", dst)
		return nil, errHostItself
	}
	return host, nil
}

// relayUDP dials the host side of a UDP flow and copies datagrams both
// ways until the flow has been idle for UDPIdleTimeout, then releases
// the flow. Idleness is watched by one timer per flow that rereads the
// last activity, so a datagram costs an atomic store and no timer or
// deadline change.
func (f *forwarder) relayUDP(peer protocol.PublicKey, dst netip.AddrPort, tunnel *UDPConn) {
	host, err := f.dialHost("udp", dst)
	if err != nil {
		f.log.Debug("host dial failed", "network", "udp", "peer", peer, "dst", dst, "err", err)
		tunnel.Close()
		f.release(peer)
		return
	}
	fl := &flow{tunnel: tunnel, host: f.watch(host)}
	if !f.track(fl) {
		f.release(peer)
		return
	}

	start := time.Now()
	var lastActive atomic.Int64 // since start
	idle := f.cfg.UDPIdleTimeout
	var expiry *time.Timer
	expiry = time.AfterFunc(idle, func() {
		if left := idle - (time.Since(start) - time.Duration(lastActive.Load())); left > 0 {
			expiry.Reset(left)
			return
		}
		fl.close()
	})
	moved := func() { lastActive.Store(int64(time.Since(start))) }
	end := func() {
		expiry.Stop()
		f.untrack(fl)
		f.release(peer)
	}
	if h, ok := fl.host.(relay.ReadNotifier); ok {
		// As for TCP: no goroutine while the flow idles.
		relay.Start(h, tunnel, &f.wg, moved, end)
		return
	}
	// Without a poller, this goroutine copies host to tunnel without a
	// buffer while the host is silent, and the tunnel's datagrams are
	// copied by goroutines started when it has some.
	relay.Datagrams(fl.host, tunnel, &f.wg, moved)
	end()
}
