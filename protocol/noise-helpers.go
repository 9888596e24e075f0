package protocol

import (
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/subtle"
	"hash"

	"golang.org/x/crypto/blake2s"
)

// The Noise protocol name and WireGuard's prologue, hashed into every
// handshake: a peer speaking any other protocol derives different keys.
const (
	noiseConstruction = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
	wgIdentifier      = "WireGuard v1 zx2c4 Jason@zx2c4.com"
	labelMAC1         = "mac1----"
	labelCookie       = "cookie--"
)

// initialChainKey and initialHash are HASH(construction) and
// HASH(HASH(construction) || identifier); every handshake starts from them.
var initialChainKey, initialHash [blake2s.Size]byte

func init() {
	initialChainKey = blake2s.Sum256([]byte(noiseConstruction))
	initialHash = mixHash(initialChainKey, []byte(wgIdentifier))
}

const (
	blake2sBlockSize = 64
	// shortInput is the longest input the hashing helpers handle on the
	// stack. Every handshake input fits: the longest is the 48-byte
	// encrypted static key; longer ones take the allocating path.
	shortInput = 64
)

// mixHash is HASH(h || data). It hashes one stack buffer with
// blake2s.Sum256 instead of a blake2s.New256 digest, which is a heap
// allocation per call and there are nine calls per handshake.
func mixHash(h [blake2s.Size]byte, data []byte) [blake2s.Size]byte {
	if len(data) > shortInput {
		return blake2s.Sum256(concat(h[:], data))
	}
	var buf [blake2s.Size + shortInput]byte
	copy(buf[:], h[:])
	n := copy(buf[blake2s.Size:], data)
	return blake2s.Sum256(buf[:blake2s.Size+n])
}

func newBlake2s() hash.Hash {
	h, _ := blake2s.New256(nil)
	return h
}

// hmacBlake2s is HMAC-BLAKE2s(key, a || b), RFC 2104 written out over
// a stack buffer and blake2s.Sum256. crypto/hmac.New builds two digests
// and the HMAC state on the heap, and the KDF calls it many times per
// handshake: with mixHash's digests, those were most of a handshake's
// allocations. The key is always a 32-byte chaining key or PRK, shorter
// than the block, so it is only padded, never hashed.
func hmacBlake2s(key *[blake2s.Size]byte, a, b []byte) [blake2s.Size]byte {
	n := len(a) + len(b)
	if n > shortInput {
		return hmacBlake2sLong(key, concat(a, b))
	}
	var buf [blake2sBlockSize + shortInput]byte
	for i := range blake2sBlockSize {
		buf[i] = 0x36
	}
	subtle.XORBytes(buf[:blake2s.Size], buf[:blake2s.Size], key[:])
	copy(buf[blake2sBlockSize:], a)
	copy(buf[blake2sBlockSize+len(a):], b)
	inner := blake2s.Sum256(buf[:blake2sBlockSize+n])
	for i := range blake2sBlockSize {
		buf[i] ^= 0x36 ^ 0x5c
	}
	copy(buf[blake2sBlockSize:], inner[:])
	out := blake2s.Sum256(buf[:blake2sBlockSize+blake2s.Size])
	// The pads are the key XOR a constant.
	wipe(buf[:])
	wipe(inner[:])
	return out
}

// hmacBlake2sLong is the crypto/hmac path for inputs longer than
// shortInput. It takes copies so that the interface calls do not make
// hmacBlake2s's arguments escape to the heap on the common path.
func hmacBlake2sLong(key *[blake2s.Size]byte, in []byte) [blake2s.Size]byte {
	k := concat(key[:], nil)
	m := hmac.New(newBlake2s, k)
	m.Write(in)
	var out [blake2s.Size]byte
	copy(out[:], m.Sum(nil))
	wipe(k)
	wipe(in)
	return out
}

func concat(a, b []byte) []byte {
	return append(append(make([]byte, 0, len(a)+len(b)), a...), b...)
}

var kdfCounters = [3]byte{1, 2, 3}

