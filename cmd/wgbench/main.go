// Command wgbench is wgbore's performance suite: throughput and CPU per
// gigabyte, TCP and UDP echo latency (UDP through SOCKS5's UDP ASSOCIATE
// for `wgbore up`), connection rate, memory and handshake rate, each
// next to wireguard-go measured in the same run on the same machine; and
// `wgbore serve` under many peers (part S): all of them handshaking at
// once, memory per peer and per idle flow, idle CPU, one peer's echo
// beside another's download, shares of downloads run at once, and peers
// added and removed by reload while traffic flows.
//
//	go run ./cmd/wgbench            # the whole suite
//	go run ./cmd/wgbench -quick     # tiny sizes: checks that it still runs
//	go run ./cmd/wgbench -only S    # serve with 1,000 peers, 20 holding flows
//
// Every party runs in a process of its own (this program, re-executed
// with -role), so the CPU time each one spends is read from /proc
// without the others' mixed in. The README's Performance section says
// how to read the output.
//
// Where it may open a packet socket (Linux, CAP_NET_RAW), wgbench also
// runs each echo once more while it watches the loopback interface, and
// splits the round trips between the two ends of the tunnel: how long
// the client side (for a proxy pair, the proxy and its client) took to
// answer the peer, and how long the WireGuard peer took to answer it. A
// ratio against B is read against the peer's share, which is time spent
// outside our processes (though on a shared machine our use of the cores
// can lengthen it). The timed runs carry no capture; in the captured one
// a kernel filter keeps the headers of the peer's datagrams only.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"time"
)

type options struct {
	size     int64
	repeat   int
	quick    bool
	only     map[string]bool
	wgbore   string
	quietMax time.Duration

	echoCount int
	connCount int
	connPar   int
	idleConns []int
	benchtime string
	scale     scaleOptions
}

func main() {
	role := flag.String("role", "", "internal: run as one party of a measurement")
	endpoint := flag.String("endpoint", "", "internal: the peer's WireGuard UDP address, for a client role")
	via := flag.String("via", "", "internal: socks5://HOST:PORT or http://HOST:PORT, for the proxy-client role")
	tunnel := flag.String("tunnel", "", "internal: CLIENT,PEER,ECHO addresses, for a client role whose peer is not the suite's own")
	size := flag.String("size", "256MiB", "bytes per throughput run (suffixes KiB, MiB, GiB)")
	repeat := flag.Int("repeat", 3, "runs of each measurement; the median is reported")
	quick := flag.Bool("quick", false, "tiny sizes and one run of each, to check that the suite still runs (what CI does)")
	only := flag.String("only", "", "comma-separated parts to run: A,B,C,D,E,F,G (pairs; F and G against a peer on wireguard-go's default bind, which sends with UDP GSO), M (memory), H (handshakes and allocations), S (serve with many peers); empty means all")
	scalePeers := flag.Int("scale-peers", 1000, "S: peers of the server, all handshaking at once")
	scaleFlows := flag.Int("scale-flows", 1000, "S: idle TCP flows, and as many UDP ones, per flow peer")
	scaleFlowPeers := flag.Int("scale-flow-peers", 20, "S: peers that hold flows")
	scaleServeCPU := flag.Float64("scale-serve-cpu", 0, "S: run serve under a CPU quota of this many cores (Linux cgroups, as root), so that serve, not the peers' share of the machine, is what runs short; 0 means none")
	wgbore := flag.String("wgbore", "", "a built wgbore binary for E and M; empty means go build ./cmd/wgbore into a temporary directory")
	quiet := flag.Duration("quiet-wait", 10*time.Second, "how long to wait for a quiet CPU before each measurement before measuring anyway")
	profiles := flag.String("cpuprofile", "", "a directory where each library party (not wgbore up) writes a CPU profile of its whole life, ROLE-PID.pprof, for go tool pprof")
	flag.Parse()
	if *profiles != "" {
		// The parties are this program re-executed; they find the
		// directory in their environment.
		os.Setenv(envProfile, *profiles)
	}

	if *role != "" {
		stop := startProfile(*role)
		err := setTunnel(*tunnel)
		if err == nil {
			err = runRole(*role, *endpoint, *via)
		}
		stop()
		if err != nil {
			fmt.Fprintf(os.Stderr, "wgbench -role %s: %v\n", *role, err)
			os.Exit(1)
		}
		return
	}

	o := options{repeat: *repeat, quick: *quick, wgbore: *wgbore, quietMax: *quiet,
		echoCount: 2000, connCount: 2000, connPar: 50, idleConns: []int{1000, 10000}, benchtime: "1s",
		scale: scaleOptions{peers: *scalePeers, flowPeers: *scaleFlowPeers, flows: *scaleFlows, serveCPU: *scaleServeCPU, sharePeers: 10,
			shareTime: 5 * time.Second, churn: 1000, idleTime: 10 * time.Second}}
	var err error
	if o.size, err = parseSize(*size); err != nil {
		fmt.Fprintf(os.Stderr, "wgbench: -size: %v\n", err)
		os.Exit(2)
	}
	if o.quick {
		o.repeat = 1
		o.echoCount, o.connCount, o.idleConns = 200, 100, []int{100, 200}
		o.benchtime = "100x"
		o.quietMax = 0
		// The short form of S: 100 peers, 2,000 flows of each kind.
		o.scale.sharePeers, o.scale.shareTime, o.scale.churn, o.scale.idleTime = 2, time.Second, 100, 2*time.Second
		if !flagGiven("scale-peers") {
			o.scale.peers = 100
		}
		if !flagGiven("scale-flow-peers") {
			o.scale.flowPeers = 2
		}
		if !flagGiven("size") {
			o.size = 4 << 20
		}
	}
	o.repeat = max(o.repeat, 1)
	o.only = map[string]bool{}
	for _, p := range strings.Split(*only, ",") {
		if p = strings.TrimSpace(strings.ToUpper(p)); p != "" {
			o.only[p] = true
		}
	}
	raiseFileLimit()
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "wgbench: %v\n", err)
		os.Exit(1)
	}
}

func flagGiven(name string) bool {
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

// parseSize reads a byte count such as 256MiB, 64M or 1000000.
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = rest, u.mult
			break
		}
	}
	var n int64
	if _, err := fmt.Sscan(s, &n); err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive byte count", s)
	}
	return n * mult, nil
}

// envProfile names the directory a party writes its CPU profile to.
const envProfile = "WGBENCH_CPUPROFILE"

// startProfile profiles this party if -cpuprofile asked for it, and
// returns what stops and writes the profile.
func startProfile(role string) func() {
	dir := os.Getenv(envProfile)
	if dir == "" {
		return func() {}
	}
	f, err := os.Create(filepath.Join(dir, fmt.Sprintf("%s-%d.pprof", role, os.Getpid())))
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "wgbench -role %s: cpu profile: %v\n", role, err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
