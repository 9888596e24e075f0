package udpbind

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpTestSlot fills slot 0 of a receiver's sockaddrs as the kernel would.
func udpTestSlot(t *testing.T, fill func(sa *unix.RawSockaddrInet6) uint32) (netip.AddrPort, bool) {
	t.Helper()
	r := &udpReceiver{
		msgs:  make([]unix.Mmsghdr, 1),
		names: make([]unix.RawSockaddrInet6, 1),
	}
	r.msgs[0].Hdr.Namelen = fill(&r.names[0])
	return r.source(0)
}

func udpTestPort(port uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], port)
	return binary.NativeEndian.Uint16(b[:])
}

func TestSockaddrSource(t *testing.T) {
	v4 := func(addr [4]byte, port uint16, namelen uint32) func(*unix.RawSockaddrInet6) uint32 {
		return func(sa *unix.RawSockaddrInet6) uint32 {
			sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
			sa4.Family = unix.AF_INET
			sa4.Port = udpTestPort(port)
			sa4.Addr = addr
			return namelen
		}
	}
	v6 := func(addr netip.Addr, port uint16, scope, namelen uint32) func(*unix.RawSockaddrInet6) uint32 {
		return func(sa *unix.RawSockaddrInet6) uint32 {
			sa.Family = unix.AF_INET6
			sa.Port = udpTestPort(port)
			sa.Addr = addr.As16()
			sa.Scope_id = scope
			return namelen
		}
	}

	lo := "1"
	if ifi, err := net.InterfaceByIndex(1); err == nil {
		lo = ifi.Name
	}
	for _, tc := range []struct {
		name string
		fill func(*unix.RawSockaddrInet6) uint32
		want netip.AddrPort
		ok   bool
	}{
		{"v4", v4([4]byte{192, 0, 2, 7}, 51820, unix.SizeofSockaddrInet4), netip.MustParseAddrPort("192.0.2.7:51820"), true},
		{"v4 high port", v4([4]byte{127, 0, 0, 1}, 0xfe01, unix.SizeofSockaddrInet4), netip.MustParseAddrPort("127.0.0.1:65025"), true},
		{"v4 short", v4([4]byte{127, 0, 0, 1}, 9, 8), netip.AddrPort{}, false},
		{"v6", v6(netip.MustParseAddr("2001:db8::1"), 443, 0, unix.SizeofSockaddrInet6), netip.MustParseAddrPort("[2001:db8::1]:443"), true},
		{"v6 4in6", v6(netip.MustParseAddr("::ffff:198.51.100.2"), 7, 0, unix.SizeofSockaddrInet6), netip.MustParseAddrPort("198.51.100.2:7"), true},
		{"v6 4in6 with scope", v6(netip.MustParseAddr("::ffff:198.51.100.2"), 7, 1, unix.SizeofSockaddrInet6), netip.MustParseAddrPort("198.51.100.2:7"), true},
		{"v6 link-local", v6(netip.MustParseAddr("fe80::2"), 8, 1, unix.SizeofSockaddrInet6), netip.AddrPortFrom(netip.MustParseAddr("fe80::2").WithZone(lo), 8), true},
		{"v6 short", v6(netip.MustParseAddr("::1"), 9, 0, 24), netip.AddrPort{}, false},
		{"unix family", func(sa *unix.RawSockaddrInet6) uint32 { sa.Family = unix.AF_UNIX; return 2 }, netip.AddrPort{}, false},
		{"no address", func(*unix.RawSockaddrInet6) uint32 { return 0 }, netip.AddrPort{}, false},
	} {
		got, ok := udpTestSlot(t, tc.fill)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s: source() = %v, %v; want %v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

func TestSockaddrDestination(t *testing.T) {
	var s udpSender
	if n := s.setName(netip.MustParseAddrPort("192.0.2.7:51820")); n != unix.SizeofSockaddrInet4 {
		t.Errorf("IPv4 sockaddr length %d, want %d", n, unix.SizeofSockaddrInet4)
	}
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&s.name)), unix.SizeofSockaddrInet4)
	if want := []byte{192, 0, 2, 7}; string(raw[4:8]) != string(want) || raw[2] != 51820>>8 || raw[3] != 51820&0xff {
		t.Errorf("IPv4 sockaddr bytes %v", raw)
	}
	for _, b := range raw[8:] {
		if b != 0 {
			t.Errorf("sin_zero not zero: %v", raw)
			break
		}
	}

	if n := s.setName(netip.MustParseAddrPort("[fe80::1%7]:1")); n != unix.SizeofSockaddrInet6 || s.name.Scope_id != 7 {
		t.Errorf("numeric zone: length %d, scope %d; want %d, 7", n, s.name.Scope_id, unix.SizeofSockaddrInet6)
	}
	if ifi, err := net.InterfaceByIndex(1); err == nil {
		ap := netip.AddrPortFrom(netip.MustParseAddr("fe80::1").WithZone(ifi.Name), 1)
		if s.setName(ap); s.name.Scope_id != 1 {
			t.Errorf("zone %q: scope %d, want 1", ifi.Name, s.name.Scope_id)
		}
	}
	if s.setName(netip.MustParseAddrPort("[2001:db8::1]:2")); s.name.Scope_id != 0 || s.name.Flowinfo != 0 {
		t.Errorf("global address left scope %d flowinfo %d", s.name.Scope_id, s.name.Flowinfo)
	}
}
