package main

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/service"
	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/protocol/uapi"
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
	p, err := service.Check(cfg, *path)
	if err != nil {
		printErrors(e, err)
		return exitUsage
	}
	opts := service.Options{
		Logger: log, Serve: serveMode, Grace: *grace,
		Root: e.root, Stdin: e.stdin, Stdout: e.stdout,
		Reread: func() (*config.Config, string, error) { return rereadConfig(e, *path) },
	}
	if *metrics != "" {
		if _, _, err := net.SplitHostPort(*metrics); err != nil {
			fmt.Fprintf(e.stderr, "wgbore %s: -metrics %s: want host:port\n", name, *metrics)
			return exitUsage
		}
		opts.Metrics = *metrics
	}
	if *memoryLimit != "" {
		b, err := config.ParseMemoryLimit(*memoryLimit)
		if err != nil {
			fmt.Fprintf(e.stderr, "wgbore %s: -memory-limit: %v\n", name, err)
			return exitUsage
		}
		opts.MemoryLimit = b
	}
	if serveMode && e.maxProcs != nil && e.numCPU != nil {
		env, _ := e.lookup("GOMAXPROCS")
		cpus := e.numCPU()
		if n, ok := serveProcs(env, e.maxProcs(0), cpus, cpuQuota(e.root)); ok {
			e.maxProcs(n)
			log.Debug("Go processors: one more than the cores, so that a socket that becomes ready is read at once under load", "GOMAXPROCS", n, "cores", cpus)
		}
	}
	if !serveMode && cfg.Egress != nil {
		log.Warn(cfg.Egress.Pos.String() + ": [Egress] has no effect in up: only serve forwards peers' flows")
	}
	for _, w := range cfg.Warnings {
		log.Warn(w.String())
	}
	for _, w := range p.Warnings() {
		log.Warn(w)
	}

	svc, err := service.Start(ctx, p, opts)
	if err != nil {
		log.Error("cannot start", "err", err)
		return exitFailure
	}
	svc.StartUAPI(*uapiDir, interfaceName(*ifname, *path), uapiGroup.gid)
	// The summary waits for handshakes beside the select below, so a
	// signal during that wait is answered at once.
	svc.StartSummary(*wait)

	code := exitOK
running:
	for {
		select {
		case <-e.hangups:
			log.Info("SIGHUP: reloading the configuration")
			svc.ReloadAndLog()
		case <-e.signals:
			log.Info("signal received: shutting down", "grace", *grace)
			break running
		case <-ctx.Done():
			log.Info("shutting down", "reason", context.Cause(ctx))
			break running
		case err := <-svc.Failed():
			log.Error("a listener failed: shutting down", "err", err)
			code = exitFailure
			break running
		case err := <-svc.STDIODone():
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
	svc.Shutdown(graceCtx)
	cancel()
	log.Info("stopped")
	return code
}
