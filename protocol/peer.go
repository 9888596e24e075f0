package protocol

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// PeerConfig describes one peer, as a [Peer] section of wg0.conf does.
type PeerConfig struct {
	PublicKey    PublicKey
	PresharedKey PresharedKey
	// Endpoint is "ip:port", "[v6]:port" or "host:port". A hostname is
	// resolved when the peer is set and again while handshakes keep
	// failing, so a peer behind dynamic DNS is followed. Empty means we
	// only learn the endpoint from the peer's own authenticated packets.
	Endpoint            string
	AllowedIPs          []netip.Prefix
	PersistentKeepalive time.Duration
}

// Peer is one remote WireGuard peer and its sessions.
type Peer struct {
	engine *Engine
	public PublicKey

	handshake handshake
	keypairs  keypairs
	cookies   cookieGenerator

	endpointMu   sync.RWMutex
	endpoint     netip.AddrPort
	endpointHost string // host:port to re-resolve, "" for a literal
	resolving    atomic.Bool

	persistentKeepalive atomic.Int64 // nanoseconds

	timers peerTimers

	stagedMu sync.Mutex
	staged   []*element
	// sendMu orders nonce assignment with the hand-off to the outbound
	// queue, so that the wire order of one peer's packets is their nonce
	// order and the peer's replay window sees them in sequence.
	sendMu sync.Mutex
	// txNonce and txBufs serve batches sent inline, under sendMu.
	txNonce [chacha20poly1305.NonceSize]byte
	txBufs  [][]byte
	// txPending counts batches handed to sendLoop and not yet sent; a
	// batch goes out inline only when it is zero, so wire order stays
	// nonce order.
	txPending atomic.Int32

	// rxMu is held while a batch is checked and delivered, by receiveLoop
	// or by a receive goroutine consuming a small batch inline.
	// rxPending counts batches queued for receiveLoop and not yet
	// delivered; inline delivery waits for it to be zero, so one socket's
	// packets reach the stack in the order they arrived.
	rxMu      sync.Mutex
	rxPending atomic.Int32

	outbound chan *batch
	inbound  chan *batch

	stats peerStats
	// heardAt is when the last authenticated packet came from the peer
	// (unix nanoseconds of the engine's clock; 0: never), for
	// PeerReturner.
	heardAt atomic.Int64

	// txRunning and rxRunning are set while a sendLoop or receiveLoop
	// goroutine runs. The loops run only while their queue has batches,
	// so an idle peer costs no goroutine: see startLoop.
	txRunning, rxRunning atomic.Bool
	// loopMu orders startLoop's count of a new goroutine with stop's
	// wait for them all.
	loopMu sync.Mutex
	// runSend and runReceive are the loops' goroutine bodies, made once:
	// a go statement with a ready function value allocates nothing.
	runSend, runReceive func()

	removed atomic.Bool
	done    chan struct{}
	wg      sync.WaitGroup
}

type peerStats struct {
	rxBytes, txBytes    atomic.Uint64
	lastHandshake       atomic.Int64 // unix nanoseconds of the clock
	handshakeAttempts   atomic.Uint64
	handshakesCompleted atomic.Uint64
	handshakeTimeouts   atomic.Uint64
	endpointChanges     atomic.Uint64
	returns             atomic.Uint64
}

// PeerStatus is a snapshot of one peer, for `wg show`-style reporting.
type PeerStatus struct {
	PublicKey           PublicKey
	HasPresharedKey     bool
	Endpoint            netip.AddrPort
	EndpointHost        string
	AllowedIPs          []netip.Prefix
	PersistentKeepalive time.Duration
	LastHandshake       time.Time
	RxBytes, TxBytes    uint64
	HandshakeAttempts   uint64
	HandshakesCompleted uint64
	HandshakeTimeouts   uint64
	EndpointChanges     uint64
	// Returns counts the times the peer was heard again after a silence
	// of ReturnAfterSilence or more.
	Returns uint64
}

