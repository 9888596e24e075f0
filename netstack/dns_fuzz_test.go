package netstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsFuzzName is the name every fuzzed answer answers. It has a "k", so
// a Unicode case fold (the Kelvin sign, U+212A) can be tried against it.
const dnsFuzzName = "k8s.tunnel.test."

// dnsFuzzID is the ID of the question matchResponse is given directly.
const dnsFuzzID = 0x5a5a

// dnsWireName reads the name at b[off:] as its labels, without
// dnsmessage, so the fuzz target judges matchResponse by the wire and
// not by the parser it uses. It follows up to 10 compression pointers,
// as dnsmessage does; end is where the name's bytes at off end. ok is
// false for a name that runs past b.
func dnsWireName(b []byte, off int) (labels [][]byte, end int, ok bool) {
	end = -1
	for ptrs := 0; ; {
		if off >= len(b) {
			return nil, 0, false
		}
		n := int(b[off])
		switch {
		case n == 0:
			if end < 0 {
				end = off + 1
			}
			return labels, end, true
		case n&0xc0 == 0xc0:
			if off+1 >= len(b) || ptrs == 10 {
				return nil, 0, false
			}
			if end < 0 {
				end = off + 2
			}
			ptrs++
			off = int(binary.BigEndian.Uint16(b[off:]) & 0x3fff)
		case n > 63 || off+1+n > len(b):
			return nil, 0, false
		default:
			labels = append(labels, b[off+1:off+1+n])
			off += 1 + n
		}
	}
}

// dnsLabelsAre reports whether labels spell name label for label, with
// ASCII letters in either case (RFC 4343) and no other folding.
func dnsLabelsAre(labels [][]byte, name string) bool {
	want := strings.Split(strings.TrimSuffix(name, "."), ".")
	if len(labels) != len(want) {
		return false
	}
	for i, l := range labels {
		if len(l) != len(want[i]) {
			return false
		}
		for j := range l {
			if asciiLower(l[j]) != asciiLower(want[i][j]) {
				return false
			}
		}
	}
	return true
}

func asciiLowerString(s string) string {
	b := []byte(s)
	for i, c := range b {
		b[i] = asciiLower(c)
	}
	return string(b)
}

func asciiLower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// answersQuestion reports whether resp, on the wire, is a response with
// id whose first question is q.
func answersQuestion(resp []byte, id uint16, q dnsmessage.Question) bool {
	if len(resp) < 12 || binary.BigEndian.Uint16(resp) != id || resp[2]&0x80 == 0 || binary.BigEndian.Uint16(resp[4:]) == 0 {
		return false
	}
	labels, end, ok := dnsWireName(resp, 12)
	if !ok || end+4 > len(resp) || !dnsLabelsAre(labels, q.Name.String()) {
		return false
	}
	return dnsmessage.Type(binary.BigEndian.Uint16(resp[end:])) == q.Type &&
		dnsmessage.Class(binary.BigEndian.Uint16(resp[end+2:])) == q.Class
}

// fuzzDNSTunnel is a tunnelDialer whose DNS server answers any query
// with answer at once, over UDP as it is and over TCP behind its length.
// When matchID is set, the answer's ID is made the query's, as a server
// answering this query would, so the fuzzer gets past the ID check.
type fuzzDNSTunnel struct {
	answer  []byte
	matchID bool

	mu      sync.Mutex
	queries []string // the networks asked, in order
}

func (d *fuzzDNSTunnel) dialAddr(_ context.Context, network string, _ netip.AddrPort) (net.Conn, error) {
	d.mu.Lock()
	d.queries = append(d.queries, network)
	d.mu.Unlock()
	return &fuzzDNSConn{d: d, network: network}, nil
}

func (d *fuzzDNSTunnel) contextError(ctx context.Context, _ netip.Addr) error { return ctx.Err() }

// fuzzDNSConn answers the query written to it with one read of the
// answer, then ends its stream: a resolver that waits on it for more
// gets io.EOF instead of a hang.
type fuzzDNSConn struct {
	net.Conn // nil: only what the resolver calls is implemented
	d        *fuzzDNSTunnel
	network  string
	reply    *bytes.Reader
}

