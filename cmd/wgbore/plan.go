package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"

	"github.com/wgbore/wgbore/config"
)

// runPlan is a configuration checked for everything that can be checked
// without opening a socket, so that `check` and `up` refuse the same
// files, and `up` fails before it has half started.
type runPlan struct {
	cfg *config.Config
	// httpTLS holds each [http] section's certificate, in order; nil
	// for plain HTTP.
	httpTLS []*tls.Config
	// warnings are legal but probably unintended setups.
	warnings []string
}

// plan checks what config.Parse cannot: files the sections name and
// combinations that make no sense for one process.
func plan(cfg *config.Config, path string) (*runPlan, error) {
	p := &runPlan{cfg: cfg}
	var errs []error
	dir := filepath.Dir(path)
	for i, h := range cfg.HTTP {
		if h.CertFile == "" {
			p.httpTLS = append(p.httpTLS, nil)
			continue
		}
		cert, err := tls.LoadX509KeyPair(relativeTo(dir, h.CertFile), relativeTo(dir, h.KeyFile))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: [http] #%d: CertFile/KeyFile: %w", path, i+1, err))
			p.httpTLS = append(p.httpTLS, nil)
			continue
		}
		p.httpTLS = append(p.httpTLS, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	}
	errs = append(errs, sharedListenAddresses(cfg, path)...)
	// Authentication is on only with a Username: a Password alone looks
	// protected in the file and is not.
	for i, c := range cfg.Socks5 {
		if c.Username == "" && c.Password != "" {
			p.warnings = append(p.warnings, fmt.Sprintf("%s: [Socks5] #%d has a Password but no Username: authentication is off", path, i+1))
		}
	}
	for i, c := range cfg.HTTP {
		if c.Username == "" && c.Password != "" {
			p.warnings = append(p.warnings, fmt.Sprintf("%s: [http] #%d has a Password but no Username: authentication is off", path, i+1))
		}
	}
	if len(cfg.STDIOTunnels) > 1 {
		errs = append(errs, fmt.Errorf("%s: %d [STDIOTunnel] sections, but a process has one stdin: keep one", path, len(cfg.STDIOTunnels)))
	}
	if len(cfg.Peers) == 0 {
		p.warnings = append(p.warnings, path+": no [Peer] section: nothing can be reached until a peer is added")
	}
	if len(cfg.Interface.Addresses) == 0 {
		p.warnings = append(p.warnings, path+": [Interface] has no Address: the tunnel has no address to send from")
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// sharedListenAddresses finds two sections that would listen on the same
// address: a mistake in the file, which check should report, rather than
// a start that fails with "address already in use" as if another process
// held the port. Port 0 asks for a fresh port each time, so it never
// clashes.
func sharedListenAddresses(cfg *config.Config, path string) []error {
	var errs []error
	first := make(map[string]string) // "tcp 127.0.0.1:1080" -> "[Socks5] #1"
	claim := func(network, addr, section string, n int) {
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "0" {
			return
		}
		key := network + " " + addr
		this := fmt.Sprintf("[%s] #%d", section, n)
		if prev, ok := first[key]; ok {
			errs = append(errs, fmt.Errorf("%s: %s listens on %s %s, as %s does", path, this, network, addr, prev))
			return
		}
		first[key] = this
	}
	for i, c := range cfg.Socks5 {
		claim("tcp", hostBindAddress(c.BindAddress), "Socks5", i+1)
	}
	for i, c := range cfg.HTTP {
		claim("tcp", hostBindAddress(c.BindAddress), "http", i+1)
	}
	for i, c := range cfg.TCPClientTunnels {
		claim("tcp", hostBindAddress(c.BindAddress), "TCPClientTunnel", i+1)
	}
	for i, c := range cfg.UDPProxyTunnels {
		claim("udp", hostBindAddress(c.BindAddress), "UDPProxyTunnel", i+1)
	}
	for i, c := range cfg.TCPServerTunnels {
		claim("tunnel tcp", net.JoinHostPort("", strconv.Itoa(c.ListenPort)), "TCPServerTunnel", i+1)
	}
	for i, c := range cfg.UDPServerTunnels {
		claim("tunnel udp", net.JoinHostPort("", strconv.Itoa(c.ListenPort)), "UDPServerTunnel", i+1)
	}
	return errs
}

// relativeTo resolves a relative path against the config file's
// directory, as the config package does for key files, so a config and
// its certificates can move together.
func relativeTo(dir, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// hostBindAddress fills in loopback for a BindAddress with no host
// (":1080"). wireproxy would listen on every interface there; an open
// proxy into a private network is the worse surprise, so reaching beyond
// this machine takes an explicit 0.0.0.0 or [::].
func hostBindAddress(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host != "" {
		return s
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// isLoopback reports whether a listener's address is reachable only from
// this machine.
func isLoopback(a net.Addr) bool {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UDPAddr:
		return a.IP.IsLoopback()
	}
	return false
}