// SetPeer adds a peer or updates the one with the same public key. An
// update keeps the peer's sessions: changing AllowedIPs, the endpoint or
// keepalive must not cost a handshake or a dropped packet.
func (e *Engine) SetPeer(cfg PeerConfig) error {
	u, err := e.preparePeer(cfg)
	if err != nil {
		return err
	}
	_, err = e.applyPeers([]peerUpdate{u}, nil)
	return err
}

// UpdatePeers sets each peer of set, as SetPeer does, and removes each
// of remove, as RemovePeer does, with one rebuild of the routing table
// for all of them: each SetPeer or RemovePeer rebuilds it, copying every
// other peer's prefixes, so a reload that adds or removes thousands of
// peers one by one costs their number squared. errs has an entry per
// peer of set: nil where it was applied, else why not, and that peer is
// left as it was. removed lists the keys of remove that were peers.
//
// Each key may be named once: a later entry of set with the same key,
// or an entry of set whose key is also in remove, is refused, since the
// order between them would be a guess.
func (e *Engine) UpdatePeers(set []PeerConfig, remove []PublicKey) (errs []error, removed []PublicKey) {
	errs = make([]error, len(set))
	named := make(map[PublicKey]bool, len(set)+len(remove))
	for _, k := range remove {
		named[k] = true
	}
	ups := make([]peerUpdate, 0, len(set))
	for i, cfg := range set {
		if named[cfg.PublicKey] {
			errs[i] = fmt.Errorf("peer %s: named twice in one update", cfg.PublicKey)
			continue
		}
		named[cfg.PublicKey] = true
		u, err := e.preparePeer(cfg)
		if err != nil {
			errs[i] = err
			continue
		}
		ups = append(ups, u)
	}
	e.precomputeNew(ups)
	defer func() {
		// A precomputed DH that no new peer took (another call added
		// the peer first) is key material too.
		for i := range ups {
			wipe(ups[i].staticStatic[:])
		}
	}()
	removed, err := e.applyPeers(ups, remove)
	if err != nil {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
	}
	return errs, removed
}

// peerUpdate is a checked PeerConfig with its endpoint parsed.
type peerUpdate struct {
	cfg     PeerConfig
	literal netip.AddrPort // the endpoint, when it is an address
	host    string         // the endpoint, when it is a name to resolve

	// The static-static DH of a new peer, when computed before peersMu
	// was taken (precomputeNew), and the identity it was computed with.
	staticStatic   [32]byte
	staticStaticOK bool
	staticID       *identity
}

// precomputeNew computes the static-static DH of each peer of ups that
// is not a peer yet, before applyPeers takes peersMu: a scalar
// multiplication each, which for a reload that adds thousands of peers
// would otherwise hold the lock, and a core, for as long as they all
// take. It gives way to other goroutines between them, so traffic keeps
// moving while a large reload is applied.
func (e *Engine) precomputeNew(ups []peerUpdate) {
	fresh := make([]bool, len(ups))
	e.peersMu.RLock()
	for i := range ups {
		_, exists := e.peers[ups[i].cfg.PublicKey]
		fresh[i] = !exists
	}
	e.peersMu.RUnlock()
	id := e.identity()
	if id.dh == nil {
		return
	}
	for i := range ups {
		if !fresh[i] {
			continue
		}
		u := &ups[i]
		u.staticStatic, u.staticStaticOK = dh(id.dh, (*[32]byte)(&u.cfg.PublicKey))
		u.staticID = id
		runtime.Gosched()
	}
}

