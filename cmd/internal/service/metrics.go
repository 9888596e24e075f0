package service

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wgbore/wgbore/cmd/internal/membudget"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/proxy"
	"github.com/wgbore/wgbore/proxy/egress"
)

// The endpoints of [Metrics] BindAddress are written by hand rather than
// with the Prometheus client library: the text exposition format is a
// few lines of escaping, and one small file is cheaper to audit than
// the library's dependency tree (protobuf among it) in a program whose
// job is to hold keys. The tests parse the output with the reference
// parser, so the two cannot drift apart silently.

// listenerStat is one front end's connection count, as /metrics labels
// it. Kind is socks5, http, https, tcp_client_tunnel, tcp_server_tunnel,
// udp_proxy_tunnel or udp_server_tunnel; Addr is the address it listens
// on (the first, for a server tunnel on several of our addresses).
type listenerStat struct {
	Kind, Addr string
	proxy.ConnStats
}

// observerConfig is what the endpoints read. The engine is reached
// through functions, so tests can feed readiness any peer history.
type observerConfig struct {
	// Peers and Stats are the engine's (protocol.Engine.Peers and
	// .Stats).
	Peers func() []protocol.PeerStatus
	Stats func() protocol.StatsSnapshot
	// ResentAcks is the netstack's count of re-sent acknowledgements
	// (netstack.Net.ResentAcks); nil leaves the metric out.
	ResentAcks func() uint64
	// Flows is server mode's flows per peer (egress.Server.FlowCounts);
	// nil, or a nil result, leaves the flow metrics out.
	Flows func() map[protocol.PublicKey]egress.FlowCounts
	// Budget is the memory budget; nil (none) reports a budget of 0.
	Budget *membudget.Budget
	// Listeners lists the front ends running now; nil means none.
	Listeners func() []listenerStat
	// Alive holds the CheckAlive results; nil, or one with no targets,
	// makes readiness rest on the handshakes instead.
	Alive *aliveTracker
	// Now is the clock readiness is judged by; nil means time.Now.
	Now func() time.Time
	// HandshakeMaxAge is how old the last handshake of a peer with
	// traffic may be; 0 means protocol.RejectAfterTime (180 s), past
	// which a session may no longer carry data at all.
	HandshakeMaxAge time.Duration
}

// observer serves /metrics, /healthz and /readyz.
type observer struct {
	c observerConfig

	// lastScrape is the size of the last exposition, in bytes.
	lastScrape atomic.Int64

	// activity remembers, per peer, the counters /readyz saw last and
	// when they last moved: the engine keeps totals, not times.
	mu       sync.Mutex
	activity map[protocol.PublicKey]peerActivity
}

type peerActivity struct {
	rx, tx, attempts uint64
	moved            time.Time
}

func newObserver(c observerConfig) *observer {
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.HandshakeMaxAge <= 0 {
		c.HandshakeMaxAge = protocol.RejectAfterTime
	}
	return &observer{c: c, activity: make(map[protocol.PublicKey]peerActivity)}
}

// Handler serves the three endpoints; anything else is 404.
func (o *observer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", o.serveMetrics)
	mux.HandleFunc("GET /healthz", serveHealthz)
	mux.HandleFunc("GET /readyz", o.serveReadyz)
	return mux
}

// serveHealthz is liveness: answering at all proves the process is not
// wedged, and restarting it would cure nothing a peer's absence causes,
// so it looks at nothing else.
func serveHealthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	fmt.Fprint(w, "ok\n")
}

// readiness is /readyz's JSON body.
type readiness struct {
	Ready bool `json:"ready"`
	// Basis says which rule decided: "check_alive" or "handshakes".
	Basis   string   `json:"basis"`
	Reasons []string `json:"reasons,omitempty"`
}

