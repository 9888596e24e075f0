package proxy

import (
	"bytes"
	"net/netip"
	"testing"
)

// FuzzSOCKSUDPHeader feeds arbitrary datagrams to the parser of client
// datagrams, which reads bytes any local process can send to a relay. It
// must never panic, must hand back a payload that is the datagram's tail,
// and what it accepts with an address must survive being written back.
func FuzzSOCKSUDPHeader(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 127, 0, 0, 1, 0, 53, 'q'})
	f.Add([]byte{0, 0, 0, 3, 4, 'a', '.', 'b', 'c', 0, 53})
	f.Add([]byte{0, 0, 1, 1, 127, 0, 0, 1, 0, 53})
	f.Fuzz(func(t *testing.T, datagram []byte) {
		target, payload, err := parseSOCKSUDPHeader(datagram)
		if err != nil {
			return
		}
		if !bytes.HasSuffix(datagram, payload) || len(payload) > len(datagram)-8 {
			t.Fatalf("payload %x is not the tail of %x after a header", payload, datagram)
		}
		if target.port == 0 {
			t.Fatal("accepted port 0")
		}
		if target.name != nil {
			if len(target.name) == 0 || target.addr.IsValid() {
				t.Fatalf("name target %q with address %v", target.name, target.addr)
			}
			return
		}
		buf := make([]byte, socksUDPMaxHeader+len(payload))
		copy(buf[socksUDPMaxHeader:], payload)
		start := putSOCKSUDPHeader(buf, socksUDPMaxHeader, netip.AddrPortFrom(target.addr, target.port))
		again, p2, err := parseSOCKSUDPHeader(buf[start:])
		if err != nil || again.addr != target.addr || again.port != target.port || !bytes.Equal(p2, payload) {
			t.Fatalf("%x parsed as %v:%d, written back and parsed as %v:%d (%v)", datagram, target.addr, target.port, again.addr, again.port, err)
		}
	})
}
