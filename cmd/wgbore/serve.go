package main

import (
	"fmt"

	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/netstack"
)

// startServeMode turns on what serve adds to up: forwarding of peers'
// flows under the egress policy. The DNS server for peers runs in either
// mode when configured, since answering names for the other side is as
// useful to a client as to a server.
func (s *service) startServeMode(p *runPlan) error {
	cfg := p.cfg
	if p.serve {
		fc := netstack.ForwardConfig{Logger: s.log, Admit: s.admit()}
		if e := cfg.Egress; e != nil {
			fc.Egress = netstack.Egress{Allow: e.Allow, Deny: e.Deny}
			fc.MaxFlowsPerPeer = e.MaxFlowsPerPeer
			fc.UDPIdleTimeout = e.UDPTimeout
		}
		if err := s.tun.Forward(fc); err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		s.servers = append(s.servers, server{desc: "egress " + egressSummary(cfg)})
	}
	if d := cfg.DNSServer; d != nil {
		dns, err := s.tun.ServeDNS(netstack.DNSServerConfig{Records: d.Records, Upstream: d.Upstream, Logger: s.log})
		if err != nil {
			return fmt.Errorf("%s: [DNSServer]: %w", d.Pos, err)
		}
		s.servers = append(s.servers, server{desc: "dns tunnel :53", close: dns.Close})
	}
	return nil
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
