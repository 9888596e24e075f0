package peersite

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/net/dns/dnsmessage"
)

// Domain is the zone the site's DNS server is authoritative for.
const Domain = "tunnel.test"

// bigCount is how many A records answer big.tunnel.test: more than fit in
// a 512-byte UDP answer.
const bigCount = 60

// zone maps each fully qualified, lower-case name to its A and AAAA
// addresses. Every other name is NXDOMAIN.
var zone = map[string][]netip.Addr{
	"site.tunnel.test.":   {TheirV4, TheirV6},
	"web.tunnel.test.":    {TheirV4, TheirV6},
	"v4only.tunnel.test.": {TheirV4},
	// slow6 has an IPv6 address that routes to the site (when our
	// AllowedIPs cover fd00::/64) but is not served there, so an IPv6
	// dial hangs until Happy Eyeballs falls back to IPv4.
	"slow6.tunnel.test.": {netip.MustParseAddr("fd00::99"), TheirV4},
	// gone6 has an IPv6 address no peer routes: the IPv6 dial fails at
	// once and IPv4 must start without waiting.
	"gone6.tunnel.test.": {netip.MustParseAddr("fd99::1"), TheirV4},
	// big has bigCount A records, 10.0.1.1 onwards. Over UDP its answer
	// is empty with TC set, so only a resolver that retries over TCP
	// gets them.
	"big.tunnel.test.": bigAddrs(),
}

func bigAddrs() []netip.Addr {
	var big []netip.Addr
	for i := range bigCount {
		big = append(big, netip.AddrFrom4([4]byte{10, 0, 1, byte(i + 1)}))
	}
	return big
}

// Records returns the addresses the site's DNS server holds for name, in
// the order it answers them; nil for a name it does not know. The name
// may omit the final dot and is case-insensitive.
func Records(name string) []netip.Addr {
	name = strings.ToLower(name)
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return slices.Clone(zone[name])
}

// DNS is the site's authoritative server for Domain, on TheirV4:53 over
// UDP and TCP. Its counters let a test see which transport a resolver
// used.
type DNS struct {
	UDPQueries, TCPQueries atomic.Int32

	mu    sync.Mutex
	asked []string // question names, lower case, in arrival order
}

// Asked returns the names queried so far, lower case and fully
// qualified, in arrival order.
func (d *DNS) Asked() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.asked)
}

// answerUDP answers one query datagram.
func (d *DNS) answerUDP(req []byte) []byte {
	d.UDPQueries.Add(1)
	return d.answer(req, false)
}

// answerTCP answers the length-prefixed queries on one TCP connection
// (RFC 7766), one after the other, until the client closes it.
func (d *DNS) answerTCP(c net.Conn) {
	for {
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return
		}
		req := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, req); err != nil {
			return
		}
		d.TCPQueries.Add(1)
		resp := d.answer(req, true)
		if resp == nil {
			return
		}
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(resp))), resp...)); err != nil {
			return
		}
	}
}

// answer builds the response to req, or nil for a request that is not
// one question. Over UDP, big.tunnel.test gets an empty answer with TC
// set, so only TCP can resolve it.
func (d *DNS) answer(req []byte, overTCP bool) []byte {
	var m dnsmessage.Message
	if err := m.Unpack(req); err != nil || len(m.Questions) != 1 {
		return nil
	}
	q := m.Questions[0]
	name := strings.ToLower(q.Name.String())
	d.mu.Lock()
	d.asked = append(d.asked, name)
	d.mu.Unlock()
	resp := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: m.ID, Response: true, Authoritative: true, RecursionDesired: m.RecursionDesired},
		Questions: m.Questions,
	}
	addrs, ok := zone[name]
	switch {
	case !ok:
		resp.RCode = dnsmessage.RCodeNameError
	case name == "big.tunnel.test." && !overTCP:
		resp.Truncated = true
	default:
		for _, a := range addrs {
			h := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}
			switch {
			case a.Is4() && q.Type == dnsmessage.TypeA:
				h.Type = dnsmessage.TypeA
				resp.Answers = append(resp.Answers, dnsmessage.Resource{Header: h, Body: &dnsmessage.AResource{A: a.As4()}})
			case a.Is6() && q.Type == dnsmessage.TypeAAAA:
				h.Type = dnsmessage.TypeAAAA
				resp.Answers = append(resp.Answers, dnsmessage.Resource{Header: h, Body: &dnsmessage.AAAAResource{AAAA: a.As16()}})
			}
		}
	}
	out, err := resp.Pack()
	if err != nil {
		return nil
	}
	return out
}
