package protocol

import (
	"context"
	"crypto/ecdh"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/blake2s"

	"github.com/wgbore/wgbore/protocol/clock"
)

// PacketSide receives the plaintext IP packets the engine decrypted. The
// netstack implements it. Outbound packets go the other way, through
// Engine.WritePackets.
type PacketSide interface {
	// DeliverPackets hands over a batch of IP packets from one peer. The
	// slices are only valid during the call; the engine reuses them.
	// Calls for one peer come in order and never overlap (from the
	// peer's own goroutine, or inline from the socket's for a small
	// batch with nothing queued ahead); calls for different peers may
	// arrive concurrently. It may call WritePackets.
	DeliverPackets(pkts [][]byte)
}

// PeerReturner is an optional part of a PacketSide. PeerReturned is
// called when a handshake message or a keepalive arrives from a peer
// that had been silent for at least ReturnAfterSilence, from the
// goroutine that received it; it may call WritePackets. When data ends
// the silence it is not called: the packet side has the data, and
// answers it itself.
//
// The netstack uses it to re-send its latest acknowledgements: an outage
// swallows the last ones, and a remote TCP sender waiting out a
// backed-off retransmission timer learns from them at once what got
// through, instead of when the timer fires. After data, a re-sent
// acknowledgement would only repeat the stack's own answer, and a
// duplicate right after an acknowledgement that ends a timeout makes
// gVisor's sender (RACK) crawl at one segment per timeout. Package
// netstack's documentation tells how this fits with its other changes
// for TCP through outages.
type PeerReturner interface {
	PeerReturned(peer PublicKey)
}

// ReturnAfterSilence is how long a peer must have been silent for its
// next packet to count as a return. A TCP sender's retransmission timer
// is at least 200 ms (Linux), so by then a sender on the far side has
// timed out and backed off at least once.
const ReturnAfterSilence = time.Second

// Resolver looks up endpoint hostnames; *net.Resolver satisfies it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Config is everything the engine needs from outside. Nothing is global:
// the clock, the logger and the sockets all come in here, so tests can
// replace each.
type Config struct {
	PrivateKey PrivateKey
	Bind       Bind
	Packets    PacketSide
	// MTU is the largest IP packet the engine carries; 0 means 1420.
	MTU      int
	Clock    clock.Clock  // nil means clock.System
	Logger   *slog.Logger // nil discards
	Resolver Resolver     // nil means net.DefaultResolver
	// Workers is the number of goroutines of each kind: encrypt, decrypt
	// and handshake; 0 means GOMAXPROCS.
	Workers int
	// Params overrides the whitepaper's limits; tests only.
	Params *Params
	// LocalAddresses are our own addresses inside the tunnel. A packet
	// from a peer with one of them as its source is dropped whatever the
	// peer's AllowedIPs, as are loopback, unspecified, multicast and
	// broadcast sources.
	LocalAddresses []netip.Addr
	// BindFailed, when set, hears once that a Bind stopped working: its
	// receive functions failed back to back for a second (as a socket
	// the system took away does), or it was closed by something other
	// than the engine. The engine then stops reading it; Rebind gives it
	// a new one. Without BindFailed the engine keeps retrying the failed
	// receives. It is called from a receive goroutine and must not block.
	BindFailed func(err error)
}

// DefaultMTU leaves room for the outer IPv6 and UDP headers and WireGuard's
// 32 bytes inside a 1500-byte path, as wg-quick does.
const DefaultMTU = 1420

// identity is our static key pair and what follows from it. It is
// replaced whole, so readers never see half of a key change.
type identity struct {
	private       PrivateKey
	public        PublicKey
	responderHash [blake2s.Size]byte
	dh            *ecdh.PrivateKey // private, ready for DH; see newStaticKey
}

