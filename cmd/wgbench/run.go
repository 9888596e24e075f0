package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/proxy/socksclient"
)

// pairDef is one tunnel measured end to end: the peer serving echo,
// discard and source, and the client driving the transfers.
type pairDef struct {
	name, desc           string
	peerRole, clientRole string
	peerProc, clientProc string
	latency              bool // also echo latency and connection rate
	viaUp                bool // E, F: through `wgbore up`'s proxies
	// vias are the proxies of `wgbore up` that a viaUp pair is measured
	// through: socks5, http.
	vias []string
}

var pairs = []pairDef{
	{name: "A", desc: "wgbore netstack library → wireguard-go peer", peerRole: "wggo-peer", clientRole: "wgbore-client", peerProc: "wggo-peer", clientProc: "wgbore", latency: true},
	{name: "B", desc: "wireguard-go tun/netstack → wireguard-go peer (reference for A)", peerRole: "wggo-peer", clientRole: "wggo-client", peerProc: "wggo-peer", clientProc: "wggo", latency: true},
	{name: "C", desc: "wgbore library → wgbore library peer", peerRole: "wgbore-peer", clientRole: "wgbore-client", peerProc: "wgbore-peer", clientProc: "wgbore", latency: true},
	{name: "D", desc: "wireguard-go → wireguard-go (reference for C)", peerRole: "wggo-peer", clientRole: "wggo-client", peerProc: "wggo-peer", clientProc: "wggo", latency: true},
	{name: "E", desc: "`wgbore up` SOCKS5 and HTTP CONNECT → wireguard-go peer", peerRole: "wggo-peer", peerProc: "wggo-peer", latency: true, viaUp: true, vias: []string{"socks5", "http"}},
	// The peers above use batchBind, on 127.0.0.1 only and without UDP
	// GSO. The peers users meet send with GSO: F and G run wireguard-go's
	// shipped default bind, which listens on every address while the
	// traffic stays on 127.0.0.1.
	{name: "F", desc: "`wgbore up` SOCKS5 → wireguard-go peer on its default bind (UDP GSO)", peerRole: "wggo-peer-default", peerProc: "wggo-peer", latency: true, viaUp: true, vias: []string{"socks5"}},
	{name: "G", desc: "wireguard-go tun/netstack → wireguard-go peer on its default bind (reference for F)", peerRole: "wggo-peer-default", clientRole: "wggo-client", peerProc: "wggo-peer", clientProc: "wggo", latency: true},
}

// proc is a process whose CPU time a measurement reports.
type proc struct {
	name string
	pid  int
}

type suite struct {
	o   options
	res *results
	tmp string
	// wireErr says why echoes cannot be split on the wire, when they
	// cannot (the capture needs CAP_NET_RAW, and Linux).
	wireErr error
}