// ready judges readiness. With CheckAlive targets, it is ready when
// every target answered its latest ping and that answer is at most two
// intervals old: a round can take one interval, the next may be
// running, and a third means the pinger itself is stuck. Before the
// first round it is not ready. Without targets, it is ready when every
// peer with traffic has a handshake younger than HandshakeMaxAge. A
// peer has traffic when its received or sent bytes or its handshake
// attempts moved within HandshakeMaxAge, as sampled on each call (a
// peer first seen with any counted counts as moving now, since when it
// moved is unknown). Attempts count too, so a peer that stopped
// answering stays "with traffic" for as long as we keep trying to reach
// it, instead of looking idle once its session expires. No peer with
// traffic is ready: an idle tunnel is not broken.
func (o *observer) ready() readiness {
	now := o.c.Now()
	if every, targets := o.c.Alive.snapshot(); len(targets) > 0 {
		r := readiness{Ready: true, Basis: "check_alive"}
		for _, t := range targets {
			var why string
			switch {
			case !t.Pinged:
				why = "no ping yet"
			case t.Err != nil:
				why = fmt.Sprintf("no answer to the latest ping: %v", t.Err)
			case now.Sub(t.LastOK) > 2*every:
				why = fmt.Sprintf("last answer %s ago, interval %s", roundAge(now.Sub(t.LastOK)), every)
			default:
				continue
			}
			r.Ready = false
			r.Reasons = append(r.Reasons, fmt.Sprintf("check alive %s: %s", t.Addr, why))
		}
		return r
	}

	r := readiness{Ready: true, Basis: "handshakes"}
	maxAge := o.c.HandshakeMaxAge
	peers := o.c.Peers()
	o.mu.Lock()
	defer o.mu.Unlock()
	current := make(map[protocol.PublicKey]bool, len(peers))
	for _, p := range peers {
		current[p.PublicKey] = true
		a, seen := o.activity[p.PublicKey]
		if !seen || a.rx != p.RxBytes || a.tx != p.TxBytes || a.attempts != p.HandshakeAttempts {
			moved := a.moved
			if seen || p.RxBytes != 0 || p.TxBytes != 0 || p.HandshakeAttempts != 0 {
				moved = now
			}
			a = peerActivity{rx: p.RxBytes, tx: p.TxBytes, attempts: p.HandshakeAttempts, moved: moved}
			o.activity[p.PublicKey] = a
		}
		if a.moved.IsZero() || now.Sub(a.moved) > maxAge {
			continue // no traffic
		}
		switch {
		case p.LastHandshake.IsZero():
			r.Reasons = append(r.Reasons, fmt.Sprintf("peer %s: traffic but no handshake yet", p.PublicKey))
		case now.Sub(p.LastHandshake) > maxAge:
			r.Reasons = append(r.Reasons, fmt.Sprintf("peer %s: traffic but last handshake %s ago, more than %s",
				p.PublicKey, roundAge(now.Sub(p.LastHandshake)), maxAge))
		}
	}
	// A removed peer's history must not come back with it.
	for k := range o.activity {
		if !current[k] {
			delete(o.activity, k)
		}
	}
	r.Ready = len(r.Reasons) == 0
	return r
}

func roundAge(d time.Duration) time.Duration { return d.Round(time.Second / 10) }

func (o *observer) serveReadyz(w http.ResponseWriter, _ *http.Request) {
	r := o.ready()
	body, err := json.Marshal(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if !r.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	w.Write(append(body, '\n'))
}

// exposition writes the Prometheus text format, version 0.0.4.
type exposition struct{ bytes.Buffer }

const expositionContentType = "text/plain; version=0.0.4; charset=utf-8"

// family starts a metric family; its samples must follow before the
// next family starts.
func (x *exposition) family(name, typ, help string) {
	fmt.Fprintf(x, "# HELP %s %s\n# TYPE %s %s\n", name, escapeHelp(help), name, typ)
}

// sample writes one sample; labels alternate names and values.
func (x *exposition) sample(name, value string, labels ...string) {
	x.key(name, labels...)
	x.WriteString(value)
	x.WriteByte('\n')
}

// key writes a sample's name and labels, up to its value.
func (x *exposition) key(name string, labels ...string) {
	x.WriteString(name)
	if len(labels) > 0 {
		x.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				x.WriteByte(',')
			}
			x.WriteString(labels[i])
			x.WriteString(`="`)
			x.WriteString(escapeLabel(labels[i+1]))
			x.WriteByte('"')
		}
		x.WriteByte('}')
	}
	x.WriteByte(' ')
}

