package systemtest

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/membudget"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/proxy/socksclient"
)

// BenchmarkIdleConnMemory measures the resident memory of a `wgbore up`
// process: idle, once start-up and one handshake have settled, and per
// idle TCP connection held through its SOCKS5 proxy. Each connection is
// a CONNECT to the peer's echo service that moves one byte each way and
// then stays open; once all are open, and after a pause for the process
// to settle, the growth of VmRSS over the idle figure, divided by their
// number, is the cost of one. The code pages that serving connections
// touches again after start-up gave them back are part of that cost.
//
// Every sub-benchmark starts a process of its own; b.N is not used, so
// run it once:
//
//	go test ./cmd/internal/systemtest -run '^$' -bench IdleConnMemory -benchtime 1x
//
// The binary is `go build`'s unless $WGBORE_BENCH_BINARY names another,
// such as the release build of .ci/build-static (no cgo, no symbols),
// whose smaller image is also less resident memory. With
// $WGBORE_MEM_STATUS naming a directory, the process's memory maps are
// saved there, idle and with the connections held.
func BenchmarkIdleConnMemory(b *testing.B) {
	raiseNoFile(b)
	for _, n := range []int{1000, 10000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			m := startMemUp(b, 20000, "")
			measureIdleConns(b, m, n, func() (net.Conn, error) { return memConn(m.socks, m.echo) })
		})
	}
}

// BenchmarkIdleTunnelMemory is the idle-connection benchmark through the
// HTTP proxy: each connection is a CONNECT tunnel to the echo service
// that moves one byte each way and then stays open.
//
//	go test ./cmd/internal/systemtest -run '^$' -bench IdleTunnelMemory -benchtime 1x
func BenchmarkIdleTunnelMemory(b *testing.B) {
	raiseNoFile(b)
	for _, n := range []int{1000, 10000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			m := startMemUp(b, 20000, "[http]\nBindAddress = 127.0.0.1:0\nMaxConnections = 20000\n")
			proxy := m.d.addr(b, "http ", 0)
			measureIdleConns(b, m, n, func() (net.Conn, error) { return memTunnel(proxy, m.echo) })
		})
	}
}

// measureIdleConns opens n connections with open on the process m, holds
// them, and reports idle and held RSS and the cost of one connection.
func measureIdleConns(b *testing.B, m memUp, n int, open func() (net.Conn, error)) {
	pid, idle := m.pid, m.idle
	saveMemStatus(pid, "idle")
	b.ReportMetric(float64(m.settled)/1024, "settled-MiB")
	conns, err := openFlows(n, open)
	b.Cleanup(func() { closeConns(conns) })
	if err != nil {
		b.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	busy := vmRSS(b, pid)
	b.ReportMetric(float64(idle)/1024, "idle-MiB")
	b.ReportMetric(float64(busy)/1024, "held-MiB")
	b.ReportMetric(float64(busy-idle)/float64(n), "KiB/conn")
	saveMemStatus(pid, strconv.Itoa(n))
}

// memUp is a `wgbore up` whose SOCKS5 proxy reaches a wireguard-go
// peer's echo service, with its idle resident memory.
type memUp struct {
	d       *daemon
	site    *peersite.Site
	pid     int
	socks   string
	echo    netip.AddrPort
	settled int64 // KiB, right after the reclaim that ends start-up
	idle    int64 // KiB, idle as it stays (idleRSS)
}

// startMemUp starts the peer and `wgbore up` with a [Socks5] of
// maxConns and the sections in extra, makes the first connection (the
// handshake), and measures idle as idleRSS does.
func startMemUp(b *testing.B, maxConns int, extra string) memUp {
	ours, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(b, ours.PublicKey(), peersite.Options{})
	conf := WriteFile(b, b.TempDir(), "wg0.conf", site.WGQuick(ours, fmt.Sprintf("[Socks5]\nBindAddress = 127.0.0.1:0\nMaxConnections = %d\n", maxConns)+extra))
	m := memUp{d: startMemDaemon(b, conf), site: site, echo: netip.AddrPortFrom(peersite.TheirV4, 7)}
	m.pid = m.d.cmd.Process.Pid
	m.socks = m.d.addr(b, "socks5 ", 0)
	c, err := memConn(m.socks, m.echo)
	if err != nil {
		b.Fatal(err)
	}
	c.Close()
	m.settled, m.idle = idleRSS(b, m.pid)
	return m
}

// idleSteady is how long after the reclaim that ends start-up a
// process's idle memory is read as it stays: past the Go runtime's next
// forced collection, which comes two minutes after that reclaim's, and
// the release of the binary's pages that follows it.
const idleSteady = 2*time.Minute + 15*time.Second

// idleRSS reads the RSS of an idle process, in KiB, twice: right after
// the reclaim that ends start-up, and idleSteady later. The first is a
// low that lasts seconds: the reclaim gives the kernel the pages of the
// binary that start-up touched, and the next timer, keepalive or
// collection brings many back. The second is the idle that a user
// watching the process sees between the runtime's forced collections,
// and what the cost of connections and the memory after a burst are
// measured against.
func idleRSS(b testing.TB, pid int) (settled, steady int64) {
	time.Sleep(2*time.Second + membudget.ReclaimSettle*membudget.ReclaimEvery)
	settled = vmRSS(b, pid)
	time.Sleep(idleSteady)
	return settled, vmRSS(b, pid)
}

// startMemDaemon runs `wgbore up -c conf` from the binary
// $WGBORE_BENCH_BINARY names, or as startDaemon does.
func startMemDaemon(b *testing.B, conf string) *daemon {
	bin := os.Getenv("WGBORE_BENCH_BINARY")
	if bin == "" {
		return startDaemon(b, conf, "-log-level", "info")
	}
	cmd := exec.Command(bin, "up", "-c", conf, "-log-format", "json", "-log-level", "info", "-uapi-dir", ShortTempDir(b))
	cmd.Stdout = io.Discard
	return runDaemon(b, cmd)
}

// saveMemStatus copies the process's memory maps, to see where the
// memory went, into the directory $WGBORE_MEM_STATUS names, if any.
func saveMemStatus(pid int, name string) {
	dir := os.Getenv("WGBORE_MEM_STATUS")
	if dir == "" {
		return
	}
	for _, f := range []string{"smaps_rollup", "smaps", "status"} {
		raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, f))
		os.WriteFile(fmt.Sprintf("%s/%s-%s.txt", dir, f, name), raw, 0o644)
	}
}

