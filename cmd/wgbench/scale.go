package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wgbore/wgbore/netstack"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/udpbind"
)

// Part S: `wgbore serve` with many peers. The load is this process: N
// WireGuard clients on our engine, each with its own key and its own UDP
// socket on 127.0.0.1, of which the first few also have a netstack to
// open flows through the server to services on the host's loopback
// (which the server reaches at its own tunnel address). Only serve's
// memory and CPU are measured, from /proc; the clients' cost is theirs.
//
// The peers whose downloads share serve and whose echoes are timed are
// processes of their own (procPeer), as a server's clients are on
// machines of their own: in the load's process their round trips and
// reads would wait on its scheduler, busy with every other client's
// packets, and measure that more than serve. The downloading peers run
// at nice 19, and the clients that the churn adds and removes, one more
// process, under SCHED_IDLE: they stand for other machines, so their
// stacks take the CPU from idle time before they take it from serve, the
// echoing peer or the host's services. At serve's priority they made
// every process here wait in the kernel's run queue for milliseconds at
// a time, which the echo's tail then measured.

// scaleOptions size part S.
type scaleOptions struct {
	peers      int           // clients in all, each a peer of the server
	flowPeers  int           // of which hold flows, with a netstack each
	flows      int           // idle TCP flows per flow peer, and as many UDP ones
	sharePeers int           // peers downloading at once for the shares
	shareTime  time.Duration // how long each share run lasts
	churn      int           // peers added and removed by reload while traffic flows
	idleTime   time.Duration // how long serve's idle CPU is measured
	// serveCPU, if above 0, is a CPU quota for serve, in cores, so that
	// serve and not the peers' share of the machine is what runs short.
	serveCPU float64
}

// scaleNet is the server's tunnel: 10.99.0.1/16, and client i is
// 10.99.0.0 + i + 2.
var (
	scaleServer = netip.MustParseAddr("10.99.0.1")
	scaleNet    = netip.PrefixFrom(scaleServer, 16)
)

func scaleClientAddr(i int) netip.Addr {
	n := i + 2
	return netip.AddrFrom4([4]byte{10, 99, byte(n >> 8), byte(n)})
}

// scaleClient is one peer of the server: a bare engine, or a netstack
// (whose engine it uses) for the peers that open flows.
type scaleClient struct {
	key    protocol.PrivateKey
	addr   netip.Addr
	engine *protocol.Engine
	net    *netstack.Net
}

func (c *scaleClient) close() {
	if c.net != nil {
		c.net.Close()
	} else if c.engine != nil {
		c.engine.Close()
	}
}

// discardPackets is a bare client's packet side: the storm sends no
// data, and a keepalive is all that could arrive.
type discardPackets struct{}

func (discardPackets) DeliverPackets([][]byte) {}

// procPeer is a peer of the server in a process of its own: a
// wgbore-client role at addr.
type procPeer struct {
	key  protocol.PrivateKey
	addr netip.Addr
	c    *child
}

// procPeerAddr is process peer i's address, at the top of the server's
// network, far from the clients'.
func procPeerAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 99, 255, byte(100 + i)}) }

// confPeer is a peer as serve's file names it.
type confPeer struct {
	key  protocol.PublicKey
	addr netip.Addr
}

// scaleServerConf is serve's file with the given peers.
func scaleServerConf(key protocol.PrivateKey, port uint16, peers []confPeer, flowsPerPeer int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[Interface]\nPrivateKey = %s\nAddress = %s\nListenPort = %d\n\n", key.Base64(), scaleNet, port)
	for _, p := range peers {
		fmt.Fprintf(&b, "[Peer]\nPublicKey = %s\nAllowedIPs = %s/32\n\n", p.key, p.addr)
	}
	// The host's loopback is where the test services are; flows idle
	// for as long as the run lasts.
	fmt.Fprintf(&b, "[Egress]\nAllow = 127.0.0.1/32\nMaxFlowsPerPeer = %d\nMaxFlows = %d\nUDPTimeout = 3600\n",
		2*flowsPerPeer+64, config1M)
	return b.String()
}

// config1M is the largest flow cap a config accepts.
const config1M = 1 << 20

