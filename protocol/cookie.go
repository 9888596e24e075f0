package protocol

import (
	"crypto/rand"
	"hash"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/wgbore/wgbore/protocol/clock"
)

// cookieChecker is the responder's half of WireGuard's DoS defence. MAC1,
// keyed by our public key, proves the sender knows who we are and is
// checked on every handshake message before any Curve25519 work. Under
// load we also demand MAC2, keyed by a cookie that only a sender able to
// receive at its claimed address can have: we hand it out in a cookie reply,
// encrypted to the MAC1 it answers so only that sender can read it.
type cookieChecker struct {
	clock clock.Clock

	mu           sync.RWMutex
	mac1Key      [blake2s.Size]byte // HASH(LABEL_MAC1 || our public key)
	cookieKey    [blake2s.Size]byte // HASH(LABEL_COOKIE || our public key)
	secret       [blake2s.Size]byte // rotated every CookieRefreshTime
	secretMinted time.Time

	// mac1States holds *macHasher keyed with mac1Key, for checkMAC1's
	// concurrent readers; one keyed with an older key is dropped.
	mac1States sync.Pool
}

// macHasher is a keyed BLAKE2s-128 state kept for reuse: blake2s.New128
// allocates the state, and MAC1 is computed on every handshake message
// we send and checked on every one we receive, before any other work, so
// on every message of a flood too. Reusing it saves an allocation per
// MAC.
type macHasher struct {
	key [blake2s.Size]byte
	h   hash.Hash
	sum [blake2s.Size]byte
}

func newMACHasher(key *[blake2s.Size]byte) *macHasher {
	m := &macHasher{key: *key}
	m.h, _ = blake2s.New128(m.key[:])
	return m
}

// mac is keyedMAC(m.key, msg).
func (m *macHasher) mac(msg []byte) [macSize]byte {
	m.h.Reset()
	m.h.Write(msg)
	var out [macSize]byte
	copy(out[:], m.h.Sum(m.sum[:0]))
	return out
}

func (c *cookieChecker) init(clk clock.Clock, pub PublicKey) {
	c.clock = clk
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mac1Key = blake2s.Sum256(append([]byte(labelMAC1), pub[:]...))
	c.cookieKey = blake2s.Sum256(append([]byte(labelCookie), pub[:]...))
	c.secretMinted = time.Time{}
}

// checkMAC1 verifies the MAC over everything before it. msg is a whole
// initiation or response.
func (c *cookieChecker) checkMAC1(msg []byte) bool {
	off := len(msg) - 2*macSize
	if off < 0 {
		return false
	}
	c.mu.RLock()
	m, _ := c.mac1States.Get().(*macHasher)
	if m == nil || m.key != c.mac1Key {
		m = newMACHasher(&c.mac1Key)
	}
	c.mu.RUnlock()
	mac := m.mac(msg[:off])
	c.mac1States.Put(m)
	return macEqual(mac[:], msg[off:off+macSize])
}

// checkMAC2 verifies MAC2 against the cookie src would hold now. A cookie
// minted from a secret older than CookieRefreshTime is no longer accepted.
func (c *cookieChecker) checkMAC2(msg []byte, src netip.AddrPort) bool {
	now := c.clock.Now()
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.secretMinted.IsZero() || now.Sub(c.secretMinted) >= CookieRefreshTime {
		return false
	}
	off := len(msg) - macSize
	if off < macSize {
		return false
	}
	cookie := keyedMAC(c.secret[:], sourceBytes(src))
	mac := keyedMAC(cookie[:], msg[:off])
	return macEqual(mac[:], msg[off:])
}

