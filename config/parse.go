package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wgbore/wgbore/protocol"
)

type sectionKind int

const (
	topLevel sectionKind = iota
	secInterface
	secPeer
	secSocks5
	secHTTP
	secTCPClient
	secTCPServer
	secSTDIO
	secUDPProxy
	secUDPServer
	secResolve
	secEgress
	secDNSServer
	secMetrics
	numSections

	// secSkip swallows the keys of a section that was already reported
	// (unknown, misplaced), so one mistake yields one error, not one per
	// line below it.
	secSkip sectionKind = -1
)

// sectionNames are the spellings Render writes and messages use. "http" is
// lower case because that is how wireproxy documents it.
var sectionNames = [numSections]string{
	topLevel:     "",
	secInterface: "Interface",
	secPeer:      "Peer",
	secSocks5:    "Socks5",
	secHTTP:      "http",
	secTCPClient: "TCPClientTunnel",
	secTCPServer: "TCPServerTunnel",
	secSTDIO:     "STDIOTunnel",
	secUDPProxy:  "UDPProxyTunnel",
	secUDPServer: "UDPServerTunnel",
	secResolve:   "Resolve",
	secEgress:    "Egress",
	secDNSServer: "DNSServer",
	secMetrics:   "Metrics",
}

type keyKind int

const (
	// scalar keys may appear once per section; a second line is an error
	// rather than a silent override, because either choice of winner would
	// surprise half the users.
	scalar keyKind = iota
	// list keys append, so long lists can be split over lines as wg-quick
	// allows.
	list
	// wgQuickOnly keys are accepted for compatibility and do nothing.
	wgQuickOnly
)

type keySpec struct {
	name string
	kind keyKind
	// optional values may be empty: an empty Password is no password.
	optional bool
}

var sectionKeys = [numSections][]keySpec{
	topLevel: {{name: "WGConfig"}},
	secInterface: {
		{name: "PrivateKey"},
		{name: "PrivateKeyFile"},
		{name: "Address", kind: list},
		{name: "DNS", kind: list},
		{name: "MTU"},
		{name: "ListenPort"},
		{name: "CheckAlive", kind: list},
		{name: "CheckAliveInterval"},
		{name: "MemoryLimit"},
		{name: "Table", kind: wgQuickOnly},
		{name: "PreUp", kind: wgQuickOnly},
		{name: "PostUp", kind: wgQuickOnly},
		{name: "PreDown", kind: wgQuickOnly},
		{name: "PostDown", kind: wgQuickOnly},
		{name: "SaveConfig", kind: wgQuickOnly},
		{name: "FwMark", kind: wgQuickOnly},
	},
	secPeer: {
		{name: "PublicKey"},
		{name: "PresharedKey"},
		{name: "PresharedKeyFile"},
		{name: "Endpoint"},
		{name: "AllowedIPs", kind: list},
		{name: "PersistentKeepalive"},
	},
	secSocks5: {
		{name: "BindAddress"},
		{name: "Username", optional: true},
		{name: "Password", optional: true},
		{name: "MaxConnections"},
		{name: "DialTimeout"},
	},
	secHTTP: {
		{name: "BindAddress"},
		{name: "Username", optional: true},
		{name: "Password", optional: true},
		{name: "CertFile", optional: true},
		{name: "KeyFile", optional: true},
		{name: "MaxConnections"},
		{name: "DialTimeout"},
	},
	secTCPClient: {{name: "BindAddress"}, {name: "Target"}, {name: "MaxConnections"}, {name: "IdleTimeout"}},
	secTCPServer: {{name: "ListenPort"}, {name: "Target"}, {name: "MaxConnections"}, {name: "IdleTimeout"}},
	secSTDIO:     {{name: "Target"}},
	secUDPProxy:  {{name: "BindAddress"}, {name: "Target"}, {name: "InactivityTimeout"}},
	secUDPServer: {{name: "ListenPort"}, {name: "Target"}, {name: "InactivityTimeout"}},
	secResolve:   {{name: "ResolveStrategy", optional: true}},
	secEgress:    {{name: "Allow", kind: list}, {name: "Deny", kind: list}, {name: "HostAddress", kind: list}, {name: "MaxFlowsPerPeer"}, {name: "MaxFlows"}, {name: "FlowMemory"}, {name: "UDPTimeout"}},
	secDNSServer: {{name: "Upstream", kind: list}, {name: "Record", kind: list}},
	secMetrics:   {{name: "BindAddress"}},
}

// requiredKeys are checked when a section closes. [Interface] and [Peer]
// have their own checks with messages of their own.
var requiredKeys = [numSections][]string{
	secSocks5:    {"BindAddress"},
	secHTTP:      {"BindAddress"},
	secTCPClient: {"BindAddress", "Target"},
	secTCPServer: {"ListenPort", "Target"},
	secSTDIO:     {"Target"},
	secUDPProxy:  {"BindAddress", "Target"},
	secUDPServer: {"ListenPort", "Target"},
	secMetrics:   {"BindAddress"},
}

func lookupSection(name string) (sectionKind, bool) {
	for k := secInterface; k < numSections; k++ {
		if strings.EqualFold(name, sectionNames[k]) {
			return k, true
		}
	}
	return 0, false
}

