package protocol

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// aipPeers returns n distinct owners. The table only compares pointers, so
// zero-value peers are enough and keep these tests free of engines.
func aipPeers(n int) []*Peer {
	ps := make([]*Peer, n)
	for i := range ps {
		ps[i] = &Peer{}
	}
	return ps
}

func aipPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// aipExpect checks lookups against a table of address -> expected owner
// index (-1 for none).
func aipExpect(t *testing.T, tbl *allowedIPs, peers []*Peer, want map[string]int) {
	t.Helper()
	name := func(p *Peer) string {
		if p == nil {
			return "nil"
		}
		if i := slices.Index(peers, p); i >= 0 {
			return fmt.Sprintf("peer %d", i)
		}
		return "stranger"
	}
	for addr, idx := range want {
		var w *Peer
		if idx >= 0 {
			w = peers[idx]
		}
		if got := tbl.lookup(netip.MustParseAddr(addr)); got != w {
			t.Errorf("lookup(%s) = %s, want %s", addr, name(got), name(w))
		}
	}
}

// TestAllowedIPsLongestMatchV4 uses nested prefixes owned by different
// peers, from /0 to /32, so that every lookup must pick the longest.
func TestAllowedIPsLongestMatchV4(t *testing.T) {
	p := aipPeers(5)
	var tbl *allowedIPs
	tbl = tbl.with(p[0], aipPrefixes("0.0.0.0/0"))
	tbl = tbl.with(p[1], aipPrefixes("10.0.0.0/8", "192.168.1.0/24"))
	tbl = tbl.with(p[2], aipPrefixes("10.1.0.0/16"))
	tbl = tbl.with(p[3], aipPrefixes("10.1.2.3/32", "10.1.2.128/25"))
	tbl = tbl.with(p[4], aipPrefixes("10.1.2.0/24"))
	aipExpect(t, tbl, p, map[string]int{
		"8.8.8.8":         0,
		"0.0.0.0":         0,
		"255.255.255.255": 0,
		"10.0.0.1":        1,
		"10.255.255.255":  1,
		"10.1.0.0":        2,
		"10.1.255.1":      2,
		"10.1.2.3":        3,
		"10.1.2.4":        4,
		"10.1.2.127":      4,
		"10.1.2.128":      3,
		"10.1.2.255":      3,
		"10.1.3.0":        2,
		"192.168.1.77":    1,
		"192.168.2.77":    0,
		// An IPv4 default route says nothing about IPv6.
		"::1":             -1,
		"2001:db8::1":     -1,
		"::ffff:10.1.2.3": -1,
	})
}

func TestAllowedIPsLongestMatchV6(t *testing.T) {
	p := aipPeers(5)
	var tbl *allowedIPs
	tbl = tbl.with(p[0], aipPrefixes("::/0"))
	tbl = tbl.with(p[1], aipPrefixes("2001:db8::/32"))
	tbl = tbl.with(p[2], aipPrefixes("2001:db8:1::/48", "fd00::/8"))
	tbl = tbl.with(p[3], aipPrefixes("2001:db8:1:2::/64"))
	tbl = tbl.with(p[4], aipPrefixes("2001:db8:1:2::1/128", "fd00:1::/127"))
	aipExpect(t, tbl, p, map[string]int{
		"2606:4700::1":     0,
		"::":               0,
		"2001:db8::5":      1,
		"2001:db8:ffff::1": 1,
		"2001:db8:1::1":    2,
		"2001:db8:1:3::1":  2,
		"2001:db8:1:2::2":  3,
		"2001:db8:1:2::1":  4,
		"2001:db8:1:2::":   3,
		"fd00:1::":         4,
		"fd00:1::1":        4,
		"fd00:1::2":        2,
		"fdff::1":          2,
		"fe80::1":          0,
		"fe80::1%eth0":     0, // zones play no part in routing
		"10.0.0.1":         -1,
	})
}

