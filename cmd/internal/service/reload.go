package service

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/netstack/wgquick"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/uapi"
)

// errShuttingDown is a reload asked for once Shutdown has begun.
var errShuttingDown = errors.New("shutting down")

// errNoReread is a reload of a service that was given no way to read
// its configuration again.
var errNoReread = errors.New("this tunnel cannot re-read its configuration: restart wgbore to change it")

// reloadReport is what one reload did, a line per change, for the log
// and for `wgbore reload`.
type reloadReport struct {
	// changes are what was applied: "peer … added", "socks5 … started".
	changes []string
	// kept are changes the file asks for that a running process cannot
	// make; the old value stays until a restart.
	kept []string
	// failed are changes that were tried and failed; the rest of the
	// reload still took effect.
	failed []error
}

// reload re-reads the configuration and applies the difference to the
// running process. A file that does not parse, or that Check refuses, is
// rejected whole with its file:line errors and nothing changes. A valid
// file is applied piece by piece, so that whatever did not change keeps
// running untouched:
//
//   - peers are compared with the engine's, as `wg syncconf` does: a
//     peer the file no longer names is removed (also one added through
//     the UAPI), a new one is added, and a changed one is updated in
//     place, keeping its sessions. A peer whose section did not change
//     is not touched, so a change made to it with `wg set` survives;
//   - proxy and tunnel sections are compared whole; one that changed is
//     stopped and started again (its open connections get the grace
//     period), and the others keep their listeners and connections;
//   - the private key and CheckAlive are applied; what the netstack was
//     built from (Address, MTU, ListenPort, DNS, server mode) is kept
//     and reported, since changing it takes a restart.
func (s *Service) reload() (reloadReport, error) {
	var rep reloadReport
	if s.reread == nil {
		return rep, errNoReread
	}
	cfg, path, err := s.reread()
	if err != nil {
		return rep, err
	}
	p, err := Check(cfg, path)
	if err != nil {
		return rep, err
	}

	// A reload waits for one under way, but never for a shutdown: the
	// UAPI socket that asked keeps serving through the grace period,
	// and closing it waits for this request's answer.
	select {
	case s.reloadSlot <- struct{}{}:
	case <-s.stopping:
		return rep, errShuttingDown
	}
	defer func() { <-s.reloadSlot }()
	select {
	case <-s.stopping:
		return rep, errShuttingDown
	default:
	}
	s.mu.Lock()
	old := s.cfg
	s.mu.Unlock()

	s.reloadInterface(old, cfg, &rep)
	s.reloadPeers(old, cfg, &rep)
	s.reloadFrontEnds(p, &rep)
	s.mu.Lock()
	s.cfg = cfg
	s.mu.Unlock()
	if len(rep.changes) > 0 {
		// The file, its parse and the diff are garbage now, and a
		// server's file names every peer: give the memory back, as the
		// reclaimer does after a burst of connections ends.
		s.reclaimNow()
	}
	return rep, nil
}

