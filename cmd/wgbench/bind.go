package main

import (
	"net"
	"net/netip"
	"sync"

	"golang.org/x/net/ipv4"
	"golang.zx2c4.com/wireguard/conn"
)

// batchBind is the reference's UDP socket: wireguard-go's StdNetBind as
// far as it can be had on one loopback address. StdNetBind binds every
// address, which the bench must not do, and protocol/wgtest's
// LoopbackBind moves one datagram per system call into a default-sized
// socket buffer, which would make wireguard-go look slower than it is.
// This one, like StdNetBind on Linux, asks for 7 MiB socket buffers and
// moves up to 128 datagrams per recvmmsg/sendmmsg; unlike it, it does not
// use UDP GSO/GRO.
type batchBind struct {
	mu sync.Mutex
	c  *net.UDPConn
	pc *ipv4.PacketConn
}

// batchSize is wireguard-go's conn.IdealBatchSize.
const batchSize = 128

// socketBuffer is wireguard-go's conn.socketBufferSize.
const socketBuffer = 7 << 20

type batchEndpoint struct{ ap netip.AddrPort }

func (e batchEndpoint) ClearSrc()           {}
func (e batchEndpoint) SrcToString() string { return "" }
func (e batchEndpoint) DstToString() string { return e.ap.String() }
func (e batchEndpoint) DstToBytes() []byte  { b, _ := e.ap.MarshalBinary(); return b }
func (e batchEndpoint) DstIP() netip.Addr   { return e.ap.Addr() }
func (e batchEndpoint) SrcIP() netip.Addr   { return netip.Addr{} }

func (b *batchBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback, port)))
	if err != nil {
		return nil, 0, err
	}
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(setSocketBuffers)
	}
	pc := ipv4.NewPacketConn(c)
	b.mu.Lock()
	b.c, b.pc = c, pc
	b.mu.Unlock()
	// wireguard-go calls each ReceiveFunc from one goroutine, so its
	// messages can be allocated once.
	msgs := make([]ipv4.Message, batchSize)
	for i := range msgs {
		msgs[i].Buffers = make([][]byte, 1)
	}
	recv := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		k := min(len(bufs), len(msgs))
		for i := range k {
			msgs[i].Buffers[0] = bufs[i]
		}
		n, err := pc.ReadBatch(msgs[:k], 0)
		if err != nil {
			return 0, err
		}
		for i := range n {
			sizes[i] = msgs[i].N
			ap := msgs[i].Addr.(*net.UDPAddr).AddrPort()
			eps[i] = batchEndpoint{netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
		}
		return n, nil
	}
	return []conn.ReceiveFunc{recv}, uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
}

func (b *batchBind) Port() uint16 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.c == nil {
		return 0
	}
	return uint16(b.c.LocalAddr().(*net.UDPAddr).Port)
}

func (b *batchBind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.c == nil {
		return nil
	}
	err := b.c.Close()
	b.c, b.pc = nil, nil
	return err
}

func (b *batchBind) SetMark(uint32) error { return nil }
func (b *batchBind) BatchSize() int       { return batchSize }

// sendMsgs are reused across Sends, which wireguard-go makes from
// several goroutines at once.
var sendMsgs = sync.Pool{New: func() any {
	msgs := make([]ipv4.Message, batchSize)
	for i := range msgs {
		msgs[i].Buffers = make([][]byte, 1)
	}
	return &msgs
}}

func (b *batchBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	b.mu.Lock()
	pc := b.pc
	b.mu.Unlock()
	if pc == nil {
		return net.ErrClosed
	}
	addr := net.UDPAddrFromAddrPort(ep.(batchEndpoint).ap)
	mp := sendMsgs.Get().(*[]ipv4.Message)
	defer sendMsgs.Put(mp)
	msgs := *mp
	for len(bufs) > 0 {
		k := min(len(bufs), len(msgs))
		for i := range k {
			msgs[i].Buffers[0] = bufs[i]
			msgs[i].Addr = addr
		}
		for start := 0; start < k; {
			n, err := pc.WriteBatch(msgs[start:k], 0)
			if err != nil {
				return err
			}
			start += n
		}
		bufs = bufs[k:]
	}
	return nil
}

func (b *batchBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return batchEndpoint{ap}, nil
}
