package netstack

import (
	"errors"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Server mode holds a UDP flow for as long as it idles, and a server may
// hold tens of thousands. A gVisor UDP endpoint per flow (what
// udp.ForwarderRequest builds) costs its endpoint, socket options and
// demuxer registration, most of an idle flow's memory, for what server
// mode needs of it: a queue of the peer's datagrams and a way to answer
// from the address the peer wrote to. So the stack's UDP handler looks
// each datagram up in a table of flows of our own and queues it there,
// and replies go out through a route of the stack's, which still does
// the IP layer's work (fragmentation, checksums, TTL).

// Bounds of a flow's queue of datagrams not yet read. The bytes are
// gVisor's default receive buffer, what the endpoint a flow had before
// allowed; the count bounds what a flood of tiny datagrams pins, since
// each takes a buffer of its own.
const (
	flowQueueBytes     = stack.DefaultBufferSize
	flowQueueDatagrams = 256
)

// errFlowExists refuses to open a flow that another datagram of the same
// flow, handled on another goroutine, has just opened.
var errFlowExists = errors.New("the flow is open already")

// udpFlows is server mode's table of UDP flows, by the addresses and
// ports of the peer's datagrams as they were addressed: an IPv4 flow
// and an IPv4-mapped IPv6 one differ in their addresses' length. There
// is one NIC.
type udpFlows struct {
	stack *stack.Stack
	// bufSize is the size of a pooled datagram buffer: the largest
	// payload one packet of the tunnel's MTU carries, so that only
	// datagrams reassembled from fragments need a buffer of their own.
	bufSize int
	bufs    sync.Pool

	// The stack's UDP counters, which the flows keep as its endpoints
	// would; looked up once, since Stats copies the whole set.
	received, dropped, sent, sendErrors *tcpip.StatCounter

	mu     sync.RWMutex
	flows  map[stack.TransportEndpointID]*flowConn
	closed bool
}

func newUDPFlows(s *stack.Stack, mtu int) *udpFlows {
	st := s.Stats().UDP
	t := &udpFlows{
		stack:    s,
		bufSize:  max(2<<10, mtu),
		flows:    make(map[stack.TransportEndpointID]*flowConn),
		received: st.PacketsReceived, dropped: st.ReceiveBufferErrors,
		sent: st.PacketsSent, sendErrors: st.PacketSendErrors,
	}
	t.bufs.New = func() any {
		b := make([]byte, t.bufSize)
		return &b
	}
	return t
}

// lookup is the open flow a datagram with id belongs to, or nil.
func (t *udpFlows) lookup(id stack.TransportEndpointID) *flowConn {
	t.mu.RLock()
	c := t.flows[id]
	t.mu.RUnlock()
	return c
}

// open makes and registers the flow of first, a datagram with id: its
// replies go from the address and port the peer wrote to, back to the
// peer's. first is queued before the flow is in the table, so that a
// later datagram of the flow, handled on another goroutine, cannot be
// queued ahead of it.
func (t *udpFlows) open(id stack.TransportEndpointID, first *stack.PacketBuffer) (*flowConn, error) {
	// With spoofing, the route may start from an address that is not
	// ours.
	r, terr := t.stack.FindRoute(nicID, id.LocalAddress, id.RemoteAddress, first.NetworkProtocolNumber, false)
	if terr != nil {
		return nil, goError("route", terr)
	}
	c := &flowConn{flows: t, id: id, route: r}
	t.mu.Lock()
	var err error
	switch {
	case t.closed:
		err = net.ErrClosed
	case t.flows[id] != nil:
		err = errFlowExists
	default:
		// c is not yet shared, so its lock cannot wait on anyone.
		c.deliver(first)
		t.flows[id] = c
	}
	t.mu.Unlock()
	if err != nil {
		r.Release()
		return nil, err
	}
	return c, nil
}

// remove unregisters c, unless a new flow has taken its place.
func (t *udpFlows) remove(c *flowConn) {
	t.mu.Lock()
	if t.flows[c.id] == c {
		delete(t.flows, c.id)
	}
	t.mu.Unlock()
}

// close closes every flow and refuses to open more.
func (t *udpFlows) close() {
	t.mu.Lock()
	t.closed = true
	flows := t.flows
	t.flows = nil
	t.mu.Unlock()
	for _, c := range flows {
		c.Close()
	}
}

// getBuf returns a buffer of n bytes, pooled when n fits one.
func (t *udpFlows) getBuf(n int) *[]byte {
	if n > t.bufSize {
		b := make([]byte, n)
		return &b
	}
	bp := t.bufs.Get().(*[]byte)
	*bp = (*bp)[:n]
	return bp
}

func (t *udpFlows) putBuf(bp *[]byte) {
	if cap(*bp) == t.bufSize {
		t.bufs.Put(bp)
	}
}

// validUDP checks a datagram's length and, unless the link has vouched
// for it, its checksum, as gVisor's UDP endpoint does on receipt.
// id's addresses are the packet's.
func validUDP(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	h := header.UDP(pkt.TransportHeader().Slice())
	size := pkt.Data().Size()
	if l := int(h.Length()); l < header.UDPMinimumSize || l > size+header.UDPMinimumSize {
		return false
	}
	// An IPv4 datagram may go without a checksum (RFC 768); an IPv6 one
	// may not (RFC 8200).
	if pkt.RXChecksumValidated || pkt.NetworkProtocolNumber == header.IPv4ProtocolNumber && h.Checksum() == 0 {
		return true
	}
	return h.IsChecksumValid(id.RemoteAddress, id.LocalAddress, pkt.Data().Checksum())
}

// flowConn is a peer's UDP flow in server mode, as the interceptor
// relays it: a connected datagram socket whose local end is wherever the
// peer addressed the flow. It can tell when a datagram is ready and be
// read without waiting, as TCPConn can, so a relay holds no goroutine
// and no buffer for an idle flow.
type flowConn struct {
	flows *udpFlows
	id    stack.TransportEndpointID
	// route carries replies: from the flow's destination, spoofed, to
	// the peer. Found once, as a connected endpoint's is, since each
	// lookup takes the stack's lock and allocates.
	route *stack.Route

	// writeDeadline is in Unix nanoseconds, 0 for none.
	writeDeadline atomic.Int64

	mu sync.Mutex
	// queue[head:] are the datagrams not yet read, queued bytes long.
	queue  []*[]byte
	head   int
	queued int
	closed bool
	// notify are NotifyReadable's callbacks.
	notify []*func()
	// readWake, once a Read waits, is closed to wake it.
	readWake chan struct{}
	// readDeadline is in Unix nanoseconds, 0 for none.
	readDeadline int64
}

// deliver queues a copy of pkt's payload, or drops it (and counts it)
// when the queue is full. It reports false once the flow is closed: the
// datagram then starts a new flow.
func (c *flowConn) deliver(pkt *stack.PacketBuffer) bool {
	t := c.flows
	size := pkt.Data().Size()
	// A datagram reassembled from fragments spans several views, which
	// PullUp merges; any other is one view, and costs no more than the
	// copy.
	v, ok := pkt.Data().PullUp(size)
	if !ok {
		return true
	}
	bp := t.getBuf(size)
	copy(*bp, v)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		t.putBuf(bp)
		return false
	}
	if len(c.queue)-c.head >= flowQueueDatagrams || c.queued >= flowQueueBytes {
		c.mu.Unlock()
		t.putBuf(bp)
		t.dropped.Increment()
		return true
	}
	wasEmpty := c.head == len(c.queue)
	c.queue = append(c.queue, bp)
	c.queued += size
	t.received.Increment()
	if wasEmpty {
		c.wakeLocked()
	}
	c.mu.Unlock()
	return true
}