// newScaleClient makes client i, with a netstack when withNet.
func newScaleClient(i int, server protocol.PublicKey, port uint16, withNet bool) (*scaleClient, error) {
	key, err := protocol.GeneratePrivateKey()
	if err != nil {
		return nil, err
	}
	c := &scaleClient{key: key, addr: scaleClientAddr(i)}
	peer := protocol.PeerConfig{
		PublicKey:  server,
		Endpoint:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port).String(),
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(scaleServer, 32)},
	}
	if withNet {
		c.net, err = netstack.Open(context.Background(), netstack.Config{
			PrivateKey:  key,
			Addresses:   []netip.Prefix{netip.PrefixFrom(c.addr, 32)},
			ListenAddrs: []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1})},
			Peers:       []protocol.PeerConfig{peer},
		})
		if err != nil {
			return nil, err
		}
		c.engine = c.net.Engine()
		return c, nil
	}
	bind, err := udpbind.Listen(udpbind.Config{Addrs: []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1})}})
	if err != nil {
		return nil, err
	}
	// One worker: a thousand engines in one process would otherwise
	// start a thousand worker pools.
	c.engine, err = protocol.New(protocol.Config{PrivateKey: key, Bind: bind, Packets: discardPackets{}, Workers: 1})
	if err != nil {
		bind.Close()
		return nil, err
	}
	if err := c.engine.SetPeer(peer); err != nil {
		c.engine.Close()
		return nil, err
	}
	return c, nil
}

// hostServices are the services on 127.0.0.1 that flows reach: a TCP
// echo, a UDP echo, and a TCP source that sends until the reader goes.
type hostServices struct {
	echo, source net.Listener
	udp          net.PacketConn
	wg           sync.WaitGroup
	mu           sync.Mutex
	conns        map[net.Conn]struct{}
}

func startHostServices() (*hostServices, error) {
	h := &hostServices{conns: map[net.Conn]struct{}{}}
	var err error
	if h.echo, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return nil, err
	}
	if h.source, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		h.echo.Close()
		return nil, err
	}
	if h.udp, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
		h.echo.Close()
		h.source.Close()
		return nil, err
	}
	// A plain loop, not io.Copy: io.Copy between TCP sockets splices
	// through a pipe, two descriptors more per idle flow held.
	h.serve(h.echo, func(c net.Conn) {
		buf := make([]byte, 512)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
	})
	chunk := make([]byte, 32<<10)
	h.serve(h.source, func(c net.Conn) {
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	h.wg.Go(func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := h.udp.ReadFrom(buf)
			if err != nil {
				return
			}
			h.udp.WriteTo(buf[:n], from)
		}
	})
	return h, nil
}

func (h *hostServices) serve(l net.Listener, handle func(net.Conn)) {
	h.wg.Go(func() {
		for {
			c, err := l.Accept()
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of descriptors: the connection waits in the
				// backlog; an echo that stopped accepting would look
				// like a flow that hangs.
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if err != nil {
				return
			}
			h.mu.Lock()
			h.conns[c] = struct{}{}
			h.mu.Unlock()
			h.wg.Go(func() {
				handle(c)
				c.Close()
				h.mu.Lock()
				delete(h.conns, c)
				h.mu.Unlock()
			})
		}
	})
}

