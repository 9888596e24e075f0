package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"sync"
	"time"

	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/proxy"
)

// frontEnd is what one proxy or tunnel section of the config runs: its
// sockets and the servers on them. A reload compares sections, not
// sockets, so a front end is started and stopped as a whole.
type frontEnd struct {
	// kind is the section's name as the config writes it ("Socks5").
	kind string
	// section is the section as parsed, with its position cleared, plus
	// whatever else its servers were built from (an HTTPS certificate):
	// two front ends are the same exactly when these are equal.
	section any
	servers []server
	// sockets are closed first when the front end stops, so that a
	// section replacing it on the same address can bind at once while
	// the old connections drain.
	sockets []io.Closer
	// stopping is closed when the front end is being stopped on purpose:
	// its Serve calls then return without failing the process.
	stopping chan struct{}
}

// sectionSpec is one section of a plan, not yet started.
type sectionSpec struct {
	kind    string
	section any
	start   func(fe *frontEnd) error
}

// sameSection reports whether a running front end serves exactly what
// spec describes.
func (fe *frontEnd) sameSection(spec sectionSpec) bool {
	return fe.kind == spec.kind && reflect.DeepEqual(fe.section, spec.section)
}

// withoutPos returns a copy of the section struct v with its Pos field
// cleared: where a section sits in the file is not what it says, and a
// reload of a file with a line inserted above must keep it running.
func withoutPos(v any) any {
	rv := reflect.ValueOf(v)
	c := reflect.New(rv.Type()).Elem()
	c.Set(rv)
	if f := c.FieldByName("Pos"); f.IsValid() {
		f.SetZero()
	}
	return c.Interface()
}

