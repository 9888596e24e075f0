package netstack

import (
	"bytes"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// synSegment is an IPv4 TCP segment with flags and options opts (a
// multiple of 4 bytes) and a full, valid checksum.
func synSegment(flags header.TCPFlags, opts []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize+len(opts))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
		SrcAddr: segSrc4, DstAddr: segDst4,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(b[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{
		SrcPort: 40000, DstPort: 80, SeqNum: 7, DataOffset: uint8(header.TCPMinimumSize + len(opts)),
		Flags: flags, WindowSize: 65535,
	})
	copy(tcp[header.TCPMinimumSize:], opts)
	tcp.SetChecksum(^tcp.CalculateChecksum(tcpPseudo(b)))
	return b
}

func tcpPseudo(b []byte) uint16 {
	ip := header.IPv4(b)
	return header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(b)-int(ip.HeaderLength())))
}

func tcpChecksumOK(b []byte) bool {
	tcp := header.TCP(b[header.IPv4(b).HeaderLength():])
	return checksum.Checksum(tcp, tcpPseudo(b)) == 0xffff
}

// linuxSYNOptions are the options of a SYN from Linux: MSS, SACK
// permitted, timestamps (at an offset that is not a multiple of 4), a
// NOP and the window scale.
func linuxSYNOptions() []byte {
	b := make([]byte, 20)
	n := header.EncodeMSSOption(1380, b)
	n += header.EncodeSACKPermittedOption(b[n:])
	n += header.EncodeTSOption(0x01020304, 0, b[n:])
	b[n] = tcpOptNOP
	n++
	n += header.EncodeWSOption(7, b[n:])
	return b[:n]
}

func TestStripSYNTimestamp(t *testing.T) {
	opts := linuxSYNOptions()
	if len(opts)%4 != 0 {
		t.Fatalf("the SYN options are %d bytes", len(opts))
	}
	for _, flags := range []header.TCPFlags{header.TCPFlagSyn, header.TCPFlagSyn | header.TCPFlagAck} {
		b := synSegment(flags, opts)
		if !tcpChecksumOK(b) {
			t.Fatal("the test's own segment has a bad checksum")
		}
		tcp := b[header.IPv4MinimumSize:]
		if !stripSYNTimestamp(tcp) {
			t.Fatalf("%v: no timestamp option found", flags)
		}
		got := header.ParseSynOptions(tcp[header.TCPMinimumSize:], flags.Contains(header.TCPFlagAck))
		if got.TS {
			t.Errorf("%v: timestamp option still there: %+v", flags, got)
		}
		if got.MSS != 1380 || got.WS != 7 || !got.SACKPermitted {
			t.Errorf("%v: the other options changed: %+v", flags, got)
		}
		if !tcpChecksumOK(b) {
			t.Errorf("%v: checksum no longer valid", flags)
		}
		if stripSYNTimestamp(tcp) {
			t.Errorf("%v: stripped twice", flags)
		}
	}
}

func TestStripSYNTimestampLeavesOthers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags header.TCPFlags
		opts  []byte
	}{
		{"not a SYN", header.TCPFlagAck, timestamps(1, 2)},
		{"no timestamp", header.TCPFlagSyn, []byte{2, 4, 5, 0x64, 1, 3, 3, 7}},
		{"end of options first", header.TCPFlagSyn, append([]byte{0, 1, 1, 1}, timestamps(1, 2)...)},
		{"zero option length", header.TCPFlagSyn, append([]byte{2, 0, 1, 1}, timestamps(1, 2)...)},
		{"overrunning option", header.TCPFlagSyn, []byte{1, 1, 8, 10, 0, 0, 0, 0}},
	} {
		b := synSegment(tc.flags, tc.opts)
		before := bytes.Clone(b)
		if stripSYNTimestamp(b[header.IPv4MinimumSize:]) || !bytes.Equal(b, before) {
			t.Errorf("%s: the segment was changed", tc.name)
		}
	}
	// A data offset that points past the bytes given.
	b := synSegment(header.TCPFlagSyn, timestamps(1, 2))
	tcp := b[header.IPv4MinimumSize:]
	if stripSYNTimestamp(tcp[:len(tcp)-4]) {
		t.Error("stripped a header cut short")
	}
}

func TestIPTCPHeader(t *testing.T) {
	b := synSegment(header.TCPFlagSyn, timestamps(1, 2))
	if got := ipTCPHeader(b); !bytes.Equal(got, b[header.IPv4MinimumSize:]) {
		t.Error("IPv4: wrong TCP header")
	}
	header.IPv4(b).SetFlagsFragmentOffset(0, 8)
	if ipTCPHeader(b) != nil {
		t.Error("IPv4: a later fragment taken for a TCP header")
	}
	v6 := make([]byte, header.IPv6MinimumSize+header.TCPMinimumSize)
	header.IPv6(v6).Encode(&header.IPv6Fields{PayloadLength: header.TCPMinimumSize, TransportProtocol: header.TCPProtocolNumber, SrcAddr: segSrc6, DstAddr: segDst6})
	if got := ipTCPHeader(v6); len(got) != header.TCPMinimumSize {
		t.Error("IPv6: wrong TCP header")
	}
	header.IPv6(v6).Encode(&header.IPv6Fields{TransportProtocol: header.UDPProtocolNumber, SrcAddr: segSrc6, DstAddr: segDst6})
	if ipTCPHeader(v6) != nil || ipTCPHeader(nil) != nil || ipTCPHeader([]byte{0x45}) != nil {
		t.Error("not TCP, yet a TCP header")
	}
}

// FuzzStripSYNTimestamp: any bytes as a TCP header, no panic, and a
// change keeps the one's complement sum of the header, checksum
// included, so a valid checksum stays valid.
func FuzzStripSYNTimestamp(f *testing.F) {
	f.Add(synSegment(header.TCPFlagSyn, linuxSYNOptions())[header.IPv4MinimumSize:])
	f.Add(synSegment(header.TCPFlagSyn|header.TCPFlagAck, timestamps(9, 8))[header.IPv4MinimumSize:])
	f.Add(synSegment(header.TCPFlagSyn, []byte{2, 0, 8, 10})[header.IPv4MinimumSize:])
	f.Fuzz(func(t *testing.T, tcp []byte) {
		before := bytes.Clone(tcp)
		changed := stripSYNTimestamp(tcp)
		if !changed {
			if !bytes.Equal(tcp, before) {
				t.Fatal("changed the bytes but reported no change")
			}
			return
		}
		if len(tcp)%2 == 1 {
			// The sum runs over whole 16-bit words; pad as TCP does.
			tcp, before = append(tcp, 0), append(before, 0)
		}
		if a, b := checksum.Checksum(before, 0), checksum.Checksum(tcp, 0); a != b && !(a^b == 0xffff && (a == 0 || a == 0xffff)) {
			t.Fatalf("the header's sum moved from %#04x to %#04x", a, b)
		}
	})
}