// TestAllowedIPsEmpty covers the nil and empty tables the engine starts
// with.
func TestAllowedIPsEmpty(t *testing.T) {
	var nilTable *allowedIPs
	if nilTable.lookup(netip.MustParseAddr("10.0.0.1")) != nil {
		t.Fatalf("nil table found a peer")
	}
	if nilTable.prefixesOf(&Peer{}) != nil {
		t.Fatalf("nil table lists prefixes")
	}
	empty := buildAllowedIPs(map[netip.Prefix]*Peer{})
	for _, a := range []string{"0.0.0.0", "10.0.0.1", "::", "2001:db8::1"} {
		if empty.lookup(netip.MustParseAddr(a)) != nil {
			t.Fatalf("empty table found a peer for %s", a)
		}
	}
	if empty.lookup(netip.Addr{}) != nil {
		t.Fatalf("empty table found a peer for the zero address")
	}
	p := aipPeers(1)
	tbl := empty.with(p[0], aipPrefixes("0.0.0.0/0", "::/0"))
	if tbl.lookup(netip.Addr{}) != nil {
		t.Fatalf("the zero address matched a default route")
	}
}

// TestAllowedIPsReassign checks `wg set ... allowed-ips` semantics: giving
// a prefix to another peer takes it from its old owner, and with() replaces
// a peer's whole list rather than adding to it. Old tables are untouched,
// since readers may still hold them.
func TestAllowedIPsReassign(t *testing.T) {
	p := aipPeers(3)
	var t0 *allowedIPs
	t1 := t0.with(p[0], aipPrefixes("10.0.0.0/24", "10.0.1.0/24"))
	t2 := t1.with(p[1], aipPrefixes("10.0.1.0/24", "10.0.2.0/24"))
	aipExpect(t, t2, p, map[string]int{"10.0.0.1": 0, "10.0.1.1": 1, "10.0.2.1": 1})
	if got, want := t2.prefixesOf(p[0]), aipPrefixes("10.0.0.0/24"); !slices.Equal(got, want) {
		t.Fatalf("peer 0 after losing a prefix: %v, want %v", got, want)
	}
	// Old table unchanged.
	aipExpect(t, t1, p, map[string]int{"10.0.0.1": 0, "10.0.1.1": 0, "10.0.2.1": -1})

	// Replacing peer 1's list drops what is not in the new one.
	t3 := t2.with(p[1], aipPrefixes("10.0.3.0/24"))
	aipExpect(t, t3, p, map[string]int{"10.0.0.1": 0, "10.0.1.1": -1, "10.0.2.1": -1, "10.0.3.1": 1})

	// without() removes every prefix of one peer and nothing else.
	t4 := t3.with(p[2], aipPrefixes("0.0.0.0/0", "::/0")).without(p[1])
	aipExpect(t, t4, p, map[string]int{"10.0.0.1": 0, "10.0.3.1": 2, "2001:db8::1": 2})
	if got := t4.prefixesOf(p[1]); len(got) != 0 {
		t.Fatalf("removed peer still has %v", got)
	}
	t5 := t4.without(p[2])
	aipExpect(t, t5, p, map[string]int{"10.0.0.1": 0, "10.0.3.1": -1, "2001:db8::1": -1})
	// Removing a peer that owns nothing is harmless.
	t6 := t5.without(&Peer{})
	aipExpect(t, t6, p, map[string]int{"10.0.0.1": 0})
}

