package service

import (
	"cmp"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/wgbore/wgbore/config"
)

// Plan is a configuration checked for everything that can be checked
// without opening a socket, so that `check` and `up` refuse the same
// files, and `up` fails before it has half started.
type Plan struct {
	cfg *config.Config
	// httpTLS holds each [http] section's certificate, in order; nil
	// for plain HTTP.
	httpTLS []*tls.Config
	// warnings are legal but probably unintended setups.
	warnings []string
}

// Check checks what config.Parse cannot: files the sections name and
// combinations that make no sense for one process, and returns the plan
// that Start runs. Every problem points at the header of the section at
// fault, "wg0.conf:12: [http]: ...", the form of the parser's own
// errors, so check prints each one as a place an editor can jump to.
func Check(cfg *config.Config, path string) (*Plan, error) {
	p := &Plan{cfg: cfg}
	var errs problems
	dir := filepath.Dir(path)
	for _, h := range cfg.HTTP {
		if h.CertFile == "" {
			p.httpTLS = append(p.httpTLS, nil)
			continue
		}
		cert, err := tls.LoadX509KeyPair(relativeTo(dir, h.CertFile), relativeTo(dir, h.KeyFile))
		if err != nil {
			errs.add(h.Pos, fmt.Errorf("%s: [http]: CertFile/KeyFile: %w", at(path, h.Pos), err))
			p.httpTLS = append(p.httpTLS, nil)
			continue
		}
		p.httpTLS = append(p.httpTLS, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	}
	sharedListenAddresses(cfg, path, &errs)
	if len(cfg.STDIOTunnels) > 1 {
		first := cfg.STDIOTunnels[0].Pos
		for _, c := range cfg.STDIOTunnels[1:] {
			errs.add(c.Pos, fmt.Errorf("%s: [STDIOTunnel]: a process has one stdin, and the [STDIOTunnel] %s has it: keep one",
				at(path, c.Pos), onLine(first, c.Pos)))
		}
	}

	// Authentication is on only with a Username: a Password alone looks
	// protected in the file and is not.
	var warns problems
	noUser := func(pos config.Position, section string) {
		warns.add(pos, fmt.Errorf("%s: [%s]: Password is set but Username is not: authentication is off", at(path, pos), section))
	}
	for _, c := range cfg.Socks5 {
		if c.Username == "" && c.Password != "" {
			noUser(c.Pos, "Socks5")
		}
	}
	for _, c := range cfg.HTTP {
		if c.Username == "" && c.Password != "" {
			noUser(c.Pos, "http")
		}
	}
	for _, w := range warns.sorted() {
		p.warnings = append(p.warnings, w.Error())
	}
	if len(cfg.Peers) == 0 {
		p.warnings = append(p.warnings, path+": no [Peer] section: nothing can be reached until a peer is added")
	}
	if len(cfg.Interface.Addresses) == 0 {
		p.warnings = append(p.warnings, path+": [Interface] has no Address: the tunnel has no address to send from")
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs.sorted()...)
	}
	return p, nil
}

// Warnings are the setups Check found legal but probably unintended,
// one message each, placed as its errors are.
func (p *Plan) Warnings() []string { return p.warnings }

// problem is one of Check's findings with the section it belongs to, so
// that they can be reported in file order, as the parser reports its own.
type problem struct {
	pos config.Position
	err error
}

type problems []problem

func (ps *problems) add(pos config.Position, err error) {
	*ps = append(*ps, problem{pos, err})
}

// sorted returns the errors by line; a problem with no line (a Config
// built by hand rather than parsed) keeps its place after the rest.
func (ps problems) sorted() []error {
	s := slices.Clone(ps)
	slices.SortStableFunc(s, func(a, b problem) int { return byLine(a.pos, b.pos) })
	out := make([]error, len(s))
	for i, p := range s {
		out[i] = p.err
	}
	return out
}

// byLine orders positions by line, unknown lines last. Proxy sections
// come only from the main file, so the file needs no comparing.
func byLine(a, b config.Position) int {
	la, lb := a.Line, b.Line
	if la <= 0 {
		la = math.MaxInt
	}
	if lb <= 0 {
		lb = math.MaxInt
	}
	return cmp.Compare(la, lb)
}

// at is where a message about the section at pos starts: "file:line",
// or the config's path for a section that was not parsed from a file.
func at(path string, pos config.Position) string {
	if pos.File == "" {
		return path
	}
	return pos.String()
}

// onLine names where another section starts, for a message already
// placed at from: "on line 12", or with the file when they differ.
func onLine(other, from config.Position) string {
	switch {
	case other.Line <= 0:
		return "before it"
	case other.File == from.File:
		return "on line " + strconv.Itoa(other.Line)
	default:
		return "at " + other.String()
	}
}

// sharedListenAddresses finds two sections that would listen on the same
// address: a mistake in the file, which check should report, rather than
// a start that fails with "address already in use" as if another process
// held the port. Port 0 asks for a fresh port each time, so it never
// clashes. The error is at the later section in the file and names the
// line of the earlier one.
func sharedListenAddresses(cfg *config.Config, path string, errs *problems) {
	type listener struct {
		key     string // "tcp 127.0.0.1:1080"
		section string
		pos     config.Position
	}
	var all []listener
	add := func(network, addr, section string, pos config.Position) {
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "0" {
			return
		}
		all = append(all, listener{network + " " + addr, section, pos})
	}
	for _, c := range cfg.Socks5 {
		add("tcp", hostBindAddress(c.BindAddress), "Socks5", c.Pos)
	}
	for _, c := range cfg.HTTP {
		add("tcp", hostBindAddress(c.BindAddress), "http", c.Pos)
	}
	for _, c := range cfg.TCPClientTunnels {
		add("tcp", hostBindAddress(c.BindAddress), "TCPClientTunnel", c.Pos)
	}
	for _, c := range cfg.UDPProxyTunnels {
		add("udp", hostBindAddress(c.BindAddress), "UDPProxyTunnel", c.Pos)
	}
	if m := cfg.Metrics; m != nil {
		add("tcp", hostBindAddress(m.BindAddress), "Metrics", m.Pos)
	}
	for _, c := range cfg.TCPServerTunnels {
		add("tunnel tcp", net.JoinHostPort("", strconv.Itoa(c.ListenPort)), "TCPServerTunnel", c.Pos)
	}
	for _, c := range cfg.UDPServerTunnels {
		add("tunnel udp", net.JoinHostPort("", strconv.Itoa(c.ListenPort)), "UDPServerTunnel", c.Pos)
	}
	// In file order, so "first" means first in the file, whatever the kinds.
	slices.SortStableFunc(all, func(a, b listener) int { return byLine(a.pos, b.pos) })
	first := make(map[string]listener)
	for _, l := range all {
		prev, ok := first[l.key]
		if !ok {
			first[l.key] = l
			continue
		}
		errs.add(l.pos, fmt.Errorf("%s: [%s]: listens on %s, as the [%s] %s does",
			at(path, l.pos), l.section, l.key, prev.section, onLine(prev.pos, l.pos)))
	}
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
