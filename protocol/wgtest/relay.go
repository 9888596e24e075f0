package wgtest

import (
	"container/heap"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// A Relay is a UDP middlebox on loopback for tests that put faults between
// two WireGuard implementations: loss, duplication, reordering, delay and
// jitter per direction, blackouts, and NAT rebinding on either side.
//
// Side A talks to AddrA, a socket the relay listens on. The relay forwards
// what A sends there to the configured address B, from a second socket,
// AddrB; B therefore sees AddrB as its peer and replies to it. The relay
// sends B's replies to the address it last saw A send from, the way a NAT
// keeps a mapping, so A may change its source port at any time. A typical
// setup gives wgbore the peer endpoint AddrA and lets wireguard-go, bound
// at B, learn AddrB from the first authenticated packet.
//
//	A ──▶ AddrA ═ relay ═ AddrB ──▶ B
//	A ◀── AddrA ═ relay ═ AddrB ◀── B
//
// The relay binds 127.0.0.1 only and never sends to any address but B and
// the learned address of A, which must be a loopback address too; what
// arrives from anywhere else is counted and ignored. Each socket has one
// reading goroutine, and each direction one more for delayed sends, so a
// delay never stalls the reader: a datagram that must wait goes into a
// min-heap by due time and the direction's scheduler sends it when due.
// On the unimpaired path a datagram is read into the reader's buffer and
// written out from it again, with no allocation.
type Relay struct {
	b     netip.AddrPort
	start time.Time // time is kept as nanoseconds since start, monotonic

	// peerA is the learned address of side A, packed by packAddr so that
	// readers can store and load it atomically without allocating.
	peerA atomic.Uint64

	// current holds the socket of each side that traffic goes out of and
	// is accepted on; older generations stay open only to count arrivals.
	current [2]atomic.Pointer[relaySocket]

	blackout      atomic.Bool
	blackoutUntil atomic.Int64 // nanoseconds since start; 0 for none

	dirs [2]direction
	pool sync.Pool // of *packet

	mu      sync.Mutex
	closed  bool
	sockets []*relaySocket // every generation of both sides, oldest first

	done chan struct{}
	wg   sync.WaitGroup
}

// RelayConfig configures NewRelay.
type RelayConfig struct {
	// B is side B's address, to which the relay forwards what A sends. It
	// must be an IPv4 loopback address with a port.
	B netip.AddrPort

	// Seed seeds the pseudo-random numbers behind loss, duplication,
	// reordering and jitter, one PCG stream per direction, so that the same
	// seed and the same traffic make the same decisions run after run.
	Seed uint64

	// AToB and BToA are the impairments the relay starts with; the zero
	// Impairment forwards everything at once.
	AToB, BToA Impairment
}

// Direction names one way through the relay.
type Direction int

const (
	AToB Direction = iota // from side A to side B
	BToA                  // from side B to side A
)

func (d Direction) String() string {
	switch d {
	case AToB:
		return "A→B"
	case BToA:
		return "B→A"
	}
	return fmt.Sprintf("Direction(%d)", int(d))
}

// Side names one side of the relay, by the endpoint that talks to it.
type Side int

const (
	SideA Side = iota // the side that talks to AddrA
	SideB             // the side at the configured address B
)

func (s Side) String() string {
	switch s {
	case SideA:
		return "A"
	case SideB:
		return "B"
	}
	return fmt.Sprintf("Side(%d)", int(s))
}

// DefaultReorderHold is how long a datagram picked for reordering waits
// for a later one to overtake it when Impairment.ReorderHold is zero. It is
// short so that sparse traffic, such as a handshake, is only delayed a
// little rather than stuck.
const DefaultReorderHold = 2 * time.Millisecond

// An Impairment is what the relay does to the datagrams of one direction.
// The decisions are made in this order: loss, then duplication, then for
// each copy reordering and delay.
type Impairment struct {
	// Loss is the probability that a datagram is dropped.
	Loss float64
	// Duplicate is the probability that a datagram is sent twice; each
	// copy gets its own delay and its own chance of being reordered.
	Duplicate float64
	// Reorder is the probability that a datagram is held back and sent
	// right after the next datagram of the same direction, or after
	// ReorderHold (DefaultReorderHold if zero) past its due time if no other
	// datagram comes first. One datagram is held at a time.
	Reorder     float64
	ReorderHold time.Duration
	// Delay is added to every datagram, and a uniform random value in
	// [-Jitter, +Jitter] on top of it; a sum below zero counts as zero.
	// Datagrams with equal due times keep their order, so a fixed Delay
	// without Jitter does not reorder.
	Delay, Jitter time.Duration
}

func (im Impairment) validate() error {
	for _, p := range []float64{im.Loss, im.Duplicate, im.Reorder} {
		if !(p >= 0 && p <= 1) {
			return fmt.Errorf("wgtest: impairment probability %v outside [0, 1]", p)
		}
	}
	if im.Delay < 0 || im.Jitter < 0 || im.ReorderHold < 0 {
		return fmt.Errorf("wgtest: negative impairment duration in %+v", im)
	}
	return nil
}

func (im Impairment) isZero() bool { return im == Impairment{} }

// DirectionStats counts what happened to the datagrams of one direction.
type DirectionStats struct {
	// Received counts datagrams read on the current socket of the sending
	// side from the expected source; stale and foreign ones are not here.
	Received uint64
	// Forwarded counts datagrams written out, duplicates included.
	Forwarded uint64
	// DroppedLoss counts datagrams dropped by Impairment.Loss.
	DroppedLoss uint64
	// DroppedBlackout counts datagrams dropped by a blackout, on arrival
	// or, if they were waiting for their delay, when they came due.
	DroppedBlackout uint64
	// Duplicated counts extra copies made by Impairment.Duplicate.
	Duplicated uint64
	// Reordered counts datagrams held back by Impairment.Reorder.
	Reordered uint64
	// Delayed counts datagrams (and copies) that waited for a nonzero
	// Delay plus Jitter, not counting those held for reordering.
	Delayed uint64
	// Pending is how many datagrams (copies included) the relay has read
	// but not yet sent or dropped: those waiting for their delay, and those
	// a reader is handling. Once a test sees it zero after Received reached
	// what it sent, the other counters are final.
	Pending int
	// Unroutable counts B→A datagrams that came before the relay had seen
	// anything from A, so it had nowhere to send them.
	Unroutable uint64
	// SendErrors counts writes that failed.
	SendErrors uint64
	// FirstAfterBlackout is the first datagram sent on after the last one
	// a blackout dropped, in the order they leave the relay: what the
	// receiving side heard first when the path came back. Zero when none
	// has been sent since.
	FirstAfterBlackout Datagram
}

// Datagram describes a WireGuard datagram by its message type (the first
// byte) and its length.
type Datagram struct {
	Type byte
	Len  int
}

// The transport data message's type, and a keepalive's length: its
// 16-byte header and 16-byte tag with nothing between. Package protocol
// has both, but its tests use this package.
const (
	transportType = 4
	keepaliveLen  = 32
)

// Data reports whether d is a transport data message that carries a
// packet, not a keepalive.
func (d Datagram) Data() bool { return d.Type == transportType && d.Len > keepaliveLen }

// SideStats sums up the socket generations of one side.
type SideStats struct {
	// Generations is how many sockets the side has had: 1 plus the number
	// of rebinds.
	Generations int
	// Stale counts datagrams that arrived on a socket of this side after
	// it had been replaced by a rebind. They are not forwarded.
	Stale uint64
	// StaleAfterNew counts the stale datagrams that arrived after the
	// side's current socket had received its first datagram: with a peer
	// that follows roaming correctly it stays zero, apart from datagrams
	// already in flight when the peer switched.
	StaleAfterNew uint64
	// LastStale is when the latest stale datagram was read; zero if none.
	LastStale time.Time
	// Foreign counts datagrams ignored because of their source: on side A
	// anything not from a loopback address, on side B anything not from B.
	Foreign uint64
}

// SocketStats describes one socket generation of one side.
type SocketStats struct {
	Side Side
	Gen  int            // 0 for the socket NewRelay opened, then 1, 2, …
	Addr netip.AddrPort // the socket's local address
	// Current reports whether this is the side's socket in use.
	Current bool
	// Arrivals counts datagrams from the expected source, stale ones too.
	Arrivals      uint64
	Stale         uint64 // arrivals after this socket was replaced
	StaleAfterNew uint64 // stale arrivals after its side's current socket got its first
	Foreign       uint64
	ReadErrors    uint64
	// FirstArrival, Replaced and LastStale are zero if they did not happen.
	FirstArrival time.Time
	Replaced     time.Time
	LastStale    time.Time
}

// Stats is a snapshot of the relay's counters. Each counter is read
// atomically, but not all of them at one instant.
type Stats struct {
	AToB, BToA DirectionStats
	A, B       SideStats
	Sockets    []SocketStats // every generation of both sides, oldest first
}

// Dir returns the counters of direction d.
func (s Stats) Dir(d Direction) DirectionStats {
	if d == BToA {
		return s.BToA
	}
	return s.AToB
}

// Side returns the summary of side sd.
func (s Stats) Side(sd Side) SideStats {
	if sd == SideB {
		return s.B
	}
	return s.A
}

// maxDatagram is the largest UDP payload over IPv4; the reader's buffer is
// that large so that nothing is ever truncated.
const maxDatagram = 65507

// socketBuffer is the send and receive buffer asked of the kernel for each
// relay socket (it is capped by net.core.[rw]mem_max): a burst of batched
// sends from a fast peer must queue, not overflow, while the reader catches
// up.
const socketBuffer = 4 << 20

// NewRelay opens the relay's two sockets on 127.0.0.1 and starts
// forwarding. Close stops it.
func NewRelay(cfg RelayConfig) (*Relay, error) {
	b := netip.AddrPortFrom(cfg.B.Addr().Unmap(), cfg.B.Port())
	if !b.Addr().Is4() || !b.Addr().IsLoopback() || b.Port() == 0 {
		return nil, fmt.Errorf("wgtest: relay peer B %v is not an IPv4 loopback address with a port", cfg.B)
	}
	if err := cfg.AToB.validate(); err != nil {
		return nil, fmt.Errorf("wgtest: A→B: %w", err)
	}
	if err := cfg.BToA.validate(); err != nil {
		return nil, fmt.Errorf("wgtest: B→A: %w", err)
	}
	r := &Relay{b: b, start: time.Now(), done: make(chan struct{})}
	r.pool.New = func() any { return &packet{buf: make([]byte, 0, 2048)} }
	// The two streams differ so that A→B and B→A are not in lockstep.
	for i, im := range []Impairment{cfg.AToB, cfg.BToA} {
		d := &r.dirs[i]
		d.dir = Direction(i)
		d.im = im
		d.rng = rand.New(rand.NewPCG(cfg.Seed, 0x9e3779b97f4a7c15*uint64(i+1)))
		d.wake = make(chan struct{}, 1)
	}
	for _, side := range []Side{SideA, SideB} {
		s, err := r.listen(side, 0)
		if err != nil {
			for _, s := range r.sockets {
				s.conn.Close()
			}
			return nil, err
		}
		r.sockets = append(r.sockets, s)
		r.current[side].Store(s)
	}
	for _, s := range r.sockets {
		r.wg.Add(1)
		go r.read(s)
	}
	for i := range r.dirs {
		r.wg.Add(1)
		go r.schedule(&r.dirs[i])
	}
	return r, nil
}

// AddrA is where side A sends to, and where it receives B's datagrams
// from: the current side-A socket, which RebindA replaces.
func (r *Relay) AddrA() netip.AddrPort { return r.current[SideA].Load().addr }

// AddrB is where side B receives A's datagrams from and sends its replies
// to: the current side-B socket, which Rebind replaces.
func (r *Relay) AddrB() netip.AddrPort { return r.current[SideB].Load().addr }

// B is the configured address of side B.
func (r *Relay) B() netip.AddrPort { return r.b }

// PeerA is the address the relay last saw side A send from, where it sends
// B's datagrams; ok is false until A has sent anything.
func (r *Relay) PeerA() (ap netip.AddrPort, ok bool) { return unpackAddr(r.peerA.Load()) }

// SetImpairment changes what the relay does to direction dir from the next
// datagram on. Datagrams already waiting keep the due times they were given.
func (r *Relay) SetImpairment(dir Direction, im Impairment) error {
	if dir != AToB && dir != BToA {
		return fmt.Errorf("wgtest: no direction %v", dir)
	}
	if err := im.validate(); err != nil {
		return err
	}
	d := &r.dirs[dir]
	d.mu.Lock()
	d.im = im
	d.mu.Unlock()
	return nil
}

// Impairment returns the current impairment of direction dir.
func (r *Relay) Impairment(dir Direction) Impairment {
	d := &r.dirs[dir]
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.im
}

// Blackout drops every datagram in both directions, arriving or coming due
// after a delay, for the duration d from now. It returns at once. A
// blackout already running is extended, never shortened.
func (r *Relay) Blackout(d time.Duration) {
	until := r.since() + int64(d)
	for {
		old := r.blackoutUntil.Load()
		if old >= until || r.blackoutUntil.CompareAndSwap(old, until) {
			return
		}
	}
}

// SetBlackout starts (on) or ends a blackout that lasts until the next
// call. Ending it also ends a blackout started by Blackout.
func (r *Relay) SetBlackout(on bool) {
	r.blackout.Store(on)
	if !on {
		r.blackoutUntil.Store(0)
	}
}

func (r *Relay) blackedOut() bool {
	if r.blackout.Load() {
		return true
	}
	until := r.blackoutUntil.Load()
	if until == 0 {
		return false
	}
	if r.since() < until {
		return true
	}
	// Over: clear it so that later datagrams skip reading the clock.
	r.blackoutUntil.CompareAndSwap(until, 0)
	return false
}

// Rebind simulates a NAT rebinding in front of side A, as side B sees it.
// The relay opens a new side-B socket, and AddrB becomes its address.
//
// From B's point of view: A's datagrams, including those already waiting
// for their delay, now come from the new AddrB; a WireGuard peer at B
// roams to it once it authenticates one. Datagrams B sends to the new
// socket are forwarded to A. Datagrams B still sends to the old socket are
// counted in Stats (B.Stale, B.StaleAfterNew, per-socket counters) and
// dropped.
//
// From A's point of view nothing changes: it sends to the same AddrA and
// receives from it.
func (r *Relay) Rebind() error { return r.rebind(SideB) }

// RebindA is the same on the other side: as if side B had moved, seen from
// A. The relay opens a new side-A socket, and AddrA becomes its address.
//
// From A's point of view: B's datagrams, including those already waiting
// for their delay, now come from the new AddrA; a WireGuard peer at A
// roams to it once it authenticates one. Datagrams A sends to the new
// socket are forwarded to B (and teach the relay A's address, as before).
// Datagrams A still sends to the old AddrA are counted in Stats (A.Stale,
// A.StaleAfterNew, per-socket counters) and dropped, so until A switches,
// A→B traffic is lost.
//
// From B's point of view nothing changes: it sends to the same AddrB and
// receives from it.
func (r *Relay) RebindA() error { return r.rebind(SideA) }

func (r *Relay) rebind(side Side) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return fmt.Errorf("wgtest: rebind side %v: %w", side, net.ErrClosed)
	}
	old := r.current[side].Load()
	s, err := r.listen(side, old.gen+1)
	if err != nil {
		return err
	}
	r.sockets = append(r.sockets, s)
	old.replaced.Store(r.stamp())
	r.current[side].Store(s)
	r.wg.Add(1)
	go r.read(s)
	return nil
}

