package netstack

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/udpbind"
	"github.com/wgbore/wgbore/protocol/wakeup"
)

// Config is what Open needs: our identity and tunnel addresses, the peers,
// and where the UDP socket listens.
type Config struct {
	PrivateKey protocol.PrivateKey
	// Addresses are our addresses inside the tunnel.
	Addresses []netip.Prefix
	// MTU of the tunnel; 0 means protocol.DefaultMTU.
	MTU int
	// ListenPort is the host UDP port; 0 picks one.
	ListenPort uint16
	// ListenAddrs restricts the host UDP socket to these addresses (tests
	// use loopback); empty means every address.
	ListenAddrs []netip.Addr
	Peers       []protocol.PeerConfig
	Logger      *slog.Logger
	Clock       clock.Clock
	// EndpointResolver looks up peers' endpoint hostnames, at start and
	// again while handshakes fail; nil means net.DefaultResolver. A
	// program that finds its peers its own way (service discovery, a
	// resolver of its choosing) passes it here.
	EndpointResolver protocol.Resolver

	// DNS are the name servers LookupHost and DialContext ask, through
	// the tunnel: wg-quick's DNS= IP entries.
	DNS []netip.Addr
	// DNSSearch are the search domains: wg-quick's DNS= non-IP entries.
	DNSSearch []string
	// Prefer is the IP version tried first when a name has addresses of
	// both; the zero value, PreferAuto, is IPv6 when we have an IPv6
	// address and IPv4 otherwise.
	Prefer Preference
	// TCPBufferMax is the most a TCP connection's send or receive buffer
	// may grow to; 0 means DefaultTCPBufferMax. A memory budget lowers
	// it, so that a few bulk transfers cannot take the whole budget.
	TCPBufferMax int
	// TCPSendShare, when above 0, is divided among the connections
	// writing at once: each writer's send buffer is set to its part, at
	// least DefaultTCPSendFloor (within TCPBufferMax) and at most
	// TCPBufferMax, so that where this host's CPU is what runs short,
	// bulk transfers get equal shares rather than the lead of whichever
	// grew first. A connection keeps the part of its last write, so it
	// bounds each connection, not their sum. A server with many clients
	// sets it (DefaultTCPSendShare); 0 lets each connection's buffer
	// grow with its window up to TCPBufferMax.
	TCPSendShare int

	// withoutOffloads turns link offloads off, for the benchmark that
	// weighs each one; the zero value keeps them all.
	withoutOffloads offloads
}

const nicID = 1

// Preference is the IP version that goes first when a name has addresses
// of both, as wireproxy's [Resolve] ResolveStrategy says.
type Preference int

const (
	// PreferAuto prefers IPv6 when we have an IPv6 address, so that a
	// tunnel with IPv4 addresses only never leads with an AAAA record it
	// cannot reach.
	PreferAuto Preference = iota
	PreferIPv4
	PreferIPv6
)

// Net is a network inside the WireGuard tunnel.
type Net struct {
	stack  *stack.Stack
	fins   *finPacer  // paces the tunnel's TCP half-closes
	share  *sendShare // nil unless Config.TCPSendShare is set
	engine *protocol.Engine
	link   *linkEndpoint
	dns    *resolver
	log    *slog.Logger
	prefer Preference

	// bind is the host sockets in use; Rebind replaces them, opening
	// new ones as listen says.
	bind     atomic.Pointer[udpbind.Bind]
	listen   udpbind.Config
	rebinder *rebinder

	// intercept is server mode, once Intercept turned it on; the stack's
	// TCP, UDP and ICMP handlers read it for every packet no endpoint
	// claims.
	intercept atomic.Pointer[interception]

	// services are the parts with goroutines (the interceptor, the
	// rebinder, what OnClose registered): Close stops them before the
	// stack and waits for their goroutines after it. What OnClose
	// registered has only a Close, which runs after the stack's.
	mu       sync.Mutex
	services []service
	closing  bool

	closeOnce sync.Once
}

// service is a part of Net with goroutines of its own.
type service interface {
	// stop ends the service's work and refuses more.
	stop()
	// wait returns once every goroutine of the service has returned.
	wait()
}

// addService registers s for Close, or fails when Close has begun.
func (n *Net) addService(s service) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closing {
		return net.ErrClosed
	}
	n.services = append(n.services, s)
	return nil
}

// OnClose registers c to be closed by the Net's Close, once the stack has
// closed, and waited for: a server built on the Net's sockets (a DNS
// server on our tunnel addresses) then stops with the Net and leaves no
// goroutine behind, whoever closes first. By then every socket of the
// Net has failed, so nothing c waits for can still be waiting on a peer.
// c's Close may be called again by its owner. OnClose fails once Close
// has begun.
func (n *Net) OnClose(c io.Closer) error {
	return n.addService(closerService{c})
}

// closerService is an io.Closer as a service: its Close both ends its
// work and waits for it, so it runs once the stack has closed.
type closerService struct{ c io.Closer }