// reloadInterface applies the [Interface] changes that a running engine
// can take. What it cannot take is copied from old into cfg, so that
// cfg describes what runs and the next reload reports it again.
func (s *Service) reloadInterface(old, cfg *config.Config, rep *reloadReport) {
	o, n := &old.Interface, &cfg.Interface
	if !o.PrivateKey.Equal(n.PrivateKey) {
		s.tun.Engine().SetPrivateKey(n.PrivateKey)
		rep.changes = append(rep.changes, "private key changed: public key is now "+n.PrivateKey.PublicKey().String()+"; every session will renegotiate")
	}
	if !slices.Equal(o.CheckAlive, n.CheckAlive) || o.CheckAliveInterval != n.CheckAliveInterval {
		s.stopAlive()
		s.startAlive(cfg)
		rep.changes = append(rep.changes, fmt.Sprintf("CheckAlive is now %s", describeAlive(n.CheckAlive, n.CheckAliveInterval)))
	}
	keep := func(what string, changed bool, restore func()) {
		if changed {
			rep.kept = append(rep.kept, what+" changed: that takes a restart; still running with the old value")
			restore()
		}
	}
	keep("[Interface] Address", !slices.Equal(o.Addresses, n.Addresses), func() { n.Addresses = o.Addresses })
	keep("[Interface] ListenPort", o.ListenPort != n.ListenPort, func() { n.ListenPort = o.ListenPort })
	keep("[Interface] MTU", o.MTU != n.MTU, func() { n.MTU = o.MTU })
	keep("[Interface] MemoryLimit", o.MemoryLimit != n.MemoryLimit, func() { n.MemoryLimit = o.MemoryLimit })
	keep("[Interface] DNS", !slices.Equal(o.DNS, n.DNS) || !slices.Equal(o.DNSSearch, n.DNSSearch), func() { n.DNS, n.DNSSearch = o.DNS, o.DNSSearch })
	keep("[Resolve]", old.Resolve != cfg.Resolve, func() {})
	keep("[Egress]", !optionalEqual(old.Egress, cfg.Egress), func() { cfg.Egress = old.Egress })
	keep("[DNSServer]", !optionalEqual(old.DNSServer, cfg.DNSServer), func() { cfg.DNSServer = old.DNSServer })
	keep("[STDIOTunnel]", !slices.Equal(stdioTargets(old), stdioTargets(cfg)), func() {})
}

func describeAlive(addrs []netip.Addr, every time.Duration) string {
	if len(addrs) == 0 {
		return "off"
	}
	if every <= 0 {
		every = config.DefaultCheckAliveInterval
	}
	var s []string
	for _, a := range addrs {
		s = append(s, a.String())
	}
	return strings.Join(s, ", ") + " every " + every.String()
}

// optionalEqual compares two sections that may be absent: two absent
// ones say the same, and an absent one differs from any present one.
func optionalEqual[T interface{ Equal(T) bool }](a, b *T) bool {
	if a == nil || b == nil {
		return a == b
	}
	return (*a).Equal(*b)
}

func stdioTargets(c *config.Config) []string {
	var out []string
	for _, t := range c.STDIOTunnels {
		out = append(out, t.Target)
	}
	return out
}

// reloadPeers makes the engine's peers those of cfg.
func (s *Service) reloadPeers(old, cfg *config.Config, rep *reloadReport) {
	eng := s.tun.Engine()
	before := make(map[string]config.Peer, len(old.Peers))
	for _, p := range old.Peers {
		before[p.PublicKey.String()] = p
	}
	peers := eng.Peers()
	live := make(map[string]bool, len(peers))
	for _, st := range peers {
		live[st.PublicKey.String()] = true
	}
	wanted := make(map[string]bool, len(cfg.Peers))
	var set []protocol.PeerConfig
	var what []string
	for _, p := range cfg.Peers {
		key := p.PublicKey.String()
		wanted[key] = true
		prev, inOld := before[key]
		switch {
		case !live[key]:
			what = append(what, "added")
		case !inOld || !samePeer(prev, p):
			what = append(what, "updated")
		default:
			continue
		}
		set = append(set, wgquick.Peer(p))
	}
	var remove []protocol.PublicKey
	for _, st := range peers {
		if !wanted[st.PublicKey.String()] {
			remove = append(remove, st.PublicKey)
		}
	}
	// One update for all: a reload that adds or removes thousands of
	// peers then rebuilds the routing table once, not once per peer.
	errs, removed := eng.UpdatePeers(set, remove)
	for i, err := range errs {
		key := set[i].PublicKey.String()
		if err != nil {
			rep.failed = append(rep.failed, fmt.Errorf("peer %s: %w", key, err))
			continue
		}
		rep.changes = append(rep.changes, "peer "+key+" "+what[i])
	}
	for _, k := range removed {
		rep.changes = append(rep.changes, "peer "+k.String()+" removed")
	}
}

// samePeer reports whether two [Peer] sections say the same; the
// preshared keys are compared in constant time.
func samePeer(a, b config.Peer) bool {
	return a.PublicKey.Equal(b.PublicKey) &&
		a.PresharedKey.Equal(b.PresharedKey) &&
		a.Endpoint == b.Endpoint &&
		slices.Equal(a.AllowedIPs, b.AllowedIPs) &&
		a.PersistentKeepalive == b.PersistentKeepalive
}

