package systemtest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/wgbore/wgbore/cmd/internal/metricstest"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/proxy/socksclient"
)

// socksAttempt is what one SOCKS5 CONNECT through the binary came to.
type socksAttempt int

const (
	socksHeld    socksAttempt = iota // connected and echoing, held open
	socksRefused                     // reply 01, general failure: over the cap
	socksFailed                      // anything else: an error, or no answer
)

// socksHold opens a SOCKS5 CONNECT to target, proves it with a 1-byte
// echo, and returns the connection open; a refusal or failure returns nil
// and why. Every step is bounded, so a hang shows up as socksFailed.
func socksHold(proxyAddr string, target netip.AddrPort) (net.Conn, socksAttempt, error) {
	return socksHoldWithin(proxyAddr, target, 20*time.Second)
}

// socksHoldWithin is socksHold with every step bounded by timeout.
func socksHoldWithin(proxyAddr string, target netip.AddrPort, timeout time.Duration) (net.Conn, socksAttempt, error) {
	c, err := net.DialTimeout("tcp", proxyAddr, timeout)
	if err != nil {
		return nil, socksFailed, err
	}
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := socksclient.ConnectOn(c, socksclient.Auth{}, target); err != nil {
		c.Close()
		var refused *socksclient.ReplyError
		if errors.As(err, &refused) && refused.Code == 1 {
			return nil, socksRefused, nil
		}
		return nil, socksFailed, err
	}
	reply := make([]byte, 1)
	if _, err := c.Write([]byte{'x'}); err != nil {
		c.Close()
		return nil, socksFailed, err
	}
	if _, err := io.ReadFull(c, reply[:1]); err != nil || reply[0] != 'x' {
		c.Close()
		return nil, socksFailed, fmt.Errorf("echo: %v", err)
	}
	c.SetDeadline(time.Time{})
	return c, socksHeld, nil
}