func run(o options) error {
	start := time.Now()
	tmp, err := os.MkdirTemp("", "wgbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	s := &suite{o: o, res: newResults(), tmp: tmp}
	s.res.quick = o.quick
	fmt.Printf("wgbench: %s\n", machine())
	fmt.Printf("wgbench: code %s\n", revision())
	if c, err := startWire(0); err != nil {
		s.wireErr = err
	} else {
		_, s.wireErr = c.stop()
	}
	if s.wireErr != nil {
		fmt.Printf("wgbench: echoes are not split between the two ends on the wire: %v\n", s.wireErr)
	}
	fmt.Printf("wgbench: %s per throughput run, median of %d, echo %d round trips, %d connections %d at a time, idle connections %v\n",
		fmtBytes(o.size), o.repeat, o.echoCount, o.connCount, o.connPar, o.idleConns)
	want := func(part string) bool { return len(o.only) == 0 || o.only[part] }
	var failed []string
	var subjects []*subject
	for _, p := range pairs {
		if !want(p.name) {
			continue
		}
		fmt.Printf("== %s: %s\n", p.name, p.desc)
		subs, cleanup, err := s.setup(p)
		if err != nil {
			fmt.Printf("   FAILED to start: %v\n", err)
			failed = append(failed, p.name)
			continue
		}
		defer cleanup()
		subjects = append(subjects, subs...)
	}
	if len(subjects) > 0 {
		s.measureAll(subjects)
		for _, sub := range subjects {
			if sub.err != nil && !slices.Contains(failed, sub.pair) {
				fmt.Printf("== %s FAILED: %v\n", sub.pair, sub.err)
				failed = append(failed, sub.pair)
			}
		}
	}
	if want("M") {
		fmt.Printf("== M: memory of `wgbore up` with idle SOCKS5 connections\n")
		if err := s.runMemory(); err != nil {
			fmt.Printf("   FAILED: %v\n", err)
			failed = append(failed, "M")
		}
	}
	if want("H") {
		fmt.Printf("== H: handshakes per second per core and data-path allocations (go test ./protocol)\n")
		if err := s.runMicro(); err != nil {
			fmt.Printf("   FAILED: %v\n", err)
			failed = append(failed, "H")
		}
	}
	if want("S") {
		so := s.o.scale
		fmt.Printf("== S: wgbore serve with %d peers, %d of them holding %d idle TCP and %d UDP flows each\n", so.peers, so.flowPeers, so.flows, so.flows)
		if err := s.runScale(); err != nil {
			fmt.Printf("   FAILED: %v\n", err)
			failed = append(failed, "S")
		}
	}
	fmt.Println()
	s.res.printTable(os.Stdout)
	fmt.Println()
	s.res.printTargets(os.Stdout)
	fmt.Println()
	s.res.printMachine(os.Stdout)
	fmt.Printf("wgbench measure=run seconds=%.1f busy_measurements=%d failed=%s revision=%s cores=%d go=%s\n",
		time.Since(start).Seconds(), s.res.busy, strings.Join(failed, ","), revision(), runtime.NumCPU(), runtime.Version())
	if len(failed) > 0 {
		return fmt.Errorf("parts failed: %s", strings.Join(failed, ", "))
	}
	return nil
}

// quiet waits for an idle CPU and counts the measurements it could not
// wait for, which the output reports.
func (s *suite) quiet() {
	if s.o.quietMax <= 0 {
		return
	}
	idle, ok := waitQuiet(s.o.quietMax)
	if !ok {
		s.res.busy++
		fmt.Printf("   (CPU not quiet: %.0f%% idle; measuring anyway)\n", idle*100)
	}
}

// subject is one client whose measurements the suite interleaves with
// the other subjects': a run of A, then of B, then A again, so that
// whatever else the machine is doing weighs on both sides of a ratio.
type subject struct {
	pair    string // A, B, C, D, E-socks5, E-http, F-socks5, G
	client  *child
	procs   []proc
	latency bool
	udp     bool      // also UDP echo latency
	up      *upDaemon // E's and F's, whose log a failure keeps
	// peerPort is the WireGuard peer's UDP port, for the wire split.
	peerPort uint16
	err      error
}

// setup starts a pair's processes and waits for its tunnel.
func (s *suite) setup(p pairDef) (subs []*subject, cleanup func(), err error) {
	var stops []func()
	stopAll := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	// A failure returns a nil cleanup, so stop here what had started.
	defer func() {
		if err != nil {
			stopAll()
		}
	}()
	peerKey, err := protocol.GeneratePrivateKey()
	if err != nil {
		return nil, nil, err
	}
	clientKey, err := protocol.GeneratePrivateKey()
	if err != nil {
		return nil, nil, err
	}
	peer, first, err := startRole(p.peerProc, p.peerRole, peerKey, clientKey.PublicKey())
	if err != nil {
		return nil, nil, err
	}
	stops = append(stops, peer.stop)
	endpoint := netip.AddrPortFrom(loopback, first.Port).String()
	if !p.viaUp {
		client, _, err := startRole(p.clientProc, p.clientRole, clientKey, peerKey.PublicKey(), "-endpoint", endpoint)
		if err != nil {
			return nil, nil, err
		}
		stops = append(stops, client.stop)
		sub := &subject{pair: p.name, client: client, latency: p.latency, udp: true, peerPort: first.Port,
			procs: []proc{{p.clientProc, client.pid()}, {p.peerProc, peer.pid()}}}
		return []*subject{sub}, stopAll, nil
	}
	bin, err := s.wgboreBinary()
	if err != nil {
		return nil, nil, err
	}
	up, err := startUp(bin, upConfig(clientKey, peerKey.PublicKey(), first.Port))
	if err != nil {
		return nil, nil, err
	}
	stops = append(stops, up.stop)
	for _, scheme := range p.vias {
		name := p.name + "-" + scheme
		addr, err := up.addr(scheme + " ")
		if err != nil {
			return nil, nil, err
		}
		client, _, err := startRole("proxy-client", "proxy-client", clientKey, peerKey.PublicKey(), "-via", scheme+"://"+addr)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w (wgbore up's log and goroutines: %s)", name, err, up.fail())
		}
		stops = append(stops, client.stop)
		// An HTTP proxy carries no datagrams.
		subs = append(subs, &subject{pair: name, client: client, latency: p.latency, udp: scheme == "socks5", up: up, peerPort: first.Port,
			procs: []proc{{"wgbore-up", up.pid()}, {"proxy-client", client.pid()}, {p.peerProc, peer.pid()}}})
	}
	return subs, stopAll, nil
}

// fail records a subject's failure; for E it stops `wgbore up` with a
// goroutine dump, and so fails the other E subject too.
func (s *suite) fail(subs []*subject, sub *subject, err error) {
	if sub.up == nil {
		sub.err = err
		return
	}
	log := sub.up.fail()
	for _, o := range subs {
		if o.up == sub.up && o.err == nil {
			o.err = fmt.Errorf("%w (wgbore up's log and goroutines: %s)", err, log)
		}
	}
}

func (s *suite) wgboreBinary() (string, error) {
	if s.o.wgbore == "" {
		bin, err := buildWgbore(s.tmp)
		if err != nil {
			return "", err
		}
		s.o.wgbore = bin
	}
	return s.o.wgbore, nil
}

// measureAll runs each measurement repeat times on every subject, in
// turn, and records the medians.
func (s *suite) measureAll(subs []*subject) {
	live := func(latencyOnly bool) []*subject {
		var out []*subject
		for _, sub := range subs {
			if sub.err == nil && (!latencyOnly || sub.latency) {
				out = append(out, sub)
			}
		}
		return out
	}
	for _, dir := range []string{"download", "upload"} {
		fmt.Printf("== throughput, %s: %s each, %d runs per pair\n", dir, fmtBytes(s.o.size), s.o.repeat)
		port := portSource
		if dir == "upload" {
			port = portDiscard
		}
		mbps := map[*subject][]float64{}
		cpu := map[*subject][][]float64{}
		for range s.o.repeat {
			for _, sub := range live(false) {
				s.quiet()
				before := make([]time.Duration, len(sub.procs))
				for i, p := range sub.procs {
					before[i], _ = procCPU(p.pid)
				}
				r, err := sub.client.do(command{Op: dir, Addr: netip.AddrPortFrom(peerAddr, uint16(port)).String(), Bytes: s.o.size})
				if err != nil {
					s.fail(subs, sub, err)
					continue
				}
				gb := float64(s.o.size) / 1e9
				if cpu[sub] == nil {
					cpu[sub] = make([][]float64, len(sub.procs))
				}
				for i, p := range sub.procs {
					after, _ := procCPU(p.pid)
					cpu[sub][i] = append(cpu[sub][i], (after-before[i]).Seconds()/gb)
				}
				mbps[sub] = append(mbps[sub], float64(s.o.size)/1e6/r.Seconds)
			}
		}
		for _, sub := range live(false) {
			s.res.add(fmt.Sprintf("measure=throughput pair=%s dir=%s", sub.pair, dir), kv{"mbps", median(mbps[sub])})
			line := fmt.Sprintf("   %-9s %9.1f MB/s  CPU-s/GB:", sub.pair, median(mbps[sub]))
			for i, p := range sub.procs {
				s.res.add(fmt.Sprintf("measure=cpu pair=%s dir=%s proc=%s", sub.pair, dir, p.name), kv{"cpu_s_per_gb", median(cpu[sub][i])})
				line += fmt.Sprintf(" %s %.2f", p.name, median(cpu[sub][i]))
			}
			fmt.Println(line)
		}
	}
	if len(live(true)) == 0 {
		return
	}
	fmt.Printf("== latency: %d 1-byte echoes on one connection, %d runs per pair\n", s.o.echoCount, s.o.repeat)
	p50s, p99s, _, echoCPU, tcpWire := s.echoRuns(subs, "echo", func(*subject) bool { return true })
	for _, sub := range live(true) {
		s.res.add("measure=echo pair="+sub.pair, kv{"p50_us", median(p50s[sub])}, kv{"p99_us", median(p99s[sub])})
		fmt.Printf("   %-9s p50 %.0f µs  p99 %.0f µs  CPU µs per round trip:%s\n", sub.pair, median(p50s[sub]), median(p99s[sub]), echoCPU.report(s.res, sub, "echo"))
		tcpWire.report(s.res, sub, "echo")
	}
	echoAddr := netip.AddrPortFrom(peerAddr, portEcho).String()
	fmt.Printf("== connection rate: %d connections, %d at a time, each dial, 1-byte echo, close; %d runs per pair\n", s.o.connCount, s.o.connPar, s.o.repeat)
	rate := map[*subject][]float64{}
	connCPU := opCPU{}
	for range s.o.repeat {
		for _, sub := range live(true) {
			s.quiet()
			before := sub.cpuNow()
			r, err := sub.client.do(command{Op: "connrate", Addr: echoAddr, Count: s.o.connCount, Parallel: s.o.connPar})
			if err != nil {
				s.fail(subs, sub, err)
				continue
			}
			connCPU.add(sub, before, s.o.connCount)
			rate[sub] = append(rate[sub], r.ConnsPerS)
		}
	}
	for _, sub := range live(true) {
		s.res.add("measure=connrate pair="+sub.pair, kv{"conns_per_s", median(rate[sub])})
		fmt.Printf("   %-9s %.0f conns/s  CPU µs per connection:%s\n", sub.pair, median(rate[sub]), connCPU.report(s.res, sub, "connrate"))
	}
	fmt.Printf("== UDP latency: %d 1-byte datagrams echoed, one at a time (through SOCKS5 UDP ASSOCIATE for a proxy); %d runs per pair\n", s.o.echoCount, s.o.repeat)
	// Last: a failure here stops `wgbore up` with a goroutine dump, which
	// fails its other subjects too, HTTP's among them.
	p50s, p99s, resent, udpCPU, udpWire := s.echoRuns(subs, "udpecho", func(sub *subject) bool { return sub.udp })
	for _, sub := range live(true) {
		if !sub.udp {
			continue
		}
		s.res.add("measure=udpecho pair="+sub.pair, kv{"p50_us", median(p50s[sub])}, kv{"p99_us", median(p99s[sub])}, kv{"resent", float64(resent[sub])})
		fmt.Printf("   %-9s p50 %.0f µs  p99 %.0f µs  resent %d  CPU µs per round trip:%s\n", sub.pair, median(p50s[sub]), median(p99s[sub]), resent[sub], udpCPU.report(s.res, sub, "udpecho"))
		udpWire.report(s.res, sub, "udpecho")
	}
}

// echoRuns runs op (echo or udpecho) repeat times on each live subject
// with latency measurements that pick accepts, in turn, and collects
// each one's round trips, resends and CPU per round trip. Where the wire
// can be watched, one more run of each is captured and split between
// the ends; it counts in nothing else, so the timed runs carry no
// capture.
func (s *suite) echoRuns(subs []*subject, op string, pick func(*subject) bool) (p50s, p99s map[*subject][]float64, resent map[*subject]int, cpu opCPU, wire echoWire) {
	p50s, p99s, resent, cpu, wire = map[*subject][]float64{}, map[*subject][]float64{}, map[*subject]int{}, opCPU{}, echoWire{}
	echoAddr := netip.AddrPortFrom(peerAddr, portEcho).String()
	live := func(sub *subject) bool { return sub.err == nil && sub.latency && pick(sub) }
	for range s.o.repeat {
		for _, sub := range subs {
			if !live(sub) {
				continue
			}
			s.quiet()
			before := sub.cpuNow()
			r, err := sub.client.do(command{Op: op, Addr: echoAddr, Count: s.o.echoCount})
			if err != nil {
				s.fail(subs, sub, err)
				continue
			}
			cpu.add(sub, before, s.o.echoCount)
			p50s[sub], p99s[sub] = append(p50s[sub], r.P50us), append(p99s[sub], r.P99us)
			resent[sub] += r.Resent
		}
	}
	for _, sub := range subs {
		if s.wireErr != nil || !live(sub) {
			continue
		}
		capture, err := startWire(sub.peerPort)
		if err != nil {
			s.wireErr = err
			fmt.Printf("wgbench: echoes are no longer split on the wire: %v\n", err)
			break
		}
		s.quiet()
		_, err = sub.client.do(command{Op: op, Addr: echoAddr, Count: s.o.echoCount})
		pkts, cerr := capture.stop()
		if err != nil {
			s.fail(subs, sub, err)
			continue
		}
		if cerr == nil {
			wire.add(sub, pkts)
		}
	}
	return p50s, p99s, resent, cpu, wire
}

// echoWire holds, for each subject, how long each end of the tunnel took
// to answer in its echoes' round trips, as the loopback interface saw
// them (wireSplit): the client side (for a proxy pair, the proxy and its
// client) and the WireGuard peer. The peer's share is time spent outside
// our processes, though on a shared machine our use of the cores can
// lengthen it.
type echoWire map[*subject]*[2][]time.Duration

func (w echoWire) add(sub *subject, pkts []wirePacket) {
	client, peer := wireSplit(pkts, sub.peerPort)
	if w[sub] == nil {
		w[sub] = new([2][]time.Duration)
	}
	w[sub][0] = append(w[sub][0], client...)
	w[sub][1] = append(w[sub][1], peer...)
}

// report records the medians and prints them under the subject's line.
func (w echoWire) report(res *results, sub *subject, measure string) {
	d := w[sub]
	if d == nil || len(d[0]) == 0 || len(d[1]) == 0 {
		return
	}
	us := func(t time.Duration) float64 { return float64(t.Nanoseconds()) / 1e3 }
	client, peer := us(p50(d[0])), us(p50(d[1]))
	res.add(fmt.Sprintf("measure=%s_wire pair=%s", measure, sub.pair), kv{"client_p50_us", client}, kv{"peer_p50_us", peer}, kv{"answers", float64(len(d[1]))})
	fmt.Printf("   %-9s   on the wire, each end's answer: client side p50 %.0f µs, peer p50 %.0f µs\n", "", client, peer)
}

// cpuNow reads the CPU time of each of the subject's processes.
func (sub *subject) cpuNow() []time.Duration {
	out := make([]time.Duration, len(sub.procs))
	for i, p := range sub.procs {
		out[i], _ = procCPU(p.pid)
	}
	return out
}

// opCPU collects CPU microseconds per operation (an echo round trip, a
// connection) for each process of each subject. They show which process
// bounds latency and connection rate: at a few thousand operations a
// second, the process that spends most per operation is the one a core
// runs out under.
type opCPU map[*subject][][]float64

func (o opCPU) add(sub *subject, before []time.Duration, ops int) {
	if o[sub] == nil {
		o[sub] = make([][]float64, len(sub.procs))
	}
	for i, d := range sub.cpuNow() {
		o[sub][i] = append(o[sub][i], float64((d-before[i]).Microseconds())/float64(ops))
	}
}

// report records the medians and returns them for the progress line.
func (o opCPU) report(res *results, sub *subject, measure string) string {
	line := ""
	for i, p := range sub.procs {
		if i >= len(o[sub]) {
			break
		}
		v := median(o[sub][i])
		res.add(fmt.Sprintf("measure=cpu_per_op op=%s pair=%s proc=%s", measure, sub.pair, p.name), kv{"cpu_us", v})
		line += fmt.Sprintf(" %s %.1f", p.name, v)
	}
	return line
}

// runMemory measures `wgbore up`'s resident memory idle after its
// handshake, then holding idle SOCKS5 connections open through it, each
// one tunnelled to the wireguard-go peer's echo service.
func (s *suite) runMemory() error {
	// This process and `wgbore up` each hold one descriptor per
	// connection, besides their own; say so rather than fail half way.
	if cur, ok := openFileLimit(); ok && cur < uint64(slices.Max(s.o.idleConns)+256) {
		return fmt.Errorf("the open-file limit (%d) is too low for %d connections: raise it (ulimit -n)", cur, slices.Max(s.o.idleConns))
	}
	var idle, anon, file []float64
	rss := make([][]float64, len(s.o.idleConns))
	for range s.o.repeat {
		s.quiet()
		i, r, err := s.memoryOnce()
		if err != nil {
			return err
		}
		idle = append(idle, float64(i.total))
		anon, file = append(anon, float64(i.anon)), append(file, float64(i.file))
		for k := range r {
			rss[k] = append(rss[k], float64(r[k]))
		}
	}
	s.res.add("measure=memory state=idle", kv{"rss_mb", median(idle) / 1e6}, kv{"anon_mb", median(anon) / 1e6}, kv{"file_mb", median(file) / 1e6})
	fmt.Printf("   idle      RSS %.1f MB (median of %d): anonymous %.1f MB, file-backed %.1f MB\n", median(idle)/1e6, len(idle), median(anon)/1e6, median(file)/1e6)
	for k, n := range s.o.idleConns {
		// Per connection in each run, then the median: runs differ
		// most in their idle figure.
		var per []float64
		for j := range rss[k] {
			per = append(per, (rss[k][j]-idle[j])/float64(n)/1024)
		}
		s.res.add(fmt.Sprintf("measure=memory state=conns conns=%d", n), kv{"rss_mb", median(rss[k]) / 1e6}, kv{"kib_per_conn", median(per)})
		fmt.Printf("   %-5d idle conns: RSS %.1f MB, %.1f KiB per connection\n", n, median(rss[k])/1e6, median(per))
	}
	return nil
}

// rssReading is a process's RSS, and its anonymous and file-backed parts.
type rssReading struct{ total, anon, file int64 }

// memoryOnce starts a fresh peer and `wgbore up`, and returns up's RSS
// idle and then with each count of s.o.idleConns held open.
func (s *suite) memoryOnce() (idle rssReading, withConns []int64, err error) {
	peerKey, err := protocol.GeneratePrivateKey()
	if err != nil {
		return idle, nil, err
	}
	clientKey, err := protocol.GeneratePrivateKey()
	if err != nil {
		return idle, nil, err
	}
	peer, first, err := startRole("wggo-peer", "wggo-peer", peerKey, clientKey.PublicKey())
	if err != nil {
		return idle, nil, err
	}
	defer peer.stop()
	bin, err := s.wgboreBinary()
	if err != nil {
		return idle, nil, err
	}
	up, err := startUp(bin, upConfig(clientKey, peerKey.PublicKey(), first.Port))
	if err != nil {
		return idle, nil, err
	}
	defer up.stop()
	socks, err := up.addr("socks5 ")
	if err != nil {
		return idle, nil, err
	}
	echo := netip.AddrPortFrom(peerAddr, portEcho)
	dial := func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := socksclient.Connect(ctx, socks, socksclient.Auth{}, echo)
		if err != nil {
			return nil, err
		}
		if _, err := echoOnce(c, make([]byte, 1)); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	// One connection first, so the handshake is done and counted in the
	// idle figure, as it would be for a user.
	c, err := dial()
	if err != nil {
		return idle, nil, err
	}
	c.Close()
	time.Sleep(2 * time.Second)
	idle.total, err = procRSS(up.pid())
	if err == nil {
		idle.anon, idle.file, err = procRSSParts(up.pid())
	}
	if err != nil {
		return idle, nil, err
	}

	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, n := range s.o.idleConns {
		var wg sync.WaitGroup
		var firstErr error
		need := n - len(conns)
		var next sync.Mutex
		left := need
		for range 50 {
			wg.Go(func() {
				for {
					next.Lock()
					if left == 0 || firstErr != nil {
						next.Unlock()
						return
					}
					left--
					next.Unlock()
					c, err := dial()
					mu.Lock()
					if err != nil {
						if firstErr == nil {
							firstErr = fmt.Errorf("connection %d of %d: %w", len(conns)+1, n, err)
						}
					} else {
						conns = append(conns, c)
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if firstErr != nil {
			return idle, nil, firstErr
		}
		time.Sleep(2 * time.Second)
		rss, err := procRSS(up.pid())
		if err != nil {
			return idle, nil, err
		}
		withConns = append(withConns, rss)
	}
	return idle, withConns, nil
}

// benchLine matches a `go test -bench` result line.
var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(-\d+)?\s+(\d+)\s+(.*)$`)

// parseBench reads the metrics of a benchmark result line ("123 ns/op
// 0 allocs/op 4567 handshakes/s") by unit.
func parseBench(line string) (name string, metrics map[string]float64, ok bool) {
	m := benchLine.FindStringSubmatch(strings.TrimSpace(line))
	if m == nil {
		return "", nil, false
	}
	f := strings.Fields(m[4])
	metrics = map[string]float64{}
	for i := 0; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return "", nil, false
		}
		metrics[f[i+1]] = v
	}
	return m[1], metrics, true
}

// runMicro runs the protocol package's own benchmarks: complete
// handshakes on one core, and allocations on the data path. They need
// the package's internals, so they run as `go test`, which needs a Go
// toolchain (CI has one).
func (s *suite) runMicro() error {
	if _, err := exec.LookPath("go"); err != nil {
		return fmt.Errorf("no go command: handshake and allocation benchmarks skipped")
	}
	s.quiet()
	cmd := exec.Command("go", "test", "-run", "^$", "-bench", "^(BenchmarkHandshake|BenchmarkSendPath|BenchmarkEncrypt|BenchmarkDecrypt)$",
		"-benchmem", "-cpu", "1", "-benchtime", s.o.benchtime, "-count", strconv.Itoa(s.o.repeat), "github.com/wgbore/wgbore/protocol")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go test ./protocol -bench: %v\n%s", err, out)
	}
	byName := map[string]map[string][]float64{}
	var order []string
	for _, line := range strings.Split(string(out), "\n") {
		name, metrics, ok := parseBench(line)
		if !ok {
			continue
		}
		if byName[name] == nil {
			byName[name] = map[string][]float64{}
			order = append(order, name)
		}
		for unit, v := range metrics {
			byName[name][unit] = append(byName[name][unit], v)
		}
	}
	if len(order) == 0 {
		return fmt.Errorf("no benchmark results in:\n%s", out)
	}
	for _, name := range order {
		m := byName[name]
		short := strings.TrimPrefix(name, "Benchmark")
		if hs, ok := m["handshakes/s"]; ok {
			s.res.add("measure=handshake cpu=1", kv{"handshakes_per_s", median(hs)})
			fmt.Printf("   %-10s %.0f handshakes/s on one core\n", short, median(hs))
		}
		if a, ok := m["allocs/op"]; ok {
			s.res.add("measure=allocs bench="+short, kv{"allocs_per_op", median(a)}, kv{"ns_per_op", median(m["ns/op"])})
			fmt.Printf("   %-10s %.0f allocs/op, %.0f ns/op\n", short, median(a), median(m["ns/op"]))
		}
	}
	return nil
}