// Engine is one WireGuard interface: our identity, our peers, and the
// goroutines that move packets between the Bind and the PacketSide.
type Engine struct {
	clock    clock.Clock
	log      *slog.Logger
	packets  PacketSide
	returner PeerReturner // packets, if it is one; else nil
	resolver Resolver
	params   Params
	mtu      int
	bufSize  int

	id atomic.Pointer[identity]

	local []netip.Addr // our tunnel addresses, unmapped; see martian

	// bind is the Bind in use; Rebind replaces it, and bindMu orders
	// replacements with Close.
	bind       atomic.Pointer[bindRef]
	bindMu     sync.Mutex
	closing    bool // guarded by bindMu
	bindFailed func(error)

	peersMu sync.RWMutex
	peers   map[PublicKey]*Peer
	allowed atomic.Pointer[allowedIPs]

	indices       indexTable
	cookieChecker cookieChecker
	rateLimiter   *rateLimiter

	handshakes chan *handshakeElement
	// handshakeElements recycles the queue's elements: under a flood of
	// valid-MAC1 initiations, one allocation each was most of the
	// garbage, and RSS grew with the collector's target.
	handshakeElements sync.Pool
	// sendScratch and receiveScratch hold the peers' loops' scratch
	// space (a batch's worth of slices) while a loop runs.
	sendScratch, receiveScratch sync.Pool
	// lastUnderLoad is when handshake messages were last found too
	// frequent, or one waited too long in the queue, in clock
	// nanoseconds.
	lastUnderLoad atomic.Int64
	// handshakeBudget is what handshake messages with a valid MAC1 may
	// still arrive before we are under load; see countHandshake.
	handshakeBudget handshakeBudget

	encryptQueue chan *batch
	decryptQueue chan *batch

	elements *freeList[element]
	batches  *freeList[batch]
	// scratch holds WritePackets' per-call grouping state; it is only
	// capacity, so losing it to the garbage collector costs nothing.
	scratch sync.Pool

	stats Stats

	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// New starts an engine on cfg.Bind. It takes ownership of the Bind and
// closes it in Close.
func New(cfg Config) (*Engine, error) {
	if cfg.Bind == nil {
		return nil, errors.New("protocol: Config.Bind is nil")
	}
	if cfg.Packets == nil {
		return nil, errors.New("protocol: Config.Packets is nil")
	}
	e := &Engine{
		clock:    cfg.Clock,
		log:      cfg.Logger,
		packets:  cfg.Packets,
		resolver: cfg.Resolver,
		mtu:      cfg.MTU,
		peers:    make(map[PublicKey]*Peer),
		done:     make(chan struct{}),
	}
	e.returner, _ = cfg.Packets.(PeerReturner)
	for _, a := range cfg.LocalAddresses {
		e.local = append(e.local, a.Unmap())
	}
	e.bindFailed = cfg.BindFailed
	if e.clock == nil {
		e.clock = clock.System{}
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.resolver == nil {
		e.resolver = net.DefaultResolver
	}
	if e.mtu == 0 {
		e.mtu = DefaultMTU
	}
	if e.mtu < 576 || e.mtu > 65535-MessageTransportOverhead-48 {
		return nil, fmt.Errorf("protocol: MTU %d out of range 576..65455", e.mtu)
	}
	e.params = DefaultParams()
	if cfg.Params != nil {
		e.params = *cfg.Params
	}
	// Room for the header in front, the padded packet and the tag
	// behind: the whole transport message is built in one buffer.
	e.bufSize = MessageTransportHeaderSize + paddedLen(e.mtu, e.mtu) + tagSize
	if e.bufSize < MessageInitiationSize {
		e.bufSize = MessageInitiationSize
	}
	e.elements = newFreeList(maxFreeElements, func() *element { return &element{buf: make([]byte, e.bufSize)} })
	e.batches = newFreeList(maxFreeElements/8, func() *batch { return &batch{} })
	e.indices.init()
	e.rateLimiter = newRateLimiter(e.clock)
	e.allowed.Store(buildAllowedIPs(map[netip.Prefix]*Peer{}))
	e.setIdentity(cfg.PrivateKey)

	workers := cfg.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	e.handshakes = make(chan *handshakeElement, handshakeQueueSize)
	e.handshakeElements.New = func() any { return new(handshakeElement) }
	e.sendScratch.New = func() any { s := make([][]byte, 0, 64); return &s }
	e.receiveScratch.New = func() any { s := make([][]byte, 0, 128); return &s }
	e.encryptQueue = make(chan *batch, cryptoQueueBatches)
	e.decryptQueue = make(chan *batch, cryptoQueueBatches)
	for range workers {
		e.goroutine(e.encryptWorker)
		e.goroutine(e.decryptWorker)
		e.goroutine(e.handshakeWorker)
	}
	e.startBind(cfg.Bind)
	return e, nil
}

// bindRef is a Bind as the engine holds it.
type bindRef struct {
	Bind
	// retired is set once the engine itself closes the Bind (Close or
	// Rebind), so that its receive loops ending is no failure.
	retired atomic.Bool
	// failed reports a failure once, whichever receive loop sees it.
	failed sync.Once
}

// startBind makes b the Bind in use and reads it, one goroutine per
// receive function.
func (e *Engine) startBind(b Bind) {
	ref := &bindRef{Bind: b}
	e.bind.Store(ref)
	for _, recv := range b.Receivers() {
		e.goroutine(func() { e.receiveLoop(ref, recv) })
	}
}

// sock is the Bind in use.
func (e *Engine) sock() Bind { return e.bind.Load().Bind }

// failBind reports that ref stopped working, once, unless the engine
// closed it on purpose.
func (e *Engine) failBind(ref *bindRef, err error) {
	if ref.retired.Load() {
		return
	}
	ref.failed.Do(func() {
		e.log.Warn("host socket failed", "err", err)
		if e.bindFailed != nil {
			e.bindFailed(err)
		}
	})
}

// Rebind moves the engine onto the Bind that open returns, for when the
// host's network changed (a phone moving from Wi-Fi to cellular, a
// laptop waking on another network) or the Bind failed. The old Bind is
// closed first, so that open may listen on the same port. Sessions and
// the connections they carry survive: each peer with a session gets a
// keepalive on it at once, so it learns our new address (WireGuard's
// roaming) without waiting for our next data, and a fresh handshake,
// which proves the new path. If open fails, nothing moves until a later
// Rebind succeeds.
func (e *Engine) Rebind(open func() (Bind, error)) error {
	e.bindMu.Lock()
	if e.closing {
		e.bindMu.Unlock()
		return net.ErrClosed
	}
	old := e.bind.Load()
	if !old.retired.Swap(true) {
		if err := old.Close(); err != nil {
			e.log.Debug("closing the old host socket", "err", err)
		}
	}
	b, err := open()
	if err == nil && b == nil {
		err = errors.New("open returned no Bind")
	}
	if err != nil {
		e.bindMu.Unlock()
		return fmt.Errorf("protocol: rebind: %w", err)
	}
	e.startBind(b)
	e.bindMu.Unlock()

	e.peersMu.RLock()
	peers := make([]*Peer, 0, len(e.peers))
	for _, p := range e.peers {
		peers = append(peers, p)
	}
	e.peersMu.RUnlock()
	for _, p := range peers {
		if p.keypairs.currentKeypair() == nil {
			continue // its next packet starts a handshake anyway
		}
		p.sendKeepalive()
		p.handshake.mu.Lock()
		p.handshake.lastSentHandshake = time.Time{}
		p.handshake.mu.Unlock()
		// A retry, so that a peer whose handshakes were already failing
		// keeps its count of attempts and still gives up in time.
		p.sendInitiation(true)
	}
	return nil
}

// Trim gives back the idle packet buffers a burst left behind, beyond a
// batch's worth. The engine keeps idle buffers so that steady traffic
// allocates nothing; after a burst (a mass close, a flood) they would
// otherwise stay for the life of the process. Traffic after a Trim
// allocates until the free lists are full again.
func (e *Engine) Trim() {
	e.elements.trim(trimKeep)
	e.batches.trim(trimKeep / 8)
}

func (e *Engine) goroutine(f func()) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		f()
	}()
}

