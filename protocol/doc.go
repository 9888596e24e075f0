// Package protocol is wgbore's WireGuard engine: sections 5 and 6 of the
// WireGuard whitepaper (the Noise handshake, cookies, sessions, the replay
// window, the timers, cryptokey routing and the encrypted data path), and
// the host UDP sockets it runs on. It is wire-compatible with the other
// WireGuard implementations; its tests run wireguard-go as the peer.
//
// It deliberately stops at IP packets. It never imports gVisor: the TCP/IP
// stack that makes and consumes those packets is the job of package netstack
// ([github.com/wgbore/wgbore/netstack]), which plugs in as the engine's
// [PacketSide]. The split keeps the engine readable next to the whitepaper,
// and testable with raw IP packets and no stack at all.
//
// # Using the engine
//
// [New] starts an [Engine] from a [Config]. Everything the engine depends on
// comes in through it, and nothing is global, so tests can replace each
// part:
//
//   - Bind, a [Bind]: the engine's only way to the outside world, UDP
//     datagrams moved in batches. New takes ownership of it and runs one
//     goroutine per [ReceiveFunc]; [Engine.Close] closes it. udpbind.Listen
//     opens the host one; tests use an in-memory one.
//   - Packets, a [PacketSide]: where decrypted IP packets go, a batch at a
//     time. If it is also a [PeerReturner], it hears when a handshake
//     message or keepalive ends a silence of [ReturnAfterSilence] or more.
//   - Clock, a [clock.Clock]: every timer, session age, cookie secret and
//     rate-limiter bucket reads it, so a test can drive hours of protocol
//     time with [clock.Manual]. A nil Clock means [clock.System].
//   - Logger, Resolver (for hostname endpoints), MTU ([DefaultMTU] when
//     0), Workers (how many encrypt, decrypt and handshake goroutines each;
//     GOMAXPROCS when 0) and Params, the whitepaper's limits, which only
//     tests override (see [Params] and [DefaultParams]).
//
// Peers are added or updated with [Engine.SetPeer] and a [PeerConfig], as a
// peer section of wg0.conf describes one, and removed with
// [Engine.RemovePeer], all while traffic flows; an update keeps the peer's
// sessions. [Engine.UpdatePeers] does many of both at once, with one
// rebuild of the routing table, as a reload of a server with thousands
// of peers needs. Outbound IP packets enter through [Engine.WritePackets], or
// [Engine.WriteScattered] for packets held in pieces ([ScatteredPackets]);
// inbound ones leave through the PacketSide's DeliverPackets.
// [Engine.Handshake] starts a handshake before the first packet needs one.
// [Engine.Peers], [Engine.Peer] and [Engine.Stats] report what wg show
// would, and more. [Engine.Close] stops everything.
//
//	bind, err := udpbind.Listen(udpbind.Config{Port: 51820})
//	eng, err := protocol.New(protocol.Config{PrivateKey: key, Bind: bind, Packets: stack})
//	err = eng.SetPeer(protocol.PeerConfig{PublicKey: peer, Endpoint: "vpn.example.net:51820",
//		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}})
//	eng.WritePackets(ipPackets) // inbound packets arrive at stack.DeliverPackets
//
// Keys are [PrivateKey], [PublicKey] and [PresharedKey], read in wg's base64
// form by [ParsePrivateKey], [ParsePublicKey] and [ParsePresharedKey] and
// made by [GeneratePrivateKey] and [GeneratePresharedKey]. Private keys are
// clamped as the kernel clamps them, so an unclamped key from another tool
// gives the same public key.
//
// # Sending
//
// WritePackets copies each packet into a recycled buffer, the only copy on
// the way out, leaving [MessageTransportHeaderSize] of room in front and
// room for the tag behind, so that encryption happens in place. The
// destination address picks the peer; packets are grouped by peer and
// appended to that peer's staging queue. Without a usable session they wait
// there, bounded (the oldest go first), while a handshake runs, and leave as
// soon as it completes. The same bound drops the oldest while the peer's
// in-order queue is full because sealing or the socket is behind: TCP
// retransmits them, as after a router's full queue. With a session, each
// staged packet is given its nonce under the peer's send lock, padded to a
// multiple of 16 bytes (capped at the MTU) so lengths leak less, and sealed.
//
// A batch of at most a few packets, with none of the peer's batches queued
// ahead of it, is sealed and sent by the calling goroutine: for
// acknowledgements and request/response traffic, waking two goroutines would
// cost more than the crypto. Larger batches go both to the peer's in-order
// queue and to the shared queue of the encrypt workers. A batch's mutex is
// held until a worker has sealed it, and the peer's send goroutine takes
// batches in queue order and waits on each one's mutex; that is how parallel
// crypto keeps one peer's wire order equal to its nonce order. Each batch
// leaves in one call to the Bind's Send.
//
// # Receiving
//
// Each receive goroutine reads a batch of datagrams and sorts it. Messages
// are parsed strictly: exact sizes ([MessageInitiationSize],
// [MessageResponseSize], [MessageCookieReplySize]), a known type byte and
// zero reserved bytes, or they are dropped as malformed. Consecutive
// transport messages for one receiver index become one batch for that
// session; they are decrypted either inline (small batches, nothing of the
// peer's queued ahead) or by the decrypt workers, then checked in order
// under the peer's receive lock: authentication, the replay window
// ([ReplayWindowSize] counters wide, so parallel decryption and reordering
// networks do not cost honest packets), the inner packet's length, and its
// source address against AllowedIPs. One peer's deliveries never overlap and
// keep each socket's arrival order; different peers deliver concurrently.
// When a peer's queue is full the receive goroutine waits, so excess waits
// in the socket's buffer instead of costing a decryption first.
//
// Handshake messages that pass the MAC1 check (below) are copied to a
// bounded queue for the handshake workers, so Curve25519 work stays off the
// receive path.
//
// The data path allocates nothing under steady traffic: packet buffers and
// batches come from free lists that, unlike a sync.Pool, the garbage
// collector does not empty, each bounded so a burst's surplus is freed;
// [Engine.Trim] gives back idle buffers after a burst.
//
// # Handshakes and their defences
//
// The handshake is Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s with WireGuard's
// identifiers. Each peer's static-static Diffie-Hellman result is computed
// once, when the peer or our private key is set, and low-order points are
// refused. An initiation carries a TAI64N timestamp that must be newer than
// the last one accepted from that peer, and initiations faster than
// [HandshakeInitiationRate] are refused. Session indices are random.
//
// MAC1, keyed by the receiver's public key, is checked on every initiation
// and response in the receive goroutine, before any queueing or Curve25519
// work. Under load (handshake messages with a valid MAC1 faster than a
// budget that lets a burst of a couple of thousand through and then a few
// hundred a second, or one that waited over a second in the handshake
// queue, and for [UnderLoadAfterTime] after either) a message without a
// valid MAC2 is answered with a cookie reply instead: a MAC of the source
// address and port under a secret rotated every [CookieRefreshTime], sealed
// with XChaCha20-Poly1305 to the MAC1 it answers. The queue's wait counts,
// not its depth (wireguard-go's and the kernel's test): a server's peers
// all coming back after a restart fill the queue deep while the workers
// still answer each in time, and a cookie reply would cost each a retry
// [RekeyTimeout] later. Under load, messages that do carry MAC2 then pass a
// per-source token bucket (per IPv4 address or IPv6 /64). Outgoing
// handshake messages carry MAC1, and MAC2 while we hold a fresh cookie from
// that peer.
//
// # Sessions and timers
//
// A peer has a current, a previous and a next session. The responder's new
// session stays next until the initiator's first transport message on it
// confirms that both ends have it; previous serves packets still in flight
// during a rekey. On the injected clock, each peer runs the five timers of
// section 6 of the whitepaper: handshake retransmission every [RekeyTimeout]
// plus up to [RekeyTimeoutJitterMax] until [RekeyAttemptTime] is spent (then
// staged packets are dropped); a keepalive after [KeepaliveTimeout] of
// received data left unanswered; a new handshake when sent data hears
// nothing back; the persistent keepalive; and zeroing of key material three
// times [RejectAfterTime] after the last session was made. Either side
// rekeys after [RekeyAfterMessages]; only the initiator rekeys on age, after
// [RekeyAfterTime], and shortly before [RejectAfterTime] if it only
// receives. No session is used past [RejectAfterTime] or
// [RejectAfterMessages].
//
// The endpoint follows the source of the latest authenticated packet, so NAT
// rebinding and roaming need no configuration. A hostname endpoint is
// resolved in the background when the peer is set, and again while
// handshakes or sent data go unanswered; no handshake waits on DNS.
//
// # Cryptokey routing
//
// AllowedIPs is one immutable table for all peers, swapped atomically on
// change, so the per-packet lookup takes no lock and reconfiguring never
// stalls traffic. The longest matching prefix names one peer. Outbound, the
// destination picks the peer to encrypt for; inbound, a decrypted packet
// whose source address does not route back to the peer it authenticated as
// is dropped. So is one whose source no peer may use whatever its
// AllowedIPs (0.0.0.0/0 covers them all): loopback, unspecified,
// multicast, broadcast, IPv4-mapped, or one of [Config.LocalAddresses].
// [Engine.PeerFor] exposes the outbound lookup.
//
// # Statistics
//
// Each discarded packet is counted under one [DropReason] (no route, not
// allowed IP, replay, staged overflow, cookie required, rate limited and so
// on); [Engine.Stats] returns a [StatsSnapshot] of them and of the cookie
// replies sent. Per-peer transfer, handshake and roaming counters are in
// [PeerStatus].
//
// # Secrets
//
// [PrivateKey] and [PresharedKey] never print themselves: fmt verbs, slog
// and JSON all see a redaction marker. Key comparisons and zero checks run
// in constant time ([PrivateKey.Equal], [PublicKey.Equal],
// [PresharedKey.Equal]), and so do MAC checks. Key-parsing errors wrap
// [ErrBadKey] without repeating the input, handshake errors say which check
// failed without key material, and logs identify peers by public key.
// Intermediate handshake secrets are wiped after use; the X25519 scalars
// inside crypto/ecdh keys and the AEADs' own copies of the transport keys
// cannot be, so their references are dropped instead. [Engine.PrivateKey]
// and [Engine.PeerPresharedKey] exist only for the UAPI socket.
//
// # Sub-packages
//
//   - [github.com/wgbore/wgbore/protocol/clock]: the engine's only source
//     of time, real or advanced by hand.
//   - [github.com/wgbore/wgbore/protocol/memnet]: an in-memory stand-in for
//     UDP, with seeded, reproducible loss, reordering, duplication and delay.
//   - [github.com/wgbore/wgbore/protocol/udpbind]: the host's UDP sockets,
//     a Bind with one socket per address family, batched on Linux and
//     portable to every other system.
//   - [github.com/wgbore/wgbore/protocol/uapi]: WireGuard's userspace API
//     on a unix socket, so the real wg tool can show and change an engine.
//   - [github.com/wgbore/wgbore/protocol/wgtest]: helpers for tests that
//     run wireguard-go as an independent peer, with a fault-injecting relay.
package protocol