func (x *exposition) uint(name string, v uint64, labels ...string) {
	x.key(name, labels...)
	x.Write(strconv.AppendUint(x.AvailableBuffer(), v, 10))
	x.WriteByte('\n')
}

func (x *exposition) float(name string, v float64, labels ...string) {
	x.sample(name, strconv.FormatFloat(v, 'g', -1, 64), labels...)
}

var (
	labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

func escapeLabel(s string) string { return labelEscaper.Replace(s) }
func escapeHelp(s string) string  { return helpEscaper.Replace(s) }

func (o *observer) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	x := o.scrape()
	w.Header().Set("Content-Type", expositionContentType)
	w.Header().Set("Cache-Control", "no-store")
	w.Write(x.Bytes())
}

// scrape renders every family into a buffer sized from the scrape
// before: a server with thousands of peers writes megabytes, and growing
// to them step by step allocated and cleared several times as much.
func (o *observer) scrape() *exposition {
	x := new(exposition)
	x.Grow(int(o.lastScrape.Load()) * 9 / 8)
	o.writeMetrics(x)
	o.lastScrape.Store(int64(x.Len()))
	return x
}

// writeFlows renders server mode's flows per peer, for every configured
// peer, zeros included, as the other per-peer families are.
func (o *observer) writeFlows(x *exposition, peers []protocol.PeerStatus, keys []string) {
	if o.c.Flows == nil {
		return
	}
	flows := o.c.Flows()
	if flows == nil {
		return
	}
	x.family("wgbore_peer_flows", "gauge", "TCP and UDP flows the peer has open through serve's egress.")
	for i, p := range peers {
		x.uint("wgbore_peer_flows", uint64(flows[p.PublicKey].Open), "peer", keys[i])
	}
	x.family("wgbore_peer_flows_refused_total", "counter", "New flows from the peer refused by a cap: peer_limit (MaxFlowsPerPeer), server_limit (MaxFlows, all peers together) or memory (the memory budget).")
	for i, p := range peers {
		c := flows[p.PublicKey]
		k := keys[i]
		x.uint("wgbore_peer_flows_refused_total", c.RefusedPeerCap, "peer", k, "reason", "peer_limit")
		x.uint("wgbore_peer_flows_refused_total", c.RefusedGlobalCap, "peer", k, "reason", "server_limit")
		x.uint("wgbore_peer_flows_refused_total", c.RefusedMemory, "peer", k, "reason", "memory")
	}
}

