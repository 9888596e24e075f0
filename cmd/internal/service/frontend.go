package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
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
	// section is what its servers were built from: the section as
	// parsed, plus whatever else they serve (an HTTPS certificate).
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
	// same reports whether a running front end's section says what this
	// one says.
	same  func(running any) bool
	start func(fe *frontEnd) error
}

// specOf makes the spec of a section whose type says, with its Equal
// method, when two of its sections say the same: where a section sits
// in the file does not count, so a reload of a file with a line
// inserted above keeps it running.
func specOf[T interface{ Equal(T) bool }](kind string, section T, start func(fe *frontEnd) error) sectionSpec {
	same := func(running any) bool {
		r, ok := running.(T)
		return ok && section.Equal(r)
	}
	return sectionSpec{kind: kind, section: section, same: same, start: start}
}

// sameSection reports whether a running front end serves exactly what
// spec describes.
func (fe *frontEnd) sameSection(spec sectionSpec) bool {
	return fe.kind == spec.kind && spec.same(fe.section)
}

// httpSection is an [http] section with the certificate chain it serves
// (none for plain HTTP). The chain is part of what it serves, so that a
// reload after renewing the certificate in the same files restarts the
// listener.
type httpSection struct {
	section config.HTTP
	cert    [][]byte
}

// Equal reports whether two [http] sections say the same and serve the
// same certificate chain.
func (h httpSection) Equal(o httpSection) bool {
	return h.section.Equal(o.section) && slices.EqualFunc(h.cert, o.cert, bytes.Equal)
}

// metricsSection is where the metrics endpoints listen, from -metrics or
// [Metrics]: all a reload compares of them.
type metricsSection string

// Equal reports whether the endpoints listen at the same address.
func (a metricsSection) Equal(o metricsSection) bool { return a == o }

