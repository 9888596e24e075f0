// Package config reads wgbore's configuration: a wg-quick file, optionally
// extended with the proxy and tunnel sections of wireproxy, so that users of
// either tool can point wgbore at the file they already have.
//
// The dialect is the union of what wg-quick and wireproxy accept:
//
//   - [Interface] and [Peer] with wg-quick's keys. Keys that only drive
//     wg-quick's shell side (Table, PreUp, PostUp, PreDown, PostDown,
//     SaveConfig, FwMark) are accepted with a warning, because a userspace
//     tunnel has no routing table or firewall to change.
//   - wireproxy's [Socks5], [http], [TCPClientTunnel], [TCPServerTunnel],
//     [STDIOTunnel], [UDPProxyTunnel] and [Resolve] sections, its top-level
//     WGConfig include and its CheckAlive keys in [Interface].
//   - Our own additions: [UDPServerTunnel] (the reverse of
//     UDPProxyTunnel), MaxConnections on every TCP listener, IdleTimeout
//     on the TCP tunnels, server mode's [Egress] and [DNSServer], and
//     [Metrics] for the health and metrics endpoints.
//   - PrivateKeyFile and PresharedKeyFile, so secrets can live in files that
//     a secret manager mounts, outside the config.
//
// Section and key names are case-insensitive, as both tools treat them.
// A value starting with "$" names an environment variable and "$$" escapes
// a literal "$", as in wireproxy. Comments start with "#" anywhere (as
// wg-quick strips them) or with ";" at the start of a line or after
// whitespace (as wireproxy's INI library does); a value in double quotes
// keeps both characters.
//
// Parsing is pure: the file system and the environment come in through
// Options, and problems come back as values (Errors, Config.Warnings).
package config

import (
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/wgbore/wgbore/protocol"
)

// DefaultMTU is wg-quick's fallback when it cannot derive the MTU from the
// route to the endpoint, and the engine's: we have no route to look at,
// so it is always our default.
const DefaultMTU = protocol.DefaultMTU

// DefaultUDPInactivityTimeout ends a UDP forwarding session when a tunnel
// section does not say: two minutes without a datagram either way, the
// stream timeout Linux conntrack uses, so a forwarder forgets departed
// clients about as fast as a NAT would. InactivityTimeout = 0 keeps
// sessions forever, as in wireproxy.
const DefaultUDPInactivityTimeout = 2 * time.Minute

// MaxConnectionsLimit is the largest MaxConnections accepted; more would
// exceed any descriptor limit long before it was reached.
const MaxConnectionsLimit = 1 << 20

// MinFlowMemory is the smallest [Egress] FlowMemory accepted: room for a
// few hundred flows.
const MinFlowMemory = 16 << 20

// DefaultCheckAliveInterval is wireproxy's ping period for CheckAlive.
const DefaultCheckAliveInterval = 5 * time.Second

// MTU bounds. 576 is the smallest datagram every IPv4 host must accept, so a
// lower tunnel MTU cannot be relied on; 65535 is the largest IP packet.
const (
	MinMTU = 576
	MaxMTU = 65535
)

// Options injects everything Parse would otherwise take from the process,
// so tests and embedders control the environment and the file system.
type Options struct {
	// LookupEnv resolves "$NAME" values. Nil means os.LookupEnv.
	LookupEnv func(name string) (string, bool)
	// ReadFile reads key files and WGConfig includes. Nil means os.ReadFile.
	ReadFile func(path string) ([]byte, error)
	// Stat reports a key file's mode for the permission warning. Nil means
	// os.Stat. An error from Stat skips the check rather than failing the
	// parse: the file was readable, which is what matters for running.
	Stat func(path string) (fs.FileInfo, error)
}

func (o Options) withDefaults() Options {
	if o.LookupEnv == nil {
		o.LookupEnv = os.LookupEnv
	}
	if o.ReadFile == nil {
		o.ReadFile = os.ReadFile
	}
	if o.Stat == nil {
		o.Stat = defaultStat()
	}
	return o
}

// Config is one parsed file. Sections that may repeat are slices in file
// order; the order between different kinds of section carries no meaning,
// as in wireproxy.
type Config struct {
	// WGConfig is the top-level include of wireproxy, as written. When set,
	// Interface and Peers came from that file.
	WGConfig string

	Interface Interface
	Peers     []Peer

	Socks5           []Socks5
	HTTP             []HTTP
	TCPClientTunnels []TCPClientTunnel
	TCPServerTunnels []TCPServerTunnel
	STDIOTunnels     []STDIOTunnel
	UDPProxyTunnels  []UDPProxyTunnel
	UDPServerTunnels []UDPServerTunnel
	Resolve          Resolve

	// Egress and DNSServer configure server mode (wgbore serve); nil when
	// the file has no such section.
	Egress    *Egress
	DNSServer *DNSServer

	// Metrics serves /metrics, /healthz and /readyz; nil when the file
	// has no [Metrics] section.
	Metrics *Metrics

	// Warnings are the problems that did not stop the parse.
	Warnings []Warning
}

