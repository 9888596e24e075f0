package config_test

import (
	"errors"
	"io/fs"
	"reflect"
	"strings"
	"testing"

	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/protocol"
)

func TestParseErrors(t *testing.T) {
	ownPub := priv(t, privA).PublicKey().String()
	iface := "[Interface]\nPrivateKey = " + privA + "\n" // lines 1 and 2
	include := func(body string) config.Options {
		return hermetic(fakeFS{"/etc/wireguard/wg0.conf": {data: body, mode: 0o600}}, nil)
	}

	tests := []struct {
		name string
		file string // default wg0.conf
		src  string
		opts config.Options
		want []string
	}{
		{
			name: "bad public key",
			src:  iface + "\n[Peer]\nPublicKey = abc\n",
			want: []string{"wg0.conf:5: PublicKey: not a valid base64 32-byte key"},
		},
		{
			name: "bad private and preshared keys",
			src:  "[Interface]\nPrivateKey = " + privA[:43] + "\n[Peer]\nPublicKey = " + pubA + "\nPresharedKey = " + pskA + "A\n",
			want: []string{
				"wg0.conf:2: PrivateKey: not a valid base64 32-byte key",
				"wg0.conf:5: PresharedKey: not a valid base64 32-byte key",
			},
		},
		{
			name: "unknown key with suggestion",
			src:  iface + "Adress = 10.0.0.1/32\n",
			want: []string{`wg0.conf:3: unknown key "Adress" in [Interface] (did you mean Address?)`},
		},
		{
			name: "suggestions ignore case",
			src:  iface + "[Peer]\npublickey = " + pubA + "\nALLOWEDIP = 10.0.0.0/8\npersistentkeepalive = 25\nPersistentKeepAlve = 25\n",
			want: []string{
				`wg0.conf:5: unknown key "ALLOWEDIP" in [Peer] (did you mean AllowedIPs?)`,
				`wg0.conf:7: unknown key "PersistentKeepAlve" in [Peer] (did you mean PersistentKeepalive?)`,
			},
		},
		{
			name: "unknown key without suggestion",
			src:  iface + "Frobnicate = 1\n",
			want: []string{`wg0.conf:3: unknown key "Frobnicate" in [Interface]`},
		},
		{
			name: "key in the wrong section",
			src:  iface + "Endpoint = vpn.example.com:51820\n[Socks5]\nBindAddress = 127.0.0.1:1080\nTarget = example.com:80\n",
			want: []string{
				`wg0.conf:3: unknown key "Endpoint" in [Interface] (it belongs in [Peer])`,
				`wg0.conf:6: unknown key "Target" in [Socks5] (it belongs in [TCPClientTunnel])`,
			},
		},
		{
			name: "missing private key",
			src:  "[Interface]\nAddress = 10.0.0.1\n",
			want: []string{"wg0.conf:1: [Interface] has no PrivateKey"},
		},
		{
			name: "no interface at all",
			src:  "[Peer]\nPublicKey = " + pubA + "\n",
			want: []string{"wg0.conf: no [Interface] section"},
		},
		{
			name: "peer without public key",
			src:  iface + "[Peer]\nEndpoint = 1.2.3.4:51820\n\n[Peer]\nPublicKey = " + pubA + "\n",
			want: []string{"wg0.conf:3: [Peer] has no PublicKey"},
		},
		{
			name: "duplicate peer public keys",
			src: iface + // 1-2
				"[Peer]\nPublicKey = " + pubA + "\n" + // 3-4: no AllowedIPs, takes every address
				"[Peer]\nPublicKey = " + pubB + "\nAllowedIPs = 10.0.0.0/8\n" + // 5-7
				"[Peer]\nPublicKey = " + pubA + "\n", // 8-9: only the duplicate key is reported
			want: []string{"wg0.conf:9: PublicKey: same as the [Peer] on line 3; each peer needs its own key"},
		},
		{
			name: "two peers without AllowedIPs",
			src: iface + // 1-2
				"\n[Peer]\nPublicKey = " + pubA + "\nEndpoint = a.example:51820\n" + // 3-6
				"\n[Peer] # Gothenburg\nPublicKey = " + pubB + "\nEndpoint = b.example:51820\n", // 7-10
			want: []string{"wg0.conf:8: [Peer] has no AllowedIPs, nor has the [Peer] on line 4: only one peer can take every address; list this one's"},
		},
		{
			name: "three peers without AllowedIPs, one with",
			src: iface + // 1-2
				"[Peer]\nPublicKey = " + pubA + "\n" + // 3-4
				"[Peer]\nPublicKey = " + pubB + "\n" + // 5-6
				"[Peer]\nPublicKey = " + pskB + "\nAllowedIPs = 10.0.0.0/8\n" + // 7-9 (any 32 bytes are a public key)
				"[Peer]\nPublicKey = " + pubC + "\n", // 10-11
			want: []string{
				"wg0.conf:5: [Peer] has no AllowedIPs, nor has the [Peer] on line 3: only one peer can take every address; list this one's",
				"wg0.conf:10: [Peer] has no AllowedIPs, nor has the [Peer] on line 3: only one peer can take every address; list this one's",
			},
		},
		{
			name: "two peers without AllowedIPs inside WGConfig",
			file: "wireproxy.conf",
			src:  "WGConfig = /etc/wireguard/wg0.conf\n",
			opts: include(iface + "[Peer]\nPublicKey = " + pubA + "\n[Peer]\nPublicKey = " + pubB + "\n"),
			want: []string{"/etc/wireguard/wg0.conf:5: [Peer] has no AllowedIPs, nor has the [Peer] on line 3: only one peer can take every address; list this one's"},
		},
		{
			name: "peer is ourselves",
			src:  iface + "[Peer]\nPublicKey = " + ownPub + "\n",
			want: []string{"wg0.conf:4: PublicKey: is this interface's own public key; a peer must be another machine"},
		},
		{
			name: "keys outside any section",
			src:  "PrivateKey = " + privA + "\nWGConfg = wg0.conf\nColour = blue\n" + iface,
			want: []string{
				"wg0.conf:1: PrivateKey: outside any section (it belongs in [Interface])",
				`wg0.conf:2: key "WGConfg" outside any section (did you mean WGConfig?)`,
				`wg0.conf:3: key "Colour" outside any section`,
			},
		},
		{
			name: "unknown section swallows its keys",
			src:  iface + "[Peers]\nPublicKey = " + pubA + "\nNonsense\n[Tunnel]\n[Sock5]\n[http]\nBindAddress = 127.0.0.1:8080\n",
			want: []string{
				"wg0.conf:3: unknown section [Peers] (did you mean [Peer]?)",
				"wg0.conf:6: unknown section [Tunnel]",
				"wg0.conf:7: unknown section [Sock5] (did you mean [Socks5]?)",
			},
		},
		{
			name: "lines without '='",
			src:  "[Interface]\nPrivateKey " + privA + "\nhello world\nMTU\n= 1280\n",
			want: []string{
				"wg0.conf:2: PrivateKey: missing '=' between the key and its value",
				`wg0.conf:3: expected "Key = value" or "[Section]"`,
				"wg0.conf:4: MTU: missing '=' between the key and its value",
				"wg0.conf:5: missing key name before '='",
			},
		},
		{
			name: "'=' only inside a comment",
			src:  iface + "DNS # = 1.1.1.1\n",
			want: []string{"wg0.conf:3: DNS: missing '=' between the key and its value"},
		},
		{
			name: "single-valued keys set twice",
			src:  iface + "MTU = 1280\nprivatekey = " + privA + "\nMTU = 1400\n[Peer]\nPublicKey = " + pubA + "\nEndpoint = a.example:1\nEndpoint = b.example:1\n",
			want: []string{
				"wg0.conf:4: PrivateKey: set twice (first on line 2)",
				"wg0.conf:5: MTU: set twice (first on line 3)",
				"wg0.conf:9: Endpoint: set twice (first on line 8)",
			},
		},
		{
			name: "key and key file together",
			file: "/etc/wg/wg0.conf",
			src:  iface + "PrivateKeyFile = key\n[Peer]\nPublicKey = " + pubA + "\nPresharedKeyFile = psk\nPresharedKey = " + pskA + "\n",
			opts: hermetic(fakeFS{"/etc/wg/key": {data: privA, mode: 0o600}, "/etc/wg/psk": {data: pskA, mode: 0o600}}, nil),
			want: []string{
				"/etc/wg/wg0.conf:3: PrivateKeyFile: conflicts with PrivateKey on line 2; set only one",
				"/etc/wg/wg0.conf:7: PresharedKey: conflicts with PresharedKeyFile on line 6; set only one",
			},
		},
		{
			name: "unreadable and bad key files",
			file: "/etc/wg/wg0.conf",
			src:  "[Interface]\nPrivateKeyFile = missing.key\n[Peer]\nPublicKey = " + pubA + "\nPresharedKeyFile = /run/secrets/psk\n",
			opts: hermetic(fakeFS{"/run/secrets/psk": {data: "not a key\n", mode: 0o600}}, nil),
			want: []string{
				"/etc/wg/wg0.conf:2: PrivateKeyFile: cannot read key file: open /etc/wg/missing.key: file does not exist",
				"/etc/wg/wg0.conf:5: PresharedKeyFile: /run/secrets/psk: not a valid base64 32-byte key",
			},
		},
		{
			name: "unset environment variables",
			src:  "[Interface]\nPrivateKey = $WG_PRIVATE_KEY\n[Socks5]\nBindAddress = $\nPassword = $SOCKS_PASSWORD\n",
			opts: hermetic(nil, map[string]string{"OTHER": "x"}),
			want: []string{
				"wg0.conf:2: PrivateKey: environment variable $WG_PRIVATE_KEY is not set",
				"wg0.conf:4: BindAddress: environment variable named here is not set",
				"wg0.conf:5: Password: environment variable $SOCKS_PASSWORD is not set",
			},
		},
		{
			name: "environment value with a line break",
			src:  iface + "[Socks5]\nBindAddress = 127.0.0.1:1080\nPassword = $PW\n",
			opts: hermetic(nil, map[string]string{"PW": "two\nlines"}),
			want: []string{"wg0.conf:5: Password: environment variable $PW contains a line break"},
		},
		{
			name: "empty values",
			src:  "[Interface]\nPrivateKey =\nAddress =\nMTU = # none\n[Socks5]\nBindAddress = 127.0.0.1:1080\nPassword =\n",
			want: []string{
				"wg0.conf:2: PrivateKey: has no value",
				"wg0.conf:4: MTU: has no value",
			},
		},
		{
			name: "quoting mistakes",
			src:  iface + "[Socks5]\nBindAddress = \"127.0.0.1:1080\nUsername = \"alice\" bob\nPassword = 'x\n",
			want: []string{
				`wg0.conf:4: BindAddress: quoted value has no closing '"'`,
				`wg0.conf:5: Username: unexpected text after the closing '"'`,
				`wg0.conf:6: Password: quoted value has no closing '\''`,
			},
		},
		{
			name: "every kind of bad value, all reported",
			src: "[Interface]\n" + // 1
				"PrivateKey = " + privA + "\n" + // 2
				"Address = 10.0.0.300/24, fd00::1/129, fe80::1%eth0\n" + // 3
				"DNS = 1.1.1.1, not a domain\n" + // 4
				"MTU = 9000000\n" + // 5
				"ListenPort = -1\n" + // 6
				"CheckAliveInterval = 10\n" + // 7
				"Table = auto\n" + // 8
				"\n" + // 9
				"[Peer]\n" + // 10
				"PublicKey = " + pubA + "\n" + // 11
				"Endpoint = vpn.example.com\n" + // 12
				"AllowedIPs = 10.0.0.0/33\n" + // 13
				"PersistentKeepalive = sometimes\n" + // 14
				"\n" + // 15
				"[Peer]\n" + // 16
				"PublicKey = " + pubB + "\n" + // 17
				"Endpoint = [vpn.example.com]:51820\n" + // 18
				"\n" + // 19
				"[Peer]\n" + // 20
				"PublicKey = " + pubC + "\n" + // 21
				"Endpoint = 1.2.3.4:0\n" + // 22
				"PersistentKeepalive = 65536\n" + // 23
				"[Resolve]\n" + // 24
				"ResolveStrategy = ipv5\n" + // 25
				"\n" + // 26
				"[UDPProxyTunnel]\n" + // 27
				"BindAddress = 127.0.0.1:53\n" + // 28
				"Target = 1.1.1.1:53\n" + // 29
				"InactivityTimeout = 1m\n" + // 30
				"[TCPServerTunnel]\n" + // 31
				"ListenPort = 70000\n" + // 32
				"Target = local host:80\n" + // 33
				"[Interface]\n" + // 34
				"CheckAlive = 1.1.1.1:53\n" + // 35
				"MTU = 575\n", // 36
			want: []string{
				`wg0.conf:3: Address: "10.0.0.300/24" is not an IP address or prefix`,
				`wg0.conf:3: Address: "fd00::1/129" is not an IP address or prefix`,
				`wg0.conf:3: Address: "fe80::1%eth0" is not an IP address or prefix`,
				`wg0.conf:4: DNS: "not a domain" is neither an IP address nor a search domain`,
				`wg0.conf:5: MTU: "9000000" is not a number from 576 to 65535`,
				`wg0.conf:6: ListenPort: "-1" is not a number from 0 to 65535`,
				`wg0.conf:7: CheckAliveInterval: only valid when CheckAlive is set`,
				`wg0.conf:12: Endpoint: "vpn.example.com": want IPv4:port, [IPv6]:port or hostname:port`,
				`wg0.conf:13: AllowedIPs: "10.0.0.0/33" is not an IP address or prefix`,
				`wg0.conf:14: PersistentKeepalive: "sometimes" is neither "off" nor a number of seconds from 0 to 65535`,
				`wg0.conf:18: Endpoint: "[vpn.example.com]:51820": only an IPv6 address goes in brackets`,
				`wg0.conf:20: [Peer] has no AllowedIPs, nor has the [Peer] on line 16: only one peer can take every address; list this one's`,
				`wg0.conf:22: Endpoint: "1.2.3.4:0": port must be a number from 1 to 65535`,
				`wg0.conf:23: PersistentKeepalive: "65536" is neither "off" nor a number of seconds from 0 to 65535`,
				`wg0.conf:25: ResolveStrategy: "ipv5" is not auto, ipv4 or ipv6`,
				`wg0.conf:30: InactivityTimeout: "1m" is not a number from 0 to 4294967295`,
				`wg0.conf:32: ListenPort: "70000" is not a number from 0 to 65535`,
				`wg0.conf:33: Target: "local host:80": host is neither an IP address nor a hostname`,
				`wg0.conf:34: [Interface] appears twice (first on line 1)`,
				`wg0.conf:35: CheckAlive: "1.1.1.1:53" is not an IP address`,
				`wg0.conf:36: MTU: "575" is not a number from 576 to 65535`,
			},
		},
		{
			name: "proxy sections missing what they need",
			src: iface + // 1-2
				"[Socks5]\nUsername = a\n" + // 3-4
				"[TCPClientTunnel]\nTarget = example.com\n" + // 5-6
				"[TCPServerTunnel]\n" + // 7
				"[STDIOTunnel]\n" + // 8
				"[http]\nBindAddress = 127.0.0.1:8080\nCertFile = cert.pem\n" + // 9-11
				"[UDPProxyTunnel]\nBindAddress = 127.0.0.1\n" + // 12-13
				"[Resolve]\n[resolve]\n" + // 14-15
				"[UDPServerTunnel]\nListenPort = 0\n" + // 16-17
				"[Socks5]\nBindAddress = :1080\nMaxConnections = 0\n" + // 18-20
				"[TCPServerTunnel]\nListenPort = 22\nTarget = 127.0.0.1:22\nIdleTimeout = 5m\n", // 21-24
			want: []string{
				"wg0.conf:3: [Socks5] has no BindAddress",
				"wg0.conf:5: [TCPClientTunnel] has no BindAddress",
				`wg0.conf:6: Target: "example.com": want IPv4:port, [IPv6]:port or hostname:port`,
				"wg0.conf:7: [TCPServerTunnel] has no ListenPort",
				"wg0.conf:7: [TCPServerTunnel] has no Target",
				"wg0.conf:8: [STDIOTunnel] has no Target",
				"wg0.conf:9: [http] needs both CertFile and KeyFile to serve HTTPS, or neither",
				"wg0.conf:12: [UDPProxyTunnel] has no Target",
				`wg0.conf:13: BindAddress: "127.0.0.1": want IPv4:port, [IPv6]:port or hostname:port`,
				"wg0.conf:15: [Resolve] appears twice (first on line 14)",
				"wg0.conf:16: [UDPServerTunnel] has no Target",
				`wg0.conf:17: ListenPort: "0" is not a number from 1 to 65535`,
				`wg0.conf:20: MaxConnections: "0" is not a number from 1 to 1048576`,
				`wg0.conf:24: IdleTimeout: "5m" is not a number from 0 to 4294967295`,
			},
		},
		{
			name: "malformed section headers",
			src:  "[Interface\nPrivateKey = " + privA + "\n[]\n[" + privA + "]\n",
			want: []string{
				"wg0.conf:1: section header is missing its closing ']'",
				"wg0.conf:3: unknown section",
				"wg0.conf:4: unknown section",
				"wg0.conf: no [Interface] section",
			},
		},
		{
			name: "wireproxy README multiple peers verbatim: placeholder keys",
			file: "wireproxy.conf",
			src:  wireproxyMultiPeer,
			want: []string{
				"wireproxy.conf:3: PrivateKey: not a valid base64 32-byte key",
				"wireproxy.conf:7: PublicKey: not a valid base64 32-byte key",
				"wireproxy.conf:12: PublicKey: not a valid base64 32-byte key",
			},
		},
		{
			name: "wireproxy README CheckAlive verbatim: censored keys",
			file: "wireproxy.conf",
			src:  wireproxyHealth,
			want: []string{
				"wireproxy.conf:2: PrivateKey: not a valid base64 32-byte key",
				"wireproxy.conf:9: PublicKey: not a valid base64 32-byte key",
			},
		},
		{
			name: "WGConfig alongside [Interface] and [Peer]",
			file: "wireproxy.conf",
			src:  "WGConfig = /etc/wireguard/wg0.conf\n" + iface + "[Peer]\nPublicKey = " + pubA + "\n",
			opts: include(iface),
			want: []string{
				"wireproxy.conf:2: [Interface] cannot be used together with WGConfig (line 1), which already supplies [Interface] and [Peer]",
				"wireproxy.conf:4: [Peer] cannot be used together with WGConfig (line 1), which already supplies [Interface] and [Peer]",
			},
		},
		{
			name: "unreadable WGConfig",
			file: "wireproxy.conf",
			src:  "WGConfig = /nope.conf\n[Socks5]\nBindAddress = 127.0.0.1:1080\n",
			want: []string{"wireproxy.conf:1: WGConfig: cannot read the included file: open /nope.conf: file does not exist"},
		},
		{
			name: "problems inside WGConfig name the included file",
			file: "wireproxy.conf",
			src:  "WGConfig = /etc/wireguard/wg0.conf\nWGConfig = /etc/wireguard/wg1.conf\n[Sock5]\n",
			opts: include("WGConfig = other.conf\n[Interface]\nPrivateKey = bad\n[Peer]\nEndpoint = x.example:1\n"),
			want: []string{
				"wireproxy.conf:2: WGConfig: set twice (first on line 1)",
				"wireproxy.conf:3: unknown section [Sock5] (did you mean [Socks5]?)",
				"/etc/wireguard/wg0.conf:1: WGConfig: not allowed in a file that is itself included by WGConfig",
				"/etc/wireguard/wg0.conf:3: PrivateKey: not a valid base64 32-byte key",
				"/etc/wireguard/wg0.conf:4: [Peer] has no PublicKey",
			},
		},
		{
			name: "WGConfig without [Interface]",
			file: "wireproxy.conf",
			src:  "WGConfig = /etc/wireguard/wg0.conf\n",
			opts: include("[Peer]\nPublicKey = " + pubA + "\n"),
			want: []string{"/etc/wireguard/wg0.conf: no [Interface] section"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := tt.file
			if file == "" {
				file = "wg0.conf"
			}
			opts := tt.opts
			if opts.ReadFile == nil {
				opts = hermetic(nil, nil)
			}
			c, err := config.Parse(file, []byte(tt.src), opts)
			if err == nil {
				t.Fatalf("Parse succeeded, want errors:\n%s", c.Render(config.RenderOptions{IncludeSecrets: true}))
			}
			if c != nil {
				t.Error("Parse returned a config along with errors")
			}
			var errs config.Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error is %T, want config.Errors", err)
			}
			var got []string
			for _, e := range errs {
				got = append(got, e.Error())
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("errors:\ngot:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tt.want, "\n  "))
			}
			if err.Error() != strings.Join(got, "\n") {
				t.Errorf("Errors.Error() = %q, want the messages one per line", err.Error())
			}
		})
	}
}