func (e *Engine) preparePeer(cfg PeerConfig) (peerUpdate, error) {
	if cfg.PublicKey.IsZero() {
		return peerUpdate{}, errors.New("peer: public key is empty")
	}
	if cfg.PublicKey.Equal(e.identity().public) {
		return peerUpdate{}, errors.New("peer: public key is our own")
	}
	if cfg.PersistentKeepalive < 0 || cfg.PersistentKeepalive > 65535*time.Second {
		return peerUpdate{}, fmt.Errorf("peer %s: persistent keepalive %v out of range 0..65535s", cfg.PublicKey, cfg.PersistentKeepalive)
	}
	u := peerUpdate{cfg: cfg}
	if cfg.Endpoint != "" {
		ap, err := netip.ParseAddrPort(cfg.Endpoint)
		if err == nil {
			u.literal = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		} else {
			h, port, err := net.SplitHostPort(cfg.Endpoint)
			if err != nil || h == "" {
				return peerUpdate{}, fmt.Errorf("peer %s: endpoint %q: want host:port", cfg.PublicKey, cfg.Endpoint)
			}
			if _, err := strconv.ParseUint(port, 10, 16); err != nil {
				return peerUpdate{}, fmt.Errorf("peer %s: endpoint %q: bad port", cfg.PublicKey, cfg.Endpoint)
			}
			u.host = cfg.Endpoint
		}
	}
	for _, p := range cfg.AllowedIPs {
		if !p.IsValid() {
			return peerUpdate{}, fmt.Errorf("peer %s: invalid allowed IP prefix", cfg.PublicKey)
		}
	}
	return u, nil
}

// applyPeers sets the checked peers of ups and removes those of remove,
// with one new routing table for all of them, and returns the keys it
// removed.
func (e *Engine) applyPeers(ups []peerUpdate, remove []PublicKey) ([]PublicKey, error) {
	e.peersMu.Lock()
	select {
	case <-e.done:
		e.peersMu.Unlock()
		return nil, net.ErrClosed
	default:
	}
	peers := make([]*Peer, len(ups))
	added := make([]bool, len(ups))
	changes := make([]ownership, 0, len(ups)+len(remove))
	for i := range ups {
		// By index: an update may carry a precomputed DH, which a copy
		// would leave unwiped.
		u := &ups[i]
		p, exists := e.peers[u.cfg.PublicKey]
		if !exists {
			p = e.newPeer(u)
			e.peers[u.cfg.PublicKey] = p
		}
		peers[i], added[i] = p, !exists
		p.handshake.mu.Lock()
		p.handshake.presharedKey = u.cfg.PresharedKey
		p.handshake.mu.Unlock()
		changes = append(changes, ownership{p, u.cfg.AllowedIPs})
	}
	var removed []*Peer
	for _, k := range remove {
		if p := e.peers[k]; p != nil {
			removed = append(removed, p)
		}
	}
	e.retableLocked(changes, removed)
	keys := make([]PublicKey, len(removed))
	for i, p := range removed {
		e.log.Info("peer removed", "peer", p.public)
		keys[i] = p.public
	}
	e.peersMu.Unlock()

	for i := range ups {
		u, p := &ups[i], peers[i]
		if u.cfg.Endpoint != "" {
			p.endpointMu.Lock()
			p.endpointHost = u.host
			if u.literal.IsValid() {
				p.endpoint = u.literal
			}
			p.endpointMu.Unlock()
			if u.host != "" {
				p.resolveEndpoint()
			}
		}
		p.setPersistentKeepalive(u.cfg.PersistentKeepalive)
		if added[i] {
			e.log.Info("peer added", "peer", p.public)
		}
	}
	return keys, nil
}

// RemovePeer forgets a peer and its sessions. It reports whether the peer
// existed.
func (e *Engine) RemovePeer(k PublicKey) bool {
	e.peersMu.Lock()
	defer e.peersMu.Unlock()
	p := e.peers[k]
	if p == nil {
		return false
	}
	e.removePeerLocked(p)
	e.log.Info("peer removed", "peer", k)
	return true
}

func (e *Engine) removePeerLocked(p *Peer) { e.retableLocked(nil, []*Peer{p}) }

