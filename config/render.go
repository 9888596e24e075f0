package config

import (
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// RenderOptions controls Render.
type RenderOptions struct {
	// IncludeSecrets writes the private key, preshared keys and proxy
	// passwords. Without it they read "(redacted)", so a rendered config
	// can be shown, logged or attached to a bug report safely. Keys that
	// came from PrivateKeyFile or PresharedKeyFile are always written as
	// the file reference, which is no secret.
	IncludeSecrets bool
	// Flatten writes the [Interface] and [Peer] sections of a WGConfig
	// include in place of the WGConfig line, giving one self-contained
	// file. Parsing that file yields a Config with an empty WGConfig.
	Flatten bool
}

// Render writes the config back in the syntax Parse reads, with canonical
// key names. Parse(Render(IncludeSecrets: true)) yields an equal Config
// (apart from Warnings and the sections' Pos, which refer to lines of the
// original text).
// Comments, key order and ignored wg-quick keys are not preserved.
func (c *Config) Render(opts RenderOptions) string {
	var b strings.Builder
	c.render(&b, opts)
	return b.String()
}

// WriteTo writes Render(RenderOptions{}), the redacted form, so that the
// shortest way to print a config is the safe one.
func (c *Config) WriteTo(w io.Writer) (int64, error) {
	n, err := io.WriteString(w, c.Render(RenderOptions{}))
	return int64(n), err
}

type renderer struct {
	b       *strings.Builder
	started bool
}

func (r *renderer) section(name string) {
	if r.started {
		r.b.WriteByte('\n')
	}
	r.started = true
	fmt.Fprintf(r.b, "[%s]\n", name)
}

func (r *renderer) kv(key, value string) {
	if value == "" {
		fmt.Fprintf(r.b, "%s =\n", key)
		return
	}
	fmt.Fprintf(r.b, "%s = %s\n", key, value)
}

// str writes a free-text value, escaped so that it parses back to itself.
func (r *renderer) str(key, value string) {
	if value != "" {
		r.kv(key, quote(value))
	}
}

func (r *renderer) secret(key, value string, include bool) {
	if value == "" {
		return
	}
	if !include {
		value = redacted
	}
	r.kv(key, quote(value))
}

// count writes a number that is absent (0) by default.
func (r *renderer) count(key string, n int) {
	if n != 0 {
		r.kv(key, strconv.Itoa(n))
	}
}

func (r *renderer) seconds(key string, d time.Duration) {
	r.kv(key, strconv.FormatInt(int64(d/time.Second), 10))
}

func (c *Config) render(b *strings.Builder, opts RenderOptions) {
	r := &renderer{b: b}
	if c.WGConfig != "" && !opts.Flatten {
		r.str("WGConfig", c.WGConfig)
		r.started = true
	} else {
		c.renderInterface(r, opts)
		for _, p := range c.Peers {
			p.render(r, opts)
		}
	}
	for _, s := range c.Socks5 {
		r.section("Socks5")
		r.str("BindAddress", s.BindAddress)
		r.str("Username", s.Username)
		r.secret("Password", string(s.Password), opts.IncludeSecrets)
		r.count("MaxConnections", s.MaxConnections)
		if s.DialTimeout != 0 {
			r.seconds("DialTimeout", s.DialTimeout)
		}
	}
	for _, h := range c.HTTP {
		r.section("http")
		r.str("BindAddress", h.BindAddress)
		r.str("Username", h.Username)
		r.secret("Password", string(h.Password), opts.IncludeSecrets)
		r.str("CertFile", h.CertFile)
		r.str("KeyFile", h.KeyFile)
		r.count("MaxConnections", h.MaxConnections)
		if h.DialTimeout != 0 {
			r.seconds("DialTimeout", h.DialTimeout)
		}
	}
	for _, t := range c.TCPClientTunnels {
		r.section("TCPClientTunnel")
		r.str("BindAddress", t.BindAddress)
		r.str("Target", t.Target)
		r.count("MaxConnections", t.MaxConnections)
		if t.IdleTimeout != 0 {
			r.seconds("IdleTimeout", t.IdleTimeout)
		}
	}
	for _, t := range c.TCPServerTunnels {
		r.section("TCPServerTunnel")
		r.kv("ListenPort", strconv.Itoa(t.ListenPort))
		r.str("Target", t.Target)
		r.count("MaxConnections", t.MaxConnections)
		if t.IdleTimeout != 0 {
			r.seconds("IdleTimeout", t.IdleTimeout)
		}
	}
	for _, t := range c.STDIOTunnels {
		r.section("STDIOTunnel")
		r.str("Target", t.Target)
	}
	for _, t := range c.UDPProxyTunnels {
		r.section("UDPProxyTunnel")
		r.str("BindAddress", t.BindAddress)
		r.str("Target", t.Target)
		if t.InactivityTimeout != DefaultUDPInactivityTimeout {
			r.seconds("InactivityTimeout", t.InactivityTimeout)
		}
	}
	for _, t := range c.UDPServerTunnels {
		r.section("UDPServerTunnel")
		r.kv("ListenPort", strconv.Itoa(t.ListenPort))
		r.str("Target", t.Target)
		if t.InactivityTimeout != DefaultUDPInactivityTimeout {
			r.seconds("InactivityTimeout", t.InactivityTimeout)
		}
	}
	if e := c.Egress; e != nil {
		r.section("Egress")
		if len(e.Allow) > 0 {
			r.kv("Allow", join(e.Allow))
		}
		if len(e.Deny) > 0 {
			r.kv("Deny", join(e.Deny))
		}
		if len(e.HostAddresses) > 0 {
			r.kv("HostAddress", join(e.HostAddresses))
		}
		r.count("MaxFlowsPerPeer", e.MaxFlowsPerPeer)
		r.count("MaxFlows", e.MaxFlows)
		if e.FlowMemory != 0 {
			r.kv("FlowMemory", FormatSize(e.FlowMemory))
		}
		if e.UDPTimeout != 0 {
			r.seconds("UDPTimeout", e.UDPTimeout)
		}
	}
	if d := c.DNSServer; d != nil {
		r.section("DNSServer")
		if len(d.Upstream) > 0 {
			r.kv("Upstream", join(d.Upstream))
		}
		for _, name := range slices.Sorted(maps.Keys(d.Records)) {
			r.kv("Record", strings.TrimSuffix(name, ".")+" "+joinWith(d.Records[name], " "))
		}
	}
	if m := c.Metrics; m != nil {
		r.section("Metrics")
		r.str("BindAddress", m.BindAddress)
	}
	if c.Resolve.Strategy != "" && c.Resolve.Strategy != ResolveAuto {
		r.section("Resolve")
		r.kv("ResolveStrategy", string(c.Resolve.Strategy))
	}
}

func (c *Config) renderInterface(r *renderer, opts RenderOptions) {
	i := &c.Interface
	r.section("Interface")
	switch {
	case i.PrivateKeyFile != "":
		r.str("PrivateKeyFile", i.PrivateKeyFile)
	case !i.PrivateKey.IsZero():
		if opts.IncludeSecrets {
			r.kv("PrivateKey", i.PrivateKey.Base64())
		} else {
			r.kv("PrivateKey", redacted)
		}
	}
	if len(i.Addresses) > 0 {
		r.kv("Address", join(i.Addresses))
	}
	if len(i.DNS)+len(i.DNSSearch) > 0 {
		items := make([]string, 0, len(i.DNS)+len(i.DNSSearch))
		for _, a := range i.DNS {
			items = append(items, a.String())
		}
		items = append(items, i.DNSSearch...)
		r.kv("DNS", strings.Join(items, ", "))
	}
	if i.MTU != DefaultMTU && i.MTU != 0 {
		r.kv("MTU", strconv.Itoa(i.MTU))
	}
	if i.ListenPort != 0 {
		r.kv("ListenPort", strconv.Itoa(i.ListenPort))
	}
	if len(i.CheckAlive) > 0 {
		r.kv("CheckAlive", join(i.CheckAlive))
		if i.CheckAliveInterval != DefaultCheckAliveInterval {
			r.seconds("CheckAliveInterval", i.CheckAliveInterval)
		}
	}
	if i.MemoryLimit != 0 {
		r.kv("MemoryLimit", FormatSize(i.MemoryLimit))
	}
}

func (p *Peer) render(r *renderer, opts RenderOptions) {
	r.section("Peer")
	r.kv("PublicKey", p.PublicKey.String())
	switch {
	case p.PresharedKeyFile != "":
		r.str("PresharedKeyFile", p.PresharedKeyFile)
	case !p.PresharedKey.IsZero():
		if opts.IncludeSecrets {
			r.kv("PresharedKey", p.PresharedKey.Base64())
		} else {
			r.kv("PresharedKey", redacted)
		}
	}
	r.str("Endpoint", p.Endpoint)
	// An empty list is written out: leaving the key off would read back
	// as wireproxy's catch-all, the opposite of routing nothing.
	if len(p.AllowedIPs) == 0 {
		r.kv("AllowedIPs", "")
	} else {
		r.kv("AllowedIPs", join(p.AllowedIPs))
	}
	if p.PersistentKeepalive != 0 {
		r.seconds("PersistentKeepalive", p.PersistentKeepalive)
	}
}

func join[T netip.Addr | netip.Prefix | netip.AddrPort](items []T) string {
	return joinWith(items, ", ")
}

func joinWith[T netip.Addr | netip.Prefix | netip.AddrPort](items []T, sep string) string {
	s := make([]string, len(items))
	for i, it := range items {
		s[i] = any(it).(fmt.Stringer).String()
	}
	return strings.Join(s, sep)
}

// quote escapes a value so parseValue and expand give it back: a leading
// "$" is doubled, and the value goes in quotes when it would otherwise
// lose a comment character, surrounding space or a leading quote. A value
// that needs quoting and holds both kinds of quote cannot be written; only
// an environment variable or a hand-built Config can produce one.
func quote(v string) string {
	if strings.HasPrefix(v, "$") {
		v = "$" + v
	}
	if v == "" || v[0] != '"' && v[0] != '\'' && strings.TrimSpace(stripComment(v)) == v {
		return v
	}
	if !strings.Contains(v, `"`) {
		return `"` + v + `"`
	}
	return "'" + v + "'"
}