// Interface is the [Interface] section: who we are on the tunnel.
type Interface struct {
	PrivateKey protocol.PrivateKey
	// PrivateKeyFile is the path as written; PrivateKey holds what was read
	// from it. Keeping the path lets Render write the reference back
	// instead of the secret.
	PrivateKeyFile string
	// Addresses keep the prefix length as written (10.0.0.2/24 stays so),
	// because the length tells netstack which on-link route to add. A bare
	// address becomes /32 or /128, as wg-quick treats it.
	Addresses []netip.Prefix
	// DNS holds the entries of DNS that are IP addresses; DNSSearch holds
	// the rest, which wg-quick passes to resolvconf as search domains.
	DNS       []netip.Addr
	DNSSearch []string
	MTU       int
	// ListenPort 0 means a random port, as in wg(8).
	ListenPort int
	// CheckAlive and CheckAliveInterval are wireproxy's readiness probe:
	// addresses pinged through the tunnel every interval.
	CheckAlive         []netip.Addr
	CheckAliveInterval time.Duration
	// MemoryLimit is the memory budget of the whole process, in bytes
	// (a wgbore key: MemoryLimit = 64MiB); 0 means none was given, and
	// the container's limit, if any, applies.
	MemoryLimit int64
}

// Peer is one [Peer] section.
type Peer struct {
	PublicKey        protocol.PublicKey
	PresharedKey     protocol.PresharedKey
	PresharedKeyFile string
	// Endpoint is kept as written so a hostname is resolved by the engine,
	// and re-resolved while handshakes fail, rather than once here.
	Endpoint            string
	AllowedIPs          []netip.Prefix
	PersistentKeepalive time.Duration
}

// Position is where a section starts: the file it was read from, named as
// in messages (the name given to Parse), and the 1-based line of its
// header. Parse checks each line as it reads it, but some problems are
// only found later, from what a section means rather than how it is
// written: a certificate that cannot be loaded, two sections on one
// address. Sections keep their Position so that such messages can still
// point at the file and line, as Parse's own errors do.
//
// A Position is not part of what a section says: Render does not write
// it, and a Config built by hand has the zero Position.
type Position struct {
	File string
	Line int
}

// String renders "file:line", the form of Error and Warning, or just the
// file when the line is unknown.
func (p Position) String() string {
	if p.Line <= 0 {
		return p.File
	}
	return p.File + ":" + strconv.Itoa(p.Line)
}

// Socks5 is wireproxy's [Socks5] section: a SOCKS5 proxy into the tunnel.
// Authentication is on when Username is set.
type Socks5 struct {
	// Pos is the section's header line, for messages; see Position.
	Pos         Position
	BindAddress string
	Username    string
	Password    Secret
	// MaxConnections caps the clients served at once; 0 means the
	// proxy's default.
	MaxConnections int
	// DialTimeout bounds a CONNECT's dial into the tunnel; 0 means the
	// proxy's default (30 s).
	DialTimeout time.Duration
}

// HTTP is wireproxy's [http] section: an HTTP proxy into the tunnel, served
// over TLS when CertFile and KeyFile are set.
type HTTP struct {
	// Pos is the section's header line, for messages; see Position.
	Pos         Position
	BindAddress string
	Username    string
	Password    Secret
	CertFile    string
	KeyFile     string
	// MaxConnections caps the clients served at once; 0 means the
	// proxy's default.
	MaxConnections int
	// DialTimeout bounds a dial into the tunnel; 0 means the proxy's
	// default (30 s).
	DialTimeout time.Duration
}

// TCPClientTunnel listens on the host at BindAddress and forwards each
// connection to Target through the tunnel.
type TCPClientTunnel struct {
	// Pos is the section's header line, for messages; see Position.
	Pos         Position
	BindAddress string
	Target      string
	// MaxConnections caps the connections relayed at once; 0 means the
	// default. IdleTimeout closes a connection silent both ways for that
	// long; 0 never does.
	MaxConnections int
	IdleTimeout    time.Duration
}

// TCPServerTunnel listens inside the tunnel on ListenPort and forwards each
// connection to Target on the host's network.
type TCPServerTunnel struct {
	// Pos is the section's header line, for messages; see Position.
	Pos        Position
	ListenPort int
	Target     string
	// MaxConnections and IdleTimeout are as in TCPClientTunnel.
	MaxConnections int
	IdleTimeout    time.Duration
}

// STDIOTunnel connects the process's stdin and stdout to Target through the
// tunnel, for ssh's ProxyCommand.
type STDIOTunnel struct {
	// Pos is the section's header line, for messages; see Position.
	Pos    Position
	Target string
}

// UDPProxyTunnel relays datagrams from BindAddress on the host to Target
// through the tunnel, one session per client address. A session ends after
// InactivityTimeout without traffic (DefaultUDPInactivityTimeout when the
// key is absent); zero keeps sessions forever, as in wireproxy.
type UDPProxyTunnel struct {
	// Pos is the section's header line, for messages; see Position.
	Pos               Position
	BindAddress       string
	Target            string
	InactivityTimeout time.Duration
}

// UDPServerTunnel is UDPProxyTunnel reversed: it listens inside the tunnel
// on ListenPort and relays each remote client's datagrams to Target on
// the host's network.
type UDPServerTunnel struct {
	// Pos is the section's header line, for messages; see Position.
	Pos               Position
	ListenPort        int
	Target            string
	InactivityTimeout time.Duration
}

// Egress is the [Egress] section: where server mode lets peers' flows go
// on the host's network. A destination matching the most specific prefix
// of Allow or Deny (Deny on a tie) is decided by it; the rest follow the
// built-in policy, which lets public unicast through and keeps peers away
// from the host's loopback, link-local, private and CGNAT ranges.
type Egress struct {
	Allow, Deny []netip.Prefix
	// HostAddresses are the host's own public addresses that it cannot
	// see on its interfaces, such as a cloud's 1:1 NAT address: flows to
	// them are flows to the host itself.
	HostAddresses []netip.Addr
	// MaxFlowsPerPeer caps one peer's TCP and UDP flows at once; 0 means
	// the server's default.
	MaxFlowsPerPeer int
	// MaxFlows caps all peers' flows together; 0 means a default derived
	// from FlowMemory, else from the process's memory budget.
	MaxFlows int
	// FlowMemory is the memory, in bytes, that flows may take, from
	// which MaxFlows' default is derived; 0 means none set.
	FlowMemory int64
	// UDPTimeout ends a UDP flow silent for that long; 0 means the
	// server's default.
	UDPTimeout time.Duration
	Pos        Position
}

// DNSServer is the [DNSServer] section: a DNS server for peers on our
// tunnel addresses. Names in Records are answered locally; the rest go to
// Upstream, or to the host's resolvers when it is empty.
type DNSServer struct {
	Upstream []netip.AddrPort
	// Records maps lower-case, fully qualified names ("demo.wg.") to
	// their addresses.
	Records map[string][]netip.Addr
	Pos     Position
}

// Metrics is the [Metrics] section: where the HTTP endpoints for
// Prometheus and for liveness and readiness probes listen. It is a
// section rather than only a flag so that a config mounted into a
// container carries everything the probes need.
type Metrics struct {
	// BindAddress is host:port as written; an empty host is filled in by
	// whoever listens, so the parser stays free of that policy.
	BindAddress string
	Pos         Position
}

// ResolveStrategy says which address family wins when a name resolves to
// both.
type ResolveStrategy string

const (
	// ResolveAuto prefers IPv6 when the interface has an IPv6 address and
	// IPv4 otherwise, so a v4-only tunnel never picks an unreachable AAAA.
	ResolveAuto ResolveStrategy = "auto"
	ResolveIPv4 ResolveStrategy = "ipv4"
	ResolveIPv6 ResolveStrategy = "ipv6"
)

// Resolve is wireproxy's [Resolve] section.
type Resolve struct {
	Strategy ResolveStrategy
}

// Secret is a string that never prints itself, for proxy passwords, so a
// Config can go to a logger or into an error without leaking them. Convert
// with string(s) where the real value is needed.
type Secret string

const redacted = "(redacted)"

func (Secret) String() string               { return redacted }
func (Secret) GoString() string             { return redacted }
func (Secret) Format(f fmt.State, _ rune)   { f.Write([]byte(redacted)) }
func (Secret) LogValue() slog.Value         { return slog.StringValue(redacted) }
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Load reads and parses the file at path. Relative paths inside it
// (PrivateKeyFile, PresharedKeyFile, WGConfig) resolve against its
// directory, so a config and its key files move together.
func Load(path string, opts Options) (*Config, error) {
	opts = opts.withDefaults()
	src, err := opts.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, src, opts)
}

// Parse parses src. name is used in messages and its directory anchors
// relative paths, so pass the path the file was read from. On any error the
// result is nil and the error is an Errors listing every problem found.
func Parse(name string, src []byte, opts Options) (*Config, error) {
	p := newParser(opts.withDefaults())
	cfg := p.parse(name, src)
	if len(p.errs) > 0 {
		p.sortErrors()
		return nil, p.errs
	}
	p.sortWarnings()
	cfg.Warnings = p.warns
	return cfg, nil
}
