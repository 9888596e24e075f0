package proxy

import (
	"net"
	"testing"
	"time"
)

// waitStats polls stats until it reports want: the server counts a
// connection when it accepts or ends it, not when the client does.
func waitStats(t testing.TB, what string, stats func() ConnStats, want ConnStats) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := stats()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: Stats = %+v, want %+v", what, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestTCPForwarderStatsSumsListeners(t *testing.T) {
	target := "127.0.0.1:" + startTCPEcho(t)
	f, addr1, _ := startTCPForwarder(t, "127.0.0.1:0", target, ForwardConfig{})
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveInBackground(t, func() error { return f.Serve(l2) }, f.Close)
	waitStats(t, "before any client", f.Stats, ConnStats{})

	var clients []net.Conn
	for _, addr := range []string{addr1, addr1, l2.Addr().String()} {
		c := forwardDialClient(t, addr)
		forwardExchange(t, c, "ping")
		clients = append(clients, c)
	}
	waitStats(t, "three relays open", f.Stats, ConnStats{Active: 3, Total: 3})

	clients[0].Close()
	waitStats(t, "one closed", f.Stats, ConnStats{Active: 2, Total: 3})
	for _, c := range clients[1:] {
		c.Close()
	}
	waitStats(t, "all closed", f.Stats, ConnStats{Active: 0, Total: 3})
}

func TestSOCKS5Stats(t *testing.T) {
	port := startTCPEcho(t)
	s, proxyAddr, _ := startSOCKS5(t, newSOCKSNetwork(), SOCKS5Config{})
	a := socksEchoThrough(t, proxyAddr, port)
	b := socksEchoThrough(t, proxyAddr, port)
	waitStats(t, "two relays", s.Stats, ConnStats{Active: 2, Total: 2})
	a.Close()
	b.Close()
	waitStats(t, "both closed", s.Stats, ConnStats{Active: 0, Total: 2})
}

func TestHTTPStats(t *testing.T) {
	p, proxyAddr := startHTTPProxy(t, newHTTPTestNetwork(), HTTPConfig{})
	// A client that has connected and not yet spoken is a connection
	// all the same: it holds a slot.
	var clients []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", proxyAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		clients = append(clients, c)
	}
	waitStats(t, "two clients", p.Stats, ConnStats{Active: 2, Total: 2})
	for _, c := range clients {
		c.Close()
	}
	waitStats(t, "both gone", p.Stats, ConnStats{Active: 0, Total: 2})

	res, body := rawHTTPProxyRequest(t, proxyAddr, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if res.StatusCode == 0 {
		t.Fatalf("no answer: %q", body)
	}
	waitStats(t, "a third, closed", p.Stats, ConnStats{Active: 0, Total: 3})
}

func TestUDPForwarderStatsCountsSessions(t *testing.T) {
	echo := startForwardUDPEcho(t, "127.0.0.1:0")
	f, addr, _ := startUDPForwarder(t, "127.0.0.1:0", echo.addr(), UDPForwardConfig{InactivityTimeout: 300 * time.Millisecond})
	a := forwardUDPClient(t, addr)
	b := forwardUDPClient(t, addr)
	forwardUDPExchange(t, a, "one")
	forwardUDPExchange(t, b, "two")
	forwardUDPExchange(t, a, "again") // the same session, not a new one
	if got := f.Stats(); got.Total != 2 || got.Active > 2 {
		t.Fatalf("Stats = %+v, want Total 2 and at most 2 active", got)
	}
	waitStats(t, "sessions expired", f.Stats, ConnStats{Active: 0, Total: 2})
	forwardUDPExchange(t, a, "back")
	waitStats(t, "a new session", f.Stats, ConnStats{Active: 1, Total: 3})
}

// TestLimitedConnCloseAllocatesNothing holds the counting to its
// promise: Close, which every connection passes through once, costs no
// allocation.
func TestLimitedConnCloseAllocatesNothing(t *testing.T) {
	var stats connCounter
	l := &limitListener{slots: make(chan struct{}, 1), stats: &stats}
	c := &limitedConn{Conn: nopConn{}, l: l}
	allocs := testing.AllocsPerRun(100, func() {
		l.slots <- struct{}{}
		stats.opened()
		c.released.Store(false)
		c.Close()
	})
	if allocs != 0 {
		t.Errorf("Close allocates %v times", allocs)
	}
	if got := stats.stats(); got.Active != 0 || got.Total == 0 {
		t.Errorf("Stats = %+v after balanced opens and closes", got)
	}
}

// nopConn is a net.Conn whose Close does nothing.
type nopConn struct{ net.Conn }

func (nopConn) Close() error { return nil }
