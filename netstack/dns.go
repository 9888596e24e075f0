package netstack

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

const (
	dnsPort = 53
	// dnsQueryTimeout bounds one question to one server, as resolv.conf's
	// "timeout"; a tunnel adds a round trip, but 2 s is still generous.
	dnsQueryTimeout = 2 * time.Second
	// dnsAttempts is how many times the whole server list is tried, as
	// resolv.conf's "attempts".
	dnsAttempts = 2
	// dnsNdots is resolv.conf's "ndots": a name with fewer dots than this
	// is tried with the search domains first.
	dnsNdots = 1
	// dnsUDPSize is the EDNS(0) payload size we advertise. 1232 bytes fit
	// an IPv6 minimum MTU (DNS flag day 2020) and, more to the point here,
	// the tunnel's MTU, so answers are not fragmented inside it.
	dnsUDPSize = 1232
)

// resolver asks the tunnel's DNS servers, through the tunnel: UDP first,
// TCP when the answer comes back truncated.
type resolver struct {
	servers []netip.AddrPort
	// search holds the search domains as absolute names ("corp.").
	search   []string
	tunnel   tunnelDialer
	timeout  time.Duration
	attempts int
}

// tunnelDialer is what the resolver needs of a Net: queries go through
// its own stack, never the host's, and a timeout is explained the way a
// dial's is (a peer with no handshake is named).
type tunnelDialer interface {
	dialAddr(ctx context.Context, network string, ap netip.AddrPort) (net.Conn, error)
	contextError(ctx context.Context, dst netip.Addr) error
}

func newResolver(servers []netip.Addr, search []string, tunnel tunnelDialer) *resolver {
	r := &resolver{tunnel: tunnel, timeout: dnsQueryTimeout, attempts: dnsAttempts}
	for _, s := range servers {
		r.servers = append(r.servers, netip.AddrPortFrom(s.Unmap(), dnsPort))
	}
	for _, d := range search {
		d = strings.Trim(strings.TrimSpace(d), ".")
		if d != "" {
			r.search = append(r.search, d+".")
		}
	}
	return r
}

// LookupHost resolves host through the tunnel's DNS servers and returns
// its addresses as strings, like net.Resolver.LookupHost.
func (n *Net) LookupHost(ctx context.Context, host string) ([]string, error) {
	addrs, err := n.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a.String()
	}
	return out, nil
}

// LookupNetIP resolves host through the tunnel's DNS servers (Config.DNS)
// with A and AAAA queries, honouring Config.DNSSearch with resolv.conf's
// ndots:1 rule. network is "ip", "ip4" or "ip6". An IP literal resolves to
// itself; no name is special, not even "localhost", because the tunnel's
// servers decide. With network "ip", the addresses of the preferred IP
// version (Config.Prefer) come first. Errors are *net.DNSError.
func (n *Net) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	addrs, err := n.dns.lookup(ctx, network, host)
	if network == "ip" && len(addrs) > 1 {
		// The preferred version first, so that a caller that dials
		// them in order (a proxy) prefers it as DialContext does.
		v6First := n.preferIPv6()
		slices.SortStableFunc(addrs, func(a, b netip.Addr) int {
			return cmp.Compare(rank(a, v6First), rank(b, v6First))
		})
	}
	return addrs, err
}

// rank is 0 for an address of the preferred IP version, 1 for the other.
func rank(a netip.Addr, v6First bool) int {
	if a.Unmap().Is6() == v6First {
		return 0
	}
	return 1
}