func lookupKey(kind sectionKind, name string) (keySpec, bool) {
	if kind < topLevel || kind >= numSections {
		return keySpec{}, false
	}
	for _, s := range sectionKeys[kind] {
		if strings.EqualFold(name, s.name) {
			return s, true
		}
	}
	return keySpec{}, false
}

func keyNames(kind sectionKind) []string {
	var names []string
	for _, s := range sectionKeys[kind] {
		names = append(names, s.name)
	}
	return names
}

// homeSection finds the section a misplaced key belongs in, so "Endpoint in
// [Interface]" can say where it should go.
func homeSection(name string) (sectionKind, keySpec, bool) {
	for k := secInterface; k < numSections; k++ {
		if s, ok := lookupKey(k, name); ok {
			return k, s, true
		}
	}
	return 0, keySpec{}, false
}

type fileState struct {
	name     string // as shown in messages
	dir      string // anchors relative paths
	included bool   // read through WGConfig
}

type section struct {
	kind sectionKind
	line int            // header line; 0 for the top level
	seen map[string]int // canonical key → first line it appeared on
	// dup marks a repeat of a section that may appear once. Its values are
	// still checked, but not its completeness: the repeat is the mistake.
	dup bool

	iface       *Interface
	peer        Peer
	peerKeyLine int
	peerKeyOK   bool
	socks       Socks5
	http        HTTP
	tcpClient   TCPClientTunnel
	tcpServer   TCPServerTunnel
	stdio       STDIOTunnel
	udpProxy    UDPProxyTunnel
	udpServer   UDPServerTunnel
	resolve     *Resolve
	egress      *Egress
	dnsServer   *DNSServer
	metrics     *Metrics
}

type peerPlace struct {
	file       string
	headerLine int
	keyLine    int
	key        protocol.PublicKey
}

type parser struct {
	opts  Options
	cfg   *Config
	errs  Errors
	warns []Warning
	files []string // in the order first seen, to sort messages by

	ifaceFile string
	ifaceLine int // header of the [Interface] that fills cfg.Interface
	// catchAllLine is the header of the [Peer] that, lacking AllowedIPs,
	// took every address.
	catchAllLine int
	resolveLine  int
	egressLine   int
	dnsLine      int
	metricsLine  int
	peers        []peerPlace
	// peerAt finds a peer in peers by its key, so that a file with
	// thousands of peers is checked for repeats in one pass. Public keys
	// are not secret: a map's timing tells nothing worth hiding.
	peerAt map[protocol.PublicKey]int

	wgConfigLine int
	included     *fileState // the WGConfig file, once read
}

func newParser(opts Options) *parser { return &parser{opts: opts} }

func (p *parser) errorf(f *fileState, line int, key, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: f.name, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

func (p *parser) errorWrap(f *fileState, line int, key string, err error, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: f.name, Line: line, Key: key, Msg: fmt.Sprintf(format, args...), Err: err})
}

func (p *parser) warnf(f *fileState, line int, key, format string, args ...any) {
	p.warns = append(p.warns, Warning{File: f.name, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

func (p *parser) fileRank(name string) int {
	if i := slices.Index(p.files, name); i >= 0 {
		return i
	}
	return len(p.files)
}

// firstOf handles a section that may appear once: the first records its
// line in *seen; a second is an error that names the first's line, and
// its section is parsed (so its own lines are still checked) but kept
// out of the Config. It reports whether this is the first.
func (p *parser) firstOf(f *fileState, s *section, n int, seen *int, name string) bool {
	if *seen != 0 {
		p.errorf(f, n, "", "[%s] appears twice (first on line %d)", name, *seen)
		s.dup = true
		return false
	}
	*seen = n
	return true
}

// sortErrors orders problems by file and line, because the structural
// checks run when a section closes and would otherwise be reported after
// the lines below them. Problems of a whole file come after its lines.
func (p *parser) sortErrors() {
	slices.SortStableFunc(p.errs, func(a, b *Error) int {
		return p.compare(a.File, a.Line, b.File, b.Line)
	})
}

func (p *parser) sortWarnings() {
	slices.SortStableFunc(p.warns, func(a, b Warning) int {
		return p.compare(a.File, a.Line, b.File, b.Line)
	})
}

func (p *parser) compare(fileA string, lineA int, fileB string, lineB int) int {
	if d := p.fileRank(fileA) - p.fileRank(fileB); d != 0 {
		return d
	}
	if lineA == 0 {
		lineA = math.MaxInt
	}
	if lineB == 0 {
		lineB = math.MaxInt
	}
	return cmp.Compare(lineA, lineB)
}

func (p *parser) parse(name string, src []byte) *Config {
	p.cfg = &Config{
		Interface: Interface{MTU: DefaultMTU, CheckAliveInterval: DefaultCheckAliveInterval},
		Resolve:   Resolve{Strategy: ResolveAuto},
	}
	f := &fileState{name: name, dir: filepath.Dir(name)}
	p.parseFile(f, src)
	p.finish(f)
	return p.cfg
}

var utf8BOM = []byte{0xEF, 0xBB, 0xBF}

func (p *parser) parseFile(f *fileState, src []byte) {
	p.files = append(p.files, f.name)
	// Notepad writes a byte-order mark; wg-quick on Windows accepts it.
	src = bytes.TrimPrefix(src, utf8BOM)
	cur := &section{kind: topLevel, seen: map[string]int{}}
	for i, raw := range strings.Split(string(src), "\n") {
		n := i + 1
		text := strings.TrimSpace(raw) // also drops the \r of CRLF files
		if text == "" || text[0] == '#' || text[0] == ';' {
			continue
		}
		if text[0] == '[' {
			p.closeSection(f, cur)
			cur = p.openSection(f, text, n)
			continue
		}
		p.keyLine(f, cur, text, n)
	}
	p.closeSection(f, cur)
}

func (p *parser) openSection(f *fileState, text string, n int) *section {
	skip := &section{kind: secSkip, line: n, seen: map[string]int{}}
	header := strings.TrimSpace(stripComment(text))
	if !strings.HasSuffix(header, "]") {
		p.errorf(f, n, "", "section header is missing its closing ']'")
		return skip
	}
	name := strings.TrimSpace(header[1 : len(header)-1])
	kind, ok := lookupSection(name)
	if !ok {
		var names []string
		for k := secInterface; k < numSections; k++ {
			names = append(names, sectionNames[k])
		}
		msg := "unknown section"
		if safeName(name) {
			msg += " [" + name + "]"
		}
		if s := suggest(name, names); s != "" {
			msg += " (did you mean [" + s + "]?)"
		}
		p.errorf(f, n, "", "%s", msg)
		return skip
	}
	if f.included && kind != secInterface && kind != secPeer {
		p.warnf(f, n, "", "[%s] has no effect in a file included by WGConfig: only [Interface] and [Peer] are read from it, as in wireproxy", sectionNames[kind])
		return skip
	}
	if !f.included && p.cfg.WGConfig != "" && (kind == secInterface || kind == secPeer) {
		p.errorf(f, n, "", "[%s] cannot be used together with WGConfig (line %d), which already supplies [Interface] and [Peer]", sectionNames[kind], p.wgConfigLine)
		return skip
	}

	s := &section{kind: kind, line: n, seen: map[string]int{}}
	// Only the kind's own struct is kept; setting all is simpler than
	// switching on the kind and costs nothing.
	pos := Position{File: f.name, Line: n}
	s.socks.Pos = pos
	s.http.Pos = pos
	s.tcpClient.Pos = pos
	s.tcpServer.Pos = pos
	s.stdio.Pos = pos
	s.udpProxy.Pos = pos
	s.udpServer.Pos = pos
	s.udpProxy.InactivityTimeout = DefaultUDPInactivityTimeout
	s.udpServer.InactivityTimeout = DefaultUDPInactivityTimeout
	switch kind {
	case secInterface:
		if p.firstOf(f, s, n, &p.ifaceLine, "Interface") {
			p.ifaceFile = f.name
			s.iface = &p.cfg.Interface
		} else {
			s.iface = new(Interface)
		}
	case secResolve:
		if p.firstOf(f, s, n, &p.resolveLine, "Resolve") {
			s.resolve = &p.cfg.Resolve
		} else {
			s.resolve = new(Resolve)
		}
	case secEgress:
		s.egress = &Egress{Pos: pos}
		if p.firstOf(f, s, n, &p.egressLine, "Egress") {
			p.cfg.Egress = s.egress
		}
	case secDNSServer:
		s.dnsServer = &DNSServer{Pos: pos}
		if p.firstOf(f, s, n, &p.dnsLine, "DNSServer") {
			p.cfg.DNSServer = s.dnsServer
		}
	case secMetrics:
		s.metrics = &Metrics{Pos: pos}
		if p.firstOf(f, s, n, &p.metricsLine, "Metrics") {
			p.cfg.Metrics = s.metrics
		}
	}
	return s
}

func (p *parser) closeSection(f *fileState, s *section) {
	switch s.kind {
	case secInterface:
		if s.dup {
			return
		}
		_, hasKey := s.seen["PrivateKey"]
		_, hasFile := s.seen["PrivateKeyFile"]
		if !hasKey && !hasFile {
			p.errorf(f, s.line, "", "[Interface] has no PrivateKey")
		}
		// An empty "CheckAlive =" sets nothing, so it does not make an
		// interval valid either (wireproxy counts addresses too).
		if at, ok := s.seen["CheckAliveInterval"]; ok && len(s.iface.CheckAlive) == 0 {
			p.errorf(f, at, "CheckAliveInterval", "only valid when CheckAlive is set")
		}
	case secPeer:
		if _, ok := s.seen["PublicKey"]; !ok {
			p.errorf(f, s.line, "", "[Peer] has no PublicKey")
			return
		}
		if s.peerKeyOK {
			if i, ok := p.peerAt[s.peer.PublicKey]; ok {
				p.errorf(f, s.peerKeyLine, "PublicKey", "same as the [Peer] on line %d; each peer needs its own key", p.peers[i].headerLine)
				return
			}
			if p.peerAt == nil {
				p.peerAt = map[protocol.PublicKey]int{}
			}
			p.peerAt[s.peer.PublicKey] = len(p.peers)
			p.peers = append(p.peers, peerPlace{file: f.name, headerLine: s.line, keyLine: s.peerKeyLine, key: s.peer.PublicKey})
		}
		if _, ok := s.seen["AllowedIPs"]; !ok {
			// wireproxy routes everything to a peer without AllowedIPs,
			// and its README's sample has none; wg-quick would route
			// nothing, which no one writes on purpose.
			if p.catchAllLine != 0 {
				p.errorf(f, s.line, "", "[Peer] has no AllowedIPs, nor has the [Peer] on line %d: only one peer can take every address; list this one's", p.catchAllLine)
				return
			}
			p.catchAllLine = s.line
			s.peer.AllowedIPs = []netip.Prefix{netip.PrefixFrom(netip.IPv4Unspecified(), 0), netip.PrefixFrom(netip.IPv6Unspecified(), 0)}
			p.warnf(f, s.line, "", "[Peer] has no AllowedIPs: routing every address (0.0.0.0/0, ::/0) to it, as wireproxy does")
		}
		p.cfg.Peers = append(p.cfg.Peers, s.peer)
	default:
		if s.kind <= topLevel || s.kind >= numSections || s.dup {
			return
		}
		complete := true
		for _, k := range requiredKeys[s.kind] {
			if _, ok := s.seen[k]; !ok {
				p.errorf(f, s.line, "", "[%s] has no %s", sectionNames[s.kind], k)
				complete = false
			}
		}
		if s.kind == secHTTP {
			if (s.http.CertFile == "") != (s.http.KeyFile == "") {
				p.errorf(f, s.line, "", "[http] needs both CertFile and KeyFile to serve HTTPS, or neither")
				complete = false
			}
		}
		if !complete {
			return
		}
		switch s.kind {
		case secSocks5:
			p.cfg.Socks5 = append(p.cfg.Socks5, s.socks)
		case secHTTP:
			p.cfg.HTTP = append(p.cfg.HTTP, s.http)
		case secTCPClient:
			p.cfg.TCPClientTunnels = append(p.cfg.TCPClientTunnels, s.tcpClient)
		case secTCPServer:
			p.cfg.TCPServerTunnels = append(p.cfg.TCPServerTunnels, s.tcpServer)
		case secSTDIO:
			p.cfg.STDIOTunnels = append(p.cfg.STDIOTunnels, s.stdio)
		case secUDPProxy:
			p.cfg.UDPProxyTunnels = append(p.cfg.UDPProxyTunnels, s.udpProxy)
		case secUDPServer:
			p.cfg.UDPServerTunnels = append(p.cfg.UDPServerTunnels, s.udpServer)
		}
	}
}

// finish runs the checks that need the whole file.
func (p *parser) finish(f *fileState) {
	if p.ifaceLine == 0 {
		switch {
		case p.included != nil:
			p.errorf(p.included, 0, "", "no [Interface] section")
		case p.cfg.WGConfig == "":
			p.errorf(f, 0, "", "no [Interface] section")
		}
		// An unreadable WGConfig was reported where it is named.
	}
	if priv := p.cfg.Interface.PrivateKey; !priv.IsZero() {
		own := priv.PublicKey()
		for _, pp := range p.peers {
			if pp.key.Equal(own) {
				p.errs = append(p.errs, &Error{File: pp.file, Line: pp.keyLine, Key: "PublicKey",
					Msg: "is this interface's own public key; a peer must be another machine"})
			}
		}
	}
}

// line is one "Key = value" line whose key is known: where it is, what it
// says, and the section it fills. The setters and value checks are its
// methods, so every message they report carries the line's file, number
// and key without each call passing them on.
type line struct {
	p   *parser
	f   *fileState
	s   *section
	n   int    // line number in f
	key string // canonical spelling, as messages name it
	v   string // the value, unquoted and expanded
}

func (l *line) errorf(format string, args ...any) {
	l.p.errorf(l.f, l.n, l.key, format, args...)
}

func (l *line) errorWrap(err error, format string, args ...any) {
	l.p.errorWrap(l.f, l.n, l.key, err, format, args...)
}

func (l *line) warnf(format string, args ...any) {
	l.p.warnf(l.f, l.n, l.key, format, args...)
}

func (p *parser) keyLine(f *fileState, s *section, text string, n int) {
	eq := strings.IndexByte(text, '=')
	if eq < 0 || strings.ContainsRune(text[:eq], '#') || keyThenWords(s.kind, text[:eq]) {
		if s.kind == secSkip || s.kind == topLevel {
			if s.kind == topLevel {
				p.errorf(f, n, "", "expected \"Key = value\" or \"[Section]\"")
			}
			return
		}
		// Never echo the line: it may well be "PrivateKey <secret>".
		if fields := strings.Fields(stripComment(text)); len(fields) > 0 {
			if spec, ok := lookupKey(s.kind, fields[0]); ok {
				if _, dup := s.seen[spec.name]; !dup {
					s.seen[spec.name] = n // the key is there, just malformed
				}
				p.errorf(f, n, spec.name, "missing '=' between the key and its value")
				return
			}
		}
		p.errorf(f, n, "", "expected \"Key = value\" or \"[Section]\"")
		return
	}
	if s.kind == secSkip {
		return
	}
	rawKey := strings.TrimSpace(text[:eq])
	if rawKey == "" {
		p.errorf(f, n, "", "missing key name before '='")
		return
	}
	spec, ok := lookupKey(s.kind, rawKey)
	if !ok {
		p.unknownKey(f, s, rawKey, n)
		return
	}
	l := &line{p: p, f: f, s: s, n: n, key: spec.name}
	if spec.kind == wgQuickOnly {
		l.warnf("has no effect: wgbore changes no routes, firewall or interface, so only wg-quick uses it")
		return
	}
	if first, dup := s.seen[spec.name]; dup && spec.kind == scalar {
		l.errorf("set twice (first on line %d)", first)
		return
	}
	if _, dup := s.seen[spec.name]; !dup {
		// Marked before the value is checked, so a bad value does not also
		// produce a "missing key" error when the section closes.
		s.seen[spec.name] = n
	}
	value, msg := parseValue(text[eq+1:])
	if msg != "" {
		l.errorf("%s", msg)
		return
	}
	if l.v, ok = l.expand(value); !ok {
		return
	}
	if l.v == "" && spec.kind == scalar && !spec.optional {
		l.errorf("has no value")
		return
	}
	l.set()
}

// keyThenWords reports whether the text before the first '=' is a known
// key followed by more words. That is "PrivateKey <base64>" with its '='
// forgotten: the key's own base64 padding supplied the '=' we split at.
func keyThenWords(kind sectionKind, beforeEq string) bool {
	fields := strings.Fields(beforeEq)
	if len(fields) < 2 {
		return false
	}
	_, ok := lookupKey(kind, fields[0])
	return ok
}

func (p *parser) unknownKey(f *fileState, s *section, rawKey string, n int) {
	shown := ""
	if safeName(rawKey) {
		shown = strconv.Quote(rawKey) + " "
	}
	home, spec, known := homeSection(rawKey)
	if s.kind == topLevel {
		if known {
			p.errorf(f, n, spec.name, "outside any section (it belongs in [%s])", sectionNames[home])
			return
		}
		msg := "key " + shown + "outside any section"
		if sg := suggest(rawKey, keyNames(topLevel)); sg != "" {
			msg += " (did you mean " + sg + "?)"
		}
		p.errorf(f, n, "", "%s", msg)
		return
	}
	msg := "unknown key " + shown + "in [" + sectionNames[s.kind] + "]"
	if known {
		msg += " (it belongs in [" + sectionNames[home] + "])"
	} else if sg := suggest(rawKey, keyNames(s.kind)); sg != "" {
		msg += " (did you mean " + sg + "?)"
	}
	p.errorf(f, n, "", "%s", msg)
}

// safeName reports whether user text is a plausible key or section name
// and so fine to repeat in a message. Anything longer could be a key
// pasted into the wrong place, and messages must never carry secrets.
func safeName(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// parseValue takes the text after '=' and returns the value, or a message
// saying why there is none. A value in double or single quotes is taken
// verbatim up to the matching quote, so a password may hold '#' or ';';
// the quotes come off as wireproxy's INI library takes them off. Otherwise
// comments are cut and surrounding space trimmed.
func parseValue(raw string) (string, string) {
	v := strings.TrimSpace(raw)
	if v != "" && (v[0] == '"' || v[0] == '\'') {
		q := v[0]
		end := strings.IndexByte(v[1:], q)
		if end < 0 {
			return "", fmt.Sprintf("quoted value has no closing %q", q)
		}
		rest := strings.TrimSpace(v[end+2:])
		if rest != "" && rest[0] != '#' && rest[0] != ';' {
			return "", fmt.Sprintf("unexpected text after the closing %q", q)
		}
		return v[1 : end+1], ""
	}
	return strings.TrimSpace(stripComment(v)), ""
}

// stripComment cuts s at a comment. '#' starts one anywhere, because
// wg-quick strips everything after it. ';' starts one only at the start or
// after a blank: wireproxy's INI library treats it as a comment too, but
// requiring the blank keeps a ';' inside a password or a path intact.
func stripComment(s string) string {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '#':
			return s[:i]
		case ';':
			if i == 0 || s[i-1] == ' ' || s[i-1] == '\t' {
				return s[:i]
			}
		}
	}
	return s
}

// expand applies wireproxy's environment rule: a value that starts with
// "$" is the variable of that name, and a leading "$$" stands for a literal
// "$". Only a whole value is substituted, as in wireproxy, so "$" inside a
// value means itself.
func (l *line) expand(v string) (string, bool) {
	if !strings.HasPrefix(v, "$") {
		return v, true
	}
	if strings.HasPrefix(v, "$$") {
		return v[1:], true
	}
	name := v[1:]
	shown := "named here"
	if validEnvName(name) {
		shown = "$" + name
	}
	val, ok := l.p.opts.LookupEnv(name)
	if !ok {
		l.errorf("environment variable %s is not set", shown)
		return "", false
	}
	if strings.ContainsAny(val, "\r\n") {
		// A config value is one line; a line break could not be written back
		// by Render and is almost certainly a mistake in the environment.
		l.errorf("environment variable %s contains a line break", shown)
		return "", false
	}
	return val, true
}

// validEnvName accepts the names a shell could export. Other text after
// "$" is not repeated in messages, as it may be a misplaced secret.
func validEnvName(s string) bool {
	if s == "" || len(s) > 64 || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func splitList(v string) []string {
	var out []string
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// resolvePath anchors a relative path at the directory of the file that
// names it, so a config and the files it names move together.
func (f *fileState) resolvePath(path string) string {
	if filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(f.dir, path)
}

// errNoModes stands in for a mode check on systems whose file modes say
// nothing about who can read a file.
var errNoModes = errors.New("file modes not meaningful on this system")

func defaultStat() func(string) (fs.FileInfo, error) {
	if runtime.GOOS == "windows" {
		return func(string) (fs.FileInfo, error) { return nil, errNoModes }
	}
	return os.Stat
}

// readKeyFile reads a key file and warns when it is readable by group or
// others, as wg(8) does: a private key in a world-readable file is as
// good as published.
func (l *line) readKeyFile(path string) (string, bool) {
	full := l.f.resolvePath(path)
	data, err := l.p.opts.ReadFile(full)
	if err != nil {
		l.errorWrap(err, "cannot read key file: %v", err)
		return "", false
	}
	text := strings.TrimSpace(string(data))
	clear(data)
	// Windows has no such modes (Go reports every writable file as 0666):
	// there the file's access list decides, which Stat cannot show.
	if fi, err := l.p.opts.Stat(full); err == nil && runtime.GOOS != "windows" {
		if perm := fi.Mode().Perm(); perm&0o044 != 0 {
			l.warnf("%s is readable by group or others (mode %04o); chmod 600 it", full, perm)
		}
	}
	return text, true
}

func keyError(err error) string {
	if errors.Is(err, protocol.ErrBadKey) {
		return protocol.ErrBadKey.Error()
	}
	return err.Error()
}

func (l *line) set() {
	s := l.s
	switch s.kind {
	case topLevel:
		l.setWGConfig()
	case secInterface:
		l.setInterface()
	case secPeer:
		l.setPeer()
	case secSocks5:
		switch l.key {
		case "BindAddress":
			if l.checkAddr(true, 0) {
				s.socks.BindAddress = l.v
			}
		case "Username":
			s.socks.Username = l.v
		case "Password":
			s.socks.Password = Secret(l.v)
		case "MaxConnections":
			s.socks.MaxConnections, _ = l.maxConnections()
		case "DialTimeout":
			s.socks.DialTimeout, _ = l.dialTimeout()
		}
	case secHTTP:
		switch l.key {
		case "BindAddress":
			if l.checkAddr(true, 0) {
				s.http.BindAddress = l.v
			}
		case "Username":
			s.http.Username = l.v
		case "Password":
			s.http.Password = Secret(l.v)
		case "CertFile":
			s.http.CertFile = l.v
		case "KeyFile":
			s.http.KeyFile = l.v
		case "MaxConnections":
			s.http.MaxConnections, _ = l.maxConnections()
		case "DialTimeout":
			s.http.DialTimeout, _ = l.dialTimeout()
		}
	case secTCPClient:
		switch l.key {
		case "BindAddress":
			if l.checkAddr(true, 0) {
				s.tcpClient.BindAddress = l.v
			}
		case "Target":
			if l.checkAddr(false, 1) {
				s.tcpClient.Target = l.v
			}
		case "MaxConnections":
			s.tcpClient.MaxConnections, _ = l.maxConnections()
		case "IdleTimeout":
			s.tcpClient.IdleTimeout, _ = l.seconds()
		}
	case secTCPServer:
		switch l.key {
		case "ListenPort":
			if port, ok := l.number(0, 65535); ok {
				s.tcpServer.ListenPort = int(port)
			}
		case "Target":
			if l.checkAddr(false, 1) {
				s.tcpServer.Target = l.v
			}
		case "MaxConnections":
			s.tcpServer.MaxConnections, _ = l.maxConnections()
		case "IdleTimeout":
			s.tcpServer.IdleTimeout, _ = l.seconds()
		}
	case secSTDIO:
		if l.checkAddr(false, 1) {
			s.stdio.Target = l.v
		}
	case secUDPProxy:
		switch l.key {
		case "BindAddress":
			if l.checkAddr(true, 0) {
				s.udpProxy.BindAddress = l.v
			}
		case "Target":
			if l.checkAddr(false, 1) {
				s.udpProxy.Target = l.v
			}
		case "InactivityTimeout":
			if d, ok := l.seconds(); ok {
				s.udpProxy.InactivityTimeout = d
			}
		}
	case secUDPServer:
		switch l.key {
		case "ListenPort":
			if port, ok := l.number(1, 65535); ok {
				s.udpServer.ListenPort = int(port)
			}
		case "Target":
			if l.checkAddr(false, 1) {
				s.udpServer.Target = l.v
			}
		case "InactivityTimeout":
			if d, ok := l.seconds(); ok {
				s.udpServer.InactivityTimeout = d
			}
		}
	case secEgress:
		l.setEgress()
	case secDNSServer:
		l.setDNSServer()
	case secMetrics:
		if l.checkAddr(true, 0) {
			s.metrics.BindAddress = l.v
		}
	case secResolve:
		switch strings.ToLower(l.v) {
		case "", string(ResolveAuto):
			s.resolve.Strategy = ResolveAuto
		case string(ResolveIPv4), string(ResolveIPv6):
			s.resolve.Strategy = ResolveStrategy(strings.ToLower(l.v))
		default:
			l.errorf("%q is not auto, ipv4 or ipv6", l.v)
		}
	}
}

// setWGConfig reads wireproxy's include at once, so its [Interface] and
// [Peer] are in place before the main file's sections are checked against
// them.
func (l *line) setWGConfig() {
	p, f := l.p, l.f
	if f.included {
		l.errorf("not allowed in a file that is itself included by WGConfig")
		return
	}
	p.cfg.WGConfig = l.v
	p.wgConfigLine = l.n
	path := f.resolvePath(l.v)
	data, err := p.opts.ReadFile(path)
	if err != nil {
		l.errorWrap(err, "cannot read the included file: %v", err)
		return
	}
	inc := &fileState{name: path, dir: filepath.Dir(path), included: true}
	p.included = inc
	p.parseFile(inc, data)
	clear(data)
}

// setSecretKey is the one path for a secret key that may be given inline
// (name) or read from a file (name+"File"): it parses the key into *dst
// and, for the file spelling, keeps the path as written in *dstPath, so
// Render writes back a reference rather than the secret. The two
// spellings exclude each other, and an error names the file the key came
// from but never the key. It is generic over the protocol's key types, so
// it is a function rather than a method of line.
func setSecretKey[K ~[32]byte](l *line, name string, parse func(string) (K, error), dst *K, dstPath *string) {
	fromFile := l.key == name+"File"
	other := name + "File"
	if fromFile {
		other = name
	}
	if at, ok := l.s.seen[other]; ok && at != l.n {
		l.errorf("conflicts with %s on line %d; set only one", other, at)
		return
	}
	text := l.v
	if fromFile {
		var ok bool
		if text, ok = l.readKeyFile(l.v); !ok {
			return
		}
	}
	k, err := parse(text)
	if err != nil {
		if fromFile {
			l.errorWrap(err, "%s: %s", l.f.resolvePath(l.v), keyError(err))
		} else {
			l.errorWrap(err, "%s", keyError(err))
		}
		return
	}
	*dst = k
	if fromFile {
		*dstPath = l.v
	}
}

func (l *line) setInterface() {
	iface := l.s.iface
	switch l.key {
	case "PrivateKey", "PrivateKeyFile":
		setSecretKey(l, "PrivateKey", protocol.ParsePrivateKey, &iface.PrivateKey, &iface.PrivateKeyFile)
	case "Address":
		iface.Addresses = append(iface.Addresses, l.prefixes()...)
	case "DNS":
		// wg-quick's rule: an entry that parses as an IP is a server and
		// anything else is a search domain.
		for _, item := range splitList(l.v) {
			if a, err := netip.ParseAddr(item); err == nil && a.Zone() == "" {
				iface.DNS = append(iface.DNS, a)
			} else if validHostname(item) {
				iface.DNSSearch = append(iface.DNSSearch, item)
			} else {
				l.errorf("%q is neither an IP address nor a search domain", item)
			}
		}
	case "MTU":
		if mtu, ok := l.number(MinMTU, MaxMTU); ok {
			iface.MTU = int(mtu)
		}
	case "ListenPort":
		if port, ok := l.number(0, 65535); ok {
			iface.ListenPort = int(port)
		}
	case "CheckAlive":
		for _, item := range splitList(l.v) {
			if a, ok := l.addr(item); ok {
				iface.CheckAlive = append(iface.CheckAlive, a)
			}
		}
	case "CheckAliveInterval":
		if secs, ok := l.number(1, 1<<32-1); ok {
			iface.CheckAliveInterval = time.Duration(secs) * time.Second
		}
	case "MemoryLimit":
		if b, err := ParseMemoryLimit(l.v); err != nil {
			l.errorf("%v", err)
		} else {
			iface.MemoryLimit = b
		}
	}
}

// setPeer fills the section's Peer, and records where its PublicKey was
// and whether it parsed, for the duplicate-key check when the section
// closes.
func (l *line) setPeer() {
	s := l.s
	peer := &s.peer
	switch l.key {
	case "PublicKey":
		s.peerKeyLine = l.n
		k, err := protocol.ParsePublicKey(l.v)
		if err != nil {
			l.errorWrap(err, "%s", keyError(err))
			return
		}
		peer.PublicKey = k
		s.peerKeyOK = true
	case "PresharedKey", "PresharedKeyFile":
		setSecretKey(l, "PresharedKey", protocol.ParsePresharedKey, &peer.PresharedKey, &peer.PresharedKeyFile)
	case "Endpoint":
		if l.checkAddr(false, 1) {
			peer.Endpoint = l.v
		}
	case "AllowedIPs":
		peer.AllowedIPs = append(peer.AllowedIPs, l.prefixes()...)
	case "PersistentKeepalive":
		if strings.EqualFold(l.v, "off") {
			peer.PersistentKeepalive = 0
			return
		}
		secs, err := strconv.ParseUint(l.v, 10, 16)
		if err != nil {
			l.errorf("%q is neither \"off\" nor a number of seconds from 0 to 65535", l.v)
			return
		}
		peer.PersistentKeepalive = time.Duration(secs) * time.Second
	}
}

func (l *line) number(lo, hi uint64) (uint64, bool) {
	x, err := strconv.ParseUint(l.v, 10, 64)
	if err != nil || x < lo || x > hi {
		l.errorf("%q is not a number from %d to %d", l.v, lo, hi)
		return 0, false
	}
	return x, true
}

func (l *line) setEgress() {
	e := l.s.egress
	switch l.key {
	case "Allow":
		e.Allow = append(e.Allow, l.prefixes()...)
	case "Deny":
		e.Deny = append(e.Deny, l.prefixes()...)
	case "HostAddress":
		for _, item := range splitList(l.v) {
			if a, ok := l.addr(item); ok {
				e.HostAddresses = append(e.HostAddresses, a.Unmap())
			}
		}
	case "MaxFlowsPerPeer":
		e.MaxFlowsPerPeer, _ = l.maxConnections()
	case "MaxFlows":
		e.MaxFlows, _ = l.maxConnections()
	case "FlowMemory":
		if b, err := ParseSize(l.v); err != nil {
			l.errorf("%v", err)
		} else if b < MinFlowMemory {
			l.errorf("%s is below the %d MiB minimum", l.v, MinFlowMemory>>20)
		} else {
			e.FlowMemory = b
		}
	case "UDPTimeout":
		e.UDPTimeout, _ = l.seconds()
	}
}

func (l *line) setDNSServer() {
	d := l.s.dnsServer
	switch l.key {
	case "Upstream":
		for _, item := range splitList(l.v) {
			if a, err := netip.ParseAddr(item); err == nil && a.Zone() == "" {
				d.Upstream = append(d.Upstream, netip.AddrPortFrom(a, 53))
			} else if ap, err := netip.ParseAddrPort(item); err == nil && ap.Port() != 0 {
				d.Upstream = append(d.Upstream, ap)
			} else {
				l.errorf("%q is not an IP address or IP:port", item)
			}
		}
	case "Record":
		// One name and its addresses per item: "demo.wg 10.0.0.1 fd00::1".
		for _, item := range splitList(l.v) {
			fields := strings.Fields(item)
			if len(fields) < 2 || !validHostname(fields[0]) {
				l.errorf("%q: want a name and one or more IP addresses", item)
				continue
			}
			name := strings.ToLower(strings.TrimSuffix(fields[0], ".")) + "."
			for _, field := range fields[1:] {
				a, ok := l.addr(field)
				if !ok {
					continue
				}
				if d.Records == nil {
					d.Records = make(map[string][]netip.Addr)
				}
				d.Records[name] = append(d.Records[name], a.Unmap())
			}
		}
	}
}

// seconds reads a duration written as whole seconds, as wireproxy's
// timeouts are.
func (l *line) seconds() (time.Duration, bool) {
	secs, ok := l.number(0, 1<<32-1)
	return time.Duration(secs) * time.Second, ok
}

// dialTimeout reads a proxy's dial timeout in seconds. Zero is refused:
// a dial that may not take any time never succeeds.
func (l *line) dialTimeout() (time.Duration, bool) {
	secs, ok := l.number(1, 3600)
	return time.Duration(secs) * time.Second, ok
}

// maxConnections reads a per-listener cap. Zero is refused rather than
// read as "unlimited": a listener that serves nobody is surely a typo, and
// unlimited is what the cap exists to prevent.
func (l *line) maxConnections() (int, bool) {
	x, ok := l.number(1, MaxConnectionsLimit)
	return int(x), ok
}

// addr reads one IP address of a list: a plain address, without a zone.
func (l *line) addr(item string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(item)
	if err != nil || a.Zone() != "" {
		l.errorf("%q is not an IP address", item)
		return netip.Addr{}, false
	}
	return a, true
}

// prefixes reads a list of addresses or prefixes, reporting each bad item
// and returning the good ones, so one typo does not hide the rest.
func (l *line) prefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, item := range splitList(l.v) {
		if pfx, ok := l.prefix(item); ok {
			out = append(out, pfx)
		}
	}
	return out
}

// prefix reads an address with or without a prefix length; a bare address
// is a single host, /32 or /128, as wg-quick and wg(8) read it.
func (l *line) prefix(item string) (netip.Prefix, bool) {
	if !strings.Contains(item, "/") {
		a, err := netip.ParseAddr(item)
		if err != nil || a.Zone() != "" {
			l.errorf("%q is not an IP address or prefix", item)
			return netip.Prefix{}, false
		}
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	pfx, err := netip.ParsePrefix(item)
	if err != nil {
		l.errorf("%q is not an IP address or prefix", item)
		return netip.Prefix{}, false
	}
	return pfx, true
}

// checkAddr validates host:port text that is kept as a string, because a
// hostname is resolved later (and again) by whoever uses it.
func (l *line) checkAddr(hostOptional bool, minPort uint64) bool {
	if msg := checkHostPort(l.v, hostOptional, minPort); msg != "" {
		l.errorf("%q: %s", l.v, msg)
		return false
	}
	return true
}

func checkHostPort(s string, hostOptional bool, minPort uint64) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "want IPv4:port, [IPv6]:port or hostname:port"
	}
	if pn, err := strconv.ParseUint(port, 10, 16); err != nil || pn < minPort {
		return fmt.Sprintf("port must be a number from %d to 65535", minPort)
	}
	if strings.HasPrefix(s, "[") {
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() {
			return "only an IPv6 address goes in brackets"
		}
		return ""
	}
	if host == "" {
		if hostOptional {
			return ""
		}
		return "missing the host before the port"
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return ""
	}
	if !validHostname(host) {
		return "host is neither an IP address nor a hostname"
	}
	return ""
}

// validHostname accepts letters, digits, '-' and '_' in dot-separated
// labels of up to 63 bytes. '_' is not in RFC 1123 but appears in real
// internal names, and rejecting it would only annoy.
func validHostname(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
