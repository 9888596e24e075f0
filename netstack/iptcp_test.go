package netstack

import (
	"bytes"
	"testing"

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