// TestAllowedIPsCanonical checks that host bits are masked, zones dropped
// and 4in6 prefixes turned into IPv4 ones, so that equivalent spellings
// are one entry (as the kernel treats them) and reassigning one spelling
// moves the other.
func TestAllowedIPsCanonical(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"10.0.0.1/24", "10.0.0.0/24"},
		{"10.0.0.255/24", "10.0.0.0/24"},
		{"10.1.2.3/32", "10.1.2.3/32"},
		{"10.1.2.3/0", "0.0.0.0/0"},
		{"2001:db8::1/64", "2001:db8::/64"},
		{"2001:db8:0:0:ffff::1/48", "2001:db8::/48"},
		{"::ffff:10.1.2.3/104", "10.0.0.0/8"},
		{"::ffff:10.1.2.3/128", "10.1.2.3/32"},
		{"::ffff:0.0.0.0/96", "0.0.0.0/0"},
		{"::ffff:10.1.2.3/120", "10.1.2.0/24"},
		// Shorter than /96 the prefix covers more than IPv4-mapped
		// space and stays IPv6.
		{"::ffff:0.0.0.0/95", "::fffe:0:0/95"},
	} {
		got := canonicalPrefix(netip.MustParsePrefix(tc.in))
		if got != netip.MustParsePrefix(tc.want) {
			t.Errorf("canonicalPrefix(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
	zoned := netip.PrefixFrom(netip.MustParseAddr("fe80::1%eth0"), 64)
	if got := canonicalPrefix(zoned); got != netip.MustParsePrefix("fe80::/64") {
		t.Errorf("canonicalPrefix(zoned) = %s, want fe80::/64", got)
	}

	p := aipPeers(2)
	var tbl *allowedIPs
	tbl = tbl.with(p[0], aipPrefixes("10.0.0.1/24", "::ffff:192.168.0.0/112"))
	if got, want := tbl.prefixesOf(p[0]), aipPrefixes("10.0.0.0/24", "192.168.0.0/16"); !slices.Equal(got, want) {
		t.Fatalf("prefixesOf = %v, want %v", got, want)
	}
	aipExpect(t, tbl, p, map[string]int{"10.0.0.200": 0, "192.168.44.1": 0, "10.0.1.1": -1})
	// The other spelling of the same prefix moves it.
	tbl = tbl.with(p[1], aipPrefixes("10.0.0.0/24", "192.168.255.255/16"))
	aipExpect(t, tbl, p, map[string]int{"10.0.0.200": 1, "192.168.44.1": 1})
	if got := tbl.prefixesOf(p[0]); len(got) != 0 {
		t.Fatalf("peer 0 kept %v after both prefixes moved", got)
	}
	// Duplicates in one list collapse.
	tbl = tbl.with(p[0], aipPrefixes("172.16.0.1/12", "172.16.0.0/12", "172.31.0.0/12"))
	if got := tbl.prefixesOf(p[0]); len(got) != 1 {
		t.Fatalf("three spellings of one prefix gave %v", got)
	}
}

// TestAllowedIPsPrefixesOfStable checks that prefixesOf is sorted
// (IPv4 before IPv6, by address, then shorter first) whatever the input
// order and map iteration order, so `wg show` output does not flicker.
func TestAllowedIPsPrefixesOfStable(t *testing.T) {
	p := aipPeers(1)
	in := aipPrefixes("2001:db8::/64", "10.0.0.0/8", "10.0.0.0/16", "::/0", "192.168.1.1/32", "0.0.0.0/0", "10.0.0.0/24", "fd00::/8")
	want := aipPrefixes("0.0.0.0/0", "10.0.0.0/8", "10.0.0.0/16", "10.0.0.0/24", "192.168.1.1/32", "::/0", "2001:db8::/64", "fd00::/8")
	r := rand.New(rand.NewPCG(3, 4))
	for range 50 {
		shuffled := slices.Clone(in)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		var tbl *allowedIPs
		tbl = tbl.with(p[0], shuffled)
		if got := tbl.prefixesOf(p[0]); !slices.Equal(got, want) {
			t.Fatalf("prefixesOf = %v, want %v", got, want)
		}
	}
}

// aipRef is the naive specification: a list of (prefix, owner) scanned
// linearly for the longest containing prefix.
type aipRef map[netip.Prefix]*Peer

func (r aipRef) with(peer *Peer, prefixes []netip.Prefix) {
	for p, o := range r {
		if o == peer {
			delete(r, p)
		}
	}
	for _, p := range prefixes {
		// Canonicalise independently of canonicalPrefix.
		a, bits := p.Addr().WithZone(""), p.Bits()
		if a.Is4In6() && bits >= 96 {
			a, bits = a.Unmap(), bits-96
		}
		r[netip.PrefixFrom(a, bits).Masked()] = peer
	}
}

func (r aipRef) lookup(a netip.Addr) *Peer {
	best, bestBits := (*Peer)(nil), -1
	for p, o := range r {
		if p.Contains(a) && p.Bits() > bestBits {
			best, bestBits = o, p.Bits()
		}
	}
	return best
}

func (r aipRef) prefixesOf(peer *Peer) []netip.Prefix {
	var out []netip.Prefix
	for p, o := range r {
		if o == peer {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out
}

// aipRandomAddr draws from a few small regions so that random prefixes
// overlap often: a uniform draw over the whole space would almost never
// nest two prefixes.
func aipRandomAddr(r *rand.Rand) netip.Addr {
	switch r.IntN(4) {
	case 0:
		return netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(8)), byte(r.Uint32())})
	case 1:
		return netip.AddrFrom4([4]byte(binaryBE32(r.Uint32())))
	case 2:
		var b [16]byte
		b[0], b[1], b[2], b[3] = 0x20, 0x01, 0x0d, 0xb8
		b[5] = byte(r.IntN(4))
		b[7] = byte(r.IntN(4))
		b[15] = byte(r.Uint32())
		return netip.AddrFrom16(b)
	default:
		var b [16]byte
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return netip.AddrFrom16(b)
	}
}

func binaryBE32(v uint32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }

func aipRandomPrefix(r *rand.Rand) netip.Prefix {
	a := aipRandomAddr(r)
	var bits int
	if a.Is4() {
		bits = []int{0, 8, 16, 20, 24, 28, 30, 32}[r.IntN(8)]
		if r.IntN(10) == 0 { // sometimes spelled as 4in6
			return netip.PrefixFrom(netip.AddrFrom16(a.As16()), bits+96)
		}
	} else {
		bits = []int{0, 16, 32, 40, 48, 56, 64, 96, 120, 128}[r.IntN(10)]
	}
	// Host bits left set on purpose: the table must mask them.
	return netip.PrefixFrom(a, bits)
}

// TestAllowedIPsAgainstReference builds tables through a random series of
// with/without calls and compares every lookup and prefix list with the
// linear-scan reference.
func TestAllowedIPsAgainstReference(t *testing.T) {
	r := rand.New(rand.NewPCG(20260101, 1))
	peers := aipPeers(12)
	ref := aipRef{}
	var tbl *allowedIPs
	hits, largest := 0, 0
	for round := range 60 {
		peer := peers[r.IntN(len(peers))]
		if r.IntN(6) == 0 {
			tbl = tbl.without(peer)
			ref.with(peer, nil)
		} else {
			n := r.IntN(100)
			var ps []netip.Prefix
			for range n {
				ps = append(ps, aipRandomPrefix(r))
			}
			tbl = tbl.with(peer, ps)
			ref.with(peer, ps)
		}
		if len(tbl.owner) != len(ref) {
			t.Fatalf("round %d: table has %d prefixes, reference %d", round, len(tbl.owner), len(ref))
		}
		largest = max(largest, len(ref))
		for range 500 {
			a := aipRandomAddr(r)
			got, want := tbl.lookup(a), ref.lookup(a)
			if got != want {
				t.Fatalf("round %d: lookup(%s) = peer %d, reference peer %d", round, a, slices.Index(peers, got), slices.Index(peers, want))
			}
			if got != nil {
				hits++
			}
		}
		for i, p := range peers {
			if got, want := tbl.prefixesOf(p), ref.prefixesOf(p); !slices.Equal(got, want) {
				t.Fatalf("round %d: prefixesOf(peer %d) = %v, reference %v", round, i, got, want)
			}
		}
	}
	if largest < 300 || hits < 5000 {
		t.Fatalf("weak test: at most %d prefixes, %d hits", largest, hits)
	}
}

// TestAllowedIPsConcurrentSwap mirrors the engine: a writer publishes new
// tables through an atomic pointer while readers look up without locks.
// Readers must always see one complete table: an address whose owner the
// writer toggles is owned by one of the two peers, never by none, and an
// address the writer never touches keeps its owner. Run with -race.
func TestAllowedIPsConcurrentSwap(t *testing.T) {
	p := aipPeers(3)
	var ptr atomic.Pointer[allowedIPs]
	var base *allowedIPs
	base = base.with(p[2], aipPrefixes("192.168.0.0/16", "fd00::/8"))
	ptr.Store(base.with(p[0], aipPrefixes("10.0.0.0/8", "2001:db8::/32")))

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			cur := ptr.Load()
			// Moving the prefix from one peer to the other in a single
			// with() keeps it owned throughout.
			owner := p[i%2]
			ptr.Store(cur.with(owner, aipPrefixes("10.0.0.0/8", "2001:db8::/32")))
		}
	}()
	toggled := []netip.Addr{netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("2001:db8::1")}
	fixed := []netip.Addr{netip.MustParseAddr("192.168.1.1"), netip.MustParseAddr("fd00::1")}
	var readers sync.WaitGroup
	errs := make(chan string, 4)
	for range 4 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for range 20000 {
				tbl := ptr.Load()
				for _, a := range toggled {
					if got := tbl.lookup(a); got != p[0] && got != p[1] {
						errs <- fmt.Sprintf("lookup(%s) = %p during swap", a, got)
						return
					}
				}
				for _, a := range fixed {
					if got := tbl.lookup(a); got != p[2] {
						errs <- fmt.Sprintf("lookup(%s) lost its owner during swap", a)
						return
					}
				}
			}
		}()
	}
	readers.Wait()
	close(stop)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// aipBenchTable is ~1000 prefixes at three lengths (/32, /24 and /16),