// reloadFrontEnds keeps every running front end whose section is still
// in the plan, stops the others, then starts the new ones. Stopping
// comes first, so a section that changed in place can bind its address
// again.
func (s *Service) reloadFrontEnds(p *Plan, rep *reloadReport) {
	s.mu.Lock()
	running := slices.Clone(s.frontEnds)
	s.mu.Unlock()
	specs := s.sections(p)
	matched := make([]*frontEnd, len(specs))
	used := make([]bool, len(running))
	for i, spec := range specs {
		for j, fe := range running {
			if !used[j] && fe.sameSection(spec) {
				matched[i], used[j] = fe, true
				break
			}
		}
	}
	for j, fe := range running {
		if !used[j] {
			s.stopFrontEnd(fe)
			for _, srv := range fe.servers {
				rep.changes = append(rep.changes, srv.desc+" stopped")
			}
		}
	}
	now := make([]*frontEnd, 0, len(specs))
	for i, spec := range specs {
		if matched[i] != nil {
			now = append(now, matched[i])
			continue
		}
		fe, err := s.startFrontEnd(spec)
		if err != nil {
			rep.failed = append(rep.failed, err)
			continue
		}
		now = append(now, fe)
		for _, srv := range fe.servers {
			rep.changes = append(rep.changes, srv.desc+" started")
		}
	}
	s.mu.Lock()
	s.frontEnds = now
	s.mu.Unlock()
}

// ReloadAndLog re-reads the configuration, applies the difference as
// far as a running process can, and logs the outcome; SIGHUP's handler.
// A file that does not parse or check is refused whole, and the service
// keeps running what it ran.
func (s *Service) ReloadAndLog() {
	rep, err := s.reload()
	if err != nil {
		s.log.Error("reload rejected: still running the previous configuration", "err", oneLine(err))
		return
	}
	s.logReport(rep)
}

func (s *Service) logReport(rep reloadReport) {
	for _, c := range rep.changes {
		s.log.Info("reload: " + c)
	}
	for _, k := range rep.kept {
		s.log.Warn("reload: " + k)
	}
	for _, f := range rep.failed {
		s.log.Error("reload: failed", "err", f)
	}
	s.log.Info("reloaded", "changes", len(rep.changes), "kept", len(rep.kept), "failed", len(rep.failed))
}

// oneLine joins a multi-error's lines with "; " for a log attribute.
func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

// ReloadOperation is the UAPI request `wgbore reload` sends. It rides
// on the UAPI socket, whose owner and mode already say who may change
// this tunnel, and it answers with the outcome, which a SIGHUP cannot.
const ReloadOperation = "wgbore_reload"

// Errnos of a reload's reply: the file was refused (EINVAL), or some
// change failed while the rest took effect (EIO).
const (
	ReloadRejected = 22
	reloadPartial  = 5
)

// uapiHandler is the UAPI for the engine, plus the reload operation.
func (s *Service) uapiHandler() *uapi.Handler {
	h := uapi.NewHandler(s.tun.Engine())
	h.AddOperation(ReloadOperation, func(w io.Writer) int {
		s.log.Info("reload requested on the UAPI socket")
		rep, err := s.reload()
		if err != nil {
			s.log.Error("reload rejected: still running the previous configuration", "err", oneLine(err))
			for _, line := range strings.Split(err.Error(), "\n") {
				fmt.Fprintf(w, "error=%s\n", line)
			}
			return ReloadRejected
		}
		s.logReport(rep)
		for _, c := range rep.changes {
			fmt.Fprintf(w, "change=%s\n", c)
		}
		for _, k := range rep.kept {
			fmt.Fprintf(w, "kept=%s\n", k)
		}
		for _, f := range rep.failed {
			fmt.Fprintf(w, "error=%s\n", oneLine(f))
		}
		if len(rep.failed) > 0 {
			return reloadPartial
		}
		return 0
	})
	return h
}
