package config_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/wgbore/wgbore/config"
)

// TestSectionPositions checks exactly what contentOnly leaves out of the
// other comparisons: each proxy and tunnel section remembers the file and
// header line it came from, a repeated section its own line, and a
// section after a WGConfig include the main file, not the included one.
func TestSectionPositions(t *testing.T) {
	src := strings.Join([]string{
		"WGConfig = wg/wg0.conf", // 1
		"",                       // 2
		"# comment",              // 3
		"[Socks5]",               // 4
		"BindAddress = :1080",    // 5
		"[http] # trailing",      // 6
		"BindAddress = :8080",    // 7
		"  [socks5]",             // 8: a repeat, spelled differently
		"BindAddress = :1081",    // 9
		"[TCPClientTunnel]",      // 10
		"BindAddress = :25565",   // 11
		"Target = a.example:1",   // 12
		"[TCPServerTunnel]",      // 13
		"ListenPort = 3422",      // 14
		"Target = localhost:1",   // 15
		"[STDIOTunnel]",          // 16
		"Target = b.example:22",  // 17
		"[UDPProxyTunnel]",       // 18
		"BindAddress = :53",      // 19
		"Target = 1.1.1.1:53",    // 20
		"[UDPServerTunnel]",      // 21
		"ListenPort = 53",        // 22
		"Target = 127.0.0.1:53",  // 23
		"[http]",                 // 24
		"BindAddress = :8081",    // 25
	}, "\r\n") // CRLF, so line counting is not fooled by the \r
	const name = "/srv/proxy/wireproxy.conf"
	opts := hermetic(fakeFS{
		// The include's own proxy section is ignored with a warning, so it
		// cannot lend its file name or line to anything.
		"/srv/proxy/wg/wg0.conf": {data: "[Interface]\nPrivateKey = " + privA + "\n[Socks5]\nBindAddress = :9\n"},
	}, nil)
	c, err := config.Parse(name, []byte(src), opts)
	if err != nil {
		t.Fatal(err)
	}
	at := func(line int) config.Position { return config.Position{File: name, Line: line} }
	type sec struct {
		kind string
		pos  config.Position
	}
	var got []sec
	for _, s := range c.Socks5 {
		got = append(got, sec{"Socks5", s.Pos})
	}
	for _, s := range c.HTTP {
		got = append(got, sec{"http", s.Pos})
	}
	for _, s := range c.TCPClientTunnels {
		got = append(got, sec{"TCPClientTunnel", s.Pos})
	}
	for _, s := range c.TCPServerTunnels {
		got = append(got, sec{"TCPServerTunnel", s.Pos})
	}
	for _, s := range c.STDIOTunnels {
		got = append(got, sec{"STDIOTunnel", s.Pos})
	}
	for _, s := range c.UDPProxyTunnels {
		got = append(got, sec{"UDPProxyTunnel", s.Pos})
	}
	for _, s := range c.UDPServerTunnels {
		got = append(got, sec{"UDPServerTunnel", s.Pos})
	}
	want := []sec{
		{"Socks5", at(4)}, {"Socks5", at(8)},
		{"http", at(6)}, {"http", at(24)},
		{"TCPClientTunnel", at(10)},
		{"TCPServerTunnel", at(13)},
		{"STDIOTunnel", at(16)},
		{"UDPProxyTunnel", at(18)},
		{"UDPServerTunnel", at(21)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("positions:\n got  %v\n want %v", got, want)
	}

	if got, want := c.HTTP[1].Pos.String(), name+":24"; got != want {
		t.Errorf("Pos.String() = %q, want %q", got, want)
	}
	if got := (config.Position{}).String(); got != "" {
		t.Errorf("zero Position.String() = %q, want \"\"", got)
	}
	if got := (config.Position{File: "wg0.conf"}).String(); got != "wg0.conf" {
		t.Errorf("Position without a line: String() = %q, want \"wg0.conf\"", got)
	}

	// Render writes no trace of the positions, and so they follow the
	// rendered text, not the original.
	text := c.Render(config.RenderOptions{IncludeSecrets: true})
	if strings.Contains(strings.ToLower(text), "pos") {
		t.Errorf("Render writes the position:\n%s", text)
	}
	again, err := config.Parse(name, []byte(text), opts)
	if err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	if again.Socks5[0].Pos == c.Socks5[0].Pos && again.HTTP[1].Pos == c.HTTP[1].Pos {
		t.Errorf("re-parsed render kept the original positions; want the render's lines\n%s", text)
	}
	lines := strings.Split(text, "\n")
	for _, p := range []config.Position{again.Socks5[1].Pos, again.HTTP[1].Pos, again.STDIOTunnels[0].Pos} {
		if p.File != name || p.Line < 1 || p.Line > len(lines) || !strings.HasPrefix(lines[p.Line-1], "[") {
			t.Errorf("position %v of the re-parsed render is not a section header\n%s", p, text)
		}
	}
}