func (closerService) stop()   {}
func (s closerService) wait() { s.c.Close() }

// Addresses are our addresses inside the tunnel, as Config gave them:
// where a server for the peers listens.
func (n *Net) Addresses() []netip.Addr {
	var out []netip.Addr
	for _, pa := range n.stack.AllAddresses()[nicID] {
		if a, ok := netip.AddrFromSlice(pa.AddressWithPrefix.Address.AsSlice()); ok {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// Open brings up the engine on a host UDP socket and a gVisor stack on top
// of it.
func Open(ctx context.Context, cfg Config) (*Net, error) {
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = protocol.DefaultMTU
	}
	n := &Net{listen: udpbind.Config{Port: cfg.ListenPort, Addrs: cfg.ListenAddrs}, log: cfg.Logger, prefer: cfg.Prefer}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	bind, err := udpbind.Listen(n.listen)
	if err != nil {
		return nil, fmt.Errorf("netstack: %w", err)
	}
	n.log.Debug("host UDP sockets open", "local", bind.LocalAddrs(), "path", bind.Path())
	n.bind.Store(bind)
	clk := cfg.Clock
	if clk == nil {
		clk = clock.System{}
	}
	n.rebinder = &rebinder{n: n, clock: clk, log: n.log}
	n.dns = newResolver(cfg.DNS, cfg.DNSSearch, n)
	// Loopback addresses are accepted from the tunnel: a peer's packets
	// are authenticated by cryptokey routing, and in server mode the
	// egress policy, not the IP layer, decides whether the host's
	// loopback may be reached (it may not, unless allowed). Without
	// server mode a packet to a loopback address finds no endpoint of
	// ours and is dropped all the same.
	s := stack.New(stack.Options{
		NetworkProtocols: []stack.NetworkProtocolFactory{
			ipv4.NewProtocolWithOptions(ipv4.Options{AllowExternalLoopbackTraffic: true}),
			ipv6.NewProtocolWithOptions(ipv6.Options{AllowExternalLoopbackTraffic: true}),
		},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		// No HandleLocal: see linkEndpoint.local.
		Clock: newPooledTimers(wakeup.PerCores()),
	})
	n.stack = s
	n.fins = newFINPacer(s.Clock(), finWindow)
	// Server mode's entry points, installed now because the stack reads
	// them without a lock; until Intercept they decline every packet,
	// which is what the stack does without a handler.
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, n.tcpPacket)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, n.udpPacket)
	s.SetTransportProtocolHandler(icmp.ProtocolNumber4, n.icmpPacket)
	s.SetTransportProtocolHandler(icmp.ProtocolNumber6, n.icmpPacket)
	bufferMax := cfg.TCPBufferMax
	if bufferMax <= 0 {
		bufferMax = DefaultTCPBufferMax
	}
	if err := tuneTCP(s, bufferMax); err != nil {
		s.Close()
		bind.Close()
		return nil, fmt.Errorf("netstack: %w", err)
	}
	if cfg.TCPSendShare > 0 {
		n.share = newSendShare(s.Clock(), cfg.TCPSendShare, DefaultTCPSendFloor, bufferMax)
	}

	n.link = newLinkEndpoint(mtu, nil)
	n.link.offloads &^= cfg.withoutOffloads
	if cfg.Clock != nil {
		n.link.clock = cfg.Clock
	}
	for _, p := range cfg.Addresses {
		n.link.local = append(n.link.local, tcpip.AddrFromSlice(p.Addr().Unmap().AsSlice()))
	}
	var local []netip.Addr
	for _, p := range cfg.Addresses {
		local = append(local, p.Addr())
	}
	eng, err := protocol.New(protocol.Config{
		PrivateKey: cfg.PrivateKey, Bind: bind, Packets: n.link, MTU: mtu, LocalAddresses: local,
		Logger: cfg.Logger, Clock: cfg.Clock, Resolver: cfg.EndpointResolver,
		BindFailed: n.rebinder.failed,
	})
	if err != nil {
		s.Close()
		bind.Close()
		return nil, fmt.Errorf("netstack: %w", err)
	}
	n.engine = eng
	n.link.engine = eng
	n.addService(n.rebinder)
	n.rebinder.arm()
	if err := s.CreateNIC(nicID, n.link); err != nil {
		n.Close()
		return nil, fmt.Errorf("netstack: create NIC: %s", err)
	}
	var has4, has6 bool
	for _, p := range cfg.Addresses {
		a := p.Addr().Unmap()
		proto := ipv4.ProtocolNumber
		if a.Is6() {
			proto = ipv6.ProtocolNumber
			has6 = true
		} else {
			has4 = true
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddressWithPrefix{
			Address: tcpip.AddrFromSlice(a.AsSlice()), PrefixLen: p.Bits()}}
		if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			n.Close()
			return nil, fmt.Errorf("netstack: address %v: %s", p, err)
		}
	}
	// Every destination goes to the engine; its AllowedIPs decide which
	// peer, if any, carries it.
	if has4 {
		s.AddRoute(tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: nicID})
	}
	if has6 {
		s.AddRoute(tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	}
	for _, pc := range cfg.Peers {
		if err := eng.SetPeer(pc); err != nil {
			n.Close()
			return nil, fmt.Errorf("netstack: %w", err)
		}
	}
	return n, nil
}