// Stats returns a snapshot of the relay's counters.
func (r *Relay) Stats() Stats {
	st := Stats{AToB: r.dirStats(AToB), BToA: r.dirStats(BToA)}
	r.mu.Lock()
	sockets := append([]*relaySocket(nil), r.sockets...)
	r.mu.Unlock()
	for _, s := range sockets {
		ss := SocketStats{
			Side:          s.side,
			Gen:           s.gen,
			Addr:          s.addr,
			Current:       r.current[s.side].Load() == s,
			Arrivals:      s.arrivals.Load(),
			Stale:         s.stale.Load(),
			StaleAfterNew: s.staleAfterNew.Load(),
			Foreign:       s.foreign.Load(),
			ReadErrors:    s.readErrors.Load(),
			FirstArrival:  r.timeOf(s.firstArrival.Load()),
			Replaced:      r.timeOf(s.replaced.Load()),
			LastStale:     r.timeOf(s.lastStale.Load()),
		}
		st.Sockets = append(st.Sockets, ss)
		side := &st.A
		if s.side == SideB {
			side = &st.B
		}
		side.Generations++
		side.Stale += ss.Stale
		side.StaleAfterNew += ss.StaleAfterNew
		side.Foreign += ss.Foreign
		if ss.LastStale.After(side.LastStale) {
			side.LastStale = ss.LastStale
		}
	}
	return st
}