// createReply builds the cookie reply to msg (an initiation or response
// whose MAC1 was valid) from src. receiver is the sender index in msg.
func (c *cookieChecker) createReply(msg []byte, receiver uint32, src netip.AddrPort) (messageCookieReply, error) {
	now := c.clock.Now()
	c.mu.Lock()
	if c.secretMinted.IsZero() || now.Sub(c.secretMinted) >= CookieRefreshTime {
		if _, err := rand.Read(c.secret[:]); err != nil {
			c.mu.Unlock()
			return messageCookieReply{}, err
		}
		c.secretMinted = now
	}
	cookie := keyedMAC(c.secret[:], sourceBytes(src))
	key := c.cookieKey
	c.mu.Unlock()

	reply := messageCookieReply{receiver: receiver}
	if _, err := rand.Read(reply.nonce[:]); err != nil {
		return messageCookieReply{}, err
	}
	aead, _ := chacha20poly1305.NewX(key[:])
	off := len(msg) - 2*macSize
	aead.Seal(reply.cookie[:0], reply.nonce[:], cookie[:], msg[off:off+macSize])
	return reply, nil
}

// sourceBytes is the address and port a cookie binds to.
func sourceBytes(src netip.AddrPort) []byte {
	var b [18]byte
	a := src.Addr().Unmap()
	n := 0
	if a.Is4() {
		v := a.As4()
		n = copy(b[:], v[:])
	} else {
		v := a.As16()
		n = copy(b[:], v[:])
	}
	b[n] = byte(src.Port())
	b[n+1] = byte(src.Port() >> 8)
	return b[:n+2]
}

// cookieGenerator is the sender's half, one per peer: it MACs our outgoing
// handshake messages for that peer, and keeps the cookie the peer gave us.
type cookieGenerator struct {
	clock clock.Clock

	mu          sync.Mutex
	mac1Key     [blake2s.Size]byte // HASH(LABEL_MAC1 || peer's public key)
	mac1        *macHasher         // keyed with mac1Key
	cookieKey   [blake2s.Size]byte // HASH(LABEL_COOKIE || peer's public key)
	cookie      [cookieSize]byte
	cookieTime  time.Time
	lastMAC1    [macSize]byte
	hasLastMAC1 bool
}

func (g *cookieGenerator) init(clk clock.Clock, peer PublicKey) {
	g.clock = clk
	g.mu.Lock()
	defer g.mu.Unlock()
	g.mac1Key = blake2s.Sum256(append([]byte(labelMAC1), peer[:]...))
	g.mac1 = newMACHasher(&g.mac1Key)
	g.cookieKey = blake2s.Sum256(append([]byte(labelCookie), peer[:]...))
	g.cookieTime = time.Time{}
	g.hasLastMAC1 = false
}

// addMACs fills in MAC1 and, while we hold a fresh cookie, MAC2.
func (g *cookieGenerator) addMACs(msg []byte) {
	off1 := len(msg) - 2*macSize
	off2 := len(msg) - macSize
	g.mu.Lock()
	defer g.mu.Unlock()
	mac1 := g.mac1.mac(msg[:off1])
	copy(msg[off1:], mac1[:])
	g.lastMAC1 = mac1
	g.hasLastMAC1 = true
	if g.cookieTime.IsZero() || g.clock.Now().Sub(g.cookieTime) >= CookieRefreshTime {
		clear(msg[off2:])
		return
	}
	mac2 := keyedMAC(g.cookie[:], msg[:off2])
	copy(msg[off2:], mac2[:])
}

// consumeReply stores the cookie from a reply to the last message we sent.
// A reply to any other message fails to decrypt and is ignored.
func (g *cookieGenerator) consumeReply(r *messageCookieReply) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.hasLastMAC1 {
		return false
	}
	aead, _ := chacha20poly1305.NewX(g.cookieKey[:])
	var cookie [cookieSize]byte
	if _, err := aead.Open(cookie[:0], r.nonce[:], r.cookie[:], g.lastMAC1[:]); err != nil {
		return false
	}
	g.cookie = cookie
	g.cookieTime = g.clock.Now()
	g.hasLastMAC1 = false
	return true
}
