package main

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/protocol"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	in := []float64{3, 1, 2}
	median(in)
	if in[0] != 3 {
		t.Errorf("median sorted its argument: %v", in)
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 50}, {99, 99}, {100, 100}, {1, 1}, {0.5, 1}} {
		if got := percentile(d, tc.p); got != tc.want {
			t.Errorf("percentile(1..100, %v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := percentile([]time.Duration{7}, 99); got != 7 {
		t.Errorf("percentile of one = %v", got)
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("percentile of none = %v", got)
	}
}

func TestParseStatCPU(t *testing.T) {
	// A command name with spaces and a parenthesis, as /proc allows.
	line := "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 8 0 100 0 0"
	got, err := parseStatCPU(line)
	if err != nil || got != 3250*time.Millisecond {
		t.Fatalf("parseStatCPU = %v, %v; want 3.25s", got, err)
	}
	if _, err := parseStatCPU("1234 (x) S 1"); err == nil {
		t.Fatal("a short line parsed")
	}
}

func TestParseVmRSS(t *testing.T) {
	got, err := parseVmRSS("Name:\twgbore\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads: 7\n")
	if err != nil || got != 1234*1024 {
		t.Fatalf("parseVmRSS = %v, %v", got, err)
	}
	if _, err := parseVmRSS("Name:\tx\n"); err == nil {
		t.Fatal("no VmRSS parsed")
	}
}

func TestParseCPULine(t *testing.T) {
	idle, total, err := parseCPULine("cpu  100 5 50 800 40 1 4 0 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
	if err != nil || idle != 840 || total != 1000 {
		t.Fatalf("parseCPULine = %d, %d, %v; want 840, 1000", idle, total, err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"256MiB": 256 << 20, "64M": 64 << 20, "1GiB": 1 << 30, "4096": 4096, "8KiB": 8192} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "x"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
}

func TestParseBench(t *testing.T) {
	name, m, ok := parseBench("BenchmarkHandshake-2   \t    2000\t    480000 ns/op\t      2083 handshakes/s\t   12345 B/op\t      0 allocs/op")
	if !ok || name != "BenchmarkHandshake" || m["handshakes/s"] != 2083 || m["allocs/op"] != 0 || m["ns/op"] != 480000 {
		t.Fatalf("parseBench = %q %v %v", name, m, ok)
	}
	if _, _, ok := parseBench("goos: linux"); ok {
		t.Fatal("a header line parsed")
	}
}

// The machine-readable lines are the suite's interface to scripts: each
// parses back to the figures recorded, and the targets come out with a
// status.
func TestMachineLines(t *testing.T) {
	r := newResults()
	r.add("measure=throughput pair=A dir=download", kv{"mbps", 300})
	r.add("measure=throughput pair=B dir=download", kv{"mbps", 150})
	r.add("measure=echo pair=A", kv{"p50_us", 50}, kv{"p99_us", 120.5})
	r.add("measure=echo pair=B", kv{"p50_us", 100}, kv{"p99_us", 200})
	var out bytes.Buffer
	r.printMachine(&out)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	got := map[string]map[string]string{}
	for _, l := range lines {
		m, ok := parseMachineLine(l)
		if !ok {
			t.Fatalf("unparseable line %q", l)
		}
		key := m["measure"] + "/" + m["pair"] + m["name"]
		got[key] = m
	}
	if got["throughput/A"]["mbps"] != "300" || got["echo/A"]["p99_us"] != "120.5" {
		t.Errorf("figures did not round-trip: %v", got)
	}
	if s := got["target/throughput_A/B_download"]["status"]; s != "PASS" {
		t.Errorf("A/B download 2.0x status %q, want PASS", s)
	}
	if s := got["target/echo_p50_A/B"]["status"]; s != "PASS" {
		t.Errorf("echo p50 0.5x status %q, want PASS", s)
	}
	if _, ok := got["target/throughput_C/D_download"]; ok {
		t.Error("a target that was not measured was printed")
	}
}

// A crash says why at the start of its output and an error at the end:
// the buffer keeps both, bounded.
func TestTailBuffer(t *testing.T) {
	var b tailBuffer
	b.Write([]byte("fatal error: stack overflow\n"))
	for range 1000 {
		b.Write([]byte(strings.Repeat("x", 63) + "\n"))
	}
	b.Write([]byte("the last line"))
	s := b.String()
	if !strings.HasPrefix(s, "fatal error: stack overflow") || !strings.HasSuffix(s, "the last line") {
		t.Fatalf("lost the start or the end: %.80q ... %.80q", s, s[max(0, len(s)-80):])
	}
	if len(s) > headMax+2*tailMax+100 {
		t.Fatalf("kept %d bytes", len(s))
	}
	if !strings.Contains(s, "bytes ...]") {
		t.Fatal("no mark where bytes were dropped")
	}
}

// TestScaleServerConf: the file part S gives serve parses, with every
// client as a peer at its own address.
func TestScaleServerConf(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	var clients []confPeer
	for i := range 300 {
		k, _ := protocol.GeneratePrivateKey()
		clients = append(clients, confPeer{k.PublicKey(), scaleClientAddr(i)})
	}
	for i := range 11 {
		k, _ := protocol.GeneratePrivateKey()
		clients = append(clients, confPeer{k.PublicKey(), procPeerAddr(i)})
	}
	cfg, err := config.Parse("serve.conf", []byte(scaleServerConf(key, 51820, clients, 1000)), config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Peers) != len(clients) {
		t.Fatalf("%d peers, want %d", len(cfg.Peers), len(clients))
	}
	seen := map[netip.Prefix]bool{}
	for i, p := range cfg.Peers {
		a := p.AllowedIPs[0]
		if seen[a] || !scaleNet.Contains(a.Addr()) || a.Addr() == scaleServer {
			t.Fatalf("peer %d has AllowedIPs %v: repeated, outside %v or the server's", i, a, scaleNet)
		}
		seen[a] = true
	}
}

// TestSumMetric reads families from an exposition as serve writes it.
func TestSumMetric(t *testing.T) {
	m := map[string]float64{
		`wgbore_dropped_packets_total{reason="replay"}`:         2,
		`wgbore_dropped_packets_total{reason="martian_source"}`: 3,
		`wgbore_peers`:       7,
		`wgbore_peers_extra`: 100,
	}
	if got := sumMetric(m, "wgbore_dropped_packets_total"); got != 5 {
		t.Errorf("all drops: %v, want 5", got)
	}
	if got := sumMetric(m, "wgbore_dropped_packets_total", `reason="martian_source"`); got != 3 {
		t.Errorf("martian drops: %v, want 3", got)
	}
	if got := sumMetric(m, "wgbore_peers"); got != 7 {
		t.Errorf("peers: %v, want 7 (not a family that shares the prefix)", got)
	}
	before := map[string]float64{`wgbore_dropped_packets_total{reason="replay"}`: 1}
	if got := dropDelta(before, m); got != "martian_source +3, replay +1" {
		t.Errorf("dropDelta: %q", got)
	}
}

func TestParseUDPRcvbufErrors(t *testing.T) {
	snmp := "Ip: Forwarding DefaultTTL\nIp: 1 64\n" +
		"Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n" +
		"Udp: 295179239 1084490 4351275 254918474 4351276 0\n" +
		"UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n" +
		"UdpLite: 0 0 0 0 9 0\n"
	if n, ok := parseUDPRcvbufErrors(snmp); !ok || n != 4351276 {
		t.Errorf("RcvbufErrors = %d, %v; want 4351276", n, ok)
	}
	if _, ok := parseUDPRcvbufErrors("Udp: InDatagrams\nUdp: 5\n"); ok {
		t.Error("a Udp line without RcvbufErrors was read as one")
	}
}