// wakeLocked tells the readers that a datagram, or the end, has come.
func (c *flowConn) wakeLocked() {
	c.wakeReadLocked()
	for _, f := range c.notify {
		(*f)()
	}
}

// wakeReadLocked wakes a Read that waits, to look again.
func (c *flowConn) wakeReadLocked() {
	if c.readWake != nil {
		close(c.readWake)
		c.readWake = nil
	}
}

// popLocked moves the oldest datagram into b, cut short if b is shorter,
// and reports whether there was one.
func (c *flowConn) popLocked(b []byte) (int, bool) {
	if c.head == len(c.queue) {
		return 0, false
	}
	bp := c.queue[c.head]
	c.queue[c.head] = nil
	c.head++
	n := copy(b, *bp)
	c.queued -= len(*bp)
	if c.head == len(c.queue) {
		// Empty: start over at the front, and let a queue a burst grew
		// go, so that an idle flow holds no more than a few slots.
		c.head = 0
		if cap(c.queue) > 4 {
			c.queue = nil
		} else {
			c.queue = c.queue[:0]
		}
	}
	c.flows.putBuf(bp)
	return n, true
}

// NotifyReadable calls f whenever a datagram, or the end of the flow,
// may have become ready to read, until stop is called. f runs with the
// flow locked, on whichever goroutine queued the datagram or closed the
// flow: it must return at once and call none of the flow's methods.
func (c *flowConn) NotifyReadable(f func()) (stop func()) {
	fp := &f
	c.mu.Lock()
	c.notify = append(c.notify, fp)
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		for i, g := range c.notify {
			if g == fp {
				c.notify = append(c.notify[:i], c.notify[i+1:]...)
				break
			}
		}
		if len(c.notify) == 0 {
			c.notify = nil
		}
		c.mu.Unlock()
	}
}