// kdf derives n 32-byte keys from chaining key ck and input, per the
// whitepaper's HKDF construction over HMAC-BLAKE2s.
func kdf1(ck [32]byte, input []byte) (t0 [32]byte) {
	prk := hmacBlake2s(&ck, input, nil)
	t0 = hmacBlake2s(&prk, kdfCounters[0:1], nil)
	wipe(prk[:])
	return t0
}

func kdf2(ck [32]byte, input []byte) (t0, t1 [32]byte) {
	prk := hmacBlake2s(&ck, input, nil)
	t0 = hmacBlake2s(&prk, kdfCounters[0:1], nil)
	t1 = hmacBlake2s(&prk, t0[:], kdfCounters[1:2])
	wipe(prk[:])
	return t0, t1
}

func kdf3(ck [32]byte, input []byte) (t0, t1, t2 [32]byte) {
	prk := hmacBlake2s(&ck, input, nil)
	t0 = hmacBlake2s(&prk, kdfCounters[0:1], nil)
	t1 = hmacBlake2s(&prk, t0[:], kdfCounters[1:2])
	t2 = hmacBlake2s(&prk, t1[:], kdfCounters[2:3])
	wipe(prk[:])
	return t0, t1, t2
}

// keyedMAC is the whitepaper's MAC: keyed BLAKE2s with a 16-byte output.
func keyedMAC(key []byte, in ...[]byte) [macSize]byte {
	m, _ := blake2s.New128(key)
	for _, b := range in {
		m.Write(b)
	}
	var out [macSize]byte
	m.Sum(out[:0])
	return out
}

// Curve25519 goes through crypto/ecdh, where a private key is an object
// whose public half is computed when it is made. x/crypto's
// curve25519.X25519(scalar, point) builds that object on every call, so
// each DH cost two scalar multiplications where the protocol needs one,
// and the ladder dominates a handshake's CPU. Keeping the static key as
// an *ecdh.PrivateKey for the engine's lifetime, and each ephemeral as
// one from birth, leaves only the multiplications the protocol needs.
//
// The scalar inside an ecdh.PrivateKey cannot be wiped; clearLocked drops
// the reference instead. The x/crypto path had the same limitation, with
// a fresh heap copy of the scalar on every DH; now there is one per key.

// newStaticKey wraps our static private key for DH. nil if the key is
// unset or crypto/ecdh refuses X25519 (FIPS 140-only mode).
func newStaticKey(k PrivateKey) *ecdh.PrivateKey {
	if k.IsZero() {
		return nil
	}
	priv, err := ecdh.X25519().NewPrivateKey(k[:])
	if err != nil {
		return nil
	}
	return priv
}

// newEphemeral makes a fresh ephemeral key and its public half with one
// scalar multiplication. The random bytes are wiped once inside priv.
func newEphemeral() (*ecdh.PrivateKey, PublicKey, error) {
	var pub PublicKey
	k, err := GeneratePrivateKey()
	if err != nil {
		return nil, pub, err
	}
	priv, err := ecdh.X25519().NewPrivateKey(k[:])
	wipe(k[:])
	if err != nil {
		return nil, pub, err
	}
	copy(pub[:], priv.PublicKey().Bytes())
	return priv, pub, nil
}

// dh computes X25519(priv, pub) with one scalar multiplication and
// refuses low-order points, whose all-zero result would let an attacker
// force a known key.
func dh(priv *ecdh.PrivateKey, pub *[32]byte) ([32]byte, bool) {
	p, err := ecdh.X25519().NewPublicKey(pub[:])
	if err != nil {
		return [32]byte{}, false
	}
	return dhKey(priv, p)
}

// dhKey is dh with the public key already wrapped, as the peer's static
// key is (see handshake.remoteStaticKeyLocked).
func dhKey(priv *ecdh.PrivateKey, p *ecdh.PublicKey) ([32]byte, bool) {
	var out [32]byte
	if priv == nil {
		return out, false
	}
	r, err := priv.ECDH(p)
	if err != nil {
		return out, false
	}
	copy(out[:], r)
	wipe(r)
	return out, true
}

func wipe(b []byte) { clear(b) }

func macEqual(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }
