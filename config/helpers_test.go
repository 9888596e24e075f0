package config_test

import (
	"bytes"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/protocol"
)

// Fixed keys, so expected messages and renders are stable.
const (
	privA = "eFhnYjWBglVvhEGaTbiR7DZdKWYoplXRdTZTXUltq4o="
	pubA  = "Mcv2c8tHsAZiHDaj0X2Q+9F0uURd/8+jOJbeY6mvJs0="
	pubB  = "yukP0b0/QvIciTyUZbc1iglX/zaZ05D0b/6BUcsxMas="
	pubC  = "36+PRPUlanDVt/RpYVM40lBCmBPAnAT40dL1/d3H8jE="
	pskA  = "+5u6hHYpS49M41b8KvcH7S2NC80/sKS+/NGHQJZKHiA="
	pskB  = "MBYeONC6gMWlvIyyOc9NacXOZUqcV1Zx9hyF+NktmN4="

	// The keys of wireproxy's README sample config.
	wpPriv = "uCTIK+56CPyCvwJxmU5dBfuyJvPuSXAq1FzHdnIxe1Q="
	wpPub  = "QP+A67Z2UBrMgvNIdHv8gPel5URWNLS4B3ZQ2hQIZlg="
	wpPSK  = "UItQuvLsyh50ucXHfjF0bbR4IIpVBd74lwKc8uIPXXs="
)

func priv(t testing.TB, s string) protocol.PrivateKey {
	t.Helper()
	k, err := protocol.ParsePrivateKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pub(t testing.TB, s string) protocol.PublicKey {
	t.Helper()
	k, err := protocol.ParsePublicKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func psk(t testing.TB, s string) protocol.PresharedKey {
	t.Helper()
	k, err := protocol.ParsePresharedKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// iface returns an [Interface] with Parse's defaults filled in.
func iface(k protocol.PrivateKey) config.Interface {
	return config.Interface{PrivateKey: k, MTU: config.DefaultMTU, CheckAliveInterval: config.DefaultCheckAliveInterval}
}

// base returns a Config with Parse's defaults filled in.
func base(i config.Interface) *config.Config {
	return &config.Config{Interface: i, Resolve: config.Resolve{Strategy: config.ResolveAuto}}
}

// fakeFS is an in-memory file system for Options.ReadFile and Options.Stat.
type fakeFS map[string]fakeFile

type fakeFile struct {
	data string
	mode fs.FileMode
}

func (f fakeFS) readFile(name string) ([]byte, error) {
	file, ok := f[name]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return []byte(file.data), nil
}

func (f fakeFS) stat(name string) (fs.FileInfo, error) {
	file, ok := f[name]
	if !ok {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrNotExist}
	}
	return fakeInfo{name: name, mode: file.mode}, nil
}

type fakeInfo struct {
	name string
	mode fs.FileMode
}

func (i fakeInfo) Name() string       { return i.name }
func (i fakeInfo) Size() int64        { return 0 }
func (i fakeInfo) Mode() fs.FileMode  { return i.mode }
func (i fakeInfo) ModTime() time.Time { return time.Time{} }
func (i fakeInfo) IsDir() bool        { return false }
func (i fakeInfo) Sys() any           { return nil }

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// hermetic returns options that see only the given files and variables,
// so no test depends on the machine it runs on.
func hermetic(files fakeFS, vars map[string]string) config.Options {
	if files == nil {
		files = fakeFS{}
	}
	return config.Options{LookupEnv: env(vars), ReadFile: files.readFile, Stat: files.stat}
}

// contentOnly copies c minus what refers to lines of the source text, its
// warnings and the sections' positions, which legitimately differ between
// a file and its render. TestSectionPositions checks the positions.
func contentOnly(c *config.Config) *config.Config {
	cp := *c
	cp.Warnings = nil
	cp.Socks5 = withoutPos(cp.Socks5, func(s *config.Socks5) { s.Pos = config.Position{} })
	cp.HTTP = withoutPos(cp.HTTP, func(s *config.HTTP) { s.Pos = config.Position{} })
	cp.TCPClientTunnels = withoutPos(cp.TCPClientTunnels, func(s *config.TCPClientTunnel) { s.Pos = config.Position{} })
	cp.TCPServerTunnels = withoutPos(cp.TCPServerTunnels, func(s *config.TCPServerTunnel) { s.Pos = config.Position{} })
	cp.STDIOTunnels = withoutPos(cp.STDIOTunnels, func(s *config.STDIOTunnel) { s.Pos = config.Position{} })
	cp.UDPProxyTunnels = withoutPos(cp.UDPProxyTunnels, func(s *config.UDPProxyTunnel) { s.Pos = config.Position{} })
	cp.UDPServerTunnels = withoutPos(cp.UDPServerTunnels, func(s *config.UDPServerTunnel) { s.Pos = config.Position{} })
	if cp.Egress != nil {
		e := *cp.Egress
		e.Pos = config.Position{}
		cp.Egress = &e
	}
	if cp.DNSServer != nil {
		d := *cp.DNSServer
		d.Pos = config.Position{}
		cp.DNSServer = &d
	}
	if cp.Metrics != nil {
		m := *cp.Metrics
		m.Pos = config.Position{}
		cp.Metrics = &m
	}
	return &cp
}

// withoutPos returns a copy of ss with clear applied to each element, so
// the caller's Config keeps its positions.
func withoutPos[S any](ss []S, clear func(*S)) []S {
	if ss == nil {
		return nil
	}
	out := slices.Clone(ss)
	for i := range out {
		clear(&out[i])
	}
	return out
}

func assertSameConfig(t *testing.T, got, want *config.Config) {
	t.Helper()
	if !reflect.DeepEqual(contentOnly(got), contentOnly(want)) {
		all := config.RenderOptions{IncludeSecrets: true}
		t.Errorf("config differs\n--- got ---\n%s\n--- want ---\n%s\ngot:  %#v\nwant: %#v",
			got.Render(all), want.Render(all), contentOnly(got), contentOnly(want))
	}
}

// sprintAll formats c every way a log line might.
func sprintAll(c *config.Config) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%v %+v %#v %v\n", c, *c, *c, c.Socks5)
	slog.New(slog.NewJSONHandler(&b, nil)).Info("config", "cfg", c, "iface", c.Interface, "peer", c.Peers)
	slog.New(slog.NewTextHandler(&b, nil)).Info("config", "cfg", c, "iface", c.Interface, "peer", c.Peers)
	return b.String()
}

func warningStrings(ws []config.Warning) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.String())
	}
	return out
}

// sectionPositions lists the Pos of every proxy and tunnel section.
func sectionPositions(c *config.Config) []config.Position {
	var out []config.Position
	for _, s := range c.Socks5 {
		out = append(out, s.Pos)
	}
	for _, s := range c.HTTP {
		out = append(out, s.Pos)
	}
	for _, s := range c.TCPClientTunnels {
		out = append(out, s.Pos)
	}
	for _, s := range c.TCPServerTunnels {
		out = append(out, s.Pos)
	}
	for _, s := range c.STDIOTunnels {
		out = append(out, s.Pos)
	}
	for _, s := range c.UDPProxyTunnels {
		out = append(out, s.Pos)
	}
	for _, s := range c.UDPServerTunnels {
		out = append(out, s.Pos)
	}
	return out
}