func (c *fuzzDNSConn) Write(b []byte) (int, error) {
	reply := bytes.Clone(c.d.answer)
	query := b
	if c.network == "tcp" {
		query = b[2:]
		reply = binary.BigEndian.AppendUint16(nil, uint16(len(c.d.answer)))
		reply = append(reply, c.d.answer...)
	}
	if c.d.matchID && len(c.d.answer) >= 2 {
		off := len(reply) - len(c.d.answer)
		copy(reply[off:], query[:2])
	}
	c.reply = bytes.NewReader(reply)
	return len(b), nil
}

func (c *fuzzDNSConn) Read(b []byte) (int, error) {
	if c.reply == nil {
		return 0, io.EOF
	}
	if c.network == "udp" {
		// One datagram, then nothing.
		n, _ := c.reply.Read(b)
		c.reply = nil
		if n == 0 {
			return 0, io.EOF
		}
		return n, nil
	}
	return c.reply.Read(b)
}

func (c *fuzzDNSConn) Close() error                { return nil }
func (c *fuzzDNSConn) SetDeadline(time.Time) error { return nil }

// FuzzDNSAnswer feeds arbitrary bytes as the tunnel DNS server's answer
// to the resolver: to matchResponse directly, then through exchange,
// which asks over UDP and again over TCP for a truncated answer. Nothing
// may panic; an answer whose ID, question name, type or class is not the
// query's must be rejected; and the addresses taken from an accepted one
// must be records of it, of the type asked for.
func FuzzDNSAnswer(f *testing.F) {
	for _, seed := range dnsFuzzSeeds(f) {
		f.Add(seed.answer, seed.matchID, seed.aaaa)
	}
	f.Fuzz(func(t *testing.T, answer []byte, matchID, aaaa bool) {
		q := dnsmessage.Question{Name: dnsmessage.MustNewName(dnsFuzzName), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}
		if aaaa {
			q.Type = dnsmessage.TypeAAAA
		}
		resp := answer
		if matchID && len(answer) >= 2 {
			resp = binary.BigEndian.AppendUint16(nil, dnsFuzzID)
			resp = append(resp, answer[2:]...)
		}
		msg, ok := matchResponse(resp, dnsFuzzID, q)
		ours := answersQuestion(resp, dnsFuzzID, q)
		if ok && !ours {
			t.Fatalf("matchResponse took %x, which does not answer %v with ID %#x", resp, q, dnsFuzzID)
		}
		if !ok {
			// An answer to our question is only refused when it does
			// not parse; a truncated one need only parse up to its
			// question.
			var m dnsmessage.Message
			if ours && (resp[2]&0x02 != 0 || m.Unpack(resp) == nil) {
				t.Fatalf("matchResponse refused %x, which answers %v", resp, q)
			}
			return
		}
		checkAnswers(t, resp, msg, q)
		if !matchID || len(answer) > 0xffff {
			// exchange picks its own ID, which only a patched answer
			// carries; and a TCP answer's length must fit its prefix.
			return
		}

		// The same answer to a real query, which exchange must take as
		// matchResponse did.
		d := &fuzzDNSTunnel{answer: answer, matchID: matchID}
		r := newResolver([]netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil, d)
		got, err := r.exchange(context.Background(), r.servers[0], q)
		if err != nil {
			t.Fatalf("exchange refused %x, which matchResponse took: %v", resp, err)
		}
		if got.Truncated != msg.Truncated {
			t.Fatalf("exchange: truncated %v, matchResponse: %v", got.Truncated, msg.Truncated)
		}
		wantQueries := "udp"
		if msg.Truncated {
			wantQueries = "udp tcp"
		}
		if asked := strings.Join(d.queries, " "); asked != wantQueries {
			t.Fatalf("answer %x: asked over %q, want %q", resp, asked, wantQueries)
		}
	})
}

// checkAnswers checks what answers takes out of msg, an accepted
// response: only addresses of q's type, each one held by a record in
// the answer section.
func checkAnswers(t *testing.T, resp []byte, msg *dnsmessage.Message, q dnsmessage.Question) {
	t.Helper()
	addrs := answers(msg, q)
	if len(addrs) > len(msg.Answers) {
		t.Fatalf("%x: %d addresses from %d records", resp, len(addrs), len(msg.Answers))
	}
	// An address may come from a record of q's name, or of a name an
	// alias in the answer points to; names match in ASCII case only.
	owners := map[string]bool{asciiLowerString(q.Name.String()): true}
	for _, rr := range msg.Answers {
		if c, ok := rr.Body.(*dnsmessage.CNAMEResource); ok {
			owners[asciiLowerString(c.CNAME.String())] = true
		}
	}
	for _, a := range addrs {
		found := false
		for _, rr := range msg.Answers {
			if !owners[asciiLowerString(rr.Header.Name.String())] {
				continue
			}
			switch b := rr.Body.(type) {
			case *dnsmessage.AResource:
				found = found || q.Type == dnsmessage.TypeA && netip.AddrFrom4(b.A) == a
			case *dnsmessage.AAAAResource:
				found = found || q.Type == dnsmessage.TypeAAAA && netip.AddrFrom16(b.AAAA) == a
			}
		}
		if !found {
			t.Fatalf("%x: address %v for a %v question is in no such record", resp, a, q.Type)
		}
	}
}