// the shape of a hub with many host routes and a few subnets.
func aipBenchTable() (*allowedIPs, []netip.Addr) {
	r := rand.New(rand.NewPCG(5, 6))
	peers := aipPeers(100)
	owner := map[netip.Prefix]*Peer{}
	var addrs []netip.Addr
	for len(owner) < 1000 {
		a := netip.AddrFrom4([4]byte{10, byte(r.IntN(64)), byte(r.IntN(256)), byte(r.IntN(256))})
		bits := []int{32, 24, 16}[r.IntN(3)]
		pfx, _ := a.Prefix(bits)
		owner[pfx] = peers[r.IntN(len(peers))]
		addrs = append(addrs, a)
	}
	// Misses too, which probe every length.
	for range 100 {
		addrs = append(addrs, netip.AddrFrom4([4]byte{172, 16, byte(r.IntN(256)), byte(r.IntN(256))}))
	}
	return buildAllowedIPs(owner), addrs
}

// TestAllowedIPsLookupNoAllocs enforces what the benchmark reports: the
// per-packet lookup must not allocate.
func TestAllowedIPsLookupNoAllocs(t *testing.T) {
	tbl, addrs := aipBenchTable()
	if len(tbl.v4.lengths) != 3 {
		t.Fatalf("bench table has lengths %v, want 3", tbl.v4.lengths)
	}
	i := 0
	if n := testing.AllocsPerRun(1000, func() {
		tbl.lookup(addrs[i%len(addrs)])
		i++
	}); n != 0 {
		t.Fatalf("lookup allocates %v times per call", n)
	}
}

func BenchmarkAllowedIPsLookup(b *testing.B) {
	tbl, addrs := aipBenchTable()
	b.ReportAllocs()
	i := 0
	var sink *Peer
	for b.Loop() {
		sink = tbl.lookup(addrs[i%len(addrs)])
		i++
	}
	_ = sink
}

// with and without change one peer's prefixes; the tests build tables
// with them.
func (t *allowedIPs) with(peer *Peer, prefixes []netip.Prefix) *allowedIPs {
	return t.withAll([]ownership{{peer, prefixes}})
}

func (t *allowedIPs) without(peer *Peer) *allowedIPs { return t.with(peer, nil) }
