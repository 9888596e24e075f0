// Package memnet is an in-memory stand-in for UDP. It lets tests run several
// WireGuard peers in one process and put their traffic through loss,
// reordering, duplication and delay that come out the same on every run, so
// that a failure seen once can be replayed exactly.
//
// Every random decision is drawn from one seeded generator in the order that
// datagrams are sent, and every delay is scheduled on the injected clock. With
// clock.Manual and a single sending goroutine a run is therefore fully
// reproducible; with clock.System or concurrent senders, only the sequence of
// decisions is, not which datagram each one falls on.
//
// Addresses are matched exactly: an IPv4 address and its IPv4-mapped IPv6
// form are different endpoints here, unlike on a dual-stack socket.
package memnet

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
)

const (
	// QueueLen bounds each Bind's receive queue, as a socket's receive
	// buffer does, so that a receiver that falls behind costs datagrams
	// instead of blocking senders or growing without limit.
	QueueLen = 4096

	batchSize = 32

	// holdSlack is how long past Impairment.Delay a datagram held back for
	// reordering waits for a successor before it goes out anyway, so that
	// the last datagram of a burst is late rather than lost.
	holdSlack = time.Millisecond

	// pcgStream is PCG's second seed word; fixing it means one uint64 is
	// all a test needs to name to reproduce a run.
	pcgStream = 0x9e3779b97f4a7c15
)

// Impairment describes what the network does to datagrams sent through a
// Bind. The zero value is a perfect network.
type Impairment struct {
	Loss      float64       // probability a datagram is dropped
	Reorder   float64       // probability a datagram is held back and delivered after the next one to the same destination
	Duplicate float64       // probability a datagram is delivered twice
	Delay     time.Duration // added latency, scheduled on the network's clock
	Jitter    time.Duration // uniform extra latency in [0, Jitter)
}

// Stats counts what happened to datagrams. Once nothing is in flight (no
// delayed datagram pending on the clock, nothing held back; see Flush),
//
//	Sent + Injected + Duplicated ==
//	    Dropped + Delivered + DroppedFull + DroppedNoRoute
//
// so a test can tell a lost datagram from one still on its way.
type Stats struct {
	Sent           uint64 // datagrams handed to Bind.Send
	Injected       uint64 // datagrams handed to Network.Inject
	Delivered      uint64 // datagrams queued at a receiving Bind, duplicates included
	Dropped        uint64 // lost to Impairment.Loss
	DroppedFull    uint64 // lost because the receiver's queue was full
	DroppedNoRoute uint64 // lost because no Bind had the destination address when they arrived
	// DroppedOversize counts delivered datagrams that a receive call
	// discarded because they did not fit its buffer. They are not
	// truncated, because a truncated WireGuard message would fail in a
	// way that hides the real cause.
	DroppedOversize uint64
	Duplicated      uint64 // extra copies made by Impairment.Duplicate
	Reordered       uint64 // held datagrams that were overtaken by a later one
}

type datagram struct {
	from    netip.AddrPort
	payload []byte // shared by duplicates, so never written after Send copies it
}

// held is a datagram waiting to be overtaken.
type held struct {
	d     datagram
	timer clock.Timer
}

type tapFunc func(from, to netip.AddrPort, payload []byte)

// Network connects Binds by address.
type Network struct {
	clk clock.Clock
	// tap is read on every Send, outside mu, so that a tap may itself
	// call into the network (Inject, Stats) without deadlocking.
	tap      atomic.Pointer[tapFunc]
	oversize atomic.Uint64 // counted by receivers, which never take mu

	// mu orders every routing decision, and with it the random draws, so
	// that the same sends give the same outcome. It is taken before any
	// Bind's mu and is held while calling clk.AfterFunc and Timer.Stop,
	// which is safe because no clock calls back while holding its own lock.
	mu    sync.Mutex
	rng   *rand.Rand
	im    Impairment
	binds map[netip.AddrPort]*Bind
	held  map[netip.AddrPort]*held // at most one per destination
	stats Stats
}

// NewNetwork returns an empty network whose delays run on clk and whose
// random decisions all follow from seed.
func NewNetwork(clk clock.Clock, seed uint64) *Network {
	return &Network{
		clk:   clk,
		rng:   rand.New(rand.NewPCG(seed, pcgStream)),
		binds: make(map[netip.AddrPort]*Bind),
		held:  make(map[netip.AddrPort]*held),
	}
}

// SetImpairment applies im to datagrams sent from now on; datagrams already
// delayed or held keep the fate they were given.
func (n *Network) SetImpairment(im Impairment) {
	n.mu.Lock()
	n.im = im
	n.mu.Unlock()
}