// writeMetrics renders every family. Peers are labelled by public key,
// which is public by definition; nothing else about a key is read.
func (o *observer) writeMetrics(x *exposition) {
	peers := o.c.Peers()
	// The engine keeps peers in a map; a fixed order keeps scrapes
	// comparable by eye and by diff.
	slices.SortFunc(peers, func(a, b protocol.PeerStatus) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) })
	x.family("wgbore_peers", "gauge", "Peers configured.")
	x.uint("wgbore_peers", uint64(len(peers)))

	// Each peer's label, encoded once for all its samples.
	keys := make([]string, len(peers))
	for i, p := range peers {
		keys[i] = p.PublicKey.String()
	}
	perPeer := []struct {
		name, typ, help string
		value           func(p *protocol.PeerStatus) uint64 // nil: the last handshake's time
	}{
		{"wgbore_peer_receive_bytes_total", "counter", "Bytes received from the peer, WireGuard overhead included.",
			func(p *protocol.PeerStatus) uint64 { return p.RxBytes }},
		{"wgbore_peer_transmit_bytes_total", "counter", "Bytes sent to the peer, WireGuard overhead included.",
			func(p *protocol.PeerStatus) uint64 { return p.TxBytes }},
		{"wgbore_peer_last_handshake_seconds", "gauge", "Unix time of the latest completed handshake; 0 if none.", nil},
		{"wgbore_peer_handshake_attempts_total", "counter", "Handshake initiations sent, retries included.",
			func(p *protocol.PeerStatus) uint64 { return p.HandshakeAttempts }},
		{"wgbore_peer_handshakes_total", "counter", "Handshakes completed.",
			func(p *protocol.PeerStatus) uint64 { return p.HandshakesCompleted }},
		{"wgbore_peer_handshake_failures_total", "counter", "Handshakes given up after RekeyAttemptTime without an answer.",
			func(p *protocol.PeerStatus) uint64 { return p.HandshakeTimeouts }},
		{"wgbore_peer_endpoint_changes_total", "counter", "Times the peer's endpoint changed (roaming or a new DNS answer).",
			func(p *protocol.PeerStatus) uint64 { return p.EndpointChanges }},
		{"wgbore_peer_returns_total", "counter", "Times the peer was heard again after a silence of a second or more (an outage, in practice).",
			func(p *protocol.PeerStatus) uint64 { return p.Returns }},
	}
	for _, m := range perPeer {
		x.family(m.name, m.typ, m.help)
		for i := range peers {
			if m.value == nil {
				x.sample(m.name, unixSeconds(peers[i].LastHandshake), "peer", keys[i])
				continue
			}
			x.uint(m.name, m.value(&peers[i]), "peer", keys[i])
		}
	}

	o.writeFlows(x, peers, keys)

	st := o.c.Stats()
	x.family("wgbore_dropped_packets_total", "counter", "Packets the engine discarded, by reason.")
	// Every reason is written, zeros too, so a rate over a reason that
	// has not happened yet is 0 rather than absent. The count of reasons
	// is not exported; String names every valid one and "unknown" past
	// the last.
	for r := protocol.DropReason(0); r.String() != "unknown"; r++ {
		x.uint("wgbore_dropped_packets_total", st.Dropped(r), "reason", r.String())
	}
	x.family("wgbore_cookie_replies_sent_total", "counter", "Cookie replies sent to handshakes while under load.")
	x.uint("wgbore_cookie_replies_sent_total", st.CookieRepliesSent)
	if o.c.ResentAcks != nil {
		x.family("wgbore_tcp_acks_resent_total", "counter", "TCP acknowledgements re-sent when a peer returned after a silence, so that senders waiting out a timeout resume at once.")
		x.uint("wgbore_tcp_acks_resent_total", o.c.ResentAcks())
	}

	x.family("wgbore_memory_budget_bytes", "gauge", "The process's memory budget (-memory-limit, MemoryLimit or the container's limit); 0 when there is none.")
	x.uint("wgbore_memory_budget_bytes", uint64(o.c.Budget.Limit()))
	x.family("wgbore_memory_refused_connections_total", "counter", "New connections and flows turned away because the memory budget was nearly spent.")
	x.uint("wgbore_memory_refused_connections_total", o.c.Budget.Refused())
	if o.c.Budget != nil {
		x.family("wgbore_memory_in_use_bytes", "gauge", "Memory the budget counts as in use: the binary's resident pages and what the Go runtime holds and has not freed.")
		x.uint("wgbore_memory_in_use_bytes", uint64(o.c.Budget.InUse()))
	}

	var listeners []listenerStat
	if o.c.Listeners != nil {
		listeners = o.c.Listeners()
	}
	x.family("wgbore_listener_connections_active", "gauge", "Client connections (UDP: sessions) open now, by front end.")
	for _, l := range listeners {
		x.uint("wgbore_listener_connections_active", l.Active, "kind", l.Kind, "addr", l.Addr)
	}
	x.family("wgbore_listener_connections_total", "counter", "Client connections (UDP: sessions) accepted since start, by front end.")
	for _, l := range listeners {
		x.uint("wgbore_listener_connections_total", l.Total, "kind", l.Kind, "addr", l.Addr)
	}
	x.family("wgbore_listener_connections_refused_total", "counter", "Client connections turned away because the front end was at its MaxConnections.")
	for _, l := range listeners {
		x.uint("wgbore_listener_connections_refused_total", l.Refused, "kind", l.Kind, "addr", l.Addr)
	}

	if _, targets := o.c.Alive.snapshot(); len(targets) > 0 {
		x.family("wgbore_check_alive_up", "gauge", "1 if the CheckAlive target answered its latest ping, else 0.")
		for _, t := range targets {
			up := uint64(0)
			if t.Pinged && t.Err == nil {
				up = 1
			}
			x.uint("wgbore_check_alive_up", up, "addr", t.Addr.String())
		}
		x.family("wgbore_check_alive_rtt_seconds", "gauge", "Round-trip time of the latest answered ping; 0 when it went unanswered.")
		for _, t := range targets {
			x.float("wgbore_check_alive_rtt_seconds", t.RTT.Seconds(), "addr", t.Addr.String())
		}
	}

	writeRuntimeMetrics(x)
}