// retableLocked gives the peers of changes their prefixes and forgets
// the peers of gone, with one rebuild of the routing table, then stops
// gone. They stop under peersMu: Close takes it before it stops the
// crypto workers, which a stopping peer's loops may still wait on.
func (e *Engine) retableLocked(changes []ownership, gone []*Peer) {
	for _, p := range gone {
		delete(e.peers, p.public)
		changes = append(changes, ownership{p, nil})
	}
	if len(changes) > 0 {
		e.allowed.Store(e.allowed.Load().withAll(changes))
	}
	for _, p := range gone {
		p.stop()
	}
}

// NumPeers is how many peers the engine has: cheaper than len(Peers()).
func (e *Engine) NumPeers() int {
	e.peersMu.RLock()
	defer e.peersMu.RUnlock()
	return len(e.peers)
}

// Peers lists every peer's status.
func (e *Engine) Peers() []PeerStatus {
	e.peersMu.RLock()
	peers := make([]*Peer, 0, len(e.peers))
	for _, p := range e.peers {
		peers = append(peers, p)
	}
	e.peersMu.RUnlock()
	prefixes := e.allowed.Load().prefixesByPeer()
	out := make([]PeerStatus, 0, len(peers))
	for _, p := range peers {
		out = append(out, p.status(prefixes[p]))
	}
	return out
}

// PeerFor returns the peer whose AllowedIPs route a, by the longest
// matching prefix: the lookup the send path makes, lock-free and
// allocation-free, so a caller may make it per packet. An IPv4-mapped
// IPv6 address is looked up as IPv6; unmap it first to mean the IPv4.
func (e *Engine) PeerFor(a netip.Addr) (PublicKey, bool) {
	p := e.allowed.Load().lookup(a)
	if p == nil {
		return PublicKey{}, false
	}
	return p.public, true
}

// Handshake starts a handshake with the peer now instead of at its first
// packet, so a program learns at start whether the peer answers, and its
// first connection does not pay for the round trip. Retries then follow
// the usual timers: every RekeyTimeout until RekeyAttemptTime is spent.
// It reports false when there is no such peer.
func (e *Engine) Handshake(k PublicKey) bool {
	p := e.lookupPeer(k)
	if p == nil {
		return false
	}
	p.sendInitiation(false)
	return true
}

// Peer returns one peer's status.
func (e *Engine) Peer(k PublicKey) (PeerStatus, bool) {
	p := e.lookupPeer(k)
	if p == nil {
		return PeerStatus{}, false
	}
	return p.status(p.engine.allowed.Load().prefixesOf(p)), true
}

// status is the peer's state, with allowed its AllowedIPs as the
// current table has them.
func (p *Peer) status(allowed []netip.Prefix) PeerStatus {
	p.handshake.mu.Lock()
	hasPSK := !p.handshake.presharedKey.IsZero()
	p.handshake.mu.Unlock()
	ep, host := p.endpointAndHost()
	s := PeerStatus{
		PublicKey:           p.public,
		HasPresharedKey:     hasPSK,
		Endpoint:            ep,
		EndpointHost:        host,
		AllowedIPs:          allowed,
		PersistentKeepalive: time.Duration(p.persistentKeepalive.Load()),
		RxBytes:             p.stats.rxBytes.Load(),
		TxBytes:             p.stats.txBytes.Load(),
		HandshakeAttempts:   p.stats.handshakeAttempts.Load(),
		HandshakesCompleted: p.stats.handshakesCompleted.Load(),
		HandshakeTimeouts:   p.stats.handshakeTimeouts.Load(),
		EndpointChanges:     p.stats.endpointChanges.Load(),
		Returns:             p.stats.returns.Load(),
	}
	if ns := p.stats.lastHandshake.Load(); ns != 0 {
		s.LastHandshake = time.Unix(0, ns)
	}
	return s
}