// memConn opens a SOCKS5 CONNECT to target and moves one byte each way.
func memConn(socks string, target netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := socksclient.Connect(ctx, socks, socksclient.Auth{}, target)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	one := []byte{'x'}
	if _, err := c.Write(one); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := io.ReadFull(c, one); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// memTunnel opens an HTTP CONNECT tunnel to target and moves one byte
// each way.
func memTunnel(proxy string, target netip.AddrPort) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", proxy, 60*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\nx", target, target)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil || res.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %v %v", target, res, err)
	}
	if _, err := br.ReadByte(); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// vmRSS reads a process's resident set size, in KiB.
func vmRSS(b testing.TB, pid int) int64 {
	b.Helper()
	return statusKiB(b, pid, "VmRSS")
}

// statusKiB reads one of the sizes in /proc/PID/status, in KiB.
func statusKiB(tb testing.TB, pid int, key string) int64 {
	tb.Helper()
	kib, ok := readStatusKiB(pid, key)
	if !ok {
		tb.Fatalf("no %s in /proc/%d/status", key, pid)
	}
	return kib
}

// readVmRSS reads a process's resident set size, in KiB, if it can.
func readVmRSS(pid int) (int64, bool) { return readStatusKiB(pid, "VmRSS") }

// readStatusKiB reads one of the sizes in /proc/PID/status (VmRSS,
// RssFile, ...), in KiB, if it can.
func readStatusKiB(pid int, key string) (int64, bool) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kib, err == nil
		}
	}
	return 0, false
}

var burstConns = flag.Int("burst.n", 5000, "connections the burst memory benchmark opens, holds and closes")

