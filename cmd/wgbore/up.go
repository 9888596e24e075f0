package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/membudget"
	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/netstack"
	"github.com/wgbore/wgbore/netstack/wgquick"
	"github.com/wgbore/wgbore/protocol/uapi"
	"github.com/wgbore/wgbore/proxy"
)

const upUsage = `Usage: wgbore up -c FILE [flags]

Brings up the WireGuard tunnel described by FILE (wg-quick or wireproxy
format) entirely in userspace, and serves its [Socks5], [http] and tunnel
sections until SIGINT or SIGTERM. On the first signal it stops accepting,
lets open connections finish for up to -grace, then exits 0; a second
signal exits at once.

SIGHUP, or wgbore reload, re-reads FILE and applies the difference:
peers and sections that did not change keep their connections; a file
with errors is refused and the running configuration stays.

Listeners whose BindAddress has no host (":1080") listen on 127.0.0.1.

Examples:
  wgbore up -c wg0.conf
  wgbore up -c wg0.conf -log-level debug -log-format json
  # wg0.conf with "[Socks5] BindAddress = 127.0.0.1:1080":
  curl --socks5-hostname 127.0.0.1:1080 http://10.0.0.2/
`

const (
	// defaultGrace is how long open connections get after a signal. A
	// supervisor usually waits 10 s before SIGKILL (Docker, systemd's
	// default is 90 s), so finishing inside that leaves a clean log.
	defaultGrace = 8 * time.Second
	// defaultHandshakeWait is how long `up` waits for the first
	// handshakes before logging its summary: just over one RekeyTimeout,
	// so a peer that drops the first initiation gets its retry counted.
	defaultHandshakeWait = 6 * time.Second
	// hostDialTimeout bounds dials to a server tunnel's host-side target.
	hostDialTimeout = 30 * time.Second
)

const serveUsage = `Usage: wgbore serve -c FILE [flags]

Runs the other end of the tunnel, without root: a WireGuard endpoint that
the peers in FILE connect to (give [Interface] a ListenPort), whose
netstack accepts their flows to any destination and opens real host
sockets for them, as far as the [Egress] policy allows. By default peers
may reach public unicast addresses only: never this host's loopback,
link-local, private or CGNAT ranges unless [Egress] Allow lists them.
Refused flows get a TCP reset or an ICMP unreachable at once.

An optional [DNSServer] section answers peers' DNS on our tunnel
addresses (its Record names locally, the rest through the host's
resolvers), so peers can use DNS = <our tunnel address>. The other
sections ([TCPServerTunnel], [Socks5], ...) work as in up. Signals,
-grace and exit codes are as in up.

Examples:
  wgbore serve -c server.conf
  # server.conf:
  #   [Interface]
  #   PrivateKey = ...
  #   Address = 10.0.0.1/24
  #   ListenPort = 51820
  #   [Peer]
  #   PublicKey = ...
  #   AllowedIPs = 10.0.0.2/32
  #   [Egress]
  #   Allow = 127.0.0.1/32      # let peers reach this host's loopback, at 10.0.0.1
  #   [DNSServer]
  #   Record = files.wg 10.0.0.1
`

func cmdUp(ctx context.Context, e *env, args []string) int {
	return runTunnel(ctx, e, args, "up", upUsage, false)
}

func cmdServe(ctx context.Context, e *env, args []string) int {
	return runTunnel(ctx, e, args, "serve", serveUsage, true)
}

