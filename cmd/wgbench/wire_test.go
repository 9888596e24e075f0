package main

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestWireSplit(t *testing.T) {
	const peer, client, other = 51820, 40000, 40001
	us := func(n int) time.Duration { return time.Duration(n) * time.Microsecond }
	pkts := []wirePacket{
		{us(0), client, peer},   // request 1
		{us(5), other, peer},    // someone else's keepalive: ignored
		{us(100), peer, client}, // the peer's acknowledgement
		{us(120), peer, client}, // and its echo: the peer answered in 120
		{us(150), client, peer}, // request 2: the client side answered in 30
		{us(300), peer, client}, // echo: 150
		{us(340), client, peer}, // request 3: 40
		{us(350), peer, other},  // ignored
		{us(400), peer, client}, // echo: 60
		{us(401), client, peer}, // a pure acknowledgement
		{us(450), client, peer}, // request 4: 50 (last to last)
		{us(600), peer, client}, // the last echo: no client answer follows
	}
	c, p := wireSplit(pkts, peer)
	if want := []time.Duration{us(30), us(40), us(50)}; !slices.Equal(c, want) {
		t.Errorf("client side answers = %v, want %v", c, want)
	}
	if want := []time.Duration{us(120), us(150), us(60), us(150)}; !slices.Equal(p, want) {
		t.Errorf("peer answers = %v, want %v", p, want)
	}
	// By the nearest rank, as the echoes' own p50: the lower of the
	// middle two.
	if got := p50(p); got != us(120) {
		t.Errorf("p50 = %v, want 120µs", got)
	}
	if got := p50(nil); got != 0 {
		t.Errorf("p50 of nothing = %v, want 0", got)
	}
	if c, p := wireSplit(nil, peer); c != nil || p != nil {
		t.Errorf("no packets split into %v, %v", c, p)
	}
}

func TestWireTable(t *testing.T) {
	r := newResults()
	r.add("measure=echo pair=A", kv{"p50_us", 190}, kv{"p99_us", 400})
	r.add("measure=echo_wire pair=A", kv{"client_p50_us", 74}, kv{"peer_p50_us", 113}, kv{"answers", 4000})
	r.add("measure=echo_wire pair=E-http", kv{"client_p50_us", 172}, kv{"peer_p50_us", 139}, kv{"answers", 4000})
	r.add("measure=udpecho_wire pair=A", kv{"client_p50_us", 61}, kv{"peer_p50_us", 69}, kv{"answers", 4000})
	var out strings.Builder
	r.printTable(&out)
	if !strings.Contains(out.String(), "on the wire") {
		t.Fatalf("no wire table:\n%s", out.String())
	}
	rows := map[string]string{}
	for _, l := range strings.Split(out.String(), "\n") {
		if f := strings.Fields(l); len(f) == 5 {
			rows[f[0]] = strings.Join(f[1:], " ")
		}
	}
	if rows["A"] != "74.0 113 61.0 69.0" || rows["E-http"] != "172 139 - -" {
		t.Errorf("wire rows %q, want A 74.0 113 61.0 69.0 and E-http 172 139 - -:\n%s", rows, out.String())
	}
}
