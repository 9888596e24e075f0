package service

import (
	"crypto/tls"
	"strings"
	"testing"

	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/protocol"
)

// everySection has one section of each kind that runs a front end.
const everySection = `[Interface]
PrivateKey = %KEY%
Address = 10.0.0.2/32

[Socks5]
BindAddress = 127.0.0.1:1080
Username = u
Password = first

[http]
BindAddress = 127.0.0.1:8080

[TCPClientTunnel]
BindAddress = 127.0.0.1:2222
Target = 10.0.0.1:22

[TCPServerTunnel]
ListenPort = 80
Target = 127.0.0.1:8080

[UDPProxyTunnel]
BindAddress = 127.0.0.1:5353
Target = 10.0.0.1:53

[UDPServerTunnel]
ListenPort = 53
Target = 127.0.0.1:53

[Metrics]
BindAddress = 127.0.0.1:9100
`

// runningSpecs parses text and returns its sections as a reload sees
// them: specs to start, and front ends as if they ran. certs is the
// [http] section's chain; nil for plain HTTP.
func runningSpecs(t *testing.T, text string, certs [][]byte) ([]sectionSpec, []*frontEnd) {
	t.Helper()
	cfg, err := config.Parse("wg0.conf", []byte(text), config.Options{LookupEnv: func(string) (string, bool) { return "", false }})
	if err != nil {
		t.Fatal(err)
	}
	p := &Plan{cfg: cfg, httpTLS: []*tls.Config{nil}}
	if certs != nil {
		p.httpTLS[0] = &tls.Config{Certificates: []tls.Certificate{{Certificate: certs}}}
	}
	specs := (&Service{}).sections(p)
	var fes []*frontEnd
	for _, spec := range specs {
		fes = append(fes, &frontEnd{kind: spec.kind, section: spec.section})
	}
	return specs, fes
}

// TestReloadComparesSectionsByMeaning checks which edits of a file make
// a reload restart a front end: a moved section keeps running, and a
// changed value, password or certificate restarts only its own.
func TestReloadComparesSectionsByMeaning(t *testing.T) {
	key, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	base := strings.Replace(everySection, "%KEY%", key.Base64(), 1)
	baseSpecs, running := runningSpecs(t, base, nil)
	kinds := []string{"Socks5", "http", "TCPClientTunnel", "TCPServerTunnel", "UDPProxyTunnel", "UDPServerTunnel", "Metrics"}
	if len(running) != len(kinds) {
		t.Fatalf("%d front ends, want %d", len(running), len(kinds))
	}
	for i, fe := range running {
		if fe.kind != kinds[i] {
			t.Fatalf("front end %d is [%s], want [%s]", i, fe.kind, kinds[i])
		}
	}

	for _, c := range []struct {
		what    string
		text    string
		certs   [][]byte
		changed string // the kind that must restart; "" for none
	}{
		{"the same file", base, nil, ""},
		{"a comment above every section", "# moved\n\n" + base, nil, ""},
		{"a new SOCKS5 password", strings.Replace(base, "Password = first", "Password = second", 1), nil, "Socks5"},
		{"a new server tunnel target", strings.Replace(base, "Target = 127.0.0.1:8080", "Target = 127.0.0.1:8081", 1), nil, "TCPServerTunnel"},
		{"a new UDP timeout", strings.Replace(base, "Target = 10.0.0.1:53\n", "Target = 10.0.0.1:53\nInactivityTimeout = 5\n", 1), nil, "UDPProxyTunnel"},
		{"a new metrics address", strings.Replace(base, "127.0.0.1:9100", "127.0.0.1:9101", 1), nil, "Metrics"},
		{"a certificate where there was none", base, [][]byte{[]byte("cert")}, "http"},
	} {
		specs, _ := runningSpecs(t, c.text, c.certs)
		for i, spec := range specs {
			same := running[i].sameSection(spec)
			if want := spec.kind != c.changed; same != want {
				t.Errorf("%s: [%s] compares same=%v, want %v", c.what, spec.kind, same, want)
			}
		}
	}

	// A renewed certificate in the same files restarts the listener; the
	// same chain read again does not.
	_, https := runningSpecs(t, base, [][]byte{[]byte("leaf"), []byte("ca")})
	again, _ := runningSpecs(t, base, [][]byte{[]byte("leaf"), []byte("ca")})
	renewed, _ := runningSpecs(t, base, [][]byte{[]byte("new leaf"), []byte("ca")})
	if !https[1].sameSection(again[1]) {
		t.Error("the same certificate chain compares different")
	}
	if https[1].sameSection(renewed[1]) {
		t.Error("a renewed certificate compares the same")
	}

	// A section never matches one of another kind.
	for i, fe := range running {
		for j, spec := range baseSpecs {
			if i != j && fe.sameSection(spec) {
				t.Errorf("[%s] matches [%s]", fe.kind, spec.kind)
			}
		}
	}
}