type dnsFuzzSeed struct {
	answer        []byte
	matchID, aaaa bool
}

// dnsFuzzSeeds are answers a real server gives, and a few it should not.
func dnsFuzzSeeds(t testing.TB) []dnsFuzzSeed {
	t.Helper()
	build := func(h dnsmessage.Header, qname string, qtype dnsmessage.Type, add func(*dnsmessage.Builder)) []byte {
		h.Response = true
		b := dnsmessage.NewBuilder(nil, h)
		b.EnableCompression()
		b.StartQuestions()
		b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(qname), Type: qtype, Class: dnsmessage.ClassINET})
		b.StartAnswers()
		if add != nil {
			add(&b)
		}
		out, err := b.Finish()
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	rr := func(name string, typ dnsmessage.Type) dnsmessage.ResourceHeader {
		return dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET, TTL: 60}
	}
	a := func(b *dnsmessage.Builder) {
		b.AResource(rr(dnsFuzzName, dnsmessage.TypeA), dnsmessage.AResource{A: [4]byte{10, 0, 0, 2}})
	}
	cname := func(b *dnsmessage.Builder) {
		b.CNAMEResource(rr(dnsFuzzName, dnsmessage.TypeCNAME), dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName("web.tunnel.test.")})
		b.AAAAResource(rr("web.tunnel.test.", dnsmessage.TypeAAAA), dnsmessage.AAAAResource{AAAA: netip.MustParseAddr("fd00::2").As16()})
		b.AResource(rr("web.tunnel.test.", dnsmessage.TypeA), dnsmessage.AResource{A: [4]byte{10, 0, 0, 3}})
		b.AResource(rr("other.test.", dnsmessage.TypeA), dnsmessage.AResource{A: [4]byte{10, 6, 6, 6}})
	}
	ok := build(dnsmessage.Header{}, dnsFuzzName, dnsmessage.TypeA, a)
	// The question name as one label holding dots: it reads as the
	// name asked for, and is not it.
	oneLabel := append([]byte{0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, byte(len(dnsFuzzName) - 1)}, dnsFuzzName[:len(dnsFuzzName)-1]...)
	oneLabel = append(oneLabel, 0, 0, 1, 0, 1)
	return []dnsFuzzSeed{
		{ok, true, false},
		{build(dnsmessage.Header{}, "K8S.Tunnel.TEST.", dnsmessage.TypeA, a), true, false},
		{build(dnsmessage.Header{}, dnsFuzzName, dnsmessage.TypeAAAA, cname), true, true},
		{build(dnsmessage.Header{}, dnsFuzzName, dnsmessage.TypeA, cname), true, false},
		{build(dnsmessage.Header{Truncated: true}, dnsFuzzName, dnsmessage.TypeA, a), true, false},
		{build(dnsmessage.Header{RCode: dnsmessage.RCodeNameError}, dnsFuzzName, dnsmessage.TypeA, nil), true, false},
		// Not ours: another ID, another name, another type.
		{ok, false, false},
		{build(dnsmessage.Header{}, "other.tunnel.test.", dnsmessage.TypeA, a), true, false},
		{ok, true, true},
		{oneLabel, true, false},
		// A Kelvin sign for the "k": the same name to Unicode folding,
		// another to DNS, in the question and as a record's owner.
		{build(dnsmessage.Header{}, "\u212a8s.tunnel.test.", dnsmessage.TypeA, a), true, false},
		{build(dnsmessage.Header{}, dnsFuzzName, dnsmessage.TypeA, func(b *dnsmessage.Builder) {
			b.AResource(rr("\u212a8s.tunnel.test.", dnsmessage.TypeA), dnsmessage.AResource{A: [4]byte{10, 6, 6, 6}})
		}), true, false},
	}
}
