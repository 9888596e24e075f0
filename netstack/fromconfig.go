package netstack

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/protocol"
)

// FromConfig turns a parsed wg-quick (or wireproxy) file into what Open
// needs. Only [Interface] and [Peer] matter here; the proxy sections are
// the proxies' business.
func FromConfig(c *config.Config) Config {
	cfg := Config{
		PrivateKey: c.Interface.PrivateKey,
		Addresses:  append([]netip.Prefix(nil), c.Interface.Addresses...),
		MTU:        c.Interface.MTU,
		ListenPort: uint16(c.Interface.ListenPort),
		DNS:        append([]netip.Addr(nil), c.Interface.DNS...),
		DNSSearch:  append([]string(nil), c.Interface.DNSSearch...),
	}
	cfg.Peers = make([]protocol.PeerConfig, 0, len(c.Peers))
	for _, p := range c.Peers {
		cfg.Peers = append(cfg.Peers, p.ProtocolConfig())
	}
	return cfg
}

// OpenFile reads a wg-quick or wireproxy configuration file and opens the
// network it describes: the one call a program needs. Problems in the file
// come back as one error listing each as file:line; warnings (keys that
// only wg-quick uses, key files others can read) go to the logger from
// opts, or nowhere.
func OpenFile(ctx context.Context, path string, opts ...Option) (*Net, error) {
	c, err := config.Load(path, config.Options{})
	if err != nil {
		return nil, err
	}
	cfg := FromConfig(c)
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.Logger != nil {
		for _, w := range c.Warnings {
			cfg.Logger.Warn(w.String())
		}
	}
	n, err := Open(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

// Option adjusts the Config that OpenFile builds from a file.
type Option func(*Config)

// WithLogger sends the engine's and the stack's log lines, and the
// config's warnings, to l.
func WithLogger(l *slog.Logger) Option { return func(c *Config) { c.Logger = l } }

// WithListenAddrs restricts the host UDP socket to these addresses.
func WithListenAddrs(addrs ...netip.Addr) Option {
	return func(c *Config) { c.ListenAddrs = append([]netip.Addr(nil), addrs...) }
}