// Readable reports whether a TryRead would return something other than
// wouldBlock.
func (c *flowConn) Readable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed || c.head < len(c.queue)
}

// TryRead reads one datagram into b, without waiting; a datagram longer
// than b is cut short. With none queued it returns wouldBlock; once the
// flow is closed, io.EOF. It ignores the read deadline.
func (c *flowConn) TryRead(b []byte) (n int, wouldBlock bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, false, io.EOF
	}
	n, ok := c.popLocked(b)
	return n, !ok, nil
}

// Read waits for one datagram and reads it into b, until the read
// deadline; once the flow is closed it returns io.EOF.
func (c *flowConn) Read(b []byte) (int, error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return 0, io.EOF
		}
		if n, ok := c.popLocked(b); ok {
			c.mu.Unlock()
			return n, nil
		}
		deadline := c.readDeadline
		if deadline != 0 && time.Now().UnixNano() >= deadline {
			c.mu.Unlock()
			return 0, c.opError("read", os.ErrDeadlineExceeded)
		}
		if c.readWake == nil {
			c.readWake = make(chan struct{})
		}
		wake := c.readWake
		c.mu.Unlock()
		var expired <-chan time.Time
		if deadline != 0 {
			d := time.Until(time.Unix(0, deadline))
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			expired = timer.C
		}
		select {
		case <-wake:
		case <-expired:
		}
	}
}