// Listen claims addr. Like a real socket it fails with an error wrapping
// syscall.EADDRINUSE if another open Bind has the address.
func (n *Network) Listen(addr netip.AddrPort) (*Bind, error) {
	if !addr.IsValid() || addr.Port() == 0 {
		// There is no ephemeral port allocation: a test should know
		// every address it uses.
		return nil, fmt.Errorf("memnet: listen %v: need an address with a nonzero port", addr)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.binds[addr]; ok {
		return nil, fmt.Errorf("memnet: listen %v: %w", addr, syscall.EADDRINUSE)
	}
	b := &Bind{net: n, addr: addr}
	b.cond.L = &b.mu
	n.binds[addr] = b
	return b, nil
}

// Inject delivers payload to to as if it came from from, whoever owns that
// address. It skips the impairment and the tap, because a test injecting a
// forged or replayed datagram needs it to arrive, and the tap exists to show
// what the peers themselves sent.
func (n *Network) Inject(from, to netip.AddrPort, payload []byte) {
	d := datagram{from: from, payload: bytes.Clone(payload)}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stats.Injected++
	n.deliverLocked(to, d, false)
}

// SetTap installs f to watch every datagram sent through a Bind, before the
// impairment decides its fate, so a test can check what an engine sent even
// when the network lost it. f runs in the sending goroutine and must not
// retain payload, which is the sender's buffer. nil removes the tap; a call
// already under way may still finish after SetTap returns.
func (n *Network) SetTap(f func(from, to netip.AddrPort, payload []byte)) {
	if f == nil {
		n.tap.Store(nil)
		return
	}
	t := tapFunc(f)
	n.tap.Store(&t)
}

// Stats returns a consistent snapshot of the counters.
func (n *Network) Stats() Stats {
	n.mu.Lock()
	s := n.stats
	n.mu.Unlock()
	s.DroppedOversize = n.oversize.Load()
	return s
}

// Flush delivers every datagram held back for reordering now, so a test can
// settle the network without advancing its clock. Datagrams delayed
// on the clock are not affected: advance the clock for those.
func (n *Network) Flush() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for to, h := range n.held {
		delete(n.held, to)
		h.timer.Stop()
		n.enqueueLocked(n.binds[to], h.d)
	}
}

func (n *Network) sendLocked(from, to netip.AddrPort, buf []byte) {
	n.stats.Sent++
	im := n.im
	if im.Loss > 0 && n.rng.Float64() < im.Loss {
		n.stats.Dropped++
		return
	}
	copies := 1
	if im.Duplicate > 0 && n.rng.Float64() < im.Duplicate {
		copies = 2
		n.stats.Duplicated++
	}
	d := datagram{from: from, payload: bytes.Clone(buf)}
	for range copies {
		reorder := im.Reorder > 0 && n.rng.Float64() < im.Reorder
		delay := im.Delay
		if im.Jitter > 0 {
			delay += time.Duration(n.rng.Int64N(int64(im.Jitter)))
		}
		if delay <= 0 {
			n.deliverLocked(to, d, reorder)
			continue
		}
		n.clk.AfterFunc(delay, func() {
			n.mu.Lock()
			defer n.mu.Unlock()
			n.deliverLocked(to, d, reorder)
		})
	}
}

// deliverLocked is where a datagram reaches its destination. The reordering
// hold happens here rather than at send time so that it swaps datagrams in
// the order they would otherwise have arrived, whatever the delays.
func (n *Network) deliverLocked(to netip.AddrPort, d datagram, reorder bool) {
	b := n.binds[to]
	if b == nil {
		n.stats.DroppedNoRoute++
		return
	}
	h := n.held[to]
	if reorder && h == nil {
		h = &held{d: d}
		// Assigning h.timer after AfterFunc returns is safe: the
		// callback needs mu, which is held until then.
		h.timer = n.clk.AfterFunc(n.im.Delay+holdSlack, func() { n.releaseHeld(to, h) })
		n.held[to] = h
		return
	}
	n.enqueueLocked(b, d)
	if h != nil {
		delete(n.held, to)
		h.timer.Stop()
		n.stats.Reordered++
		n.enqueueLocked(b, h.d)
	}
}

// releaseHeld lets a held datagram go when nothing overtook it in time. The
// identity check makes a timer that fires after its datagram was already
// released a no-op.
func (n *Network) releaseHeld(to netip.AddrPort, h *held) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.held[to] != h {
		return
	}
	delete(n.held, to)
	n.enqueueLocked(n.binds[to], h.d)
}

