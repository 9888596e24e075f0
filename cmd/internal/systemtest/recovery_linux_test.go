//go:build linux

package systemtest

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/wgbore/wgbore/netstack"
	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/netstack/wgquick"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/wgtest"
)

var recoveryLinuxCC = flag.String("recovery.linux-cc", "",
	"congestion control for Linux's TCP in the download tests' namespace (net.ipv4.tcp_congestion_control); empty keeps the host's default")

// openNetnsClient opens, inside ns, a relay with impairment im in front
// of the kernel site, and behind it wgbore's netstack (which 0) or, as
// the reference, wireguard-go's (which 1). Every socket is the
// namespace's. close ends the client and the relay.
func openNetnsClient(t *testing.T, which int, ns *netns, site *kernelSite, ours protocol.PrivateKey, im wgtest.Impairment) (cl recoveryClient, relay *wgtest.Relay, close func()) {
	t.Helper()
	err := ns.do(func() error {
		var err error
		relay, err = wgtest.NewRelay(wgtest.RelayConfig{B: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(site.port)), Seed: 10, AToB: im, BToA: im})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if which == 0 {
		conf := fmt.Sprintf(`[Interface]
PrivateKey = %s
Address = %s/32

[Peer]
PublicKey = %s
Endpoint = %s
AllowedIPs = %s/32
`, ours.Base64(), site.ours, site.key.PublicKey(), relay.AddrA(), site.addr)
		path := WriteFile(t, t.TempDir(), "wg0.conf", conf)
		var n *netstack.Net
		if err := ns.do(func() error {
			var err error
			n, err = wgquick.Open(context.Background(), path)
			return err
		}); err != nil {
			relay.Close()
			t.Fatal(err)
		}
		return recoveryClient{name: "wgbore",
			dial: func(ctx context.Context, a netip.AddrPort) (net.Conn, error) {
				return n.DialContext(ctx, "tcp", a.String())
			},
			info: senderInfo, resent: n.ResentAcks, stack: n}, relay, func() { n.Close(); relay.Close() }
	}
	tb := &closingTB{TB: t}
	// wireguard-go opens its socket when its TUN reports up, from a
	// goroutine of its own: Listen opens it inside the namespace.
	listen := func(ap netip.AddrPort) (c *net.UDPConn, err error) {
		err = ns.do(func() error {
			c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
			return err
		})
		return c, err
	}
	n := peersite.WireGuardGoStack(tb, ours, []netip.Addr{site.ours}, site.key.PublicKey(), relay.AddrA().String(), []netip.Prefix{netip.PrefixFrom(site.addr, 32)}, listen)
	return recoveryClient{name: "wireguard-go",
		dial: func(ctx context.Context, a netip.AddrPort) (net.Conn, error) { return n.DialContextTCPAddrPort(ctx, a) },
	}, relay, func() { tb.close(); relay.Close() }
}

// runNetnsRecovery downloads from Linux's TCP, behind wireguard-go on a
// real TUN in a namespace of the test's own, through each case, with
// wgbore's stack and, with reference set, wireguard-go's.
func runNetnsRecovery(t *testing.T, cases []recoveryCase, reference bool) map[string]recoveryResult {
	ns, site, ours := kernelSiteInNetns(t)
	if *recoveryLinuxCC != "" {
		mustRun(t, "ip", "netns", "exec", ns.name, "sysctl", "-w", "net.ipv4.tcp_congestion_control="+*recoveryLinuxCC)
	}
	// Linux remembers each destination's RTT and ssthresh from the last
	// connection and starts the next with them; both clients are the same
	// destination, so without this the second would inherit the first's.
	mustRun(t, "ip", "netns", "exec", ns.name, "sysctl", "-w", "net.ipv4.tcp_no_metrics_save=1")
	cc := strings.TrimSpace(mustRun(t, "ip", "netns", "exec", ns.name, "sysctl", "-n", "net.ipv4.tcp_congestion_control"))
	t.Logf("Linux's congestion control in the namespace: %s", cc)
	open := func(which int, im wgtest.Impairment) (recoveryClient, *wgtest.Relay, func()) {
		return openNetnsClient(t, which, ns, site, ours, im)
	}
	download := func(c net.Conn, relay *wgtest.Relay, rc recoveryCase, trace func() string) recoveryResult {
		return downloadThrough(t, c, relay, rc, trace)
	}
	// The sender is Linux: its own view, from ss.
	return runCases(t, "download from Linux TCP", cases, reference, netip.AddrPortFrom(site.addr, 80), open, download,
		func() string { return linuxSenderState(ns) })
}

// TestTCPRecoveryFromLinuxSender blacks the path out once in a download
// whose sender is Linux's TCP, for 3 s, and for 17 s on a path with 5 ms
// each way. In both, the first whole MiB after the path's return must
// come within 10 s. After 3 s that says our receiving side adds no stall
// of its own. After 17 s, Linux's own timer, backed off from a first
// timeout of 200 ms or more, would resend about 10 to 20 s after the
// return (12 s measured on a quiet machine, 15 s under the race
// detector's load): it is the acknowledgements re-sent when the peer
// comes back, with their ancient echo (netstack/recovery_acks.go), that
// must move it sooner. They are re-sent when the peer comes back with a
// handshake or a keepalive. Where Linux's timer fires first, its data
// ends the silence, the stack answers that itself and nothing is re-sent,
// as the engine intends (protocol.PeerReturner).
func TestTCPRecoveryFromLinuxSender(t *testing.T) {
	if *recoveryBench {
		t.Skip("skipped: -recovery.bench runs TestTCPRecoveryBenchFromLinuxSender instead")
	}
	res := runNetnsRecovery(t, []recoveryCase{
		{name: "3 s blackout", out: 3 * time.Second, mib: 32},
		{name: "17 s blackout, 5 ms each way", im: wgtest.Impairment{Delay: 5 * time.Millisecond}, out: 17 * time.Second, mib: 32},
	}, false)
	short := res["3 s blackout wgbore"]
	requireRecoveredWithin(t, map[string]recoveryResult{"3 s blackout": short}, 10*time.Second)
	long := res["17 s blackout, 5 ms each way wgbore"]
	requireRecoveredWithin(t, map[string]recoveryResult{"17 s blackout": long}, 10*time.Second)
	// After data nothing is re-sent: the stack answers the data itself.
	if short.dataFirst && short.resent != 0 {
		t.Errorf("3 s blackout: data ended the peer's silence, and still %d acknowledgements were re-sent", short.resent)
	}
	switch {
	case long.dataFirst && long.resent != 0:
		t.Errorf("17 s blackout: data ended the peer's silence, and still %d acknowledgements were re-sent", long.resent)
	case long.dataFirst:
		t.Log("17 s blackout: Linux's retransmission came back before any handshake or keepalive, so nothing was to be re-sent")
	case long.resent == 0:
		t.Error("17 s blackout: the peer came back with a handshake or a keepalive, and no acknowledgement was re-sent")
	}
}

// TestTCPRecoveryBenchFromLinuxSender is the download half of the recovery
// measurement: Linux's TCP sends, wgbore's stack and wireguard-go's
// receive through the same impairment, in one run.
//
//	go test ./cmd/internal/systemtest -run TestTCPRecoveryBench -recovery.bench -v -timeout 2h
func TestTCPRecoveryBenchFromLinuxSender(t *testing.T) {
	if !*recoveryBench {
		t.Skip("skipped: a measurement of several minutes; run with -recovery.bench")
	}
	cases := benchCases()
	res := runNetnsRecovery(t, cases, true)
	var lines []string
	for _, rc := range cases {
		k := rc.name
		lines = append(lines, fmt.Sprintf("%s: wgbore %.2f MB/s (%v), wireguard-go %.2f MB/s (%v)", k,
			res[k+" wgbore"].rate, res[k+" wgbore"].recovered.Round(time.Millisecond),
			res[k+" wireguard-go"].rate, res[k+" wireguard-go"].recovered.Round(time.Millisecond)))
	}
	t.Logf("downloads from Linux's TCP:\n%s", strings.Join(lines, "\n"))
}

// linuxSenderState is ss's view of the HTTP server's connections in ns:
// RTT, RTO, congestion window, retransmissions.
func linuxSenderState(ns *netns) string {
	out, _ := exec.Command("ip", "netns", "exec", ns.name, "ss", "-tinH", "state", "established", "sport", "= :80").CombinedOutput()
	var keep []string
	for _, f := range strings.Fields(string(out)) {
		for _, k := range []string{"rto:", "rtt:", "cwnd:", "retrans:", "ssthresh:", "snd_wnd:", "unacked:", "lost:", "bbr:"} {
			if strings.HasPrefix(f, k) {
				keep = append(keep, f)
			}
		}
	}
	return strings.Join(keep, " ")
}

// TestTCPTimestampsNegotiated checks, from Linux's side of real
// connections, that wgbore's stack negotiates TCP timestamps, SACK and
// window scaling whether it dials Linux or Linux dials it: the echo
// after a silence (netstack/recovery_echo.go) needs timestamps.
func TestTCPTimestampsNegotiated(t *testing.T) {
	ns, site, ours := kernelSiteInNetns(t)
	// options is what ss says of the connection matching filter in ns.
	options := func(filter string) (ts, sack, wscale bool) {
		t.Helper()
		var out string
		for range 50 {
			out = strings.TrimSpace(mustRun(t, "ip", append([]string{"netns", "exec", ns.name, "ss", "-tinoH", "state", "established"}, strings.Fields(filter)...)...))
			if out != "" {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if out == "" {
			t.Fatalf("ss shows no connection matching %q", filter)
		}
		t.Logf("ss %s: %s", filter, out)
		for _, f := range strings.Fields(out) {
			ts = ts || f == "ts"
			sack = sack || f == "sack"
			wscale = wscale || strings.HasPrefix(f, "wscale:")
		}
		return
	}

	cl, _, closeOurs := openNetnsClient(t, 0, ns, site, ours, wgtest.Impairment{})
	defer closeOurs()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := cl.dial(ctx, netip.AddrPortFrom(site.addr, 80))
	if err != nil {
		t.Fatal(err)
	}
	if ts, sack, wscale := options("sport = :80"); !ts || !sack || !wscale {
		t.Errorf("wgbore dialing Linux: timestamps %v, SACK %v, window scaling %v; want all", ts, sack, wscale)
	}
	c.Close()

	ln, err := cl.stack.Listen("tcp", netip.AddrPortFrom(site.ours, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	var in net.Conn
	if err := ns.do(func() error {
		var err error
		in, err = net.DialTimeout("tcp", netip.AddrPortFrom(site.ours, 8080).String(), time.Minute)
		return err
	}); err != nil {
		t.Fatalf("Linux dialing wgbore: %v", err)
	}
	defer in.Close()
	if c, ok := <-accepted; ok {
		defer c.Close()
	} else {
		t.Fatal("wgbore's listener accepted nothing")
	}
	if ts, sack, wscale := options("dport = :8080"); !ts || !sack || !wscale {
		t.Errorf("Linux dialing wgbore: timestamps %v, SACK %v, window scaling %v; want all", ts, sack, wscale)
	}
}

// TestTCPRecoveryBenchBySender blacks the path out for 3 s and for 15 s
// in a 32 MiB transfer from each kind of sender: gVisor's TCP with its
// defaults and without RACK (wireguard-go peers' netstacks), Linux's TCP
// behind a real TUN, and our own stack uploading. wgbore's stack and
// wireguard-go's receive through the same relay, in one run, and the
// table gives the first whole MiB after the path's return for each. A
// transfer that has not recovered 5 minutes after the return is cut
// short.
//
//	go test ./cmd/internal/systemtest -run TestTCPRecoveryBenchBySender -recovery.bench -v -timeout 2h
func TestTCPRecoveryBenchBySender(t *testing.T) {
	if !*recoveryBench {
		t.Skip("skipped: a measurement of several minutes; run with -recovery.bench")
	}
	cases := []recoveryCase{
		{name: "3 s blackout", out: 3 * time.Second, mib: 32, giveUp: 5 * time.Minute},
		{name: "15 s blackout", out: 15 * time.Second, mib: 32, giveUp: 5 * time.Minute},
	}
	rows := []struct {
		sender string
		res    map[string]recoveryResult
	}{
		{"gVisor, defaults (RACK on)", runSiteDownloads(t, cases, true, false)},
		{"gVisor without RACK", runSiteDownloads(t, cases, true, true)},
		{"Linux's TCP", runNetnsRecovery(t, cases, true)},
		{"wgbore's own stack (upload)", runRecovery(t, cases, true)},
	}
	show := func(r recoveryResult) string {
		if r.gaveUp {
			return "> " + r.recovered.String()
		}
		return r.recovered.Round(time.Millisecond).String()
	}
	lines := []string{"| sender | blackout | wgbore | wireguard-go netstack (reference) |", "|---|---|---|---|"}
	for _, row := range rows {
		for _, rc := range cases {
			lines = append(lines, fmt.Sprintf("| %s | %v | %s | %s |", row.sender, rc.out, show(row.res[rc.name+" wgbore"]), show(row.res[rc.name+" wireguard-go"])))
		}
	}
	t.Logf("first whole MiB after the path's return:\n%s", strings.Join(lines, "\n"))
}