func (r *resolver) lookup(ctx context.Context, network, host string) ([]netip.Addr, error) {
	var qtypes []dnsmessage.Type
	switch network {
	case "ip":
		qtypes = []dnsmessage.Type{dnsmessage.TypeA, dnsmessage.TypeAAAA}
	case "ip4":
		qtypes = []dnsmessage.Type{dnsmessage.TypeA}
	case "ip6":
		qtypes = []dnsmessage.Type{dnsmessage.TypeAAAA}
	default:
		return nil, &net.DNSError{Err: "unknown network " + network, Name: host}
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if !inFamily(network, a.Unmap()) {
			return nil, &net.DNSError{Err: "no suitable address", Name: host, IsNotFound: true}
		}
		return []netip.Addr{a}, nil
	}
	names := r.nameList(host)
	if len(names) == 0 {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	if len(r.servers) == 0 {
		return nil, &net.DNSError{Err: "no DNS servers configured for the tunnel", Name: host}
	}
	var lastErr *net.DNSError
	for _, name := range names {
		addrs, err := r.lookupName(ctx, name, qtypes)
		if len(addrs) > 0 {
			return addrs, nil
		}
		// A failure that is not "no such name" (a timeout, a broken
		// server) is the more useful thing to report at the end.
		if err != nil && (lastErr == nil || lastErr.IsNotFound) {
			lastErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	if lastErr != nil && !lastErr.IsNotFound {
		lastErr.Name = host
		return nil, lastErr
	}
	if err := ctx.Err(); err != nil {
		return nil, contextDNSError(err, host, "")
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// nameList is the absolute names to try for host, in order, following
// resolv.conf: a name with at least ndots dots is tried as is first, any
// other after the search domains; a name ending in a dot is only itself.
func (r *resolver) nameList(host string) []string {
	if host == "" || len(host) > 254 || strings.HasPrefix(host, ".") || strings.Contains(host, "..") {
		return nil
	}
	if strings.HasSuffix(host, ".") {
		return []string{host}
	}
	hasNdots := strings.Count(host, ".") >= dnsNdots
	var names []string
	if hasNdots {
		names = append(names, host+".")
	}
	for _, s := range r.search {
		if len(host)+1+len(s) <= 254 {
			names = append(names, host+"."+s)
		}
	}
	if !hasNdots {
		names = append(names, host+".")
	}
	return names
}

// lookupName asks for every qtype of one absolute name, concurrently.
// Addresses come back A before AAAA.
func (r *resolver) lookupName(ctx context.Context, name string, qtypes []dnsmessage.Type) ([]netip.Addr, *net.DNSError) {
	type result struct {
		addrs []netip.Addr
		err   *net.DNSError
	}
	results := make([]result, len(qtypes))
	var wg sync.WaitGroup
	for i, qt := range qtypes {
		wg.Go(func() {
			a, err := r.query(ctx, name, qt)
			results[i] = result{a, err}
		})
	}
	wg.Wait()
	var addrs []netip.Addr
	var firstErr *net.DNSError
	for _, res := range results {
		addrs = append(addrs, res.addrs...)
		if res.err != nil && (firstErr == nil || firstErr.IsNotFound) {
			firstErr = res.err
		}
	}
	return addrs, firstErr
}

// query asks the servers in turn, attempts times over, until one answers.
// A name error (NXDOMAIN) is an answer; a timeout or a server failure
// moves on to the next server.
func (r *resolver) query(ctx context.Context, name string, qtype dnsmessage.Type) ([]netip.Addr, *net.DNSError) {
	qname, err := dnsmessage.NewName(name)
	if err != nil {
		return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	q := dnsmessage.Question{Name: qname, Type: qtype, Class: dnsmessage.ClassINET}
	var lastErr *net.DNSError
	for range r.attempts {
		for _, srv := range r.servers {
			if err := ctx.Err(); err != nil {
				if lastErr != nil {
					return nil, lastErr
				}
				return nil, contextDNSError(err, name, srv.String())
			}
			msg, err := r.exchange(ctx, srv, q)
			if err != nil {
				var timeout interface{ Timeout() bool }
				isTimeout := errors.As(err, &timeout) && timeout.Timeout()
				lastErr = &net.DNSError{Err: err.Error(), Name: name, Server: srv.String(),
					IsTimeout: isTimeout, IsTemporary: true, UnwrapErr: err}
				continue
			}
			switch msg.RCode {
			case dnsmessage.RCodeSuccess:
				return answers(msg, q), nil
			case dnsmessage.RCodeNameError:
				return nil, &net.DNSError{Err: "no such host", Name: name, Server: srv.String(), IsNotFound: true}
			default:
				lastErr = &net.DNSError{Err: "server misbehaving: " + msg.RCode.String(), Name: name,
					Server: srv.String(), IsTemporary: true}
			}
		}
	}
	return nil, lastErr
}

// answers picks the addresses for q out of msg, following CNAME chains
// within the answer section.
func answers(msg *dnsmessage.Message, q dnsmessage.Question) []netip.Addr {
	owners := map[string]bool{foldDNSName(q.Name.String()): true}
	for grew := true; grew; {
		grew = false
		for _, rr := range msg.Answers {
			c, ok := rr.Body.(*dnsmessage.CNAMEResource)
			target := ""
			if ok {
				target = foldDNSName(c.CNAME.String())
			}
			if ok && owners[foldDNSName(rr.Header.Name.String())] && !owners[target] {
				owners[target] = true
				grew = true
			}
		}
	}
	var out []netip.Addr
	for _, rr := range msg.Answers {
		if rr.Header.Class != dnsmessage.ClassINET || !owners[foldDNSName(rr.Header.Name.String())] {
			continue
		}
		switch b := rr.Body.(type) {
		case *dnsmessage.AResource:
			if q.Type == dnsmessage.TypeA {
				out = append(out, netip.AddrFrom4(b.A))
			}
		case *dnsmessage.AAAAResource:
			if q.Type == dnsmessage.TypeAAAA {
				out = append(out, netip.AddrFrom16(b.AAAA))
			}
		}
	}
	return out
}

// exchange asks one server one question: over UDP, and again over TCP if
// the UDP answer was truncated. Each transport gets its own timeout.
func (r *resolver) exchange(ctx context.Context, srv netip.AddrPort, q dnsmessage.Question) (*dnsmessage.Message, error) {
	id := uint16(rand.Uint32())
	b := dnsmessage.NewBuilder(make([]byte, 2, 514), dnsmessage.Header{ID: id, RecursionDesired: true})
	b.EnableCompression()
	var opt dnsmessage.ResourceHeader
	err := errors.Join(b.StartQuestions(), b.Question(q), b.StartAdditionals(),
		opt.SetEDNS0(dnsUDPSize, dnsmessage.RCodeSuccess, false), b.OPTResource(opt, dnsmessage.OPTResource{}))
	if err != nil {
		return nil, err
	}
	// The two leading bytes are room for TCP's length prefix.
	query, err := b.Finish()
	if err != nil {
		return nil, err
	}
	binary.BigEndian.PutUint16(query, uint16(len(query)-2))

	msg, err := r.roundTrip(ctx, "udp", srv, query, id, q)
	if err != nil || !msg.Truncated {
		return msg, err
	}
	return r.roundTrip(ctx, "tcp", srv, query, id, q)
}

// roundTrip sends query (with its 2-byte length prefix, which only TCP
// sends) and waits for the matching response. Over UDP, datagrams that
// are not the answer to this question are skipped: a late answer to an
// earlier query, or a spoofing attempt, must not end the wait.
func (r *resolver) roundTrip(ctx context.Context, network string, srv netip.AddrPort, query []byte, id uint16, q dnsmessage.Question) (*dnsmessage.Message, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	c, err := r.tunnel.dialAddr(ctx, network, srv)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	// The context's end interrupts a blocked read. This rather than a
	// connection deadline, so that ctx.Err is already set when the read
	// fails and wrap can tell why.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	wrap := func(err error) error {
		if ctx.Err() != nil {
			return r.tunnel.contextError(ctx, srv.Addr())
		}
		return err
	}
	if network == "tcp" {
		if _, err := c.Write(query); err != nil {
			return nil, wrap(err)
		}
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return nil, wrap(err)
		}
		resp := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, resp); err != nil {
			return nil, wrap(err)
		}
		msg, ok := matchResponse(resp, id, q)
		if !ok {
			return nil, errors.New("malformed or mismatched DNS response over TCP")
		}
		return msg, nil
	}
	if _, err := c.Write(query[2:]); err != nil {
		return nil, wrap(err)
	}
	buf := make([]byte, 64<<10)
	for {
		m, err := c.Read(buf)
		if err != nil {
			return nil, wrap(err)
		}
		if msg, ok := matchResponse(buf[:m], id, q); ok {
			return msg, nil
		}
	}
}

// matchResponse parses resp if it answers question q with id. A truncated
// answer is only read up to its header: its records may be cut short.
func matchResponse(resp []byte, id uint16, q dnsmessage.Question) (*dnsmessage.Message, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(resp)
	if err != nil || h.ID != id || !h.Response {
		return nil, false
	}
	got, err := p.Question()
	if err != nil || got.Type != q.Type || got.Class != q.Class || foldDNSName(got.Name.String()) != foldDNSName(q.Name.String()) {
		return nil, false
	}
	if h.Truncated {
		return &dnsmessage.Message{Header: h}, true
	}
	var msg dnsmessage.Message
	if err := msg.Unpack(resp); err != nil {
		return nil, false
	}
	return &msg, true
}

// foldDNSName lowercases the ASCII letters of name and nothing else: DNS
// names match case-insensitively in ASCII only (RFC 4343). Unicode
// folding, as strings.ToLower and strings.EqualFold do, would let a
// record for "\u212a8s.example." (a Kelvin sign) pass for one about
// "k8s.example.", a name nobody asked about.
func foldDNSName(name string) string {
	b := []byte(name)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// contextDNSError reads like package net's lookup errors for a context
// that ended.
func contextDNSError(err error, name, server string) *net.DNSError {
	if errors.Is(err, context.DeadlineExceeded) {
		return &net.DNSError{Err: "i/o timeout", Name: name, Server: server, IsTimeout: true, IsTemporary: true, UnwrapErr: err}
	}
	return &net.DNSError{Err: "operation was canceled", Name: name, Server: server, UnwrapErr: err}
}
