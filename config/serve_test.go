package config_test

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/wgbore/wgbore/config"
)

const serveSections = `
[Egress]
Allow = 127.0.0.1/32, 198.51.100.0/24
Allow = 2001:db8::1
Deny = 8.8.8.8/32
HostAddress = 203.0.113.7, 2001:db8::7
MaxFlowsPerPeer = 64
MaxFlows = 5000
FlowMemory = 256MiB
UDPTimeout = 30

[DNSServer]
Upstream = 127.0.0.53, 127.0.0.1:5353
Record = demo.wg 10.0.0.1 fd00::1
Record = Files.Demo.WG. 10.0.0.9
`

func TestServeSections(t *testing.T) {
	src := "[Interface]\nPrivateKey = " + privA + "\nListenPort = 51820\n" + serveSections
	c, err := config.Parse("server.conf", []byte(src), config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	wantEgress := &config.Egress{
		Allow:           pfx("127.0.0.1/32", "198.51.100.0/24", "2001:db8::1/128"),
		Deny:            pfx("8.8.8.8/32"),
		HostAddresses:   addrs("203.0.113.7", "2001:db8::7"),
		MaxFlowsPerPeer: 64,
		MaxFlows:        5000,
		FlowMemory:      256 << 20,
		UDPTimeout:      30 * time.Second,
		Pos:             config.Position{File: "server.conf", Line: 5},
	}
	if !reflect.DeepEqual(c.Egress, wantEgress) {
		t.Fatalf("Egress = %+v, want %+v", c.Egress, wantEgress)
	}
	wantDNS := &config.DNSServer{
		Upstream: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.53:53"), netip.MustParseAddrPort("127.0.0.1:5353")},
		Records: map[string][]netip.Addr{
			"demo.wg.":       addrs("10.0.0.1", "fd00::1"),
			"files.demo.wg.": addrs("10.0.0.9"),
		},
		Pos: config.Position{File: "server.conf", Line: 15},
	}
	if !reflect.DeepEqual(c.DNSServer, wantDNS) {
		t.Fatalf("DNSServer = %+v, want %+v", c.DNSServer, wantDNS)
	}

	// A render reads back the same.
	again, err := config.Parse("render.conf", []byte(c.Render(config.RenderOptions{IncludeSecrets: true})), config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	assertSameConfig(t, again, c)

	// Without the sections, there is no server-mode setting at all.
	plain, err := config.Parse("client.conf", []byte("[Interface]\nPrivateKey = "+privA+"\n"), config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if plain.Egress != nil || plain.DNSServer != nil {
		t.Fatalf("Egress %v, DNSServer %v; want nil without the sections", plain.Egress, plain.DNSServer)
	}
}

func TestServeSectionErrors(t *testing.T) {
	src := "[Interface]\nPrivateKey = " + privA + "\n" + // 1-2
		"[Egress]\n" + // 3
		"Allow = 10.0.0.0/33\n" + // 4
		"MaxFlowsPerPeer = 0\n" + // 5
		"[Egress]\n" + // 6
		"[DNSServer]\n" + // 7
		"Upstream = dns.example\n" + // 8
		"Record = lonely.name\n" + // 9
		"Record = demo.wg 10.0.0.300\n" + // 10
		"[Peer]\nPublicKey = " + pubB + "\n" + // 11-12
		"[Egress]\nMaxFlows = many\nFlowMemory = lots\n" + // 13-15
		"[Egress]\nFlowMemory = 1MiB\nHostAddress = 10.0.0.0/8\n" // 16-18
	_, err := config.Parse("server.conf", []byte(src), config.Options{})
	want := []string{
		`server.conf:4: Allow: "10.0.0.0/33" is not an IP address or prefix`,
		`server.conf:5: MaxFlowsPerPeer: "0" is not a number from 1 to 1048576`,
		"server.conf:6: [Egress] appears twice (first on line 3)",
		`server.conf:8: Upstream: "dns.example" is not an IP address or IP:port`,
		`server.conf:9: Record: "lonely.name": want a name and one or more IP addresses`,
		`server.conf:10: Record: "10.0.0.300" is not an IP address`,
		"server.conf:13: [Egress] appears twice (first on line 3)",
		`server.conf:14: MaxFlows: "many" is not a number from 1 to 1048576`,
		`server.conf:15: FlowMemory: "lots" is not a size such as 64MiB, 1GiB or a number of bytes`,
		"server.conf:16: [Egress] appears twice (first on line 3)",
		"server.conf:17: FlowMemory: 1MiB is below the 16 MiB minimum",
		`server.conf:18: HostAddress: "10.0.0.0/8" is not an IP address`,
	}
	if err == nil || err.Error() != strings.Join(want, "\n") {
		t.Fatalf("errors:\n%v\nwant:\n%s", err, strings.Join(want, "\n"))
	}
}

// TestEmptyCheckAliveWithInterval: "CheckAlive =" sets no address, so an
// interval beside it is as meaningless as one without it (a fuzzer found
// that the render, which drops both, read back differently).
func TestEmptyCheckAliveWithInterval(t *testing.T) {
	src := "[Interface]\nPrivateKey = " + privA + "\nCheckAlive =\nCheckAliveInterval = 3\n"
	_, err := config.Parse("wg0.conf", []byte(src), config.Options{})
	if err == nil || err.Error() != "wg0.conf:4: CheckAliveInterval: only valid when CheckAlive is set" {
		t.Fatalf("err = %v", err)
	}
}
