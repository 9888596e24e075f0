package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/netstack"
	"github.com/wgbore/wgbore/protocol/uapi"
	"github.com/wgbore/wgbore/proxy"
)

const upUsage = `Usage: wgbore up -c FILE [flags]

Brings up the WireGuard tunnel described by FILE (wg-quick or wireproxy
format) entirely in userspace, and serves its [Socks5], [http] and tunnel
sections until SIGINT or SIGTERM. On the first signal it stops accepting,
lets open connections finish for up to -grace, then exits 0; a second
signal exits at once.

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
  #   Allow = 127.0.0.1/32      # let peers reach this host's loopback too
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
	path := fs.String("c", "", "configuration `file` (wg-quick or wireproxy format)")
	grace := fs.Duration("grace", defaultGrace, "how long open connections may finish after SIGINT/SIGTERM")
	wait := fs.Duration("handshake-wait", defaultHandshakeWait, "how long to wait for the first handshakes before logging the start-up summary")
	ifname := fs.String("interface-name", "", "`name` of the UAPI socket, for wg show NAME (default: the config file's base name)")
	uapiDir := fs.String("uapi-dir", uapi.SocketDir, "`directory` of the UAPI socket; wg looks only in "+uapi.SocketDir)
	uapiGroup := groupFlag(fs, "uapi-group", "`group` (name or GID) whose members may use the UAPI socket too: it is then 0660, not 0600")
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
	svc.startUAPI(*uapiDir, interfaceName(*ifname, *path), uapiGroup)
	// The summary waits for handshakes beside the select below, so a
	// signal during that wait is answered at once.
	svc.startSummary(*wait)

	code := exitOK
	select {
	case <-e.signals:
		log.Info("signal received: shutting down", "grace", *grace)
	case <-ctx.Done():
		log.Info("shutting down", "reason", context.Cause(ctx))
	case err := <-svc.failed:
		log.Error("a listener failed: shutting down", "err", err)
		code = exitFailure
	case err := <-svc.stdioDone:
		if err != nil {
			log.Error("stdio tunnel failed", "err", err)
			code = exitFailure
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
	desc     string // "socks5 127.0.0.1:1080", for the summary
	shutdown func(context.Context) error
	close    func() error
}

// service is everything `up` runs: the tunnel and its front ends.
type service struct {
	log     *slog.Logger
	tun     *netstack.Net
	cfg     *config.Config
	servers []server

	serving  sync.WaitGroup
	stopping chan struct{}
	// failed receives a Serve error that was not caused by shutdown.
	failed chan error
	// stdioDone receives the end of the STDIOTunnel, if there is one.
	stdioDone  chan error
	stdioClose context.CancelFunc
	// stopCheckAlive ends the CheckAlive pings, if there are any.
	stopCheckAlive context.CancelFunc
	// summarized is closed when the start-up summary has been logged or
	// abandoned; nil when none was started.
	summarized chan struct{}
}

// start opens the tunnel and every listener. Host listeners open before
// anything is served, so a port in use fails the start rather than
// leaving a half-working process.
func start(ctx context.Context, p *runPlan, log *slog.Logger, e *env) (*service, error) {
	cfg := p.cfg
	ncfg := netstack.FromConfig(cfg)
	ncfg.Logger = log
	ncfg.ListenAddrs = p.listenAddrs
	tun, err := netstack.Open(ctx, ncfg)
	if err != nil {
		return nil, err
	}
	s := &service{
		log: log, tun: tun, cfg: cfg,
		stopping:  make(chan struct{}),
		failed:    make(chan error, 1),
		stdioDone: make(chan error, 1),
	}
	if err := s.startServers(p); err != nil {
		s.shutdown(context.Background())
		return nil, err
	}
	if err := s.startServeMode(p); err != nil {
		s.shutdown(context.Background())
		return nil, err
	}
	if len(cfg.Interface.CheckAlive) > 0 {
		actx, cancel := context.WithCancel(context.Background())
		s.stopCheckAlive = cancel
		s.serving.Add(1)
		go func() {
			defer s.serving.Done()
			s.checkAlive(actx, cfg.Interface.CheckAlive, cfg.Interface.CheckAliveInterval)
		}()
	}
	if len(cfg.STDIOTunnels) == 1 {
		target := cfg.STDIOTunnels[0].Target
		sctx, cancel := context.WithCancel(context.Background())
		s.stdioClose = cancel
		s.servers = append(s.servers, server{desc: "stdio →" + target})
		s.serving.Add(1)
		go func() {
			defer s.serving.Done()
			s.stdioDone <- proxy.ServeSTDIO(sctx, tun.DialContext, target, e.stdin, e.stdout)
		}()
	}
	return s, nil
}

func (s *service) startServers(p *runPlan) error {
	cfg := p.cfg
	hostDialer := &net.Dialer{Timeout: hostDialTimeout}
	for _, c := range cfg.Socks5 {
		l, err := s.listenHost("socks5", c.BindAddress)
		if err != nil {
			return err
		}
		s.warnIfOpen(l.Addr(), "socks5", c.Username != "")
		srv := proxy.NewSOCKS5(s.tun, proxy.SOCKS5Config{
			Username: c.Username, Password: string(c.Password),
			MaxConnections: c.MaxConnections, Logger: s.log.With("socks5", l.Addr().String()),
		})
		s.serve("socks5 "+l.Addr().String(), func() error { return srv.Serve(l) }, srv.Shutdown, srv.Close)
	}
	for i, c := range cfg.HTTP {
		l, err := s.listenHost("http", c.BindAddress)
		if err != nil {
			return err
		}
		s.warnIfOpen(l.Addr(), "http", c.Username != "")
		kind := "http"
		if p.httpTLS[i] != nil {
			kind = "https"
		}
		srv := proxy.NewHTTP(s.tun, proxy.HTTPConfig{
			Username: c.Username, Password: string(c.Password), TLS: p.httpTLS[i],
			MaxConnections: c.MaxConnections, Logger: s.log.With(kind, l.Addr().String()),
		})
		s.serve(kind+" "+l.Addr().String(), func() error { return srv.Serve(l) }, srv.Shutdown, srv.Close)
	}
	for _, c := range cfg.TCPClientTunnels {
		l, err := s.listenHost("TCPClientTunnel", c.BindAddress)
		if err != nil {
			return err
		}
		s.warnIfOpen(l.Addr(), "TCPClientTunnel", false)
		f := proxy.NewTCPForwarder(s.tun.DialContext, c.Target, proxy.ForwardConfig{
			MaxConnections: c.MaxConnections, IdleTimeout: c.IdleTimeout, Logger: s.log.With("tcp_client_tunnel", l.Addr().String()),
		})
		s.serve(fmt.Sprintf("tcp %s→tunnel %s", l.Addr(), c.Target), func() error { return f.Serve(l) }, f.Shutdown, f.Close)
	}
	for _, c := range cfg.TCPServerTunnels {
		var ls []net.Listener
		err := s.tunnelPorts(c.ListenPort, func(ap netip.AddrPort) (netip.AddrPort, error) {
			l, err := s.tun.Listen("tcp", ap.String())
			if err != nil {
				return netip.AddrPort{}, err
			}
			ls = append(ls, l)
			return l.Addr().(*net.TCPAddr).AddrPort(), nil
		})
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return fmt.Errorf("%s: [TCPServerTunnel]: listen in the tunnel: %w", c.Pos, err)
		}
		f := proxy.NewTCPForwarder(hostDialer.DialContext, c.Target, proxy.ForwardConfig{
			MaxConnections: c.MaxConnections, IdleTimeout: c.IdleTimeout, Logger: s.log.With("tcp_server_tunnel", ls[0].Addr().String()),
		})
		for i, l := range ls {
			shutdown, closeFn := f.Shutdown, f.Close
			if i > 0 { // one forwarder, stopped once
				shutdown, closeFn = nil, nil
			}
			s.serve(fmt.Sprintf("tunnel tcp %s→%s", l.Addr(), c.Target), func() error { return f.Serve(l) }, shutdown, closeFn)
		}
	}
	for _, c := range cfg.UDPProxyTunnels {
		pc, err := net.ListenPacket("udp", hostBindAddress(c.BindAddress))
		if err != nil {
			return fmt.Errorf("UDPProxyTunnel: %w", err)
		}
		s.warnIfOpen(pc.LocalAddr(), "UDPProxyTunnel", false)
		f := proxy.NewUDPForwarder(s.tun.DialContext, c.Target, proxy.UDPForwardConfig{
			InactivityTimeout: c.InactivityTimeout, Logger: s.log.With("udp_proxy_tunnel", pc.LocalAddr().String()),
		})
		s.serve(fmt.Sprintf("udp %s→tunnel %s", pc.LocalAddr(), c.Target), func() error { return f.Serve(pc) }, f.Shutdown, f.Close)
	}
	for _, c := range cfg.UDPServerTunnels {
		var pcs []net.PacketConn
		err := s.tunnelPorts(c.ListenPort, func(ap netip.AddrPort) (netip.AddrPort, error) {
			pc, err := s.tun.ListenPacket("udp", ap.String())
			if err != nil {
				return netip.AddrPort{}, err
			}
			pcs = append(pcs, pc)
			return pc.LocalAddr().(*net.UDPAddr).AddrPort(), nil
		})
		if err != nil {
			for _, pc := range pcs {
				pc.Close()
			}
			return fmt.Errorf("%s: [UDPServerTunnel]: listen in the tunnel: %w", c.Pos, err)
		}
		f := proxy.NewUDPForwarder(hostDialer.DialContext, c.Target, proxy.UDPForwardConfig{
			InactivityTimeout: c.InactivityTimeout, Logger: s.log.With("udp_server_tunnel", pcs[0].LocalAddr().String()),
		})
		for i, pc := range pcs {
			shutdown, closeFn := f.Shutdown, f.Close
			if i > 0 {
				shutdown, closeFn = nil, nil
			}
			s.serve(fmt.Sprintf("tunnel udp %s→%s", pc.LocalAddr(), c.Target), func() error { return f.Serve(pc) }, shutdown, closeFn)
		}
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

func (s *service) listenHost(section, bind string) (net.Listener, error) {
	l, err := net.Listen("tcp", hostBindAddress(bind))
	if err != nil {
		return nil, fmt.Errorf("[%s] BindAddress %s: %w", section, bind, err)
	}
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

// serve runs one front end. A Serve that returns while the service is not
// stopping is a failure of the whole process: a proxy that silently
// stopped listening would look up but serve nobody.
func (s *service) serve(desc string, run func() error, shutdown func(context.Context) error, closeFn func() error) {
	s.servers = append(s.servers, server{desc: desc, shutdown: shutdown, close: closeFn})
	s.serving.Add(1)
	go func() {
		defer s.serving.Done()
		err := run()
		select {
		case <-s.stopping:
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

// shutdown stops every front end, gracefully until ctx is done, then
// closes the tunnel.
func (s *service) shutdown(ctx context.Context) {
	close(s.stopping)
	var wg sync.WaitGroup
	for _, srv := range s.servers {
		if srv.shutdown == nil {
			continue
		}
		wg.Go(func() {
			if err := srv.shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				s.log.Debug("shutdown", "server", srv.desc, "err", err)
			}
		})
	}
	wg.Wait()
	if s.summarized != nil {
		// It reads the engine: let it go before the tunnel closes.
		<-s.summarized
	}
	for _, srv := range s.servers {
		if srv.close != nil {
			srv.close()
		}
	}
	if s.stdioClose != nil {
		s.stdioClose()
	}
	if s.stopCheckAlive != nil {
		s.stopCheckAlive()
	}
	s.tun.Close()
	s.serving.Wait()
}
