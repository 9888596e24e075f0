package service

import (
	"fmt"
	"time"

	"github.com/wgbore/wgbore/protocol"
)

// StartSummary logs, in the background, one line saying what listens
// where and which peers answered a first handshake within wait; Shutdown
// waits for it, or ends its wait.
func (s *Service) StartSummary(wait time.Duration) {
	s.summarized = make(chan struct{})
	go func() {
		defer close(s.summarized)
		s.summarize(wait)
	}()
}

// summarize starts a handshake with every peer whose endpoint is known and
// logs one line saying what listens where and which peers answered. It
// waits up to wait for the handshakes, not for ever: the engine keeps
// retrying on the protocol's timers, and the listeners already work. A
// shutdown that begins during the wait ends it, with no summary.
func (s *Service) summarize(wait time.Duration) {
	eng := s.tun.Engine()
	started := time.Now()
	var pending []protocol.PublicKey
	for _, p := range eng.Peers() {
		if p.Endpoint.IsValid() || p.EndpointHost != "" {
			eng.Handshake(p.PublicKey)
			pending = append(pending, p.PublicKey)
		}
	}
	timeout := time.NewTimer(wait)
	defer timeout.Stop()
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
waiting:
	for len(pending) > 0 {
		select {
		case <-s.stopping:
			return
		case <-timeout.C:
			break waiting
		case <-poll.C:
		}
		still := pending[:0]
		for _, k := range pending {
			if st, ok := eng.Peer(k); ok && st.LastHandshake.IsZero() {
				still = append(still, k)
			}
		}
		pending = still
	}

	var listen []string
	for _, srv := range s.allServers() {
		listen = append(listen, srv.desc)
	}
	var addrs []string
	for _, a := range s.cfg.Interface.Addresses {
		addrs = append(addrs, a.String())
	}
	var peers []string
	up, silent := 0, 0
	for _, p := range eng.Peers() {
		var state string
		switch {
		case !p.LastHandshake.IsZero():
			up++
			// A handshake may predate the summary's own (a persistent
			// keepalive starts one at open): that is "at once".
			state = fmt.Sprintf("handshake ok in %s", max(0, p.LastHandshake.Sub(started)).Round(time.Millisecond))
		case !p.Endpoint.IsValid() && p.EndpointHost == "":
			state = "no endpoint: waiting for the peer to connect"
		default:
			silent++
			state = fmt.Sprintf("no handshake after %s: retrying", wait)
		}
		ep := p.Endpoint.String()
		if p.EndpointHost != "" {
			ep = p.EndpointHost
		} else if !p.Endpoint.IsValid() {
			ep = "-"
		}
		peers = append(peers, fmt.Sprintf("%s endpoint=%s %s", p.PublicKey, ep, state))
	}
	// Only a peer we could reach and that did not answer is worth a
	// warning; one with no endpoint is the server side's normal wait.
	level := s.log.Info
	if silent > 0 {
		level = s.log.Warn
	}
	level("wgbore is up",
		"listen", listen,
		"addresses", addrs,
		"udp_port", s.tun.LocalPort(),
		"peers", peers,
		"handshakes", fmt.Sprintf("%d/%d", up, len(peers)))
}