// BenchmarkBurstMemory follows a `wgbore up` process's resident memory
// through a burst: idle (idleRSS), while -burst.n idle connections are held
// through its SOCKS5 proxy, right after they all close, and 30 s later.
// peak-MiB is the most it held at any sample, every 100 ms from the
// first connection on, and close-peak-MiB the most from the close on.
// A sidecar is killed at its peak, and its neighbours want the memory
// back once the burst is over. What the close costs beside that, from
// its start to the sample a second later:
// wgbore's CPU time (close-cpu-s) and what it sent the peer per
// connection (close-B/conn, in WireGuard messages). With -v it logs when
// the memory moved.
//
//	go test ./cmd/internal/systemtest -run '^$' -bench BurstMemory -benchtime 1x -v
//
// $WGBORE_BENCH_BINARY and $WGBORE_MEM_STATUS work as for the idle
// benchmark beside it.
func BenchmarkBurstMemory(b *testing.B) {
	raiseNoFile(b)
	n := *burstConns
	m := startMemUp(b, 4*n, "")
	d, pid, socks, echo, idle := m.d, m.pid, m.socks, m.echo, m.idle

	s := startRSSSampler(pid)
	defer s.stop()
	conns, err := openMemConns(socks, echo, n)
	defer func() { closeConns(conns) }()
	if err != nil {
		b.Fatal(err)
	}
	time.Sleep(5 * time.Second)
	held := vmRSS(b, pid)
	saveMemStatus(pid, "burst-held")
	s.mark("closing")
	openPeak := s.takePeak()
	cpu, received := procCPU(pid), siteReceived(b, m.site)
	for i, c := range conns {
		c.Close()
		conns[i] = nil
	}
	time.Sleep(time.Second)
	closed := vmRSS(b, pid)
	cpu, received = procCPU(pid)-cpu, siteReceived(b, m.site)-received
	saveMemStatus(pid, "burst-closed")
	time.Sleep(29 * time.Second)
	later := vmRSS(b, pid)
	saveMemStatus(pid, "burst-30s")
	if dir := os.Getenv("WGBORE_MEM_STATUS"); dir != "" {
		os.WriteFile(dir+"/burst-log.txt", []byte(d.log()), 0o644)
	}
	s.stop()
	b.Logf("RSS from the first connection on:%s", s.timeline())

	mib := func(kib int64) float64 { return float64(kib) / 1024 }
	b.ReportMetric(mib(m.settled), "settled-MiB")
	b.ReportMetric(mib(idle), "idle-MiB")
	b.ReportMetric(mib(held), "held-MiB")
	b.ReportMetric(mib(max(openPeak, s.peak())), "peak-MiB")
	b.ReportMetric(mib(s.peak()), "close-peak-MiB")
	b.ReportMetric(mib(closed), "closed-MiB")
	b.ReportMetric(mib(later), "after30s-MiB")
	b.ReportMetric(float64(later)/float64(idle), "after30s/idle")
	b.ReportMetric(cpu.Seconds(), "close-cpu-s")
	b.ReportMetric(float64(received)/float64(n), "close-B/conn")
}

// siteReceived is what the wireguard-go peer has received from us, in
// bytes of WireGuard messages (its UAPI's rx_bytes): on loopback, what
// wgbore sent it.
func siteReceived(b *testing.B, site *peersite.Site) int64 {
	b.Helper()
	get, err := site.Device.IpcGet()
	if err != nil {
		b.Fatal(err)
	}
	var rx int64
	for _, line := range strings.Split(get, "\n") {
		if v, ok := strings.CutPrefix(line, "rx_bytes="); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				b.Fatalf("the peer's UAPI: rx_bytes=%s: %v", v, err)
			}
			rx += n
		}
	}
	return rx
}

// rssSampler reads a process's VmRSS every 100 ms, keeping the peak
// and a timeline of every move of 4 MiB or more.
type rssSampler struct {
	pid     int
	start   time.Time
	done    chan struct{}
	sampled chan struct{}
	once    sync.Once

	mu    sync.Mutex
	max   int64
	marks strings.Builder
}

func startRSSSampler(pid int) *rssSampler {
	s := &rssSampler{pid: pid, start: time.Now(), done: make(chan struct{}), sampled: make(chan struct{})}
	go func() {
		defer close(s.sampled)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		last := int64(0)
		for {
			if kib, ok := readVmRSS(pid); ok {
				s.mu.Lock()
				s.max = max(s.max, kib)
				s.mu.Unlock()
				if kib-last >= 4<<10 || last-kib >= 4<<10 {
					s.mark(fmt.Sprintf("%d MiB", kib>>10))
					last = kib
				}
			}
			select {
			case <-s.done:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// mark adds an event to the timeline.
func (s *rssSampler) mark(what string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(&s.marks, " | %.1fs %s", time.Since(s.start).Seconds(), what)
}

// stop ends the sampling and waits for it; it may be called again.
func (s *rssSampler) stop() {
	s.once.Do(func() { close(s.done) })
	<-s.sampled
}

func (s *rssSampler) peak() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.max
}

// takePeak returns the peak so far and starts a new one.
func (s *rssSampler) takePeak() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.max
	s.max = 0
	return p
}

func (s *rssSampler) timeline() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.marks.String()
}

// openMemConns opens n connections as memConn does, 32 at a time. On
// an error it returns the first one with the connections it opened.
func openMemConns(socks string, target netip.AddrPort, n int) ([]net.Conn, error) {
	return openFlows(n, func() (net.Conn, error) { return memConn(socks, target) })
}