func (r *Relay) dirStats(dir Direction) DirectionStats {
	d := &r.dirs[dir]
	// Received before pending, and pending before the outcomes, which
	// are counted before pending goes down: a snapshot that shows all
	// received and none pending shows every outcome too.
	received := d.received.Load()
	pending := d.pending.Load()
	first := d.firstAfter.Load()
	if first == awaitingFirst {
		first = 0
	}
	return DirectionStats{
		Received:           received,
		Pending:            int(pending),
		Forwarded:          d.forwarded.Load(),
		DroppedLoss:        d.droppedLoss.Load(),
		DroppedBlackout:    d.droppedBlackout.Load(),
		Duplicated:         d.duplicated.Load(),
		Reordered:          d.reordered.Load(),
		Delayed:            d.delayed.Load(),
		Unroutable:         d.unroutable.Load(),
		SendErrors:         d.sendErrors.Load(),
		FirstAfterBlackout: Datagram{Type: byte(first), Len: int(first >> 8)},
	}
}

// Close stops every goroutine of the relay and closes all its sockets, old
// generations included. Datagrams still waiting are dropped. Calling Close
// again does nothing.
func (r *Relay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	sockets := r.sockets
	r.mu.Unlock()

	close(r.done)
	var errs []error
	for _, s := range sockets {
		if err := s.conn.Close(); err != nil {
			errs = append(errs, fmt.Errorf("wgtest: close relay socket %v: %w", s.addr, err))
		}
	}
	r.wg.Wait()
	for i := range r.dirs {
		d := &r.dirs[i]
		d.mu.Lock()
		for _, p := range d.queue {
			r.free(p)
		}
		d.pending.Add(-int64(len(d.queue)))
		d.queue = nil
		d.held = nil
		d.mu.Unlock()
	}
	return errors.Join(errs...)
}