// runTunnel is up and serve: they differ only in whether peers' flows
// are forwarded to the host.
func runTunnel(ctx context.Context, e *env, args []string, name, usage string, serveMode bool) int {
	fs := newFlagSet(e, name, usage)
	path := fs.String("c", "", "configuration `file` (wg-quick or wireproxy format); without it, the text of $WGBORE_CONFIG")
	grace := fs.Duration("grace", defaultGrace, "how long open connections may finish after SIGINT/SIGTERM")
	wait := fs.Duration("handshake-wait", defaultHandshakeWait, "how long to wait for the first handshakes before logging the start-up summary")
	ifname := fs.String("interface-name", "", "`name` of the UAPI socket, for wg show NAME (default: the config file's base name, or wgbore for $WGBORE_CONFIG)")
	metrics := fs.String("metrics", "", "`host:port` for /metrics, /healthz and /readyz, instead of [Metrics] BindAddress (no host means 127.0.0.1)")
	uapiDir := fs.String("uapi-dir", uapi.DefaultDir(), "`directory` of the UAPI socket (on Unix, wg looks only in "+uapi.SocketDir+")")
	uapiGroup := groupFlag(fs, "uapi-group", "`group` (name or GID) whose members may use the UAPI socket too: it is then 0660, not 0600")
	memoryLimit := fs.String("memory-limit", "", "memory `budget` of the process, such as 64MiB, instead of [Interface] MemoryLimit (default: the container's limit, if it has one)")
	var lf logFlags
	lf.register(fs)
	if code, done := parseFlags(e, fs, args); done {
		return code
	}
	if e.catchSignals != nil {
		e.catchSignals()
	}
	log, err := lf.logger(e.stderr)
	if err != nil {
		fmt.Fprintf(e.stderr, "wgbore %s: %v\n", name, err)
		return exitUsage
	}
	if !configGiven(e, name, path) {
		return exitUsage
	}
	cfg, ok := loadConfig(e, *path)
	if !ok {
		return exitUsage
	}
	p, err := plan(cfg, *path)
	if err != nil {
		printErrors(e, err)
		return exitUsage
	}
	p.serve = serveMode
	if *metrics != "" {
		if _, _, err := net.SplitHostPort(*metrics); err != nil {
			fmt.Fprintf(e.stderr, "wgbore %s: -metrics %s: want host:port\n", name, *metrics)
			return exitUsage
		}
		p.metrics = *metrics
	}
	if *memoryLimit != "" {
		b, err := config.ParseMemoryLimit(*memoryLimit)
		if err != nil {
			fmt.Fprintf(e.stderr, "wgbore %s: -memory-limit: %v\n", name, err)
			return exitUsage
		}
		p.memoryLimit = b
	}
	if !serveMode && cfg.Egress != nil {
		log.Warn(cfg.Egress.Pos.String() + ": [Egress] has no effect in up: only serve forwards peers' flows")
	}
	for _, w := range cfg.Warnings {
		log.Warn(w.String())
	}
	for _, w := range p.warnings {
		log.Warn(w)
	}

	svc, err := start(ctx, p, log, e)
	if err != nil {
		log.Error("cannot start", "err", err)
		return exitFailure
	}
	svc.grace = *grace
	svc.reread = func() (*config.Config, string, error) { return rereadConfig(e, *path) }
	svc.startUAPI(*uapiDir, interfaceName(*ifname, *path), uapiGroup)
	// The summary waits for handshakes beside the select below, so a
	// signal during that wait is answered at once.
	svc.startSummary(*wait)

	code := exitOK
running:
	for {
		select {
		case <-e.hangups:
			log.Info("SIGHUP: reloading the configuration")
			svc.reloadAndLog()
		case <-e.signals:
			log.Info("signal received: shutting down", "grace", *grace)
			break running
		case <-ctx.Done():
			log.Info("shutting down", "reason", context.Cause(ctx))
			break running
		case err := <-svc.failed:
			log.Error("a listener failed: shutting down", "err", err)
			code = exitFailure
			break running
		case err := <-svc.stdioDone:
			if err != nil {
				log.Error("stdio tunnel failed", "err", err)
				code = exitFailure
			}
			break running
		}
	}
	graceCtx, cancel := context.WithTimeout(context.Background(), *grace)
	go func() {
		select {
		case <-e.signals:
			log.Warn("second signal: closing open connections now")
			cancel()
		case <-graceCtx.Done():
		}
	}()
	svc.shutdown(graceCtx)
	cancel()
	log.Info("stopped")
	return code
}

