package protocol

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"

	"golang.org/x/crypto/curve25519"
)

// KeySize is the length of every WireGuard key: Curve25519 private and
// public keys and the optional preshared key alike.
const KeySize = 32

// PrivateKey is a clamped Curve25519 scalar. It never prints itself: every
// formatting verb, slog and JSON see a redaction marker, so a key can be
// handed to a logger or wrapped into an error by mistake without leaking.
type PrivateKey [KeySize]byte

// PublicKey is a Curve25519 point, the identity of a peer.
type PublicKey [KeySize]byte

// PresharedKey is the optional symmetric secret mixed into the handshake
// (the "psk2" of Noise_IKpsk2) for post-quantum resistance. It is as secret
// as a private key and redacted the same way.
type PresharedKey [KeySize]byte

const redacted = "(redacted)"

// ErrBadKey is wrapped by every key-parsing error, which never repeats the
// offending text: a mistyped private key is still mostly a private key.
var ErrBadKey = errors.New("not a valid base64 32-byte key")

func decodeKey(s string) ([KeySize]byte, error) {
	var k [KeySize]byte
	if len(s) != base64.StdEncoding.EncodedLen(KeySize) {
		return k, fmt.Errorf("%w (got %d characters, want 44)", ErrBadKey, len(s))
	}
	// 44 characters without padding decode to 33 bytes, so decode into
	// room for that and insist on exactly 32.
	var buf [KeySize + 1]byte
	n, err := base64.StdEncoding.Strict().Decode(buf[:], []byte(s))
	if err != nil || n != KeySize {
		clear(buf[:])
		return k, ErrBadKey
	}
	copy(k[:], buf[:KeySize])
	clear(buf[:])
	return k, nil
}

// GeneratePrivateKey returns a fresh clamped private key, as `wg genkey` does.
func GeneratePrivateKey() (PrivateKey, error) {
	var k PrivateKey
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("generate private key: %w", err)
	}
	k.clamp()
	return k, nil
}

// GeneratePresharedKey returns 32 random bytes, as `wg genpsk` does.
func GeneratePresharedKey() (PresharedKey, error) {
	var k PresharedKey
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("generate preshared key: %w", err)
	}
	return k, nil
}

// ParsePrivateKey reads the base64 form `wg` uses. The key is clamped, as
// the kernel and `wg pubkey` clamp it, so an unclamped key from another tool
// yields the same public key everywhere.
func ParsePrivateKey(s string) (PrivateKey, error) {
	k, err := decodeKey(s)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("private key: %w", err)
	}
	pk := PrivateKey(k)
	pk.clamp()
	return pk, nil
}

// ParsePublicKey reads the base64 form `wg` uses.
func ParsePublicKey(s string) (PublicKey, error) {
	k, err := decodeKey(s)
	if err != nil {
		return PublicKey{}, fmt.Errorf("public key: %w", err)
	}
	return PublicKey(k), nil
}

// ParsePresharedKey reads the base64 form `wg genpsk` prints.
func ParsePresharedKey(s string) (PresharedKey, error) {
	k, err := decodeKey(s)
	if err != nil {
		return PresharedKey{}, fmt.Errorf("preshared key: %w", err)
	}
	return PresharedKey(k), nil
}

func (k *PrivateKey) clamp() {
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
}

// PublicKey derives the matching public key.
func (k PrivateKey) PublicKey() PublicKey {
	var pub PublicKey
	curve25519.ScalarBaseMult((*[32]byte)(&pub), (*[32]byte)(&k))
	return pub
}

// IsZero reports whether the key is unset, in constant time.
func (k PrivateKey) IsZero() bool { return isZero(k[:]) }

// IsZero reports whether no preshared key is set, in constant time.
func (k PresharedKey) IsZero() bool { return isZero(k[:]) }

// IsZero reports whether the key is unset.
func (k PublicKey) IsZero() bool { return isZero(k[:]) }

// Equal compares in constant time, so comparing a candidate key against a
// configured one reveals nothing through timing.
func (k PrivateKey) Equal(o PrivateKey) bool { return subtle.ConstantTimeCompare(k[:], o[:]) == 1 }

// Equal compares in constant time.
func (k PresharedKey) Equal(o PresharedKey) bool { return subtle.ConstantTimeCompare(k[:], o[:]) == 1 }

// Equal compares in constant time.
func (k PublicKey) Equal(o PublicKey) bool { return subtle.ConstantTimeCompare(k[:], o[:]) == 1 }

func isZero(b []byte) bool {
	var acc byte
	for _, x := range b {
		acc |= x
	}
	return subtle.ConstantTimeByteEq(acc, 0) == 1
}

// Base64 returns the key in the form `wg` prints. It is the one deliberate
// way to get a private key out, for rendering a config the user asked for.
func (k PrivateKey) Base64() string { return base64.StdEncoding.EncodeToString(k[:]) }

// Base64 returns the key in the form `wg` prints.
func (k PresharedKey) Base64() string { return base64.StdEncoding.EncodeToString(k[:]) }

// String is the base64 form `wg show` prints.
func (k PublicKey) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// MarshalText makes public keys read naturally in JSON and slog.
func (k PublicKey) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

func (PrivateKey) String() string                 { return redacted }
func (PrivateKey) GoString() string               { return redacted }
func (PrivateKey) Format(f fmt.State, _ rune)     { f.Write([]byte(redacted)) }
func (PrivateKey) LogValue() slog.Value           { return slog.StringValue(redacted) }
func (PrivateKey) MarshalText() ([]byte, error)   { return []byte(redacted), nil }
func (PresharedKey) String() string               { return redacted }
func (PresharedKey) GoString() string             { return redacted }
func (PresharedKey) Format(f fmt.State, _ rune)   { f.Write([]byte(redacted)) }
func (PresharedKey) LogValue() slog.Value         { return slog.StringValue(redacted) }
func (PresharedKey) MarshalText() ([]byte, error) { return []byte(redacted), nil }