func (h *hostServices) close() {
	h.echo.Close()
	h.source.Close()
	h.udp.Close()
	h.mu.Lock()
	for c := range h.conns {
		c.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// at is where a client reaches a host service l: the server's tunnel
// address on its port.
func at(a net.Addr) string {
	_, port, _ := net.SplitHostPort(a.String())
	return net.JoinHostPort(scaleServer.String(), port)
}

// scrapeMetrics reads serve's /metrics into series → value, the series
// spelled as in the exposition: name{labels}.
func scrapeMetrics(url string) (map[string]float64, error) {
	res, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

// sumMetric adds up the series of a family whose labels contain all of
// labels ("reason=\"martian_source\"").
func sumMetric(m map[string]float64, name string, labels ...string) float64 {
	var sum float64
next:
	for series, v := range m {
		if series != name && !strings.HasPrefix(series, name+"{") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(series, l) {
				continue next
			}
		}
		sum += v
	}
	return sum
}

// scaleRun is one run of part S.
type scaleRun struct {
	s         *suite
	o         scaleOptions
	bin       string
	serverKey protocol.PrivateKey
	port      uint16
	serve     *upDaemon
	metrics   string
	clients   []*scaleClient
	// procs share downloads and time echoes; the last one is the echoer.
	procs []*procPeer
	host  *hostServices
}

func (s *suite) runScale() error {
	o := s.o.scale
	r := &scaleRun{s: s, o: o}
	var err error
	if r.bin, err = s.wgboreBinary(); err != nil {
		return err
	}
	if r.serverKey, err = protocol.GeneratePrivateKey(); err != nil {
		return err
	}
	if r.host, err = startHostServices(); err != nil {
		return err
	}
	defer r.host.close()
	defer func() {
		for _, c := range r.clients {
			c.close()
		}
	}()
	// serve holds a host socket per flow: two per flow peer's pair of
	// TCP and UDP flows, within its open-file limit, which it inherits.
	if lim, ok := openFileLimit(); ok && o.flowPeers > 0 {
		if most := (int(lim) - 256) / (2 * o.flowPeers); o.flows > most {
			fmt.Printf("   %d flows of each kind per peer, not %d: the limit of %d open files holds no more\n", most, o.flows, lim)
			r.o.flows = most
		}
	}
	s.quiet()
	return r.run()
}

func (r *scaleRun) run() error {
	// The server's port: one the kernel just gave out on loopback.
	b, err := udpbind.Listen(udpbind.Config{Addrs: []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1})}})
	if err != nil {
		return err
	}
	r.port = b.Port()
	b.Close()

	procs := ""
	if r.o.serveCPU > 0 {
		q, err := newCPUQuota(r.o.serveCPU)
		if err != nil {
			return fmt.Errorf("-scale-serve-cpu: %w", err)
		}
		// Runs after serve's stop, below: the group must be empty.
		defer func() {
			if err := q.remove(); err != nil {
				fmt.Fprintf(os.Stderr, "wgbench: %v\n", err)
			}
		}()
		procs = q.procs()
		r.s.res.add("measure=scale part=quota", kv{"serve_cores", r.o.serveCPU})
		fmt.Printf("   serve runs under a CPU quota of %g cores\n", r.o.serveCPU)
	}
	// Serve with no peer first, for the memory a peer adds.
	r.serve, err = startWgboreIn(procs, r.bin, "serve", scaleServerConf(r.serverKey, r.port, nil, r.o.flows), "-metrics", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer r.serve.stop()
	m, err := r.serve.addr("metrics http://")
	if err != nil {
		return err
	}
	r.metrics = "http://" + m
	if !strings.HasSuffix(r.metrics, "/metrics") {
		r.metrics += "/metrics"
	}
	rss0, err := r.settledRSS()
	if err != nil {
		return err
	}

	for i := range r.o.peers {
		c, err := newScaleClient(i, r.serverKey.PublicKey(), r.port, i < r.o.flowPeers)
		if err != nil {
			return fmt.Errorf("client %d: %w", i, err)
		}
		r.clients = append(r.clients, c)
	}
	if err := r.reloadChecked(); err != nil {
		return err
	}
	rss1, err := r.settledRSS()
	if err != nil {
		return err
	}

	if err := r.storm(); err != nil {
		return err
	}
	rss2, err := r.settledRSS()
	if err != nil {
		return err
	}
	n := float64(len(r.clients))
	perPeer := float64(rss2-rss0) / n / 1024
	r.s.res.add("measure=scale part=peers", kv{"peers", n}, kv{"kib_per_peer", perPeer},
		kv{"kib_per_configured_peer", float64(rss1-rss0) / n / 1024}, kv{"kib_per_session", float64(rss2-rss1) / n / 1024})
	fmt.Printf("   serve RSS: %.1f MB with no peer, %.1f MB with %d configured, %.1f MB with their sessions: %.1f KiB per peer with a session (%.1f configuring it, %.1f its session)\n",
		float64(rss0)/1e6, float64(rss1)/1e6, len(r.clients), float64(rss2)/1e6, perPeer, float64(rss1-rss0)/n/1024, float64(rss2-rss1)/n/1024)

	if err := r.idleFlows(); err != nil {
		return err
	}
	defer func() {
		for _, p := range r.procs {
			if p.c != nil {
				p.c.stop()
			}
		}
	}()
	if err := r.startProcs(); err != nil {
		return err
	}
	if err := r.shares(); err != nil {
		return err
	}
	return r.churn()
}

// settledRSS waits for serve to settle (its reclaimer gives memory back
// some seconds after a change) and reads its RSS.
func (r *scaleRun) settledRSS() (int64, error) {
	time.Sleep(r.settle())
	return procRSS(r.serve.pid())
}

func (r *scaleRun) settle() time.Duration {
	if r.s.o.quick {
		return 2 * time.Second
	}
	return 10 * time.Second
}

// reload rewrites serve's file with the clients, the process peers and
// extra as its peers, sends SIGHUP, and waits until serve's log says it
// applied them all.
func (r *scaleRun) reload(extra ...confPeer) error {
	var peers []confPeer
	for _, c := range r.clients {
		peers = append(peers, confPeer{c.key.PublicKey(), c.addr})
	}
	for _, p := range r.procs {
		peers = append(peers, confPeer{p.key.PublicKey(), p.addr})
	}
	peers = append(peers, extra...)
	if err := os.WriteFile(r.serve.conf(), []byte(scaleServerConf(r.serverKey, r.port, peers, r.o.flows)), 0o600); err != nil {
		return err
	}
	return r.serve.reload()
}