// Engine exposes the WireGuard engine, for peer changes and statistics.
func (n *Net) Engine() *protocol.Engine { return n.engine }

// Trim drops what the stack keeps after a burst has passed: the engine's
// idle packet buffers beyond a few, and the table of FINs recently sent,
// which only FINs would prune otherwise. A reclaim calls it just before a
// collection.
func (n *Net) Trim() {
	n.engine.Trim()
	n.link.fins.trim(n.link.clock)
}

// LocalPort is the host UDP port the engine listens on.
func (n *Net) LocalPort() uint16 { return n.bind.Load().Port() }

// Close stops the stack and the engine, and with them the interceptor
// (see Intercept) and what OnClose registered, and waits for their
// goroutines.
func (n *Net) Close() error {
	var err error
	n.closeOnce.Do(func() {
		n.mu.Lock()
		n.closing = true
		services := n.services
		n.mu.Unlock()
		for _, s := range services {
			s.stop()
		}
		n.fins.close()
		n.stack.Close()
		n.stack.Wait()
		for _, s := range services {
			s.wait()
		}
		// gVisor leaves the link endpoint open: what it holds back
		// would go out after the stack has closed (but for a flush
		// already under way, which the closing engine drops).
		n.link.delay.close()
		if n.engine != nil {
			err = n.engine.Close()
		} else {
			err = n.bind.Load().Close()
		}
	})
	return err
}

// TCP buffer bounds (the maximum is DefaultTCPBufferMax unless
// Config.TCPBufferMax says). gVisor allocates buffer memory as data
// queues, not up front, so an idle connection costs little whatever
// these say: its endpoint, sender and SACK scoreboard, port reservation
// and demuxer entry, and no buffer.
// Max is the per-connection bound that keeps 10,000 busy connections
// from costing gigabytes, and is also the largest window receive-buffer
// moderation may grow to, which caps one flow at Max per round trip.
const (
	tcpBufferMin     = 4 << 10
	tcpBufferDefault = 128 << 10
	// DefaultTCPBufferMax is Config.TCPBufferMax when unset.
	DefaultTCPBufferMax = 8 << 20
	// DefaultTCPSendShare is a Config.TCPSendShare for a server: what
	// a lone transfer gets, enough for a far peer; from five transfers
	// at once on, each has DefaultTCPSendFloor.
	DefaultTCPSendShare = 2 << 20
	// DefaultTCPSendFloor is the least TCPSendShare cuts a connection's
	// send buffer to however many write at once: a few round trips of
	// full segments on a fast local path.
	DefaultTCPSendFloor = 256 << 10
)

// tcpTimeWait is how long a connection we closed first stays in
// TIME_WAIT, keeping its endpoint, port and timers (several KiB each).
// Linux keeps 60 s, which after a burst of thousands of short
// connections holds tens of MB for a minute. 15 s, macOS's figure is 30,
// still outlasts any segment a tunnel can delay: the path is one
// WireGuard hop whose queues drain in milliseconds, and the timestamps
// both ends now exchange (PAWS) reject an old segment even so.
const tcpTimeWait = 15 * time.Second

// tuneTCP sets the stack's TCP options: those that make connections
// recover from loss and outages (recoveryOptions), a shorter TIME_WAIT,
// and auto-tuned buffers (receive-buffer moderation) within the bounds
// above, bufferMax being the maximum Open resolved.
func tuneTCP(s *stack.Stack, bufferMax int) error {
	bufferDefault := min(tcpBufferDefault, bufferMax)
	opts := append(recoveryOptions(), []tcpOption{
		{"TIME_WAIT", ptr(tcpip.TCPTimeWaitTimeoutOption(tcpTimeWait))},
		{"receive buffer moderation", ptr(tcpip.TCPModerateReceiveBufferOption(true))},
		{"receive buffer", &tcpip.TCPReceiveBufferSizeRangeOption{Min: tcpBufferMin, Default: bufferDefault, Max: bufferMax}},
		{"send buffer", &tcpip.TCPSendBufferSizeRangeOption{Min: tcpBufferMin, Default: bufferDefault, Max: bufferMax}},
	}...)
	for _, o := range opts {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, o.opt); err != nil {
			return fmt.Errorf("TCP %s: %s", o.name, err)
		}
	}
	return nil
}

// tcpOption is one of the stack's TCP options, named for its error.
type tcpOption struct {
	name string
	opt  tcpip.SettableTransportProtocolOption
}

func ptr[T any](v T) *T { return &v }