// sections lists the front ends a plan asks for, in the order the
// start-up summary lists them.
func (s *service) sections(p *runPlan) []sectionSpec {
	cfg := p.cfg
	var out []sectionSpec
	for _, c := range cfg.Socks5 {
		out = append(out, sectionSpec{"Socks5", withoutPos(c), func(fe *frontEnd) error {
			l, err := s.listenHost(fe, "socks5", c.BindAddress)
			if err != nil {
				return err
			}
			s.warnIfOpen(l.Addr(), "socks5", c.Username != "")
			srv := proxy.NewSOCKS5(s.tun, proxy.SOCKS5Config{
				Username: c.Username, Password: string(c.Password),
				MaxConnections: s.maxConnections(c.MaxConnections), Admit: s.admit(), DialTimeout: c.DialTimeout, Logger: s.log.With("socks5", l.Addr().String()),
			})
			s.serve(fe, server{desc: "socks5 " + l.Addr().String(), shutdown: srv.Shutdown, close: srv.Close,
				kind: "socks5", addr: l.Addr().String(), stats: srv.Stats}, func() error { return srv.Serve(l) })
			return nil
		}})
	}
	for i, c := range cfg.HTTP {
		tlsConf := p.httpTLS[i]
		kind := "http"
		// The certificate is part of what the section serves, so that a
		// reload after renewing it restarts the listener.
		var cert [][]byte
		if tlsConf != nil {
			kind = "https"
			cert = tlsConf.Certificates[0].Certificate
		}
		key := struct {
			Section any
			Cert    [][]byte
		}{withoutPos(c), cert}
		out = append(out, sectionSpec{"http", key, func(fe *frontEnd) error {
			l, err := s.listenHost(fe, "http", c.BindAddress)
			if err != nil {
				return err
			}
			s.warnIfOpen(l.Addr(), "http", c.Username != "")
			srv := proxy.NewHTTP(s.tun, proxy.HTTPConfig{
				Username: c.Username, Password: string(c.Password), TLS: tlsConf,
				MaxConnections: s.maxConnections(c.MaxConnections), Admit: s.admit(), DialTimeout: c.DialTimeout, Logger: s.log.With(kind, l.Addr().String()),
			})
			s.serve(fe, server{desc: kind + " " + l.Addr().String(), shutdown: srv.Shutdown, close: srv.Close,
				kind: kind, addr: l.Addr().String(), stats: srv.Stats}, func() error { return srv.Serve(l) })
			return nil
		}})
	}
	for _, c := range cfg.TCPClientTunnels {
		out = append(out, sectionSpec{"TCPClientTunnel", withoutPos(c), func(fe *frontEnd) error {
			l, err := s.listenHost(fe, "TCPClientTunnel", c.BindAddress)
			if err != nil {
				return err
			}
			s.warnIfOpen(l.Addr(), "TCPClientTunnel", false)
			f := proxy.NewTCPForwarder(s.tun.DialContext, c.Target, proxy.ForwardConfig{
				MaxConnections: s.maxConnections(c.MaxConnections), Admit: s.admit(), IdleTimeout: c.IdleTimeout, Logger: s.log.With("tcp_client_tunnel", l.Addr().String()),
			})
			s.serve(fe, server{desc: fmt.Sprintf("tcp %s→tunnel %s", l.Addr(), c.Target), shutdown: f.Shutdown, close: f.Close,
				kind: "tcp_client_tunnel", addr: l.Addr().String(), stats: f.Stats}, func() error { return f.Serve(l) })
			return nil
		}})
	}
	for _, c := range cfg.TCPServerTunnels {
		out = append(out, sectionSpec{"TCPServerTunnel", withoutPos(c), func(fe *frontEnd) error {
			var ls []net.Listener
			err := s.tunnelPorts(c.ListenPort, func(ap netip.AddrPort) (netip.AddrPort, error) {
				l, err := s.tun.Listen("tcp", ap.String())
				if err != nil {
					return netip.AddrPort{}, err
				}
				ls = append(ls, l)
				fe.sockets = append(fe.sockets, l)
				return l.Addr().(*net.TCPAddr).AddrPort(), nil
			})
			if err != nil {
				return fmt.Errorf("%s: [TCPServerTunnel]: listen in the tunnel: %w", c.Pos, err)
			}
			f := proxy.NewTCPForwarder(s.hostDialer.DialContext, c.Target, proxy.ForwardConfig{
				MaxConnections: s.maxConnections(c.MaxConnections), Admit: s.admit(), IdleTimeout: c.IdleTimeout, Logger: s.log.With("tcp_server_tunnel", ls[0].Addr().String()),
			})
			for i, l := range ls {
				srv := server{desc: fmt.Sprintf("tunnel tcp %s→%s", l.Addr(), c.Target)}
				if i == 0 { // one forwarder, stopped and counted once
					srv.shutdown, srv.close = f.Shutdown, f.Close
					srv.kind, srv.addr, srv.stats = "tcp_server_tunnel", l.Addr().String(), f.Stats
				}
				s.serve(fe, srv, func() error { return f.Serve(l) })
			}
			return nil
		}})
	}
	for _, c := range cfg.UDPProxyTunnels {
		out = append(out, sectionSpec{"UDPProxyTunnel", withoutPos(c), func(fe *frontEnd) error {
			pc, err := net.ListenPacket("udp", hostBindAddress(c.BindAddress))
			if err != nil {
				return fmt.Errorf("[UDPProxyTunnel] BindAddress %s: %w", c.BindAddress, err)
			}
			fe.sockets = append(fe.sockets, pc)
			s.warnIfOpen(pc.LocalAddr(), "UDPProxyTunnel", false)
			f := proxy.NewUDPForwarder(s.tun.DialContext, c.Target, proxy.UDPForwardConfig{
				InactivityTimeout: c.InactivityTimeout, Logger: s.log.With("udp_proxy_tunnel", pc.LocalAddr().String()),
			})
			s.serve(fe, server{desc: fmt.Sprintf("udp %s→tunnel %s", pc.LocalAddr(), c.Target), shutdown: f.Shutdown, close: f.Close,
				kind: "udp_proxy_tunnel", addr: pc.LocalAddr().String(), stats: f.Stats}, func() error { return f.Serve(pc) })
			return nil
		}})
	}
	for _, c := range cfg.UDPServerTunnels {
		out = append(out, sectionSpec{"UDPServerTunnel", withoutPos(c), func(fe *frontEnd) error {
			var pcs []net.PacketConn
			err := s.tunnelPorts(c.ListenPort, func(ap netip.AddrPort) (netip.AddrPort, error) {
				pc, err := s.tun.ListenPacket("udp", ap.String())
				if err != nil {
					return netip.AddrPort{}, err
				}
				pcs = append(pcs, pc)
				fe.sockets = append(fe.sockets, pc)
				return pc.LocalAddr().(*net.UDPAddr).AddrPort(), nil
			})
			if err != nil {
				return fmt.Errorf("%s: [UDPServerTunnel]: listen in the tunnel: %w", c.Pos, err)
			}
			f := proxy.NewUDPForwarder(s.hostDialer.DialContext, c.Target, proxy.UDPForwardConfig{
				InactivityTimeout: c.InactivityTimeout, Logger: s.log.With("udp_server_tunnel", pcs[0].LocalAddr().String()),
			})
			for i, pc := range pcs {
				srv := server{desc: fmt.Sprintf("tunnel udp %s→%s", pc.LocalAddr(), c.Target)}
				if i == 0 {
					srv.shutdown, srv.close = f.Shutdown, f.Close
					srv.kind, srv.addr, srv.stats = "udp_server_tunnel", pc.LocalAddr().String(), f.Stats
				}
				s.serve(fe, srv, func() error { return f.Serve(pc) })
			}
			return nil
		}})
	}
	if addr := s.metricsAddr(cfg); addr != "" {
		out = append(out, sectionSpec{"Metrics", addr, func(fe *frontEnd) error {
			l, err := s.listenHost(fe, "Metrics", addr)
			if err != nil {
				return err
			}
			srv := &http.Server{Handler: s.observer.Handler(), ReadHeaderTimeout: metricsHeaderTimeout, IdleTimeout: metricsIdleTimeout, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
			s.serve(fe, server{desc: "metrics http://" + l.Addr().String() + "/metrics", shutdown: srv.Shutdown, close: srv.Close},
				func() error { return srv.Serve(l) })
			return nil
		}})
	}
	return out
}

// metricsHeaderTimeout bounds a scrape's request headers: a probe or a
// Prometheus sends them at once, and a client that trickles them must
// not hold a connection.
const metricsHeaderTimeout = 10 * time.Second

// metricsIdleTimeout ends a keep-alive connection no scrape has used for
// this long. Prometheus scrapes every 15 to 60 s over one connection;
// without a bound, every client that leaves one open keeps a descriptor
// and a goroutine for the life of the process (a test that made a client
// per request held 300 of them).
const metricsIdleTimeout = 2 * time.Minute

// metricsAddr is where /metrics, /healthz and /readyz listen: -metrics,
// or else [Metrics] BindAddress; "" for nowhere.
func (s *service) metricsAddr(cfg *config.Config) string {
	if s.metricsFlag != "" {
		return hostBindAddress(s.metricsFlag)
	}
	if cfg.Metrics != nil {
		return hostBindAddress(cfg.Metrics.BindAddress)
	}
	return ""
}

// startFrontEnd starts one section. On failure whatever it had opened
// is closed again, so a reload that cannot bind leaves nothing behind.
func (s *service) startFrontEnd(spec sectionSpec) (*frontEnd, error) {
	fe := &frontEnd{kind: spec.kind, section: spec.section, stopping: make(chan struct{})}
	if err := spec.start(fe); err != nil {
		s.closeFrontEnd(fe)
		return nil, err
	}
	return fe, nil
}

// closeFrontEnd ends a front end at once, connections and all.
func (s *service) closeFrontEnd(fe *frontEnd) {
	fe.closeSockets()
	closeServers(fe.servers)
}

// stopFrontEnd stops a front end that a reload removed: its sockets
// close now, and its open connections get the grace period to finish,
// in the background, as at shutdown.
func (s *service) stopFrontEnd(fe *frontEnd) {
	fe.closeSockets()
	s.serving.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.grace)
		defer cancel()
		shutdownServers(ctx, s.log, fe.servers)
		closeServers(fe.servers)
	})
}

// closeSockets marks the front end as stopping on purpose, so its Serve
// calls return without failing the process, and closes its sockets.
func (fe *frontEnd) closeSockets() {
	close(fe.stopping)
	for _, c := range fe.sockets {
		c.Close()
	}
}

func closeServers(servers []server) {
	for _, srv := range servers {
		if srv.close != nil {
			srv.close()
		}
	}
}

// shutdownServers runs every server's graceful shutdown at once and
// waits for them, or for ctx.
func shutdownServers(ctx context.Context, log *slog.Logger, servers []server) {
	var wg sync.WaitGroup
	for _, srv := range servers {
		if srv.shutdown == nil {
			continue
		}
		wg.Go(func() {
			if err := srv.shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				log.Debug("shutdown", "server", srv.desc, "err", err)
			}
		})
	}
	wg.Wait()
}
