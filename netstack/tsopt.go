package netstack

import (
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TCP timestamps are kept off every connection of our stack: the link
// endpoint turns the timestamp option of each SYN it sees, ours going
// out and peers' coming in, into no-ops, so neither side offers it and
// it is never negotiated. gVisor always offers it and has no setting.
//
// The reason is a Linux sender after an outage. Measured downloading
// 128 MiB from Linux's TCP (BBR) behind wireguard-go on a real TUN, with
// a 15 s blackout of the path (TestTCPRecoveryBenchFromLinuxSender, a
// packet trace on the TUN): data still in flight when the path went dark
// reached us, but our acknowledgement of it did not get back. When the
// path returned, Linux's backed-off retransmission of the first of those
// segments reached us as a duplicate. gVisor, as RFC 7323 has it, drops
// a segment below the window before it looks at its timestamp, so its
// acknowledgement echoed the timestamp of the last segment before the
// outage. Linux took that echo for a 27.6 s round trip, undid its
// timeout recovery as spurious and, with a smoothed RTT of several
// seconds, waited out a 6.9 s loss probe before it resent what the
// blackout had really lost: the first whole MiB came 19.1–19.8 s after
// the path's return. Without timestamps Linux takes no RTT sample from
// an acknowledgement that covers a retransmitted segment; the same run
// took 12.2 s, the rest being Linux's own backed-off timer, which
// ackreplay.go deals with.
//
// What is given up: PAWS, which gVisor does not implement, and an RTT
// sample from every acknowledgement for our own sender, which takes one
// per round trip instead. The option's 12 bytes in every segment come
// back as payload.

// tcpOptTimestamp and tcpOptNOP are option kinds of RFC 9293 and 7323.
const (
	tcpOptEnd       = 0
	tcpOptNOP       = 1
	tcpOptTimestamp = 8
)

// stripSYNTimestamp turns the timestamp option of a SYN's TCP header
// into no-ops, keeping the checksum valid, and reports whether it did.
// tcp is the TCP header and may be followed by payload; any other
// segment, or a malformed one, is left as it is.
func stripSYNTimestamp(tcp []byte) bool {
	if len(tcp) < header.TCPMinimumSize || tcp[header.TCPFlagsOffset]&uint8(header.TCPFlagSyn) == 0 {
		return false
	}
	end := int(tcp[header.TCPDataOffset]>>4) * 4
	if end < header.TCPMinimumSize || end > len(tcp) {
		return false
	}
	opts := tcp[header.TCPMinimumSize:end]
	for i := 0; i < len(opts); {
		switch opts[i] {
		case tcpOptEnd:
			return false
		case tcpOptNOP:
			i++
			continue
		}
		if i+1 >= len(opts) || opts[i+1] < 2 || i+int(opts[i+1]) > len(opts) {
			return false
		}
		n := int(opts[i+1])
		if opts[i] != tcpOptTimestamp {
			i += n
			continue
		}
		// The options start at an even offset, so summing them as a
		// whole keeps the 16-bit words of the checksum aligned.
		before := checksum.Checksum(opts, 0)
		for k := i; k < i+n; k++ {
			opts[k] = tcpOptNOP
		}
		after := checksum.Checksum(opts, 0)
		h := header.TCP(tcp)
		h.SetChecksum(^checksum.Combine(checksum.Combine(^h.Checksum(), ^before), after))
		return true
	}
	return false
}

// ipTCPHeader returns the TCP header (and what follows it) of an IPv4 or
// IPv6 packet that carries TCP directly, or nil.
func ipTCPHeader(p []byte) []byte {
	switch header.IPVersion(p) {
	case header.IPv4Version:
		if len(p) < header.IPv4MinimumSize {
			return nil
		}
		ip := header.IPv4(p)
		hl := int(ip.HeaderLength())
		if ip.Protocol() != uint8(header.TCPProtocolNumber) || hl < header.IPv4MinimumSize || hl > len(p) || ip.FragmentOffset() != 0 {
			return nil
		}
		return p[hl:]
	case header.IPv6Version:
		if len(p) < header.IPv6MinimumSize || header.IPv6(p).NextHeader() != uint8(header.TCPProtocolNumber) {
			return nil
		}
		return p[header.IPv6MinimumSize:]
	}
	return nil
}