// newPeer makes the peer of u, with the static-static DH computed for it
// beforehand if our identity has not changed since.
func (e *Engine) newPeer(u *peerUpdate) *Peer {
	k := u.cfg.PublicKey
	p := &Peer{
		engine:   e,
		public:   k,
		outbound: make(chan *batch, peerQueueBatches),
		inbound:  make(chan *batch, peerQueueBatches),
		done:     make(chan struct{}),
	}
	p.handshake.remoteStatic = k
	p.handshake.initiatorHash = mixHash(initialHash, k[:])
	if id := e.identity(); u.staticID == id {
		p.handshake.staticStatic, p.handshake.staticStaticOK = u.staticStatic, u.staticStaticOK
		wipe(u.staticStatic[:])
	} else {
		p.precomputeLocked(id)
	}
	p.cookies.init(e.clock, k)
	p.timers.init(p)
	p.runSend = func() { defer p.wg.Done(); p.sendLoop() }
	p.runReceive = func() { defer p.wg.Done(); p.receiveLoop() }
	return p
}

// startLoop starts run (runSend or runReceive) on a goroutine of its own
// unless its loop runs already (running). A batch was just queued for it;
// the loop drains the queue and returns when it is empty. A thousand
// idle peers thus hold no goroutine, where two parked loops each held a
// stack and scratch space for a batch.
func (p *Peer) startLoop(running *atomic.Bool, run func()) {
	if !running.CompareAndSwap(false, true) {
		return
	}
	p.loopMu.Lock()
	defer p.loopMu.Unlock()
	if p.removed.Load() {
		running.Store(false)
		return
	}
	p.wg.Add(1)
	go run()
}

// loopIdle is a loop's way out once its queue looked empty: it clears
// running and reports true, unless a batch came in meanwhile and the
// loop takes it up again.
func loopIdle(running *atomic.Bool, queue chan *batch) bool {
	running.Store(false)
	return len(queue) == 0 || !running.CompareAndSwap(false, true)
}

// precomputeLocked computes the static-static DH, which every handshake
// with this peer needs and which only changes with a key, from our
// identity id.
func (p *Peer) precomputeLocked(id *identity) {
	h := &p.handshake
	if id.dh == nil {
		h.staticStaticOK = false
		wipe(h.staticStatic[:])
		return
	}
	h.staticStatic, h.staticStaticOK = dh(id.dh, (*[32]byte)(&h.remoteStatic))
}

func (p *Peer) endpointAndHost() (netip.AddrPort, string) {
	p.endpointMu.RLock()
	defer p.endpointMu.RUnlock()
	return p.endpoint, p.endpointHost
}

// roam moves the endpoint to where an authenticated packet came from: the
// peer's NAT rebinding or network change is followed without config.
func (p *Peer) roam(src netip.AddrPort) {
	p.endpointMu.RLock()
	same := p.endpoint == src
	p.endpointMu.RUnlock()
	if same || !src.IsValid() {
		return
	}
	p.endpointMu.Lock()
	if p.endpoint != src {
		p.endpoint = src
		p.stats.endpointChanges.Add(1)
	}
	p.endpointMu.Unlock()
}

// resolveEndpoint looks up the endpoint hostname in the background; the
// handshake path must never wait on DNS.
func (p *Peer) resolveEndpoint() {
	p.endpointMu.RLock()
	hostport := p.endpointHost
	p.endpointMu.RUnlock()
	if hostport == "" || !p.resolving.CompareAndSwap(false, true) {
		return
	}
	e := p.engine
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer p.resolving.Store(false)
		host, portStr, _ := net.SplitHostPort(hostport)
		port, _ := strconv.ParseUint(portStr, 10, 16)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		go func() {
			select {
			case <-e.done:
			case <-p.done:
			case <-ctx.Done():
			}
			cancel()
		}()
		addrs, err := e.resolver.LookupNetIP(ctx, "ip", host)
		if err != nil || len(addrs) == 0 {
			e.log.Warn("cannot resolve peer endpoint", "peer", p.public, "endpoint", hostport, "err", err)
			return
		}
		ap := netip.AddrPortFrom(addrs[0].Unmap(), uint16(port))
		p.endpointMu.Lock()
		changed := p.endpointHost == hostport && p.endpoint != ap
		if changed {
			p.endpoint = ap
			p.stats.endpointChanges.Add(1)
		}
		p.endpointMu.Unlock()
		if changed {
			e.log.Info("peer endpoint resolved", "peer", p.public, "endpoint", hostport, "addr", ap)
		}
	}()
}