func TestErrorsUnwrap(t *testing.T) {
	src := "[Interface]\nPrivateKeyFile = /missing\n[Peer]\nPublicKey = nope\n"
	_, err := config.Parse("wg0.conf", []byte(src), hermetic(nil, nil))

	var one *config.Error
	if !errors.As(err, &one) {
		t.Fatalf("errors.As(*config.Error) failed on %v", err)
	}
	if one.File != "wg0.conf" || one.Line != 2 || one.Key != "PrivateKeyFile" {
		t.Errorf("first error = %+v", one)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Error("errors.Is(err, fs.ErrNotExist) = false; the read error must be wrapped")
	}
	if !errors.Is(err, protocol.ErrBadKey) {
		t.Error("errors.Is(err, protocol.ErrBadKey) = false; the key error must be wrapped")
	}
	var list config.Errors
	if !errors.As(err, &list) || len(list) != 2 {
		t.Errorf("errors.As(config.Errors) = %v", list)
	}
}

// TestErrorsKeepSecrets feeds secrets into every place a message could
// echo them and checks that none does.
func TestErrorsKeepSecrets(t *testing.T) {
	secret := privA
	iface := "[Interface]\nPrivateKey = " + privA + "\n"
	sources := []string{
		"[Interface]\nPrivateKey " + secret + "\n",
		"[Interface]\nPrivateKey = " + secret[:43] + "\n",
		"[Interface]\nPrivateKey = " + secret + "x\n",
		"[Interface]\nPrivateKey = " + secret + " " + secret + "\n",
		"[Interface]\nPrivateKey = \"" + secret + "\n",
		"[Interface]\nPrivateKey = '" + secret + "' trailing\n",
		"[Interface]\nPrivateKey = $" + secret + "\n",
		"[Interface]\n" + secret + " = 1\n",
		"[Interface]\n" + secret + "\n",
		secret + "\n" + iface,
		"[" + secret + "]\n" + iface,
		"[Interface]\nPrivateKey = " + secret + "\nPrivateKey = " + secret + "\n",
		iface + "[Peer]\nPublicKey = " + pubA + "\nPresharedKey = " + pskA[:40] + "\n",
		iface + "[Peer]\nPublicKey = " + pubA + "\nPresharedKey = \"" + pskA + "\n",
		iface + "[Socks5]\nBindAddress = 127.0.0.1:1080\nPassword = '" + secret + "\n",
		iface + "[Socks5]\nBindAddress = 127.0.0.1:1080\nPassword = $" + secret + "\n",
		iface + "[Socks5]\nBindAddress = 127.0.0.1:1080\nPassword " + secret + "\n",
	}
	files := fakeFS{"/keys/bad": {data: secret + "!", mode: 0o600}}
	sources = append(sources, "[Interface]\nPrivateKeyFile = /keys/bad\n")
	for _, src := range sources {
		_, err := config.Parse("wg0.conf", []byte(src), hermetic(files, nil))
		if err == nil {
			t.Errorf("no error for %q", src)
			continue
		}
		for _, part := range []string{secret[:12], secret[20:32], pskA[:12]} {
			if strings.Contains(err.Error(), part) {
				t.Errorf("error for %q echoes the secret:\n%v", src, err)
			}
		}
	}
}