// relaySocket is one generation of one side's socket.
type relaySocket struct {
	side Side
	gen  int
	conn *net.UDPConn
	addr netip.AddrPort

	arrivals      atomic.Uint64
	stale         atomic.Uint64
	staleAfterNew atomic.Uint64
	foreign       atomic.Uint64
	readErrors    atomic.Uint64
	// Times are stamps (see Relay.stamp); 0 means never.
	firstArrival atomic.Int64
	replaced     atomic.Int64
	lastStale    atomic.Int64
}

func (r *Relay) listen(side Side, gen int) (*relaySocket, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, fmt.Errorf("wgtest: relay side %v socket: %w", side, err)
	}
	// Best effort: the kernel caps these without saying so, and a smaller
	// buffer only makes bursts likelier to overflow.
	_ = c.SetReadBuffer(socketBuffer)
	_ = c.SetWriteBuffer(socketBuffer)
	// Arrival times come from the kernel where it can give them, so
	// that datagrams read by two sockets' goroutines compare by when
	// they arrived, not by which goroutine ran first.
	enableArrivalStamps(c)
	addr := c.LocalAddr().(*net.UDPAddr).AddrPort()
	return &relaySocket{side: side, gen: gen, conn: c, addr: netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())}, nil
}

// read is the reading goroutine of socket s, until s is closed.
func (r *Relay) read(s *relaySocket) {
	defer r.wg.Done()
	d := &r.dirs[AToB]
	if s.side == SideB {
		d = &r.dirs[BToA]
	}
	buf := make([]byte, maxDatagram)
	oob := make([]byte, arrivalOOBSize)
	for {
		n, oobn, _, src, err := s.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Transient, such as an ICMP error queued on the socket.
			s.readErrors.Add(1)
			continue
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		if !r.admits(s.side, src) {
			s.foreign.Add(1)
			continue
		}
		s.arrivals.Add(1)
		arrived := r.stamp()
		if wall, ok := arrivalStamp(oob[:oobn]); ok {
			arrived = max(wall-r.start.UnixNano(), 1)
		}
		if s.firstArrival.Load() == 0 {
			s.firstArrival.CompareAndSwap(0, arrived)
		}
		if cur := r.current[s.side].Load(); cur != s {
			s.stale.Add(1)
			s.lastStale.Store(arrived)
			if first := cur.firstArrival.Load(); first != 0 && first <= arrived {
				s.staleAfterNew.Add(1)
			}
			continue
		}
		if s.side == SideA {
			if p := packAddr(src); r.peerA.Load() != p {
				r.peerA.Store(p)
			}
		}
		r.forward(d, buf[:n])
	}
}

