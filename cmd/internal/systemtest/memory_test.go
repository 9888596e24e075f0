package systemtest

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/metricstest"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// With a 64 MiB budget, `wgbore up` takes idle connections through its
// SOCKS5 proxy until its budget refuses them, against a wireguard-go
// peer: resident memory never passes the budget, the refusals are
// counted as the budget's, and every connection opened before them
// still echoes.
func TestMemoryBudgetHolds(t *testing.T) {
	if testing.Short() {
		t.Skip("opens connections until a 64 MiB budget is spent: a few thousand, about 10 s")
	}
	raiseNoFile(t)
	const budget = 64 << 20
	ours, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, ours.PublicKey(), peersite.Options{})
	// MaxConnections far above what the budget holds, so that the budget
	// is what refuses.
	conf := WriteFile(t, t.TempDir(), "wg0.conf", site.WGQuick(ours, "[Socks5]\nBindAddress = 127.0.0.1:0\nMaxConnections = 50000\n"))
	d := startDaemon(t, conf, "-memory-limit", "64MiB", "-metrics", "127.0.0.1:0")
	pid := d.cmd.Process.Pid
	socks := d.addr(t, "socks5 ", 0)
	metrics := metricstest.Remote("http://" + strings.TrimSuffix(d.addr(t, "metrics http://", 0), "/metrics"))
	echo := netip.AddrPortFrom(peersite.TheirV4, 7)

	s := startRSSSampler(pid)
	defer s.stop()
	var (
		mu      sync.Mutex
		conns   []net.Conn
		refused atomic.Bool
		failure error
		wg      sync.WaitGroup
	)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	const limit = 10000
	var opened atomic.Int64
	for range 16 {
		wg.Go(func() {
			for !refused.Load() && opened.Add(1) <= limit {
				c, err := memConn(socks, echo)
				mu.Lock()
				switch {
				case err == nil:
					conns = append(conns, c)
				case strings.Contains(err.Error(), "refused"):
					refused.Store(true)
				case failure == nil:
					failure = err
					refused.Store(true) // stop the others too
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if failure != nil {
		t.Fatalf("after %d connections: %v", len(conns), failure)
	}
	if !refused.Load() {
		t.Fatalf("%d connections opened under a 64 MiB budget and none was refused", len(conns))
	}
	// A moment for whatever the last connections set in motion.
	time.Sleep(time.Second)
	s.stop()
	peak := s.peak() << 10
	t.Logf("%d idle connections held under a 64 MiB budget; peak RSS %.1f MiB; timeline:%s",
		len(conns), float64(peak)/(1<<20), s.timeline())
	if peak > budget {
		t.Errorf("resident memory peaked at %.1f MiB, past the 64 MiB budget", float64(peak)/(1<<20))
	}
	if len(conns) < 500 {
		t.Errorf("a 64 MiB budget held only %d idle connections", len(conns))
	}

	fams, _ := metricstest.Parse(t, metrics)
	if got := metricstest.Value(t, fams, "wgbore_memory_budget_bytes"); got != budget {
		t.Errorf("wgbore_memory_budget_bytes = %v, want %d", got, budget)
	}
	if got := metricstest.Value(t, fams, "wgbore_memory_refused_connections_total"); got < 1 {
		t.Errorf("wgbore_memory_refused_connections_total = %v after a refusal", got)
	}

	// Every connection opened before the refusals still echoes.
	var bad atomic.Int64
	var pings sync.WaitGroup
	next := make(chan net.Conn)
	for range 16 {
		pings.Go(func() {
			for c := range next {
				if err := ping(c); err != nil {
					if bad.Add(1) == 1 {
						t.Errorf("an open connection no longer echoes: %v", err)
					}
				}
			}
		})
	}
	for _, c := range conns {
		next <- c
	}
	close(next)
	pings.Wait()
	if n := bad.Load(); n > 0 {
		t.Fatalf("%d of %d open connections no longer echo", n, len(conns))
	}
}

// ping sends one byte on c and reads it back.
func ping(c net.Conn) error {
	c.SetDeadline(time.Now().Add(20 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte{'p'}); err != nil {
		return err
	}
	b := []byte{0}
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	if b[0] != 'p' {
		return fmt.Errorf("echo %q, want %q", b[0], 'p')
	}
	return nil
}
