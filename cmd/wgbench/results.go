package main

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

type kv struct {
	k string
	v float64
}

type record struct {
	tags    string // "measure=throughput pair=A dir=download"
	metrics []kv
}

// results are the suite's figures in the order measured, each also
// findable by its tags and metric name for the ratios.
type results struct {
	records []record
	vals    map[string]float64
	busy    int
	// quick marks figures too small to hold against the targets.
	quick bool
}

func newResults() *results { return &results{vals: map[string]float64{}} }

func (r *results) add(tags string, metrics ...kv) {
	r.records = append(r.records, record{tags, metrics})
	for _, m := range metrics {
		r.vals[tags+" "+m.k] = m.v
	}
}

func (r *results) get(tags, metric string) (float64, bool) {
	v, ok := r.vals[tags+" "+metric]
	return v, ok
}

// formatValue prints a figure with as many decimals as its size needs,
// for humans and for the machine-readable lines alike.
func formatValue(v float64) string {
	switch a := math.Abs(v); {
	case a == 0 || a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

// machineValue keeps up to three decimals: enough for every figure here,
// without float noise.
func machineValue(v float64) string {
	return strconv.FormatFloat(math.Round(v*1000)/1000, 'f', -1, 64)
}

// printMachine writes one "wgbench key=value ..." line per record: the
// format scripts read, since the table's layout may change.
func (r *results) printMachine(w io.Writer) {
	for _, rec := range r.records {
		var b strings.Builder
		b.WriteString("wgbench ")
		b.WriteString(rec.tags)
		for _, m := range rec.metrics {
			fmt.Fprintf(&b, " %s=%s", m.k, machineValue(m.v))
		}
		fmt.Fprintln(w, b.String())
	}
	for _, t := range r.evalTargets() {
		if !t.ok {
			continue
		}
		status := "MISS"
		if t.pass {
			status = "PASS"
		}
		fmt.Fprintf(w, "wgbench measure=target name=%s value=%s op=%s want=%s status=%s\n",
			t.id, machineValue(t.got), t.op, machineValue(t.want), status)
	}
}

// parseMachineLine reads back a line printMachine wrote.
func parseMachineLine(line string) (map[string]string, bool) {
	f := strings.Fields(line)
	if len(f) < 2 || f[0] != "wgbench" {
		return nil, false
	}
	out := map[string]string{}
	for _, p := range f[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			return nil, false
		}
		out[k] = v
	}
	return out, true
}

func (r *results) has(measure string) bool {
	for _, rec := range r.records {
		if tagMap(rec.tags)["measure"] == measure {
			return true
		}
	}
	return false
}

// latencyPairs are the pairs whose echoes and connection rates the
// summary lists, in its order.
var latencyPairs = []string{"A", "B", "C", "D", "E-socks5", "E-http", "F-socks5", "G"}

func (r *results) printTable(w io.Writer) {
	if r.has("throughput") {
		fmt.Fprintln(w, "Throughput: MB/s, and CPU-seconds per GB moved for each process")
		fmt.Fprintf(w, "  %-9s %-9s %9s   %s\n", "pair", "dir", "MB/s", "CPU-s/GB")
	}
	for _, rec := range r.records {
		if !strings.HasPrefix(rec.tags, "measure=throughput ") {
			continue
		}
		t := tagMap(rec.tags)
		var cpus []string
		for _, c := range r.records {
			ct := tagMap(c.tags)
			if ct["measure"] == "cpu" && ct["pair"] == t["pair"] && ct["dir"] == t["dir"] {
				cpus = append(cpus, fmt.Sprintf("%s %s", ct["proc"], formatValue(c.metrics[0].v)))
			}
		}
		fmt.Fprintf(w, "  %-9s %-9s %9s   %s\n", t["pair"], t["dir"], formatValue(rec.metrics[0].v), strings.Join(cpus, ", "))
	}
	for _, ratio := range [][2]string{{"A", "B"}, {"C", "D"}} {
		for _, dir := range []string{"download", "upload"} {
			x, ok1 := r.get("measure=throughput pair="+ratio[0]+" dir="+dir, "mbps")
			y, ok2 := r.get("measure=throughput pair="+ratio[1]+" dir="+dir, "mbps")
			if ok1 && ok2 && y > 0 {
				line := fmt.Sprintf("  ratio %s/%s %-9s %.2f×", ratio[0], ratio[1], dir, x/y)
				cpu := func(pair, proc string) string {
					return "measure=cpu pair=" + pair + " dir=" + dir + " proc=" + proc
				}
				if c, ok := r.ratio(cpu(ratio[0], "wgbore"), cpu(ratio[1], "wggo"), "cpu_s_per_gb"); ok {
					line += fmt.Sprintf("   client CPU-s/GB %.2f×", c)
				}
				if c, ok := r.ratio(cpu(ratio[0], "wgbore-peer"), cpu(ratio[1], "wggo-peer"), "cpu_s_per_gb"); ok {
					line += fmt.Sprintf(", peer %.2f×", c)
				}
				fmt.Fprintln(w, line)
			}
		}
	}
	if r.has("echo") {
		fmt.Fprintln(w, "Latency and connection rate")
		fmt.Fprintf(w, "  %-9s %10s %10s %10s\n", "pair", "p50 µs", "p99 µs", "conns/s")
	}
	for _, pair := range latencyPairs {
		p50, ok := r.get("measure=echo pair="+pair, "p50_us")
		if !ok {
			continue
		}
		p99, _ := r.get("measure=echo pair="+pair, "p99_us")
		rate, _ := r.get("measure=connrate pair="+pair, "conns_per_s")
		fmt.Fprintf(w, "  %-9s %10s %10s %10s   %s\n", pair, formatValue(p50), formatValue(p99), formatValue(rate), r.opCPU(pair))
	}
	for _, ratio := range [][2]string{{"A", "B"}, {"C", "D"}} {
		x, y := "measure=echo pair="+ratio[0], "measure=echo pair="+ratio[1]
		if p50, ok := r.ratio(x, y, "p50_us"); ok {
			p99, _ := r.ratio(x, y, "p99_us")
			rate, _ := r.ratio("measure=connrate pair="+ratio[0], "measure=connrate pair="+ratio[1], "conns_per_s")
			fmt.Fprintf(w, "  %-9s %9.2f× %9.2f× %9.2f×\n", "ratio "+ratio[0]+"/"+ratio[1], p50, p99, rate)
		}
	}
	if r.has("udpecho") {
		fmt.Fprintln(w, "UDP latency: 1-byte datagrams echoed (SOCKS5 UDP ASSOCIATE for a proxy)")
		fmt.Fprintf(w, "  %-9s %10s %10s %10s\n", "pair", "p50 µs", "p99 µs", "resent")
	}
	for _, rec := range r.records {
		if t := tagMap(rec.tags); t["measure"] == "udpecho" {
			fmt.Fprintf(w, "  %-9s %10s %10s %10s   %s\n", t["pair"], formatValue(rec.metrics[0].v), formatValue(rec.metrics[1].v), formatValue(rec.metrics[2].v), r.cpuPerOp(t["pair"], "udpecho"))
		}
	}
	if r.has("echo_wire") {
		fmt.Fprintln(w, "Echo round trips on the wire, p50 of each end's answer, µs (the client side: for a proxy pair, the proxy and its client)")
		fmt.Fprintf(w, "  %-9s %12s %12s %12s %12s\n", "pair", "TCP client", "TCP peer", "UDP client", "UDP peer")
	}
	for _, pair := range latencyPairs {
		tc, ok := r.get("measure=echo_wire pair="+pair, "client_p50_us")
		if !ok {
			continue
		}
		tp, _ := r.get("measure=echo_wire pair="+pair, "peer_p50_us")
		uc, okU := r.get("measure=udpecho_wire pair="+pair, "client_p50_us")
		up, _ := r.get("measure=udpecho_wire pair="+pair, "peer_p50_us")
		ucs, ups := "-", "-"
		if okU {
			ucs, ups = formatValue(uc), formatValue(up)
		}
		fmt.Fprintf(w, "  %-9s %12s %12s %12s %12s\n", pair, formatValue(tc), formatValue(tp), ucs, ups)
	}
	for _, rec := range r.records {
		t := tagMap(rec.tags)
		switch t["measure"] {
		case "memory":
			if t["state"] == "idle" {
				line := fmt.Sprintf("Memory of wgbore up: idle RSS %s MB", formatValue(rec.metrics[0].v))
				if len(rec.metrics) == 3 {
					line += fmt.Sprintf(" (anonymous %s MB, file-backed %s MB)", formatValue(rec.metrics[1].v), formatValue(rec.metrics[2].v))
				}
				fmt.Fprintln(w, line)
			} else {
				fmt.Fprintf(w, "  %6s idle SOCKS5 conns: RSS %s MB, %s KiB per connection\n", t["conns"], formatValue(rec.metrics[0].v), formatValue(rec.metrics[1].v))
			}
		case "handshake":
			fmt.Fprintf(w, "Handshakes: %s per second on one core\n", formatValue(rec.metrics[0].v))
		case "allocs":
			fmt.Fprintf(w, "Allocations: %-10s %s allocs/op\n", t["bench"], formatValue(rec.metrics[0].v))
		}
	}
}

// opCPU lists CPU microseconds per echo and per connection of each of a
// pair's processes.
func (r *results) opCPU(pair string) string {
	var parts []string
	for _, op := range []string{"echo", "connrate"} {
		if procs := r.cpuPerOp(pair, op); procs != "" {
			name := map[string]string{"echo": "CPU µs/echo", "connrate": "CPU µs/conn"}[op]
			parts = append(parts, name+": "+procs)
		}
	}
	return strings.Join(parts, "; ")
}

// cpuPerOp lists CPU microseconds per op of each of a pair's processes.
func (r *results) cpuPerOp(pair, op string) string {
	var procs []string
	for _, rec := range r.records {
		t := tagMap(rec.tags)
		if t["measure"] == "cpu_per_op" && t["op"] == op && t["pair"] == pair {
			procs = append(procs, t["proc"]+" "+formatValue(rec.metrics[0].v))
		}
	}
	return strings.Join(procs, ", ")
}

func tagMap(tags string) map[string]string {
	m, _ := parseMachineLine("wgbench " + tags)
	return m
}

// target is one of the project's goals, checked against this run's figures.
type target struct {
	id, desc string
	op       string // ">=" or "<="
	want     float64
	got      float64
	ok       bool // measured in this run
	pass     bool
}

func (r *results) ratio(tagsX, tagsY, metric string) (float64, bool) {
	x, ok1 := r.get(tagsX, metric)
	y, ok2 := r.get(tagsY, metric)
	if !ok1 || !ok2 || y == 0 {
		return 0, false
	}
	return x / y, true
}

func (r *results) evalTargets() []target {
	var ts []target
	add := func(id, desc, op string, want, got float64, ok bool) {
		t := target{id: id, desc: desc, op: op, want: want, got: got, ok: ok}
		if op == ">=" {
			t.pass = ok && got >= want
		} else {
			t.pass = ok && got <= want
		}
		ts = append(ts, t)
	}
	tp := func(pair, dir string) string { return "measure=throughput pair=" + pair + " dir=" + dir }
	cpu := func(pair, dir, proc string) string {
		return "measure=cpu pair=" + pair + " dir=" + dir + " proc=" + proc
	}
	for _, dir := range []string{"download", "upload"} {
		v, ok := r.ratio(tp("A", dir), tp("B", dir), "mbps")
		add("throughput_A/B_"+dir, "throughput A/B "+dir, ">=", 1.5, v, ok)
	}
	for _, dir := range []string{"download", "upload"} {
		v, ok := r.ratio(cpu("A", dir, "wgbore"), cpu("B", dir, "wggo"), "cpu_s_per_gb")
		add("cpu_A/B_"+dir, "CPU-s/GB client A/B "+dir, "<=", 0.25, v, ok)
	}
	for _, dir := range []string{"download", "upload"} {
		v, ok := r.ratio(tp("C", dir), tp("D", dir), "mbps")
		add("throughput_C/D_"+dir, "throughput C/D "+dir, ">=", 5, v, ok)
	}
	for _, dir := range []string{"download", "upload"} {
		v, ok := r.get(cpu("E-socks5", dir, "wgbore-up"), "cpu_s_per_gb")
		add("cpu_E-socks5_"+dir, "wgbore up CPU-s/GB, SOCKS5 "+dir, "<=", 3, v, ok)
	}
	v, ok := r.get(cpu("F-socks5", "download", "wgbore-up"), "cpu_s_per_gb")
	add("cpu_F-socks5_download", "up CPU-s/GB, SOCKS5 download, GSO peer", "<=", 3, v, ok)
	v, ok = r.ratio("measure=echo pair=A", "measure=echo pair=B", "p50_us")
	add("echo_p50_A/B", "echo p50 A/B", "<=", 0.6, v, ok)
	v, ok = r.ratio("measure=echo pair=E-socks5", "measure=echo pair=B", "p50_us")
	add("echo_p50_E-socks5/B", "echo p50 E-socks5/B", "<=", 0.8, v, ok)
	v, ok = r.ratio("measure=connrate pair=A", "measure=connrate pair=B", "conns_per_s")
	add("connrate_A/B", "connections/s A/B", ">=", 3, v, ok)
	v, ok = r.ratio("measure=connrate pair=E-socks5", "measure=connrate pair=B", "conns_per_s")
	add("connrate_E-socks5/B", "connections/s E-socks5/B", ">=", 1.5, v, ok)
	v, ok = r.get("measure=udpecho pair=E-socks5", "p50_us")
	add("udpecho_p50_E-socks5", "UDP ASSOCIATE echo p50, µs", "<=", 150, v, ok)
	v, ok = r.ratio("measure=udpecho pair=E-socks5", "measure=udpecho pair=B", "p50_us")
	add("udpecho_p50_E-socks5/B", "UDP ASSOCIATE echo p50 E-socks5/B", "<=", 0.8, v, ok)
	// The largest count measured is the one the target is about.
	var perConn float64
	var conns string
	for _, rec := range r.records {
		if t := tagMap(rec.tags); t["measure"] == "memory" && t["state"] == "conns" {
			perConn, conns = rec.metrics[1].v, t["conns"]
		}
	}
	desc := "KiB per idle SOCKS5 conn"
	if conns != "" {
		desc += " (" + conns + " conns)"
	}
	add("kib_per_idle_conn", desc, "<=", 30, perConn, conns != "")
	v, ok = r.get("measure=memory state=idle", "rss_mb")
	add("idle_rss_mb", "idle RSS of wgbore up, MB", "<=", 10, v, ok)
	v, ok = r.get("measure=handshake cpu=1", "handshakes_per_s")
	add("handshakes_per_s", "handshakes/s on one core", ">=", 1500, v, ok)
	// Part S: serve with many peers.
	for _, t := range []struct {
		id, desc, tags, metric string
		want                   float64
	}{
		{"scale_storm_s", "serve: all peers' handshakes at once, s", "storm", "all_s", 2},
		{"scale_kib_per_peer", "serve: KiB per peer with a session", "peers", "kib_per_peer", 16},
		{"scale_kib_per_tcp_flow", "serve: KiB per idle TCP flow", "flows", "kib_per_tcp_flow", 16},
		{"scale_kib_per_udp_flow", "serve: KiB per idle UDP flow", "flows", "kib_per_udp_flow", 4},
		{"scale_neighbour_p99_us", "serve: echo p99 beside a download, µs", "neighbour", "p99_us", 5000},
		{"scale_share_dev_pct", "serve: downloads' furthest off a share, %", "shares", "worst_dev_pct", 25},
		{"scale_churn_rss_pct", "serve: RSS growth after churn, %", "churn", "rss_growth_pct", 10},
	} {
		v, ok := r.get("measure=scale part="+t.tags, t.metric)
		add(t.id, t.desc, "<=", t.want, v, ok)
	}
	for _, rec := range r.records {
		// The data path is what runs per packet; a handshake allocates
		// and is reported, but is not held to zero.
		if t := tagMap(rec.tags); t["measure"] == "allocs" && t["bench"] != "Handshake" {
			add("allocs_"+t["bench"], "allocs/op "+t["bench"], "<=", 0, rec.metrics[0].v, true)
		}
	}
	return ts
}

func (r *results) printTargets(w io.Writer) {
	if r.quick {
		fmt.Fprintln(w, "Targets: -quick sizes only check that the suite runs; these are not figures to judge")
	} else {
		fmt.Fprintln(w, "Targets, from this run")
	}
	for _, t := range r.evalTargets() {
		got, status := "not measured", "-"
		if t.ok {
			got = formatValue(t.got)
			status = "MISS"
			if t.pass {
				status = "PASS"
			}
		}
		fmt.Fprintf(w, "  %-40s %s %-6s %-12s %s\n", t.desc, t.op, formatValue(t.want), got, status)
	}
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
