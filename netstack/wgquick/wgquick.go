// Package wgquick opens the tunnel that a wg-quick (or wireproxy) file
// describes. It is where a parsed file's [Interface] and [Peer] sections
// become the engine's and the stack's configuration, so that neither
// package config, which only reads and writes files, nor package netstack,
// which takes a plain Config, knows the other.
//
// A program that reaches a network through a wg-quick file needs one call:
//
//	n, err := wgquick.Open(ctx, "wg0.conf", wgquick.WithLogger(slog.Default()))
//	if err != nil {
//		return err
//	}
//	defer n.Close()
//	client := n.HTTPClient()
package wgquick

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/netstack"
	"github.com/wgbore/wgbore/protocol"
)

// Tunnel turns a parsed file into what netstack.Open needs. Only
// [Interface] and [Peer] matter here; the other sections are the
// proxies' business. The slices are copied, so the Net and the file's
// Config never share backing arrays.
func Tunnel(c *config.Config) netstack.Config {
	cfg := netstack.Config{
		PrivateKey: c.Interface.PrivateKey,
		Addresses:  slices.Clone(c.Interface.Addresses),
		MTU:        c.Interface.MTU,
		ListenPort: uint16(c.Interface.ListenPort),
		DNS:        slices.Clone(c.Interface.DNS),
		DNSSearch:  slices.Clone(c.Interface.DNSSearch),
		Prefer:     preference(c.Resolve.Strategy),
	}
	cfg.Peers = make([]protocol.PeerConfig, 0, len(c.Peers))
	for _, p := range c.Peers {
		cfg.Peers = append(cfg.Peers, Peer(p))
	}
	return cfg
}

// preference is [Resolve] ResolveStrategy as the netstack takes it.
func preference(s config.ResolveStrategy) netstack.Preference {
	switch s {
	case config.ResolveIPv4:
		return netstack.PreferIPv4
	case config.ResolveIPv6:
		return netstack.PreferIPv6
	}
	return netstack.PreferAuto
}

// Peer turns a [Peer] section into what the engine takes, as a reload
// does for a peer it adds or changes. AllowedIPs is copied, so the
// engine and the file's Config never share a backing array.
func Peer(p config.Peer) protocol.PeerConfig {
	return protocol.PeerConfig{
		PublicKey:           p.PublicKey,
		PresharedKey:        p.PresharedKey,
		Endpoint:            p.Endpoint,
		AllowedIPs:          slices.Clone(p.AllowedIPs),
		PersistentKeepalive: p.PersistentKeepalive,
	}
}

// Open reads a wg-quick or wireproxy configuration file and opens the
// network it describes. Problems in the file come back as one error
// listing each as file:line (a config.Errors); warnings (keys that only
// wg-quick uses, key files others can read) go to the logger from opts,
// or nowhere.
func Open(ctx context.Context, path string, opts ...Option) (*netstack.Net, error) {
	c, err := config.Load(path, config.Options{})
	if err != nil {
		return nil, err
	}
	cfg := Tunnel(c)
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.Logger != nil {
		for _, w := range c.Warnings {
			cfg.Logger.Warn(w.String())
		}
	}
	n, err := netstack.Open(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

// Option adjusts the netstack.Config that Open builds from a file.
type Option func(*netstack.Config)

// WithLogger sends the engine's and the stack's log lines, and the
// file's warnings, to l.
func WithLogger(l *slog.Logger) Option { return func(c *netstack.Config) { c.Logger = l } }

// WithListenAddrs restricts the host UDP socket to these addresses.
func WithListenAddrs(addrs ...netip.Addr) Option {
	return func(c *netstack.Config) { c.ListenAddrs = slices.Clone(addrs) }
}