func (n *Network) enqueueLocked(b *Bind, d datagram) {
	switch {
	case b == nil:
		// Close discards held datagrams, so this is only defensive.
		n.stats.DroppedNoRoute++
	case b.push(d):
		n.stats.Delivered++
	default:
		n.stats.DroppedFull++
	}
}

// Bind is one endpoint on a Network. It satisfies the engine's Bind
// interface without importing it.
type Bind struct {
	net  *Network
	addr netip.AddrPort
	// closed is set under net.mu together with removing the Bind from the
	// network, so a Bind found in net.binds is never closed. It is atomic
	// so that Send and receivers can test it without net.mu.
	closed atomic.Bool

	mu   sync.Mutex
	cond sync.Cond // signalled under mu when queue gains a datagram or the Bind closes
	// queue[head:] is waiting to be received. Consuming from head rather
	// than reslicing lets the backing array be reused instead of
	// reallocated as datagrams flow through.
	queue []datagram
	head  int
}

// LocalAddr is the address the Bind listens on and sends from.
func (b *Bind) LocalAddr() netip.AddrPort { return b.addr }

// BatchSize matches what the engine is built to expect of a real socket.
func (b *Bind) BatchSize() int { return batchSize }

// Receivers returns the single receive function: like one UDP socket, the
// Bind has one queue.
func (b *Bind) Receivers() []func(bufs [][]byte, sizes []int, eps []netip.AddrPort) (int, error) {
	return []func([][]byte, []int, []netip.AddrPort) (int, error){b.receive}
}

// Send passes each buffer through the network's impairment to ep. Like UDP it
// reports no error for a datagram that is lost or has nowhere to go; only a
// closed Bind is an error.
func (b *Bind) Send(bufs [][]byte, ep netip.AddrPort) error {
	if b.closed.Load() {
		return net.ErrClosed
	}
	n := b.net
	if tap := n.tap.Load(); tap != nil {
		for _, buf := range bufs {
			(*tap)(b.addr, ep, buf)
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if b.closed.Load() {
		return net.ErrClosed
	}
	for _, buf := range bufs {
		n.sendLocked(b.addr, ep, buf)
	}
	return nil
}

// Close releases the address at once, so a test can rebind it, and makes
// every receive call, blocked or future, return net.ErrClosed. Datagrams
// still queued, held or in flight to it are discarded. It is idempotent.
func (b *Bind) Close() error {
	n := b.net
	n.mu.Lock()
	if !b.closed.CompareAndSwap(false, true) {
		n.mu.Unlock()
		return nil
	}
	delete(n.binds, b.addr)
	if h := n.held[b.addr]; h != nil {
		delete(n.held, b.addr)
		h.timer.Stop()
		n.stats.DroppedNoRoute++
	}
	n.mu.Unlock()

	b.mu.Lock()
	b.queue, b.head = nil, 0
	b.cond.Broadcast()
	b.mu.Unlock()
	return nil
}

// push queues d unless the queue is full. It never blocks on the receiver,
// because a real network never waits for a slow reader either.
func (b *Bind) push(d datagram) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue)-b.head >= QueueLen {
		return false
	}
	if b.head > 0 && len(b.queue) == cap(b.queue) {
		k := copy(b.queue, b.queue[b.head:])
		clear(b.queue[k:]) // drop references to payloads already received
		b.queue, b.head = b.queue[:k], 0
	}
	b.queue = append(b.queue, d)
	b.cond.Signal()
	return true
}

func (b *Bind) receive(bufs [][]byte, sizes []int, eps []netip.AddrPort) (int, error) {
	limit := min(len(bufs), len(sizes), len(eps))
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		for b.head == len(b.queue) && !b.closed.Load() {
			b.cond.Wait()
		}
		if b.closed.Load() {
			return 0, net.ErrClosed
		}
		if limit == 0 {
			return 0, nil
		}
		k := 0
		for k < limit && b.head < len(b.queue) {
			d := b.queue[b.head]
			b.queue[b.head] = datagram{}
			b.head++
			if len(d.payload) > len(bufs[k]) {
				b.net.oversize.Add(1)
				continue
			}
			sizes[k] = copy(bufs[k], d.payload)
			eps[k] = d.from
			k++
		}
		if b.head == len(b.queue) {
			b.queue, b.head = b.queue[:0], 0
		} else {
			// Pass the wakeup on: another receiver may be waiting
			// for what this one left behind.
			b.cond.Signal()
		}
		if k > 0 {
			return k, nil
		}
		// Everything queued was oversize; wait for more.
	}
}