// admits reports whether a datagram from src may go through a socket of
// side: the relay is a loopback-only device, and B is one fixed address.
func (r *Relay) admits(side Side, src netip.AddrPort) bool {
	if side == SideB {
		return src == r.b
	}
	return src.Addr().Is4() && src.Addr().IsLoopback() && src.Port() != 0
}

// direction is the impairment state of one way through the relay. Its
// mutex serialises the pseudo-random decisions, so that the same traffic
// gives the same decisions, and guards the queue of waiting datagrams,
// shared by the readers and the direction's scheduler.
type direction struct {
	dir  Direction
	wake chan struct{} // tells the scheduler the earliest due time moved

	mu    sync.Mutex
	im    Impairment
	rng   *rand.Rand
	queue packetQueue
	held  *packet // the datagram waiting to be overtaken, if any
	seq   uint64  // orders datagrams with equal due times

	// pending counts datagrams read and not yet sent or dropped.
	pending atomic.Int64

	received, forwarded, droppedLoss, droppedBlackout atomic.Uint64
	duplicated, reordered, delayed                    atomic.Uint64
	unroutable, sendErrors                            atomic.Uint64

	// firstAfter describes the first datagram sent after a blackout
	// dropped one (its length shifted left by 8, over its first byte),
	// awaitingFirst until one is sent, and 0 before any blackout.
	firstAfter atomic.Uint64
}

