package protocol

import (
	"crypto/hmac"
	"crypto/subtle"
	"hash"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/curve25519"
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

func mixHash(h [blake2s.Size]byte, data []byte) [blake2s.Size]byte {
	d, _ := blake2s.New256(nil)
	d.Write(h[:])
	d.Write(data)
	var out [blake2s.Size]byte
	d.Sum(out[:0])
	return out
}

func newBlake2s() hash.Hash {
	h, _ := blake2s.New256(nil)
	return h
}

func hmacBlake2s(key []byte, in ...[]byte) [blake2s.Size]byte {
	m := hmac.New(newBlake2s, key)
	for _, b := range in {
		m.Write(b)
	}
	var out [blake2s.Size]byte
	m.Sum(out[:0])
	return out
}

// kdf derives n 32-byte keys from chaining key ck and input, per the
// whitepaper's HKDF construction over HMAC-BLAKE2s.
func kdf1(ck [32]byte, input []byte) (t0 [32]byte) {
	prk := hmacBlake2s(ck[:], input)
	t0 = hmacBlake2s(prk[:], []byte{1})
	wipe(prk[:])
	return t0
}

func kdf2(ck [32]byte, input []byte) (t0, t1 [32]byte) {
	prk := hmacBlake2s(ck[:], input)
	t0 = hmacBlake2s(prk[:], []byte{1})
	t1 = hmacBlake2s(prk[:], t0[:], []byte{2})
	wipe(prk[:])
	return t0, t1
}

func kdf3(ck [32]byte, input []byte) (t0, t1, t2 [32]byte) {
	prk := hmacBlake2s(ck[:], input)
	t0 = hmacBlake2s(prk[:], []byte{1})
	t1 = hmacBlake2s(prk[:], t0[:], []byte{2})
	t2 = hmacBlake2s(prk[:], t1[:], []byte{3})
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

// sharedSecret computes DH and refuses low-order points, whose all-zero
// result would let an attacker force a known key.
func sharedSecret(priv *[32]byte, pub *[32]byte) ([32]byte, bool) {
	var out [32]byte
	r, err := curve25519.X25519(priv[:], pub[:])
	if err != nil {
		return out, false
	}
	copy(out[:], r)
	wipe(r)
	return out, true
}

func wipe(b []byte) { clear(b) }

func macEqual(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }
