package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/membudget"
	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/netstack"
	"github.com/wgbore/wgbore/netstack/wgquick"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/proxy"
	"github.com/wgbore/wgbore/proxy/egress"
)

// hostDialTimeout bounds dials to a server tunnel's host-side target.
const hostDialTimeout = 30 * time.Second

// Options are how a plan runs: what the command line adds to the file,
// and the process's outside world, injected so that tests run a service
// with their own.
type Options struct {
	// Logger receives the service's log; nil discards it.
	Logger *slog.Logger
	// Serve forwards peers' flows to the host, under the [Egress]
	// policy (wgbore serve); a reload keeps it.
	Serve bool
	// ListenAddrs restricts the WireGuard UDP socket to these host
	// addresses (the demo keeps to loopback); empty means all.
	ListenAddrs []netip.Addr
	// Metrics is where /metrics, /healthz and /readyz listen instead of
	// [Metrics] BindAddress, across reloads too; "" leaves it to the
	// file.
	Metrics string
	// MemoryLimit is the process's memory budget in bytes, which beats
	// [Interface] MemoryLimit; 0 leaves it to the file or the container.
	MemoryLimit int64
	// Grace is how long connections of a front end that a reload removes
	// may finish, as they may at shutdown; 0 closes them at once.
	Grace time.Duration
	// Root is the host's file system, where the container's memory
	// limit is found; nil means none is found.
	Root fs.FS
	// Stdin and Stdout carry the [STDIOTunnel], if there is one.
	Stdin  io.Reader
	Stdout io.Writer
	// Reread loads the configuration again for a reload, returning it
	// and the path its messages name; nil refuses every reload.
	Reread func() (*config.Config, string, error)
}

// server is one running front end, as Start and Shutdown see it.
type server struct {
	desc string // "socks5 127.0.0.1:1080", for the summary
	// impl stops the server and counts its connections; nil for a line
	// of the summary with nothing of its own to stop (egress, a server
	// tunnel's further ports).
	impl proxy.Server
	// kind and addr label the connections impl counts in /metrics;
	// kind is empty for a server whose connections are not counted
	// (and always when impl is nil), which /metrics leaves out.
	kind, addr string
}

// uncounted adapts an HTTP server that counts no connections (the
// metrics endpoints, the demo page) to proxy.Server. Its server entry
// has no kind, so /metrics does not list it.
type uncounted struct{ *http.Server }

func (uncounted) Stats() proxy.ConnStats { return proxy.ConnStats{} }

// closeOnly adapts a server that has only an immediate stop (the UAPI
// socket, the DNS server) to proxy.Server: its graceful stop does
// nothing, so it keeps serving through the grace period, and it counts
// no connections.
type closeOnly func() error

func (closeOnly) Shutdown(context.Context) error { return nil }
func (c closeOnly) Close() error                 { return c() }
func (closeOnly) Stats() proxy.ConnStats         { return proxy.ConnStats{} }

// Service is a running tunnel and its front ends.
type Service struct {
	log *slog.Logger
	tun *netstack.Net
	// egress is server mode's, once started; /metrics reads its counts.
	egress     atomic.Pointer[egress.Server]
	hostDialer *net.Dialer
	// budget is the process's memory budget; nil for none.
	budget *membudget.Budget
	// reclaimStop ends the reclaimer that gives memory back after
	// bursts.
	reclaimStop context.CancelFunc
	// grace is how long connections of a front end that a reload removes
	// may finish, as at shutdown.
	grace time.Duration

	// mu guards cfg, servers and frontEnds, which a reload changes while
	// the summary, the metrics and the UAPI read them.
	mu  sync.Mutex
	cfg *config.Config
	// servers live as long as the process (UAPI, stdio, DNS);
	// frontEnds are the config's proxy and tunnel sections, which a
	// reload may stop and start.
	servers   []server
	frontEnds []*frontEnd
	// reloadSlot is held by the reload under way, or by Shutdown: it
	// serialises reloads with each other and with shutdown, and unlike
	// a mutex a reload can give up waiting for it once shutdown begins.
	reloadSlot chan struct{}
	// serveMode is wgbore serve, which a reload keeps.
	serveMode bool
	// reread is Options.Reread.
	reread func() (*config.Config, string, error)

	serving  sync.WaitGroup
	stopping chan struct{}
	// failed receives a Serve error that was not caused by shutdown.
	failed chan error
	// stdioDone receives the end of the STDIOTunnel, if there is one.
	stdioDone  chan error
	stdioClose context.CancelFunc
	// alive holds the CheckAlive results for /readyz and /metrics;
	// aliveStop and aliveDone end the pings, if there are any.
	alive *aliveTracker
	// observer answers /metrics, /healthz and /readyz; metricsFlag is
	// -metrics, which beats [Metrics] across reloads.
	observer    *observer
	metricsFlag string
	aliveMu     sync.Mutex
	aliveStop   context.CancelFunc
	aliveDone   chan struct{}
	// summarized is closed when the start-up summary has been logged or
	// abandoned; nil when none was started.
	summarized chan struct{}
}

// Start opens the tunnel and every listener of p. A listener that cannot
// open (a port in use) fails the start, and everything already opened is
// closed again, rather than leaving a half-working process.
func Start(ctx context.Context, p *Plan, o Options) (*Service, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	log := o.Logger
	cfg := p.cfg
	budget := newBudget(cfg, o)
	ncfg := wgquick.Tunnel(cfg)
	ncfg.Logger = log
	ncfg.ListenAddrs = o.ListenAddrs
	ncfg.TCPBufferMax = budget.BufferMax(netstack.DefaultTCPBufferMax, minTCPBufferMax)
	if o.Serve {
		// Many peers' downloads share this process's CPU: see
		// netstack.Config.TCPSendShare.
		ncfg.TCPSendShare = netstack.DefaultTCPSendShare
	}
	tun, err := netstack.Open(ctx, ncfg)
	if err != nil {
		return nil, err
	}
	s := &Service{
		log: log, tun: tun, cfg: cfg, budget: budget,
		hostDialer:  &net.Dialer{Timeout: hostDialTimeout},
		grace:       o.Grace,
		serveMode:   o.Serve,
		reread:      o.Reread,
		alive:       newAliveTracker(time.Now),
		metricsFlag: o.Metrics,
		stopping:    make(chan struct{}),
		reloadSlot:  make(chan struct{}, 1),
		failed:      make(chan error, 1),
		stdioDone:   make(chan error, 1),
	}
	oc := observerConfig{
		Peers:      tun.Engine().Peers,
		Stats:      tun.Engine().Stats,
		ResentAcks: tun.ResentAcks,
		Budget:     budget,
		Listeners:  s.listenerStats,
		Alive:      s.alive,
	}
	if o.Serve {
		oc.Flows = func() map[protocol.PublicKey]egress.FlowCounts { return s.egress.Load().FlowCounts() }
	}
	s.observer = newObserver(oc)
	if err := s.startFrontEnds(p); err != nil {
		s.Shutdown(context.Background())
		return nil, err
	}
	if err := s.startServeMode(p); err != nil {
		s.Shutdown(context.Background())
		return nil, err
	}
	s.startAlive(cfg)
	s.startReclaim()
	if len(cfg.STDIOTunnels) == 1 {
		target := cfg.STDIOTunnels[0].Target
		sctx, cancel := context.WithCancel(context.Background())
		s.stdioClose = cancel
		s.addServer(server{desc: "stdio →" + target})
		s.serving.Add(1)
		go func() {
			defer s.serving.Done()
			s.stdioDone <- proxy.ServeSTDIO(sctx, tun.DialContext, target, o.Stdin, o.Stdout)
		}()
	}
	return s, nil
}

// Failed receives the first error of a listener that stopped serving
// while nothing was stopping it: the process should then shut down, as
// it serves nobody there any more.
func (s *Service) Failed() <-chan error { return s.failed }

// STDIODone receives the end of the [STDIOTunnel], nil when its input
// ended cleanly; nothing is sent when there is none.
func (s *Service) STDIODone() <-chan error { return s.stdioDone }

// ListenAddr returns the address of the first server whose line of the
// start-up summary starts with prefix ("socks5 ", "http "), or "".
func (s *Service) ListenAddr(prefix string) string {
	for _, srv := range s.allServers() {
		if rest, ok := strings.CutPrefix(srv.desc, prefix); ok {
			return strings.Fields(rest)[0]
		}
	}
	return ""
}

// Peers reports the engine's peers.
func (s *Service) Peers() []protocol.PeerStatus { return s.tun.Engine().Peers() }

// ServeInTunnel serves h on addr inside the tunnel, as one of the
// service's own servers: Shutdown stops it, and Failed reports it if it
// stops on its own. desc is its line of the start-up summary. It is
// called before Shutdown, never during it.
func (s *Service) ServeInTunnel(addr netip.AddrPort, desc string, h http.Handler) error {
	l, err := s.tun.Listen("tcp", addr.String())
	if err != nil {
		return err
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: h}
	s.serve(nil, server{desc: desc, impl: uncounted{srv}}, func() error { return srv.Serve(l) })
	return nil
}

// startAlive starts the CheckAlive pings of cfg, if it asks for any.
func (s *Service) startAlive(cfg *config.Config) {
	if len(cfg.Interface.CheckAlive) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	s.aliveMu.Lock()
	s.aliveStop, s.aliveDone = cancel, done
	s.aliveMu.Unlock()
	s.serving.Go(func() {
		defer close(done)
		s.checkAlive(ctx, cfg.Interface.CheckAlive, cfg.Interface.CheckAliveInterval, s.alive)
	})
}

// stopAlive ends the CheckAlive pings and waits for them.
func (s *Service) stopAlive() {
	s.aliveMu.Lock()
	stop, done := s.aliveStop, s.aliveDone
	s.aliveStop, s.aliveDone = nil, nil
	s.aliveMu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

// startFrontEnds starts every proxy and tunnel section of the plan.
func (s *Service) startFrontEnds(p *Plan) error {
	for _, spec := range s.sections(p) {
		fe, err := s.startFrontEnd(spec)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.frontEnds = append(s.frontEnds, fe)
		s.mu.Unlock()
	}
	return nil
}

// tunnelPorts opens a server tunnel's port on each of our tunnel
// addresses, not on the unspecified address: in serve mode the netstack
// accepts flows to any destination, and a wildcard listener would catch
// a peer's flow to some other host's port of the same number. Port 0
// takes the port the first listener got for the rest.
func (s *Service) tunnelPorts(port int, listen func(netip.AddrPort) (netip.AddrPort, error)) error {
	if len(s.cfg.Interface.Addresses) == 0 {
		return errors.New("[Interface] has no Address to listen on")
	}
	p := uint16(port)
	for _, a := range s.cfg.Interface.Addresses {
		got, err := listen(netip.AddrPortFrom(a.Addr(), p))
		if err != nil {
			return err
		}
		p = got.Port()
	}
	return nil
}

// listenHost opens a front end's TCP listener on the host.
func (s *Service) listenHost(fe *frontEnd, section, bind string) (net.Listener, error) {
	l, err := net.Listen("tcp", hostBindAddress(bind))
	if err != nil {
		return nil, fmt.Errorf("[%s] BindAddress %s: %w", section, bind, err)
	}
	fe.sockets = append(fe.sockets, l)
	return l, nil
}

// warnIfOpen warns, loudly, about a listener other machines can reach
// with no password: whoever finds it gets into the tunnel's network.
func (s *Service) warnIfOpen(addr net.Addr, section string, authenticated bool) {
	if !isLoopback(addr) && !authenticated {
		s.log.Warn("LISTENING BEYOND LOOPBACK WITHOUT AUTHENTICATION: anyone who can reach this address can use the tunnel",
			"section", section, "addr", addr.String())
	}
}

// serve runs one server of a front end; fe is nil for the servers that
// live as long as the process. A Serve that returns while neither the
// service nor its front end is stopping is a failure of the whole
// process: a proxy that silently stopped listening would look up but
// serve nobody.
func (s *Service) serve(fe *frontEnd, srv server, run func() error) {
	desc := srv.desc
	var feStopping chan struct{}
	if fe != nil {
		fe.servers = append(fe.servers, srv)
		feStopping = fe.stopping
	} else {
		s.addServer(srv)
	}
	s.serving.Add(1)
	go func() {
		defer s.serving.Done()
		err := run()
		select {
		case <-s.stopping:
			return
		case <-feStopping:
			return
		default:
		}
		if err == nil {
			err = errors.New("stopped accepting")
		}
		select {
		case s.failed <- fmt.Errorf("%s: %w", desc, err):
		default:
		}
	}()
}

// listenerStats counts the connections of every front end, for
// /metrics.
func (s *Service) listenerStats() []listenerStat {
	var out []listenerStat
	for _, srv := range s.allServers() {
		if srv.kind != "" {
			out = append(out, listenerStat{Kind: srv.kind, Addr: srv.addr, ConnStats: srv.impl.Stats()})
		}
	}
	return out
}

// addServer records one of the process's own servers. The reclaimer and
// /metrics list them while others are still being added.
func (s *Service) addServer(srv server) {
	s.mu.Lock()
	s.servers = append(s.servers, srv)
	s.mu.Unlock()
}

// allServers lists the servers of the process and of every front end.
func (s *Service) allServers() []server {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Clone(s.servers)
	for _, fe := range s.frontEnds {
		out = append(out, fe.servers...)
	}
	return out
}

// Shutdown stops every front end, gracefully until ctx is done, then
// closes the tunnel. It is called once.
func (s *Service) Shutdown(ctx context.Context) {
	close(s.stopping)
	// A reload in progress finishes first, so no front end starts
	// behind the shutdown's back; one asked for later gives up.
	s.reloadSlot <- struct{}{}
	defer func() { <-s.reloadSlot }()
	servers := s.allServers()
	shutdownServers(ctx, s.log, servers)
	if s.summarized != nil {
		// It reads the engine: let it go before the tunnel closes.
		<-s.summarized
	}
	closeServers(servers)
	if s.stdioClose != nil {
		s.stdioClose()
	}
	s.stopAlive()
	if s.reclaimStop != nil {
		s.reclaimStop()
	}
	s.tun.Close()
	s.serving.Wait()
}