func unixSeconds(t time.Time) string {
	if t.IsZero() {
		return "0"
	}
	return strconv.FormatFloat(float64(t.UnixNano())/1e9, 'f', 3, 64)
}

// runtimeSamples are read through runtime/metrics, which does not stop
// the world as runtime.ReadMemStats does.
var runtimeSamples = []struct {
	key, name, typ, help string
}{
	{"/memory/classes/heap/objects:bytes", "go_memstats_heap_alloc_bytes", "gauge", "Bytes of allocated heap objects."},
	{"/memory/classes/total:bytes", "go_memstats_sys_bytes", "gauge", "Bytes of memory obtained from the OS."},
	{"/memory/classes/heap/stacks:bytes", "go_memstats_stack_inuse_bytes", "gauge", "Bytes of goroutine stacks in use."},
	{"/gc/cycles/total:gc-cycles", "go_gc_cycles_total", "counter", "Completed GC cycles."},
}

// writeRuntimeMetrics writes the Go runtime's and the process's
// families under the names the official client uses, so existing
// dashboards work. The process ones come from /proc and are left out
// where there is none.
func writeRuntimeMetrics(x *exposition) {
	x.family("go_info", "gauge", "Information about the Go environment.")
	x.uint("go_info", 1, "version", runtime.Version())
	x.family("go_goroutines", "gauge", "Number of goroutines that currently exist.")
	x.uint("go_goroutines", uint64(runtime.NumGoroutine()))

	samples := make([]metrics.Sample, len(runtimeSamples))
	for i, s := range runtimeSamples {
		samples[i].Name = s.key
	}
	metrics.Read(samples)
	for i, s := range runtimeSamples {
		if samples[i].Value.Kind() != metrics.KindUint64 {
			continue // unknown to this Go release
		}
		x.family(s.name, s.typ, s.help)
		x.uint(s.name, samples[i].Value.Uint64())
	}

	if rss, ok := membudget.Resident(); ok {
		x.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
		x.uint("process_resident_memory_bytes", uint64(rss))
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		x.family("process_open_fds", "gauge", "Number of open file descriptors.")
		x.uint("process_open_fds", uint64(len(fds)))
	}
	if cpu, ok := procCPUSeconds(); ok {
		x.family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.")
		x.float("process_cpu_seconds_total", cpu)
	}
}

// procCPUSeconds reads utime and stime from /proc/self/stat. They are in
// USER_HZ ticks, which Linux fixes at 100 for user space whatever the
// kernel's own HZ (the official client assumes the same); reading /proc
// rather than getrusage keeps this file free of platform build tags.
func procCPUSeconds() (float64, bool) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, false
	}
	// The command name, field 2, is in parentheses and may hold spaces;
	// the fields after its closing parenthesis start at field 3.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	const utime, stime = 14 - 3, 15 - 3
	if len(f) <= stime {
		return 0, false
	}
	u, err1 := strconv.ParseUint(f[utime], 10, 64)
	s, err2 := strconv.ParseUint(f[stime], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return float64(u+s) / 100, true
}
