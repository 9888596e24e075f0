// Package wgtest helps tests run wireguard-go as an independent peer: a
// conn.Bind that listens on one loopback address only, so a test's
// wireguard-go never binds a wildcard address and never sends anywhere
// but the address it is given.
//
// It also holds the small helpers that the tests of every package share
// (waiting for a condition, finding a free port, reading the heap in
// use), so that each exists once. It imports none of the module's other
// packages, so that the in-package tests of any of them can use it
// without an import cycle.
package wgtest

import (
	"net"
	"net/netip"
	"sync"

	"golang.zx2c4.com/wireguard/conn"
)

// LoopbackBind is a wireguard-go conn.Bind on one UDP socket at Addr.
type LoopbackBind struct {
	Addr netip.Addr
	// Listen opens the socket; nil means net.ListenUDP. wireguard-go may
	// open the bind from a goroutine of its own (on its TUN's up event),
	// so a test that needs the socket in a network namespace opens it
	// there itself through Listen.
	Listen func(netip.AddrPort) (*net.UDPConn, error)

	mu sync.Mutex
	c  *net.UDPConn
}

type endpoint struct{ ap netip.AddrPort }

func (e endpoint) ClearSrc()           {}
func (e endpoint) SrcToString() string { return "" }
func (e endpoint) DstToString() string { return e.ap.String() }
func (e endpoint) DstToBytes() []byte  { b, _ := e.ap.MarshalBinary(); return b }
func (e endpoint) DstIP() netip.Addr   { return e.ap.Addr() }
func (e endpoint) SrcIP() netip.Addr   { return netip.Addr{} }

// Open binds the socket; wireguard-go calls it when the device comes up.
func (b *LoopbackBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	listen := b.Listen
	if listen == nil {
		listen = func(ap netip.AddrPort) (*net.UDPConn, error) {
			return net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
		}
	}
	c, err := listen(netip.AddrPortFrom(b.Addr, port))
	if err != nil {
		return nil, 0, err
	}
	b.mu.Lock()
	b.c = c
	b.mu.Unlock()
	recv := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n, ap, err := c.ReadFromUDPAddrPort(bufs[0])
		if err != nil {
			return 0, err
		}
		sizes[0] = n
		eps[0] = endpoint{netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
		return 1, nil
	}
	return []conn.ReceiveFunc{recv}, uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
}

// Port is the bound port, valid once wireguard-go is up.
func (b *LoopbackBind) Port() uint16 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.c == nil {
		return 0
	}
	return uint16(b.c.LocalAddr().(*net.UDPAddr).Port)
}

func (b *LoopbackBind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.c == nil {
		return nil
	}
	err := b.c.Close()
	b.c = nil
	return err
}

func (b *LoopbackBind) SetMark(uint32) error { return nil }
func (b *LoopbackBind) BatchSize() int       { return 1 }

func (b *LoopbackBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	b.mu.Lock()
	c := b.c
	b.mu.Unlock()
	if c == nil {
		return net.ErrClosed
	}
	for _, buf := range bufs {
		if _, err := c.WriteToUDPAddrPort(buf, ep.(endpoint).ap); err != nil {
			return err
		}
	}
	return nil
}

func (b *LoopbackBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return endpoint{ap}, nil
}