// Write sends b as one datagram to the peer, from the address it wrote
// to. It does not wait: a datagram the tunnel has no room for is dropped,
// as a host socket's would be.
func (c *flowConn) Write(b []byte) (int, error) {
	if d := c.writeDeadline.Load(); d != 0 && time.Now().UnixNano() >= d {
		return 0, c.opError("write", os.ErrDeadlineExceeded)
	}
	if len(b) > header.UDPMaximumPacketSize {
		return 0, c.opError("write", syscall.EMSGSIZE)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, c.opError("write", net.ErrClosed)
	}
	// Its own reference, so that a Close meanwhile cannot release the
	// route under the write.
	r := c.route
	r.Acquire()
	c.mu.Unlock()
	defer r.Release()

	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: header.UDPMinimumSize + int(r.MaxHeaderLength()),
		Payload:            buffer.MakeWithData(b),
	})
	defer pkt.DecRef()
	h := header.UDP(pkt.TransportHeader().Push(header.UDPMinimumSize))
	pkt.TransportProtocolNumber = header.UDPProtocolNumber
	length := uint16(pkt.Size())
	h.Encode(&header.UDPFields{SrcPort: c.id.LocalPort, DstPort: c.id.RemotePort, Length: length})
	if r.RequiresTXTransportChecksum() {
		sum := h.CalculateChecksum(checksum.Combine(
			header.PseudoHeaderChecksum(header.UDPProtocolNumber, r.LocalAddress(), r.RemoteAddress(), length),
			pkt.Data().Checksum()))
		// A sum of zero goes as all ones: zero means none (RFC 768).
		if sum != math.MaxUint16 {
			sum = ^sum
		}
		h.SetChecksum(sum)
	}
	// Without DF: a reply larger than the tunnel is fragmented here, and
	// one that meets a smaller link beyond the peer may be fragmented
	// there, since no ICMP "fragmentation needed" would reach a flow
	// answering from an address that is not ours.
	terr := r.WritePacket(stack.NetworkHeaderParams{Protocol: header.UDPProtocolNumber, TTL: r.DefaultTTL()}, pkt)
	if terr != nil {
		c.flows.sendErrors.Increment()
		if _, ok := terr.(*tcpip.ErrNoBufferSpace); ok {
			return 0, c.opError("write", syscall.ENOBUFS)
		}
		return 0, c.opError("write", goError("write", terr))
	}
	c.flows.sent.Increment()
	return len(b), nil
}

// Close ends the flow: its queued datagrams are dropped, reads return
// io.EOF, and a datagram of the same addresses and ports that comes
// later starts a new flow.
func (c *flowConn) Close() error {
	// Out of the table first: a datagram that finds the flow closed
	// opens a new one, which a closed flow still registered would
	// refuse.
	c.flows.remove(c)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	for c.head < len(c.queue) {
		c.flows.putBuf(c.queue[c.head])
		c.head++
	}
	c.queue, c.head, c.queued = nil, 0, 0
	c.wakeLocked()
	c.mu.Unlock()
	c.route.Release()
	return nil
}

// LocalAddr is the address the peer wrote to.
func (c *flowConn) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IP(c.id.LocalAddress.AsSlice()), Port: int(c.id.LocalPort)}
}

// RemoteAddr is the peer's address.
func (c *flowConn) RemoteAddr() net.Addr {
	return &net.UDPAddr{IP: net.IP(c.id.RemoteAddress.AsSlice()), Port: int(c.id.RemotePort)}
}

// SetDeadline sets the read and write deadlines, as net.Conn's does.
func (c *flowConn) SetDeadline(t time.Time) error {
	c.SetWriteDeadline(t)
	return c.SetReadDeadline(t)
}

// SetReadDeadline sets the deadline of Read, and wakes a Read that waits
// so that it sees the new one.
func (c *flowConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.readDeadline = unixNano(t)
	c.wakeReadLocked()
	c.mu.Unlock()
	return nil
}

// SetWriteDeadline sets the deadline of Write, which never waits: a
// deadline past fails it.
func (c *flowConn) SetWriteDeadline(t time.Time) error {
	c.writeDeadline.Store(unixNano(t))
	return nil
}

// unixNano is t in Unix nanoseconds, 0 for the zero time (no deadline)
// and 1 for any other time at or before 1970, already past.
func unixNano(t time.Time) int64 {
	switch {
	case t.IsZero():
		return 0
	case t.After(latestDeadline):
		// UnixNano would wrap past this; such a deadline is never.
		return math.MaxInt64
	}
	return max(t.UnixNano(), 1)
}

// latestDeadline is the last time UnixNano holds.
var latestDeadline = time.Unix(0, math.MaxInt64)

func (c *flowConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "udp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