func (e *Engine) identity() *identity { return e.id.Load() }

func (e *Engine) setIdentity(k PrivateKey) {
	id := &identity{private: k, dh: newStaticKey(k)}
	if !k.IsZero() {
		id.public = k.PublicKey()
	}
	id.responderHash = mixHash(initialHash, id.public[:])
	e.id.Store(id)
	e.cookieChecker.init(e.clock, id.public)
}

// PublicKey is our identity as peers know it.
func (e *Engine) PublicKey() PublicKey { return e.identity().public }

// SetPrivateKey changes our identity. Every session was made with the old
// key, so all are dropped and renegotiated; a peer whose public key is our
// new one is removed, since talking to ourselves is meaningless.
func (e *Engine) SetPrivateKey(k PrivateKey) {
	e.peersMu.Lock()
	defer e.peersMu.Unlock()
	e.setIdentity(k)
	id := e.identity()
	pub := id.public
	for pk, p := range e.peers {
		if pk.Equal(pub) {
			e.removePeerLocked(p)
			continue
		}
		p.handshake.mu.Lock()
		p.precomputeLocked(id)
		p.handshake.mu.Unlock()
		p.expireKeypairs()
	}
}

// MTU is the largest plaintext packet the engine carries.
func (e *Engine) MTU() int { return e.mtu }

func (e *Engine) lookupPeer(k PublicKey) *Peer {
	e.peersMu.RLock()
	defer e.peersMu.RUnlock()
	return e.peers[k]
}

// Close stops every goroutine, closes the Bind and forgets all keys. It
// is safe to call more than once.
func (e *Engine) Close() error {
	var err error
	e.closeOnce.Do(func() {
		// Order matters: the peers' in-order goroutines may be waiting
		// on a batch the crypto workers still have to finish, so the
		// workers stop only after the peers have.
		e.bindMu.Lock()
		e.closing = true
		if ref := e.bind.Load(); !ref.retired.Swap(true) {
			err = ref.Close()
		}
		e.bindMu.Unlock()
		e.peersMu.Lock()
		all := make([]*Peer, 0, len(e.peers))
		for _, p := range e.peers {
			all = append(all, p)
		}
		e.retableLocked(nil, all)
		e.peersMu.Unlock()
		close(e.done)
		e.wg.Wait()
		e.setIdentity(PrivateKey{})
	})
	return err
}

// PrivateKey returns our static private key. It exists only for the UAPI
// socket (package uapi), whose `get` must hand the key to `wg showconf`
// exactly as wireguard-go does; that socket is mode 0600, so only the
// owner, who could read the config file anyway, can ask. Nothing else
// should call it: every other path treats the key as write-only.
func (e *Engine) PrivateKey() PrivateKey { return e.identity().private }

// ListenPort is the UDP port the engine's Bind listens on, or 0 when the
// Bind does not say (an in-memory Bind in tests). A Bind reports its port
// by having a Port() uint16 method, as udpbind.Bind does.
func (e *Engine) ListenPort() uint16 {
	if b, ok := e.sock().(interface{ Port() uint16 }); ok {
		return b.Port()
	}
	return 0
}