// expectPeers checks that serve's metrics m count the clients and the
// process peers as its peers, as the last reload left it.
func (r *scaleRun) expectPeers(m map[string]float64) error {
	want := len(r.clients) + len(r.procs)
	if got := int(sumMetric(m, "wgbore_peers")); got != want {
		return fmt.Errorf("serve has %d peers after a reload, not %d", got, want)
	}
	return nil
}

// reloadChecked is reload with no extra peers, checked against serve's
// metrics afterwards.
func (r *scaleRun) reloadChecked() error {
	if err := r.reload(); err != nil {
		return err
	}
	m, err := scrapeMetrics(r.metrics)
	if err != nil {
		return err
	}
	return r.expectPeers(m)
}

// storm has every client initiate at once, as after a server restart,
// and times each until it has a session.
func (r *scaleRun) storm() error {
	before, err := scrapeMetrics(r.metrics)
	if err != nil {
		return err
	}
	server := r.serverKey.PublicKey()
	start := time.Now()
	for _, c := range r.clients {
		c.engine.Handshake(server)
	}
	done := make([]time.Duration, len(r.clients))
	left := len(r.clients)
	deadline := start.Add(60 * time.Second)
	for left > 0 && time.Now().Before(deadline) {
		for i, c := range r.clients {
			if done[i] != 0 {
				continue
			}
			if st, ok := c.engine.Peer(server); ok && !st.LastHandshake.IsZero() {
				done[i] = time.Since(start)
				left--
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	after, err := scrapeMetrics(r.metrics)
	if err != nil {
		return err
	}
	cookies := sumMetric(after, "wgbore_cookie_replies_sent_total") - sumMetric(before, "wgbore_cookie_replies_sent_total")
	dropped := sumMetric(after, "wgbore_dropped_packets_total") - sumMetric(before, "wgbore_dropped_packets_total")
	var times []time.Duration
	for _, d := range done {
		if d != 0 {
			times = append(times, d)
		}
	}
	slices.Sort(times)
	if len(times) == 0 {
		return errors.New("handshake storm: no client got a session within 60 s")
	}
	all := times[len(times)-1]
	r.s.res.add("measure=scale part=storm", kv{"peers", float64(len(r.clients))}, kv{"all_s", all.Seconds()},
		kv{"p50_ms", ms(percentile(times, 50))}, kv{"p99_ms", ms(percentile(times, 99))},
		kv{"starved", float64(left)}, kv{"cookie_replies", cookies}, kv{"dropped", dropped})
	fmt.Printf("   handshake storm: %d of %d peers have a session, the last after %.2f s (p50 %.0f ms, p99 %.0f ms); %d cookie replies, %d packets dropped\n",
		len(times), len(r.clients), all.Seconds(), ms(percentile(times, 50)), ms(percentile(times, 99)), int(cookies), int(dropped))
	if left > 0 {
		return fmt.Errorf("handshake storm: %d peers starved, without a session after 60 s", left)
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// openFlows has each flow peer open r.o.flows flows over network to the
// host service at addr, each moving one byte each way and then held.
func (r *scaleRun) openFlows(network, addr string) ([]net.Conn, error) {
	var (
		mu    sync.Mutex
		conns []net.Conn
		first error
		wg    sync.WaitGroup
	)
	for _, c := range r.clients[:r.o.flowPeers] {
		next := atomic.Int64{}
		// Two at a time per peer: this measures what idle flows cost,
		// not how fast they open. Faster, the load's sockets and serve's
		// overflow on two cores, and the losses stall flows for seconds
		// in TCP's backed-off retransmissions.
		for range 2 {
			wg.Go(func() {
				one := make([]byte, 1)
				for next.Add(1) <= int64(r.o.flows) {
					conn, err := flowOnce(c.net, network, addr, one)
					mu.Lock()
					if err != nil && first == nil {
						first = fmt.Errorf("%s flow from %s: %w", network, c.addr, err)
					}
					if err == nil {
						conns = append(conns, conn)
					}
					mu.Unlock()
					if err != nil {
						return
					}
				}
			})
		}
	}
	wg.Wait()
	return conns, first
}

// flowOnce opens one flow and echoes a byte through it, retrying a lost
// UDP datagram.
func flowOnce(n *netstack.Net, network, addr string, one []byte) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := n.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	for try := 0; ; try++ {
		c.SetDeadline(time.Now().Add(60 * time.Second))
		if _, err = c.Write(one); err == nil {
			_, err = io.ReadFull(c, one)
		}
		if err == nil || network != "udp" || try == 5 {
			break
		}
	}
	if err != nil {
		if tc, ok := c.(*netstack.TCPConn); ok {
			info := tc.TCPInfo()
			err = fmt.Errorf("%w (the client's TCP: %+v)", err, info)
		}
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// idleFlows holds r.o.flows TCP flows, then as many UDP ones, per flow
// peer, and measures serve's RSS per flow and its CPU while they idle.
func (r *scaleRun) idleFlows() error {
	if r.o.flowPeers == 0 || r.o.flows == 0 {
		return nil
	}
	before, err := r.settledRSS()
	if err != nil {
		return err
	}
	m0, _ := scrapeMetrics(r.metrics)
	tcp, err := r.openFlows("tcp", at(r.host.echo.Addr()))
	defer closeAll(tcp)
	if err != nil {
		if m1, aerr := scrapeMetrics(r.metrics); aerr == nil && m0 != nil {
			fmt.Printf("   serve's drops while the flows opened: %s\n", dropDelta(m0, m1))
		}
		for _, c := range r.clients[:r.o.flowPeers] {
			if d := c.engine.Stats().Drops; len(d) > 0 {
				fmt.Printf("   client %s drops: %v\n", c.addr, d)
			}
		}
		return err
	}
	withTCP, err := r.settledRSS()
	if err != nil {
		return err
	}
	udp, err := r.openFlows("udp", at(r.host.udp.LocalAddr()))
	defer closeAll(udp)
	if err != nil {
		return err
	}
	withUDP, err := r.settledRSS()
	if err != nil {
		return err
	}
	cpu0, err := procCPU(r.serve.pid())
	if err != nil {
		return err
	}
	time.Sleep(r.o.idleTime)
	cpu1, err := procCPU(r.serve.pid())
	if err != nil {
		return err
	}
	idleCPU := float64(cpu1-cpu0) / float64(r.o.idleTime) * 100
	n := float64(len(tcp))
	perTCP := float64(withTCP-before) / n / 1024
	perUDP := float64(withUDP-withTCP) / float64(len(udp)) / 1024
	r.s.res.add("measure=scale part=flows", kv{"tcp_flows", n}, kv{"udp_flows", float64(len(udp))},
		kv{"kib_per_tcp_flow", perTCP}, kv{"kib_per_udp_flow", perUDP}, kv{"rss_mb", float64(withUDP) / 1e6}, kv{"idle_cpu_pct", idleCPU})
	fmt.Printf("   %d idle TCP flows: %.1f KiB each; %d idle UDP flows: %.1f KiB each; serve RSS %.1f MB, idle CPU %.2f%% of a core over %v\n",
		len(tcp), perTCP, len(udp), perUDP, float64(withUDP)/1e6, idleCPU, r.o.idleTime)
	return nil
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

// shares measures what one peer's load does to another's: a 1-byte echo
// beside a saturating download, and each of several peers' part of
// downloads run at once.
func (r *scaleRun) shares() error {
	if r.o.sharePeers < 2 {
		return nil
	}
	quiet, err := r.echoBeside(nil)
	if err != nil {
		return err
	}
	before, _ := scrapeMetrics(r.metrics)
	loaded, err := r.echoBeside(r.procs[:1])
	if after, aerr := scrapeMetrics(r.metrics); aerr == nil && before != nil {
		fmt.Printf("   serve's drops during the neighbour run: %s\n", dropDelta(before, after))
	}
	if err != nil {
		return err
	}
	r.s.res.add("measure=scale part=neighbour", kv{"p50_us_alone", quiet.P50us}, kv{"p99_us_alone", quiet.P99us},
		kv{"p50_us", loaded.P50us}, kv{"p99_us", loaded.P99us})
	fmt.Printf("   1-byte echo through serve: p50 %.0f µs, p99 %.0f µs alone; p50 %.0f µs, p99 %.0f µs beside another peer's download\n",
		quiet.P50us, quiet.P99us, loaded.P50us, loaded.P99us)

	loaders := r.procs[:r.o.sharePeers]
	// CPU time of each downloading peer, then of serve, over the whole
	// drain: the dials and the lead before the window included.
	names := make([]string, 0, len(loaders)+1)
	pids := make([]int, 0, len(loaders)+1)
	for _, p := range loaders {
		names, pids = append(names, "peer "+p.addr.String()), append(pids, p.c.pid())
	}
	names, pids = append(names, "serve"), append(pids, r.serve.pid())
	cpu := make([]time.Duration, len(pids))
	readCPU := func(sign time.Duration) error {
		for i, pid := range pids {
			c, err := procCPU(pid)
			if err != nil {
				return fmt.Errorf("CPU of %s: %w", names[i], err)
			}
			cpu[i] += sign * c
		}
		return nil
	}
	before, _ = scrapeMetrics(r.metrics)
	if err := readCPU(-1); err != nil {
		return err
	}
	drainStart := time.Now()
	got, err := r.drain(loaders)
	if err != nil {
		return err
	}
	drainTime := time.Since(drainStart)
	if err := readCPU(1); err != nil {
		return err
	}
	if after, err := scrapeMetrics(r.metrics); err == nil && before != nil {
		fmt.Printf("   serve's drops during the drains: %s\n", dropDelta(before, after))
	}
	var total float64
	for _, g := range got {
		total += float64(g)
	}
	mean := total / float64(len(got))
	var worst float64
	for _, g := range got {
		worst = max(worst, math.Abs(float64(g)-mean)/mean*100)
	}
	mbps := total / r.o.shareTime.Seconds() / 1e6
	r.s.res.add("measure=scale part=shares", kv{"peers", float64(len(got))}, kv{"mbps", mbps}, kv{"worst_dev_pct", worst})
	each := make([]string, len(got))
	for i, g := range slices.Sorted(slices.Values(got)) {
		each[i] = fmt.Sprintf("%.0f", float64(g)/r.o.shareTime.Seconds()/1e6)
	}
	fmt.Printf("   %d peers downloading at once: %.0f MB/s in all (%s each); the furthest from an equal share is %.0f%% off\n",
		len(got), mbps, strings.Join(each, ", "), worst)
	// Which side was short of CPU says whose shares these are: serve's
	// when it used its cores while the peers had time to spare.
	pairs := make([]string, len(got))
	for i, g := range got {
		pairs[i] = fmt.Sprintf("%.0f/%.2f", float64(g)/r.o.shareTime.Seconds()/1e6, cpu[i].Seconds())
	}
	serveCPU := cpu[len(loaders)].Seconds()
	r.s.res.add("measure=scale part=shares_cpu", kv{"serve_cpu_s", serveCPU}, kv{"peers_cpu_s", (sumDurations(cpu[:len(loaders)])).Seconds()},
		kv{"seconds", drainTime.Seconds()})
	fmt.Printf("   CPU over the %.1f s of the drains: serve %.2f s (%.2f cores); each peer's MB/s in the window and CPU-s, in the peers' order: %s\n",
		drainTime.Seconds(), serveCPU, serveCPU/drainTime.Seconds(), strings.Join(pairs, " "))
	return nil
}

// startProcs starts the process peers: r.o.sharePeers to download, and
// one more to echo. Each reports ready once an echo has crossed serve.
func (r *scaleRun) startProcs() error {
	if r.o.sharePeers < 1 {
		return nil
	}
	for i := range r.o.sharePeers + 1 {
		key, err := protocol.GeneratePrivateKey()
		if err != nil {
			return err
		}
		r.procs = append(r.procs, &procPeer{key: key, addr: procPeerAddr(i)})
	}
	if err := r.reloadChecked(); err != nil {
		return err
	}
	endpoint := netip.AddrPortFrom(loopback, r.port).String()
	sayIfNotLowered(lowPriority, "the downloading peers")
	for i, p := range r.procs {
		// The downloading peers stand for machines elsewhere, as the
		// churn's clients do: at serve's priority, their own stacks'
		// CPU takes the two cores from serve and from the echoing peer,
		// and the figures would tell of this machine's run queue, not of
		// serve. The echoing peer is light and runs at normal priority.
		prio := normalPriority
		if i < r.o.sharePeers {
			prio = lowPriority
		}
		var err error
		p.c, _, err = startRoleAt(prio, "scale peer "+p.addr.String(), "wgbore-client", p.key, r.serverKey.PublicKey(),
			"-endpoint", endpoint, "-tunnel", fmt.Sprintf("%s,%s,%s", p.addr, scaleServer, at(r.host.echo.Addr())))
		if err != nil {
			return err
		}
	}
	return nil
}

// drainLead is how long the drains have to connect before their window
// opens: a dial through serve takes a round trip or two.
const drainLead = 300 * time.Millisecond

// echoBeside runs 1-byte echoes from the echoer while the loaders
// download; the echoes start after the downloads and end before them.
func (r *scaleRun) echoBeside(loaders []*procPeer) (reply, error) {
	lead := r.o.shareTime / 10
	var loadErr error
	var wg sync.WaitGroup
	if len(loaders) > 0 {
		wg.Go(func() { _, loadErr = r.drain(loaders) })
		time.Sleep(drainLead + lead)
	}
	echoer := r.procs[len(r.procs)-1].c
	res, err := echoer.do(command{Op: "echo", Addr: at(r.host.echo.Addr()), Seconds: (r.o.shareTime - 2*lead).Seconds()})
	wg.Wait()
	return res, errors.Join(err, loadErr)
}

// drain has each process peer read from the host's source for
// r.o.shareTime, over the same window once all have connected, and
// returns the bytes each read in it.
func (r *scaleRun) drain(peers []*procPeer) ([]int64, error) {
	got := make([]int64, len(peers))
	errs := make([]error, len(peers))
	start := time.Now().Add(drainLead)
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Go(func() {
			res, err := p.c.do(command{Op: "drain", Addr: at(r.host.source.Addr()), Seconds: r.o.shareTime.Seconds(), Start: start})
			got[i], errs[i] = res.Bytes, err
		})
	}
	wg.Wait()
	return got, errors.Join(errs...)
}

// churn adds r.o.churn peers by reload, has each handshake, and removes
// them again, while an untouched peer keeps echoing; it reports the
// longest pause in that echo and serve's RSS against its figure before.
func (r *scaleRun) churn() error {
	if r.o.churn == 0 || len(r.procs) == 0 {
		return nil
	}
	before, err := r.settledRSS()
	if err != nil {
		return err
	}
	// The churn's clients are a process of their own, under SCHED_IDLE:
	// they stand for machines elsewhere. Their handshakes are a burst of
	// crypto which, even at nice 19, keeps a core until the scheduler's
	// next tick while serve and the untouched peer wait for it, and that
	// wait would be counted as serve's pause.
	// Its own key is never used: a role's environment carries one.
	key, err := protocol.GeneratePrivateKey()
	if err != nil {
		return err
	}
	sayIfNotLowered(idlePriority, "the churn's clients")
	churners, _, err := startRoleAt(idlePriority, "churn clients", "churn-clients", key, r.serverKey.PublicKey())
	if err != nil {
		return err
	}
	defer churners.stop()
	made, err := churners.do(command{Op: "make", Addr: netip.AddrPortFrom(loopback, r.port).String(), Count: r.o.churn, First: len(r.clients)})
	if err != nil {
		return err
	}
	extra := make([]confPeer, len(made.Keys))
	for i, k := range made.Keys {
		pk, err := protocol.ParsePublicKey(k)
		if err != nil {
			return fmt.Errorf("churn client %d: %w", i, err)
		}
		extra[i] = confPeer{pk, scaleClientAddr(len(r.clients) + i)}
	}
	// What serve dropped meanwhile says where a handshake that had to be
	// sent again was lost, if serve lost it. Its metrics are read before
	// and after the echo, not while it runs: with the churn's peers to
	// list too, that takes serve a while.
	dropsBefore, _ := scrapeMetrics(r.metrics)
	kernelBefore, kernelOK := udpRcvbufErrors()
	stop := make(chan struct{})
	var gap pause
	var echoes int
	var echoErr error
	var wg sync.WaitGroup
	wg.Go(func() { gap, echoes, echoErr = r.pacedEcho(stop) })
	// When each step ended, to say in which the longest pause began.
	var ends [3]time.Time
	start := time.Now()
	err = r.reload(extra...)
	ends[0] = time.Now()
	if err == nil {
		_, err = churners.do(command{Op: "handshake"})
	}
	ends[1] = time.Now()
	if err == nil {
		err = r.reload()
	}
	ends[2] = time.Now()
	took := time.Since(start)
	close(stop)
	wg.Wait()
	dropsAfter, aerr := scrapeMetrics(r.metrics)
	if err == nil && aerr == nil {
		err = r.expectPeers(dropsAfter)
	}
	if aerr == nil && dropsBefore != nil {
		line := "   serve's drops during the churn: " + dropDelta(dropsBefore, dropsAfter)
		if n, ok := udpRcvbufErrors(); ok && kernelOK {
			line += fmt.Sprintf("; UDP datagrams the kernel dropped at a full receive buffer, machine-wide: %d", n-kernelBefore)
		}
		fmt.Println(line)
	}
	if err != nil {
		return err
	}
	if echoErr != nil {
		return fmt.Errorf("churn: the untouched peer's echo: %w", echoErr)
	}
	churners.stop()
	after, err := r.settledRSS()
	if err != nil {
		return err
	}
	growth := (float64(after)/float64(before) - 1) * 100
	// The same echo as long again without the churn, for what a pause
	// is on this machine anyway.
	quiet := make(chan struct{})
	time.AfterFunc(took, func() { close(quiet) })
	quietGap, _, err := r.pacedEcho(quiet)
	if err != nil {
		return fmt.Errorf("churn: the echo without churn: %w", err)
	}
	// A pause is put in the step in which it began: the echo's answer
	// that ends it comes a round trip after whatever held it up.
	began := gap.end.Add(-gap.length)
	step := "after the churn"
	for i, what := range []string{"begun in the reload that added them", "begun in their handshakes", "begun in the reload that removed them"} {
		if began.Before(ends[i]) {
			step = what
			break
		}
	}
	r.s.res.add("measure=scale part=churn", kv{"peers", float64(r.o.churn)}, kv{"seconds", took.Seconds()},
		kv{"rss_growth_pct", growth}, kv{"max_echo_gap_ms", ms(gap.length)}, kv{"max_echo_gap_ms_quiet", ms(quietGap.length)}, kv{"echoes", float64(echoes)})
	fmt.Printf("   churn: %d peers added, handshaken and removed by reload in %.1f s; serve RSS %.1f MB before, %.1f MB after (%+.1f%%); the untouched peer's longest pause between %d echoes %.1f ms, %s (%.1f ms as long again without churn)\n",
		r.o.churn, took.Seconds(), float64(before)/1e6, float64(after)/1e6, growth, echoes, ms(gap.length), step, ms(quietGap.length))
	return nil
}

// pause is the longest pause in a paced echo, and when it ended.
type pause struct {
	length time.Duration
	end    time.Time
}

// pacedEcho has the echoer, untouched by the churn, echo a byte every
// millisecond until stop is closed, and returns the longest pause
// between two answers and how many there were.
func (r *scaleRun) pacedEcho(stop <-chan struct{}) (longest pause, echoes int, err error) {
	echoer := r.procs[len(r.procs)-1].c
	if err := echoer.send(command{Op: "paced", Addr: at(r.host.echo.Addr())}); err != nil {
		return pause{}, 0, err
	}
	<-stop
	res, err := echoer.do(command{Op: "stop"})
	return pause{time.Duration(res.MaxGapUs * float64(time.Microsecond)), res.MaxGapEnd}, res.Echoes, err
}

// dropDelta lists the drop reasons that grew from before to after.
func dropDelta(before, after map[string]float64) string {
	var out []string
	for series, v := range after {
		if strings.HasPrefix(series, "wgbore_dropped_packets_total{") && v != before[series] {
			out = append(out, fmt.Sprintf("%s +%.0f", strings.TrimSuffix(strings.TrimPrefix(series, `wgbore_dropped_packets_total{reason="`), `"}`), v-before[series]))
		}
	}
	slices.Sort(out)
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// runChurnClients is the churn-clients role: on "make", Count bare
// clients of the server at Addr (its public key in the environment),
// from client First on, whose public keys it answers; on "handshake",
// one initiation from each, answered once every one has a session (an
// error after 60 s). It closes them all when its stdin closes.
func runChurnClients(out *json.Encoder) error {
	_, server, err := keysFromEnv()
	if err != nil {
		return err
	}
	var clients []*scaleClient
	defer func() {
		for _, c := range clients {
			c.close()
		}
	}()
	out.Encode(reply{Ready: true})
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var c command
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			return err
		}
		var r reply
		switch c.Op {
		case "make":
			made := len(clients)
			err = makeChurnClients(&clients, server, c)
			for _, cl := range clients[made:] {
				r.Keys = append(r.Keys, cl.key.PublicKey().String())
			}
		case "handshake":
			err = handshakeAll(clients, server)
		default:
			err = fmt.Errorf("churn clients: unknown command %q", c.Op)
		}
		if err != nil {
			r.Err = err.Error()
		}
		out.Encode(r)
	}
	return sc.Err()
}

func makeChurnClients(clients *[]*scaleClient, server protocol.PublicKey, c command) error {
	ap, err := netip.ParseAddrPort(c.Addr)
	if err != nil {
		return fmt.Errorf("churn clients: server %q: %w", c.Addr, err)
	}
	for i := range c.Count {
		cl, err := newScaleClient(c.First+i, server, ap.Port(), false)
		if err != nil {
			return fmt.Errorf("churn client %d: %w", c.First+i, err)
		}
		*clients = append(*clients, cl)
	}
	return nil
}

// handshakeAll has every client initiate at once and waits until each
// has a session.
func handshakeAll(clients []*scaleClient, server protocol.PublicKey) error {
	for _, c := range clients {
		c.engine.Handshake(server)
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, c := range clients {
		for {
			if st, ok := c.engine.Peer(server); ok && !st.LastHandshake.IsZero() {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("churn: %s got no session within 60 s", c.addr)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

func sumDurations(ds []time.Duration) time.Duration {
	var t time.Duration
	for _, d := range ds {
		t += d
	}
	return t
}