// TestTenThousandSOCKSConnections opens 10,000 SOCKS5 connections at
// once through the binary, whose [Socks5] has MaxConnections 5000, each
// to the wireguard-go peer's echo service. The first 5,000 are served and
// held; the rest get SOCKS reply 01 promptly, none hangs. Once all are
// closed, the binary's goroutines and open descriptors (from its
// /metrics) are back where they started. It reports RSS per held
// connection.
func TestTenThousandSOCKSConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: 10,000 connections take some 20 s")
	}
	const total, capacity = 10000, 5000
	raiseNoFile(t)
	ours, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	conf := WriteFile(t, t.TempDir(), "wg0.conf", site.WGQuick(ours, fmt.Sprintf("[Socks5]\nBindAddress = 127.0.0.1:0\nMaxConnections = %d\n", capacity)))
	d := startDaemon(t, conf, "-metrics", "127.0.0.1:0", "-log-level", "info")
	socks := d.addr(t, "socks5 ", 0)
	h := metricstest.Remote("http://" + strings.TrimSuffix(d.addr(t, "metrics http://", 0), "/metrics"))
	echo := netip.AddrPortFrom(peersite.TheirV4, 7)
	pid := d.cmd.Process.Pid

	// One connection first, so the handshake and the first tunnel
	// endpoint are in the baseline, as they are for a user.
	c, _, err := socksHold(socks, echo)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	baseline := func() (goroutines, fds float64) {
		fams, _ := metricstest.Parse(t, h)
		return metricstest.Value(t, fams, "go_goroutines"), metricstest.Value(t, fams, "process_open_fds")
	}
	// The scrape itself holds a connection, so the figures carry a
	// little slack; the highest of a few samples is the baseline.
	var g0, fd0 float64
	for range 5 {
		g, fd := baseline()
		g0, fd0 = max(g0, g), max(fd0, fd)
		time.Sleep(100 * time.Millisecond)
	}
	const slack = 4
	rss0 := vmRSS(t, pid)

	var (
		mu       sync.Mutex
		held     []net.Conn
		outcomes [3]int
		errs     []string
		wg       sync.WaitGroup
		next     = make(chan struct{}, total)
	)
	for range total {
		next <- struct{}{}
	}
	close(next)
	start := time.Now()
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				c, how, err := socksHold(socks, echo)
				mu.Lock()
				outcomes[how]++
				if c != nil {
					held = append(held, c)
				}
				if err != nil && len(errs) < 5 {
					errs = append(errs, err.Error())
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	rssHeld := vmRSS(t, pid)
	fams, _ := metricstest.Parse(t, h)
	refused := metricstest.Value(t, fams, "wgbore_listener_connections_refused_total", "kind", "socks5", "addr", socks)
	t.Logf("%d attempts in %v: %d held, %d refused (metrics: %v), %d failed %v", total, took.Round(time.Millisecond), outcomes[socksHeld], outcomes[socksRefused], refused, outcomes[socksFailed], errs)
	t.Logf("RSS %d KiB idle, %d KiB with %d held: %.1f KiB per connection", rss0, rssHeld, len(held), float64(rssHeld-rss0)/float64(len(held)))
	if outcomes[socksHeld] != capacity || outcomes[socksRefused] != total-capacity || outcomes[socksFailed] != 0 {
		t.Errorf("want %d held and %d refused, none failed", capacity, total-capacity)
	}
	if int(refused) != outcomes[socksRefused] {
		t.Errorf("metrics count %v refusals, clients saw %d", refused, outcomes[socksRefused])
	}
	// A held connection still works with the listener full.
	if _, err := held[0].Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	held[0].SetReadDeadline(time.Now().Add(10 * time.Second))
	if b := make([]byte, 1); func() error { _, err := io.ReadFull(held[0], b); return err }() != nil || !bytes.Equal(b, []byte("y")) {
		t.Fatal("a held connection stopped echoing")
	}

	for _, c := range held {
		c.Close()
	}
	// The closes take a while under the race detector, mostly in this
	// process's peer, so the wait is for progress, not for a time: it
	// fails once neither the goroutines nor the open descriptors have
	// fallen for a while. Goroutines alone are no measure of it: a relay
	// that was handed over holds none, only its client's descriptor, and
	// a FIN dropped in a closing burst waits out a retransmission.
	closed := time.Now()
	var g, fd float64
	lowestG, lowestFD, lastFall := math.Inf(1), math.Inf(1), closed
	for {
		if g, fd = baseline(); g <= g0+slack && fd <= fd0+slack {
			break
		}
		if g < lowestG || fd < lowestFD {
			lowestG, lowestFD, lastFall = min(g, lowestG), min(fd, lowestFD), time.Now()
		}
		if time.Since(lastFall) > 30*time.Second {
			fams, _ := metricstest.Parse(t, h)
			t.Logf("active: %v; dropped: %s", metricstest.Value(t, fams, "wgbore_listener_connections_active", "kind", "socks5", "addr", socks), droppedSummary(fams))
			t.Fatalf("%v after closing, nothing closed for 30 s: %v goroutines (baseline %v), %v open descriptors (baseline %v)",
				time.Since(closed).Round(time.Second), g, g0, fd, fd0)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fams, _ = metricstest.Parse(t, h)
	t.Logf("back to baseline %v after closing: goroutines %v before, %v after; open descriptors %v before, %v after; dropped: %s",
		time.Since(closed).Round(100*time.Millisecond), g0, g, fd0, fd, droppedSummary(fams))
}

// droppedSummary lists the engine's nonzero drop counters by reason.
func droppedSummary(fams map[string]*dto.MetricFamily) string {
	var parts []string
	if f := fams["wgbore_dropped_packets_total"]; f != nil {
		for _, m := range f.GetMetric() {
			if v := m.GetCounter().GetValue(); v > 0 {
				var labels []string
				for _, l := range m.GetLabel() {
					labels = append(labels, l.GetValue())
				}
				parts = append(parts, fmt.Sprintf("%s=%v", strings.Join(labels, "/"), v))
			}
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}