func (p *Peer) setPersistentKeepalive(d time.Duration) {
	old := time.Duration(p.persistentKeepalive.Swap(int64(d)))
	if d > 0 && old != d {
		// Open the NAT mapping now rather than after the first traffic.
		p.sendKeepalive()
	}
	if d == 0 {
		p.timers.persistentKeepalive.del()
	}
}

// stop ends the peer's goroutines and timers and forgets its keys.
func (p *Peer) stop() {
	if !p.removed.CompareAndSwap(false, true) {
		return
	}
	close(p.done)
	p.timers.stopAll()
	// No loop starts after this: startLoop checks removed under loopMu.
	p.loopMu.Lock()
	p.loopMu.Unlock()
	p.wg.Wait()
	p.expireKeypairs()
	p.handshake.mu.Lock()
	p.engine.indices.remove(p.handshake.localIndex)
	p.handshake.localIndex = 0
	p.handshake.clearLocked()
	wipe(p.handshake.staticStatic[:])
	wipe(p.handshake.presharedKey[:])
	p.handshake.mu.Unlock()
	p.flushStaged()
}

// expireKeypairs drops every session. The AEAD states themselves cannot
// be wiped (x/crypto keeps its own copy of the key), so the references and
// the indices that reach them go.
func (p *Peer) expireKeypairs() {
	k := &p.keypairs
	k.mu.Lock()
	olds := []*keypair{k.previous, k.current, k.next}
	k.previous, k.current, k.next = nil, nil, nil
	k.mu.Unlock()
	for _, kp := range olds {
		if kp != nil {
			p.engine.indices.remove(kp.localIndex)
		}
	}
}

// zeroKeyMaterial runs 3×RejectAfterTime after the last session was made:
// nothing the peer and we agreed on is useful any more, so nothing of it
// should stay in memory.
func (p *Peer) zeroKeyMaterial() {
	p.expireKeypairs()
	p.handshake.mu.Lock()
	p.engine.indices.remove(p.handshake.localIndex)
	p.handshake.localIndex = 0
	p.handshake.clearLocked()
	p.handshake.mu.Unlock()
}

// PeerPresharedKey returns one peer's preshared key. Like
// Engine.PrivateKey it exists only for the UAPI socket: a UAPI `set` that
// changes a peer's endpoint or AllowedIPs must carry the unchanged key
// into SetPeer, and `get` must report it for `wg showconf`.
func (e *Engine) PeerPresharedKey(k PublicKey) (PresharedKey, bool) {
	p := e.lookupPeer(k)
	if p == nil {
		return PresharedKey{}, false
	}
	p.handshake.mu.Lock()
	defer p.handshake.mu.Unlock()
	return p.handshake.presharedKey, true
}

// heard notes an authenticated packet from the peer and reports whether
// it ends a silence of ReturnAfterSilence or more. A peer never heard
// before has not returned: there is nothing of ours to re-send yet.
func (p *Peer) heard() bool {
	now := p.engine.clock.Now().UnixNano()
	last := p.heardAt.Swap(now)
	back := last != 0 && now-last >= int64(ReturnAfterSilence)
	if back {
		p.stats.returns.Add(1)
	}
	return back
}

// returned tells the packet side that the peer is back after a silence.
func (p *Peer) returned() {
	p.engine.log.Debug("peer heard again after a silence", "peer", p.public)
	if r := p.engine.returner; r != nil {
		r.PeerReturned(p.public)
	}
}
