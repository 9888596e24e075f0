package config_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/wgbore/wgbore/config"
)

// catchAllWarning is the warning for a [Peer] without AllowedIPs, which
// takes every address as in wireproxy.
const catchAllWarning = "[Peer] has no AllowedIPs: routing every address (0.0.0.0/0, ::/0) to it, as wireproxy does"

func TestPeerWithoutAllowedIPs(t *testing.T) {
	src := "[Interface]\n" + // 1
		"PrivateKey = " + privA + "\n" + // 2
		"\n" + // 3
		"[Peer] # no AllowedIPs\n" + // 4
		"PublicKey = " + pubA + "\n" + // 5
		"Endpoint = vpn.example.com:51820\n" // 6
	c, err := config.Parse("wg0.conf", []byte(src), hermetic(nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	want := base(iface(priv(t, privA)))
	want.Peers = []config.Peer{{PublicKey: pub(t, pubA), Endpoint: "vpn.example.com:51820", AllowedIPs: pfx("0.0.0.0/0", "::/0")}}
	assertSameConfig(t, c, want)
	wantWarn := []config.Warning{{File: "wg0.conf", Line: 4, Msg: catchAllWarning}}
	if !reflect.DeepEqual(c.Warnings, wantWarn) {
		t.Errorf("warnings = %#v, want %#v", c.Warnings, wantWarn)
	}
	if got, want := warningStrings(c.Warnings), []string{"wg0.conf:4: " + catchAllWarning}; !reflect.DeepEqual(got, want) {
		t.Errorf("warning text:\n got  %q\n want %q", got, want)
	}
}

func TestPeerWithoutAllowedIPsBesideOneWith(t *testing.T) {
	head := "[Interface]\nPrivateKey = " + privA + "\n" // lines 1-2
	without := func(key string) string { return "[Peer]\nPublicKey = " + key + "\n" }
	with := func(key string) string { return "[Peer]\nPublicKey = " + key + "\nAllowedIPs = 10.0.0.0/8, fd00::/8\n" }
	everything := pfx("0.0.0.0/0", "::/0")
	listed := pfx("10.0.0.0/8", "fd00::/8")

	tests := []struct {
		name  string
		src   string
		peers []config.Peer
		warn  []string
	}{
		{
			name:  "without, then with",
			src:   head + without(pubA) + with(pubB), // [Peer] on lines 3 and 5
			peers: []config.Peer{{PublicKey: pub(t, pubA), AllowedIPs: everything}, {PublicKey: pub(t, pubB), AllowedIPs: listed}},
			warn:  []string{"wg0.conf:3: " + catchAllWarning},
		},
		{
			name:  "with, then without",
			src:   head + with(pubA) + without(pubB), // [Peer] on lines 3 and 6
			peers: []config.Peer{{PublicKey: pub(t, pubA), AllowedIPs: listed}, {PublicKey: pub(t, pubB), AllowedIPs: everything}},
			warn:  []string{"wg0.conf:6: " + catchAllWarning},
		},
		{
			name: "several with, one without",
			src:  head + with(pubA) + without(pubB) + "[Peer]\nPublicKey = " + pubC + "\nAllowedIPs = 192.168.0.0/16\n",
			peers: []config.Peer{
				{PublicKey: pub(t, pubA), AllowedIPs: listed},
				{PublicKey: pub(t, pubB), AllowedIPs: everything},
				{PublicKey: pub(t, pubC), AllowedIPs: pfx("192.168.0.0/16")},
			},
			warn: []string{"wg0.conf:6: " + catchAllWarning},
		},
		{
			// Only a missing key takes every address: a peer that lists
			// 0.0.0.0/0 itself is no catch-all and draws no warning.
			name:  "explicit catch-all beside a listed peer",
			src:   head + "[Peer]\nPublicKey = " + pubA + "\nAllowedIPs = 0.0.0.0/0, ::/0\n" + with(pubB),
			peers: []config.Peer{{PublicKey: pub(t, pubA), AllowedIPs: everything}, {PublicKey: pub(t, pubB), AllowedIPs: listed}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse("wg0.conf", []byte(tt.src), hermetic(nil, nil))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			want := base(iface(priv(t, privA)))
			want.Peers = tt.peers
			assertSameConfig(t, c, want)
			if w := warningStrings(c.Warnings); !reflect.DeepEqual(w, tt.warn) {
				t.Errorf("warnings:\n got  %q\n want %q", w, tt.warn)
			}
		})
	}
}

// TestRenderPeerWithoutAllowedIPs checks that the address a peer took by
// default is written out, so the render says what the tunnel does and
// parses back without the warning.
func TestRenderPeerWithoutAllowedIPs(t *testing.T) {
	src := "[Interface]\nPrivateKey = " + privA + "\n[Peer]\nPublicKey = " + pubA + "\nPresharedKey = " + pskA + "\nEndpoint = 192.0.2.1:51820\n"
	c, err := config.Parse("wg0.conf", []byte(src), hermetic(nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 1 {
		t.Fatalf("warnings = %v, want the one for the missing AllowedIPs", c.Warnings)
	}
	for _, opts := range []config.RenderOptions{{}, {IncludeSecrets: true}} {
		pskLine := "(redacted)"
		if opts.IncludeSecrets {
			pskLine = pskA
		}
		privLine := "(redacted)"
		if opts.IncludeSecrets {
			privLine = c.Interface.PrivateKey.Base64()
		}
		want := "[Interface]\nPrivateKey = " + privLine + "\n\n" +
			"[Peer]\nPublicKey = " + pubA + "\nPresharedKey = " + pskLine + "\nEndpoint = 192.0.2.1:51820\nAllowedIPs = 0.0.0.0/0, ::/0\n"
		if got := c.Render(opts); got != want {
			t.Errorf("Render(%+v) =\n%s\nwant\n%s", opts, got, want)
		}
	}

	text := c.Render(config.RenderOptions{IncludeSecrets: true})
	if !strings.Contains(text, "\nAllowedIPs = 0.0.0.0/0, ::/0\n") {
		t.Fatalf("render lacks the defaulted AllowedIPs:\n%s", text)
	}
	again, err := config.Parse("wg0.conf", []byte(text), hermetic(nil, nil))
	if err != nil {
		t.Fatalf("re-parse of render: %v\n%s", err, text)
	}
	assertSameConfig(t, again, c)
	if len(again.Warnings) != 0 {
		t.Errorf("re-parse of render warns: %v", again.Warnings)
	}
}

// TestPeerWithoutAllowedIPsInWGConfig checks that the warning names the
// included file that holds the [Peer].
func TestPeerWithoutAllowedIPsInWGConfig(t *testing.T) {
	opts := hermetic(fakeFS{"/etc/wireguard/wg0.conf": {
		data: "[Interface]\nPrivateKey = " + privA + "\n\n[Peer]\nPublicKey = " + pubA + "\n",
		mode: 0o600,
	}}, nil)
	c, err := config.Parse("wireproxy.conf", []byte("WGConfig = /etc/wireguard/wg0.conf\n[Socks5]\nBindAddress = 127.0.0.1:1080\n"), opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Peers) != 1 || !reflect.DeepEqual(c.Peers[0].AllowedIPs, pfx("0.0.0.0/0", "::/0")) {
		t.Errorf("peers = %+v, want one with AllowedIPs 0.0.0.0/0, ::/0", c.Peers)
	}
	if got, want := warningStrings(c.Warnings), []string{"/etc/wireguard/wg0.conf:4: " + catchAllWarning}; !reflect.DeepEqual(got, want) {
		t.Errorf("warnings:\n got  %q\n want %q", got, want)
	}
}

// TestRenderPeerRoutingNothing: a peer whose AllowedIPs is empty on
// purpose renders as "AllowedIPs =", so it does not read back as the
// catch-all that a missing key means.
func TestRenderPeerRoutingNothing(t *testing.T) {
	src := "[Interface]\nPrivateKey = " + privA + "\n\n[Peer]\nPublicKey = " + pubA + "\nAllowedIPs =\n"
	c, err := config.Parse("wg0.conf", []byte(src), config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Peers[0].AllowedIPs) != 0 || len(c.Warnings) != 0 {
		t.Fatalf("AllowedIPs = %v, warnings %v; want none of either", c.Peers[0].AllowedIPs, c.Warnings)
	}
	out := c.Render(config.RenderOptions{IncludeSecrets: true})
	again, err := config.Parse("wg0.conf", []byte(out), config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Peers[0].AllowedIPs) != 0 || len(again.Warnings) != 0 {
		t.Fatalf("render %q read back as AllowedIPs %v with warnings %v", out, again.Peers[0].AllowedIPs, again.Warnings)
	}
}