// awaitingFirst marks a direction whose blackout dropped a datagram and
// that has sent none since.
const awaitingFirst = ^uint64(0)

// sampleDelay draws the delay of one datagram: Delay plus a uniform value
// in [-Jitter, +Jitter], never below zero.
func sampleDelay(rng *rand.Rand, im Impairment) time.Duration {
	delay := im.Delay
	if im.Jitter > 0 {
		delay += time.Duration(rng.Int64N(2*int64(im.Jitter)+1)) - im.Jitter
	}
	return max(delay, 0)
}

// forward applies d's impairment to one datagram read into pkt and sends
// it now, or queues a copy of it for the scheduler.
func (r *Relay) forward(d *direction, pkt []byte) {
	// Pending goes up before Received and down after the outcome is
	// counted; see dirStats.
	d.pending.Add(1)
	d.received.Add(1)
	if r.blackedOut() {
		d.dropBlackout()
		d.pending.Add(-1)
		return
	}
	d.mu.Lock()
	im := d.im
	if im.isZero() && d.held == nil {
		d.mu.Unlock()
		r.send(d, pkt)
		d.pending.Add(-1)
		return
	}
	if im.Loss > 0 && d.rng.Float64() < im.Loss {
		d.mu.Unlock()
		d.droppedLoss.Add(1)
		d.pending.Add(-1)
		return
	}
	copies := 1
	if im.Duplicate > 0 && d.rng.Float64() < im.Duplicate {
		copies = 2
		d.duplicated.Add(1)
		d.pending.Add(1)
	}
	hold := im.ReorderHold
	if hold == 0 {
		hold = DefaultReorderHold
	}
	now := r.since()
	top := d.queue.top()
	sendNow := 0
	var after *packet // a held datagram this one overtakes, sent right after it
	for range copies {
		due := now + int64(sampleDelay(d.rng, im))
		if im.Reorder > 0 && d.held == nil && d.rng.Float64() < im.Reorder {
			p := r.copyPacket(pkt)
			p.orig = due
			p.due = due + int64(hold)
			p.seq = d.nextSeq()
			heap.Push(&d.queue, p)
			d.held = p
			d.reordered.Add(1)
			continue
		}
		if due <= now {
			sendNow++
			if h := d.held; h != nil {
				heap.Remove(&d.queue, h.index)
				d.held = nil
				after = h
			}
			continue
		}
		p := r.copyPacket(pkt)
		p.due = due
		p.seq = d.nextSeq()
		heap.Push(&d.queue, p)
		d.delayed.Add(1)
		if h := d.held; h != nil {
			// Due with this one, or at its own time if that is later, and
			// in either case behind it.
			h.due = max(due, h.orig)
			h.seq = d.nextSeq()
			heap.Fix(&d.queue, h.index)
			d.held = nil
		}
	}
	wake := d.queue.top() != top
	d.mu.Unlock()

	for range sendNow {
		r.send(d, pkt)
		d.pending.Add(-1)
	}
	if after != nil {
		r.send(d, after.buf)
		r.free(after)
		d.pending.Add(-1)
	}
	if wake {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
}

func (d *direction) nextSeq() uint64 {
	d.seq++
	return d.seq
}

// schedule is direction d's scheduler goroutine: it sends queued datagrams
// when they come due, until the relay closes.
func (r *Relay) schedule(d *direction) {
	defer r.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var due []*packet
	for {
		d.mu.Lock()
		now := r.since()
		for len(d.queue) > 0 && d.queue[0].due <= now {
			p := heap.Pop(&d.queue).(*packet)
			if p == d.held {
				d.held = nil
			}
			due = append(due, p)
		}
		next := int64(-1)
		if len(d.queue) > 0 {
			next = d.queue[0].due
		}
		d.mu.Unlock()

		for i, p := range due {
			if r.blackedOut() {
				d.dropBlackout()
			} else {
				r.send(d, p.buf)
			}
			r.free(p)
			d.pending.Add(-1)
			due[i] = nil
		}
		due = due[:0]

		if next >= 0 {
			timer.Reset(time.Duration(next - r.since()))
		} else {
			timer.Stop()
		}
		select {
		case <-r.done:
			return
		case <-d.wake:
		case <-timer.C:
		}
	}
}

// dropBlackout counts a datagram a blackout dropped, and forgets the one
// that came first after the last blackout: the next one sent is.
func (d *direction) dropBlackout() {
	d.droppedBlackout.Add(1)
	d.firstAfter.Store(awaitingFirst)
}

// send writes one datagram of direction d out of the current socket of the
// receiving side, to B or to the learned address of A.
func (r *Relay) send(d *direction, pkt []byte) {
	if len(pkt) > 0 && d.firstAfter.Load() == awaitingFirst {
		d.firstAfter.CompareAndSwap(awaitingFirst, uint64(len(pkt))<<8|uint64(pkt[0]))
	}
	var err error
	if d.dir == AToB {
		_, err = r.current[SideB].Load().conn.WriteToUDPAddrPort(pkt, r.b)
	} else {
		a, ok := unpackAddr(r.peerA.Load())
		if !ok {
			d.unroutable.Add(1)
			return
		}
		_, err = r.current[SideA].Load().conn.WriteToUDPAddrPort(pkt, a)
	}
	if err != nil {
		d.sendErrors.Add(1)
		return
	}
	d.forwarded.Add(1)
}

// since is the relay's clock: monotonic nanoseconds since NewRelay.
func (r *Relay) since() int64 { return int64(time.Since(r.start)) }

// stamp is since made nonzero, for atomics where 0 means "never".
func (r *Relay) stamp() int64 { return max(r.since(), 1) }

func (r *Relay) timeOf(stamp int64) time.Time {
	if stamp == 0 {
		return time.Time{}
	}
	return r.start.Add(time.Duration(stamp))
}

// packAddr packs an IPv4 address and port, with a bit saying it is set,
// into one word.
func packAddr(ap netip.AddrPort) uint64 {
	a := ap.Addr().As4()
	return 1<<48 | uint64(a[0])<<40 | uint64(a[1])<<32 | uint64(a[2])<<24 | uint64(a[3])<<16 | uint64(ap.Port())
}

func unpackAddr(v uint64) (netip.AddrPort, bool) {
	if v == 0 {
		return netip.AddrPort{}, false
	}
	a := netip.AddrFrom4([4]byte{byte(v >> 40), byte(v >> 32), byte(v >> 24), byte(v >> 16)})
	return netip.AddrPortFrom(a, uint16(v)), true
}

// packet is a datagram waiting in a direction's queue.
type packet struct {
	buf   []byte
	due   int64 // nanoseconds since the relay started
	orig  int64 // for a held datagram: when it would have been due
	seq   uint64
	index int // in the queue, for heap.Fix and heap.Remove
}

func (r *Relay) copyPacket(b []byte) *packet {
	p := r.pool.Get().(*packet)
	p.buf = append(p.buf[:0], b...)
	return p
}

func (r *Relay) free(p *packet) {
	p.index = -1
	r.pool.Put(p)
}

// packetQueue is a min-heap of packets by due time, then by sequence.
type packetQueue []*packet

func (q packetQueue) Len() int { return len(q) }
func (q packetQueue) Less(i, j int) bool {
	if q[i].due != q[j].due {
		return q[i].due < q[j].due
	}
	return q[i].seq < q[j].seq
}
func (q packetQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index = i
	q[j].index = j
}
func (q *packetQueue) Push(x any) {
	p := x.(*packet)
	p.index = len(*q)
	*q = append(*q, p)
}
func (q *packetQueue) Pop() any {
	old := *q
	p := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	p.index = -1
	return p
}

// top is the packet due first, or nil.
func (q packetQueue) top() *packet {
	if len(q) == 0 {
		return nil
	}
	return q[0]
}
