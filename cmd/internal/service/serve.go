package service

import (
	"fmt"

	"github.com/wgbore/wgbore/cmd/internal/membudget"
	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/proxy/dnsserver"
	"github.com/wgbore/wgbore/proxy/egress"
)

// startServeMode turns on what serve adds to up: forwarding of peers'
// flows under the egress policy. The DNS server for peers runs in either
// mode when configured, since answering names for the other side is as
// useful to a client as to a server.
func (s *Service) startServeMode(p *Plan) error {
	cfg := p.cfg
	if s.serveMode {
		fc := egress.Config{Logger: s.log, Admit: s.admit(), MaxFlows: maxFlows(cfg.Egress, s.budget)}
		if e := cfg.Egress; e != nil {
			fc.Policy = egress.Policy{Allow: e.Allow, Deny: e.Deny, HostAddresses: e.HostAddresses}
			fc.MaxFlowsPerPeer = e.MaxFlowsPerPeer
			fc.UDPIdleTimeout = e.UDPTimeout
		}
		eg, err := egress.Start(s.tun, fc)
		if err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		s.egress.Store(eg)
		s.addServer(server{desc: "egress " + egressSummary(cfg)})
	}
	if d := cfg.DNSServer; d != nil {
		dns, err := dnsserver.Serve(s.tun, dnsserver.Config{Records: d.Records, Upstream: d.Upstream, Logger: s.log})
		if err != nil {
			return fmt.Errorf("%s: [DNSServer]: %w", d.Pos, err)
		}
		s.addServer(server{desc: "dns tunnel :53", impl: closeOnly(dns.Close)})
	}
	return nil
}

// flowCost is what one relayed flow is reckoned to cost when a memory
// figure sets the cap on flows: an idle flow's resident memory, with room
// for a share of the flows to be moving bytes at once. The memory
// budget's own check (Admit) still refuses flows when busy ones cost
// more.
const flowCost = 64 << 10

// maxFlows is the cap on all peers' flows together: [Egress] MaxFlows;
// else what FlowMemory holds; else the egress's default, scaled to the
// process's memory budget when there is one.
func maxFlows(e *config.Egress, b *membudget.Budget) int {
	switch {
	case e != nil && e.MaxFlows > 0:
		return e.MaxFlows
	case e != nil && e.FlowMemory > 0:
		return max(16, int(e.FlowMemory/flowCost))
	}
	return b.Connections(egress.DefaultMaxFlows)
}

// egressSummary says in a few words where peers may go, for the start-up
// line: "public unicast +127.0.0.1/32 -203.0.113.0/24".
func egressSummary(c *config.Config) string {
	out := "public unicast"
	if e := c.Egress; e != nil {
		for _, p := range e.Allow {
			out += " +" + p.String()
		}
		for _, p := range e.Deny {
			out += " -" + p.String()
		}
	}
	return out
}