// sections lists the front ends a plan asks for, in the order the
// start-up summary lists them.
func (s *Service) sections(p *Plan) []sectionSpec {
	cfg := p.cfg
	var out []sectionSpec
	for _, c := range cfg.Socks5 {
		out = append(out, specOf("Socks5", c, func(fe *frontEnd) error {
			l, err := s.listenClients(fe, "socks5", c.BindAddress, c.Username != "")
			if err != nil {
				return err
			}
			srv := proxy.NewSOCKS5(s.tun, proxy.SOCKS5Config{
				Username: c.Username, Password: string(c.Password),
				MaxConnections: s.maxConnections(c.MaxConnections), Admit: s.admit(), DialTimeout: c.DialTimeout, Logger: s.log.With("socks5", l.Addr().String()),
			})
			serveOn(s, fe, "socks5", srv, l, l.Addr(), "socks5 "+l.Addr().String())
			return nil
		}))
	}
	for i, c := range cfg.HTTP {
		tlsConf := p.httpTLS[i]
		kind := "http"
		section := httpSection{section: c}
		if tlsConf != nil {
			kind = "https"
			section.cert = tlsConf.Certificates[0].Certificate
		}
		out = append(out, specOf("http", section, func(fe *frontEnd) error {
			l, err := s.listenClients(fe, "http", c.BindAddress, c.Username != "")
			if err != nil {
				return err
			}
			srv := proxy.NewHTTP(s.tun, proxy.HTTPConfig{
				Username: c.Username, Password: string(c.Password), TLS: tlsConf,
				MaxConnections: s.maxConnections(c.MaxConnections), Admit: s.admit(), DialTimeout: c.DialTimeout, Logger: s.log.With(kind, l.Addr().String()),
			})
			serveOn(s, fe, kind, srv, l, l.Addr(), kind+" "+l.Addr().String())
			return nil
		}))
	}
	for _, c := range cfg.TCPClientTunnels {
		out = append(out, specOf("TCPClientTunnel", c, func(fe *frontEnd) error {
			l, err := s.listenClients(fe, "TCPClientTunnel", c.BindAddress, false)
			if err != nil {
				return err
			}
			f := proxy.NewTCPForwarder(s.tun.DialContext, c.Target, proxy.ForwardConfig{
				MaxConnections: s.maxConnections(c.MaxConnections), Admit: s.admit(), IdleTimeout: c.IdleTimeout, Logger: s.log.With("tcp_client_tunnel", l.Addr().String()),
			})
			serveOn(s, fe, "tcp_client_tunnel", f, l, l.Addr(), fmt.Sprintf("tcp %s→tunnel %s", l.Addr(), c.Target))
			return nil
		}))
	}
	for _, c := range cfg.TCPServerTunnels {
		out = append(out, specOf("TCPServerTunnel", c, func(fe *frontEnd) error {
			ls, err := listenTunnel(s, fe, "tcp", c.ListenPort, s.tun.Listen, net.Listener.Addr)
			if err != nil {
				return fmt.Errorf("%s: [TCPServerTunnel]: listen in the tunnel: %w", c.Pos, err)
			}
			f := proxy.NewTCPForwarder(s.hostDialer.DialContext, c.Target, proxy.ForwardConfig{
				MaxConnections: s.maxConnections(c.MaxConnections), Admit: s.admit(), IdleTimeout: c.IdleTimeout, Logger: s.log.With("tcp_server_tunnel", ls[0].Addr().String()),
			})
			serveTunnelPorts(s, fe, "tcp_server_tunnel", f, ls, net.Listener.Addr,
				func(a net.Addr) string { return fmt.Sprintf("tunnel tcp %s→%s", a, c.Target) })
			return nil
		}))
	}
	for _, c := range cfg.UDPProxyTunnels {
		out = append(out, specOf("UDPProxyTunnel", c, func(fe *frontEnd) error {
			pc, err := net.ListenPacket("udp", hostBindAddress(c.BindAddress))
			if err != nil {
				return fmt.Errorf("[UDPProxyTunnel] BindAddress %s: %w", c.BindAddress, err)
			}
			fe.sockets = append(fe.sockets, pc)
			s.warnIfOpen(pc.LocalAddr(), "UDPProxyTunnel", false)
			f := proxy.NewUDPForwarder(s.tun.DialContext, c.Target, proxy.UDPForwardConfig{
				InactivityTimeout: c.InactivityTimeout, Logger: s.log.With("udp_proxy_tunnel", pc.LocalAddr().String()),
			})
			serveOn(s, fe, "udp_proxy_tunnel", f, pc, pc.LocalAddr(), fmt.Sprintf("udp %s→tunnel %s", pc.LocalAddr(), c.Target))
			return nil
		}))
	}
	for _, c := range cfg.UDPServerTunnels {
		out = append(out, specOf("UDPServerTunnel", c, func(fe *frontEnd) error {
			pcs, err := listenTunnel(s, fe, "udp", c.ListenPort, s.tun.ListenPacket, net.PacketConn.LocalAddr)
			if err != nil {
				return fmt.Errorf("%s: [UDPServerTunnel]: listen in the tunnel: %w", c.Pos, err)
			}
			f := proxy.NewUDPForwarder(s.hostDialer.DialContext, c.Target, proxy.UDPForwardConfig{
				InactivityTimeout: c.InactivityTimeout, Logger: s.log.With("udp_server_tunnel", pcs[0].LocalAddr().String()),
			})
			serveTunnelPorts(s, fe, "udp_server_tunnel", f, pcs, net.PacketConn.LocalAddr,
				func(a net.Addr) string { return fmt.Sprintf("tunnel udp %s→%s", a, c.Target) })
			return nil
		}))
	}
	if addr := s.metricsAddr(cfg); addr != "" {
		out = append(out, specOf("Metrics", metricsSection(addr), func(fe *frontEnd) error {
			l, err := s.listenHost(fe, "Metrics", addr)
			if err != nil {
				return err
			}
			srv := &http.Server{Handler: s.observer.Handler(), ReadHeaderTimeout: metricsHeaderTimeout, IdleTimeout: metricsIdleTimeout, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
			s.serve(fe, server{desc: "metrics http://" + l.Addr().String() + "/metrics", impl: uncounted{srv}},
				func() error { return srv.Serve(l) })
			return nil
		}))
	}
	return out
}

// listenClients opens the host listener of a section that serves
// clients on the host, and warns if it is open to others with no
// password.
func (s *Service) listenClients(fe *frontEnd, section, bind string, authenticated bool) (net.Listener, error) {
	l, err := s.listenHost(fe, section, bind)
	if err != nil {
		return nil, err
	}
	s.warnIfOpen(l.Addr(), section, authenticated)
	return l, nil
}

// servable is a proxy.Server that serves on sockets of type C: a
// net.Listener for TCP, a net.PacketConn for UDP.
type servable[C any] interface {
	proxy.Server
	Serve(C) error
}

// serveOn runs srv on socket as one server of fe. kind and addr label its
// connections in /metrics; desc is its line of the summary.
func serveOn[C any](s *Service, fe *frontEnd, kind string, srv servable[C], socket C, addr net.Addr, desc string) {
	s.serve(fe, server{desc: desc, impl: srv, kind: kind, addr: addr.String()}, func() error { return srv.Serve(socket) })
}

// listenTunnel opens a server tunnel's sockets inside the tunnel, one
// on each of our tunnel addresses (see tunnelPorts), with listen, and
// adds them to fe's. addr names a socket's local address.
func listenTunnel[C io.Closer](s *Service, fe *frontEnd, network string, port int, listen func(network, address string) (C, error), addr func(C) net.Addr) ([]C, error) {
	var sockets []C
	err := s.tunnelPorts(port, func(ap netip.AddrPort) (netip.AddrPort, error) {
		socket, err := listen(network, ap.String())
		if err != nil {
			return netip.AddrPort{}, err
		}
		sockets = append(sockets, socket)
		fe.sockets = append(fe.sockets, socket)
		// A socket in the tunnel has a *net.TCPAddr or a *net.UDPAddr.
		return addr(socket).(interface{ AddrPort() netip.AddrPort }).AddrPort(), nil
	})
	return sockets, err
}

// serveTunnelPorts runs one forwarder on every socket of a server
// tunnel. The forwarder is one server however many sockets it serves:
// only the first socket's entry carries it, so that a reload or a
// shutdown stops it once and /metrics counts it once, under the first
// address; the others are lines of the summary, which desc writes.
func serveTunnelPorts[C any](s *Service, fe *frontEnd, kind string, f servable[C], sockets []C, addr func(C) net.Addr, desc func(net.Addr) string) {
	for i, socket := range sockets {
		srv := server{desc: desc(addr(socket))}
		if i == 0 {
			srv.impl, srv.kind, srv.addr = f, kind, addr(socket).String()
		}
		s.serve(fe, srv, func() error { return f.Serve(socket) })
	}
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
func (s *Service) metricsAddr(cfg *config.Config) string {
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
func (s *Service) startFrontEnd(spec sectionSpec) (*frontEnd, error) {
	fe := &frontEnd{kind: spec.kind, section: spec.section, stopping: make(chan struct{})}
	if err := spec.start(fe); err != nil {
		s.closeFrontEnd(fe)
		return nil, err
	}
	return fe, nil
}

// closeFrontEnd ends a front end at once, connections and all.
func (s *Service) closeFrontEnd(fe *frontEnd) {
	fe.closeSockets()
	closeServers(fe.servers)
}

// stopFrontEnd stops a front end that a reload removed: its sockets
// close now, and its open connections get the grace period to finish,
// in the background, as at shutdown.
func (s *Service) stopFrontEnd(fe *frontEnd) {
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
		if srv.impl != nil {
			srv.impl.Close()
		}
	}
}

// shutdownServers runs every server's graceful shutdown at once and
// waits for them, or for ctx.
func shutdownServers(ctx context.Context, log *slog.Logger, servers []server) {
	var wg sync.WaitGroup
	for _, srv := range servers {
		if srv.impl == nil {
			continue
		}
		wg.Go(func() {
			if err := srv.impl.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				log.Debug("shutdown", "server", srv.desc, "err", err)
			}
		})
	}
	wg.Wait()
}
