package main

import (
	"net"
	"os"
	"runtime"
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
	if got := p50(p); got != us(150) {
		t.Errorf("p50 = %v, want 150µs", got)
	}
	if c, p := wireSplit(nil, peer); c != nil || p != nil {
		t.Errorf("no packets split into %v, %v", c, p)
	}
}

// TestWireCapture captures a real exchange on the loopback interface:
// one side answers the other at once, the other waits before it sends
// again, and the split must show which waited.
func TestWireCapture(t *testing.T) {
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		t.Skip("the wire capture needs Linux and CAP_NET_RAW; this run has neither root nor Linux")
	}
	c, err := startWire()
	if err != nil {
		t.Fatalf("startWire: %v", err)
	}
	a, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	done := make(chan struct{})
	go func() { // b echoes at once
		defer close(done)
		buf := make([]byte, 16)
		for {
			n, from, err := b.ReadFromUDP(buf)
			if err != nil {
				return
			}
			b.WriteToUDP(buf[:n], from)
		}
	}()
	buf := make([]byte, 16)
	a.SetDeadline(time.Now().Add(5 * time.Second))
	for range 20 {
		if _, err := a.WriteToUDP([]byte{1}, b.LocalAddr().(*net.UDPAddr)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := a.ReadFromUDP(buf); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Millisecond)
	}
	pkts, err := c.stop()
	b.Close()
	<-done
	if err != nil {
		t.Fatalf("capture: %v", err)
	}
	client, peer := wireSplit(pkts, uint16(b.LocalAddr().(*net.UDPAddr).Port))
	if len(client) < 15 || len(peer) < 15 {
		t.Fatalf("split %d client and %d peer answers out of %d datagrams, want about 20 each", len(client), len(peer), len(pkts))
	}
	if p50(client) < 3*time.Millisecond || p50(peer) >= 3*time.Millisecond {
		t.Fatalf("client side answered in %v and the peer in %v: the client side waited 3ms each time, the peer not at all", p50(client), p50(peer))
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