// server is one running front end, as start and shutdown see it.
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

// service is everything `up` runs: the tunnel and its front ends.
type service struct {
	log        *slog.Logger
	tun        *netstack.Net
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
	// reloadMu serialises reloads with each other and with shutdown.
	reloadMu sync.Mutex
	// serveMode is wgbore serve, which a reload keeps.
	serveMode bool
	// reread loads the configuration again for a reload, returning it
	// and the path its messages name; nil when there is no file to
	// re-read.
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

// start opens the tunnel and every listener. Host listeners open before
// anything is served, so a port in use fails the start rather than
// leaving a half-working process.
func start(ctx context.Context, p *runPlan, log *slog.Logger, e *env) (*service, error) {
	cfg := p.cfg
	budget := newBudget(p, e.root, log)
	ncfg := wgquick.Tunnel(cfg)
	ncfg.Logger = log
	ncfg.ListenAddrs = p.listenAddrs
	ncfg.TCPBufferMax = budget.BufferMax(netstack.DefaultTCPBufferMax, minTCPBufferMax)
	tun, err := netstack.Open(ctx, ncfg)
	if err != nil {
		return nil, err
	}
	s := &service{
		log: log, tun: tun, cfg: cfg, budget: budget,
		hostDialer:  &net.Dialer{Timeout: hostDialTimeout},
		grace:       defaultGrace,
		serveMode:   p.serve,
		alive:       newAliveTracker(time.Now),
		metricsFlag: p.metrics,
		stopping:    make(chan struct{}),
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
	if p.serve {
		oc.Flows = tun.FlowCounts
	}
	s.observer = newObserver(oc)
	if err := s.startFrontEnds(p); err != nil {
		s.shutdown(context.Background())
		return nil, err
	}
	if err := s.startServeMode(p); err != nil {
		s.shutdown(context.Background())
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
			s.stdioDone <- proxy.ServeSTDIO(sctx, tun.DialContext, target, e.stdin, e.stdout)
		}()
	}
	return s, nil
}

// startAlive starts the CheckAlive pings of cfg, if it asks for any.
func (s *service) startAlive(cfg *config.Config) {
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
func (s *service) stopAlive() {
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
func (s *service) startFrontEnds(p *runPlan) error {
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
func (s *service) tunnelPorts(port int, listen func(netip.AddrPort) (netip.AddrPort, error)) error {
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
func (s *service) listenHost(fe *frontEnd, section, bind string) (net.Listener, error) {
	l, err := net.Listen("tcp", hostBindAddress(bind))
	if err != nil {
		return nil, fmt.Errorf("[%s] BindAddress %s: %w", section, bind, err)
	}
	fe.sockets = append(fe.sockets, l)
	return l, nil
}

// warnIfOpen warns, loudly, about a listener other machines can reach
// with no password: whoever finds it gets into the tunnel's network.
func (s *service) warnIfOpen(addr net.Addr, section string, authenticated bool) {
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
func (s *service) serve(fe *frontEnd, srv server, run func() error) {
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
func (s *service) listenerStats() []listenerStat {
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
func (s *service) addServer(srv server) {
	s.mu.Lock()
	s.servers = append(s.servers, srv)
	s.mu.Unlock()
}

// allServers lists the servers of the process and of every front end.
func (s *service) allServers() []server {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Clone(s.servers)
	for _, fe := range s.frontEnds {
		out = append(out, fe.servers...)
	}
	return out
}

// shutdown stops every front end, gracefully until ctx is done, then
// closes the tunnel.
func (s *service) shutdown(ctx context.Context) {
	close(s.stopping)
	// A reload in progress finishes first, so no front end starts
	// behind the shutdown's back.
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
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
