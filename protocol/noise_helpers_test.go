package protocol

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/curve25519"

	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/memnet"
)

// The stack-buffer HMAC and mixHash must equal crypto/hmac and a streaming
// blake2s digest byte for byte, on both sides of shortInput.
func TestHMACBlake2sMatchesCryptoHMAC(t *testing.T) {
	var key [blake2s.Size]byte
	rand.Read(key[:])
	in := make([]byte, 2*shortInput+3)
	rand.Read(in)
	for n := 0; n <= len(in); n++ {
		for _, split := range []int{0, n / 2, n} {
			a, b := in[:split], in[split:n]
			m := hmac.New(newBlake2s, key[:])
			m.Write(a)
			m.Write(b)
			want := m.Sum(nil)
			got := hmacBlake2s(&key, a, b)
			if !bytes.Equal(got[:], want) {
				t.Fatalf("len %d split %d: got %x want %x", n, split, got, want)
			}
		}
	}
}

func TestMixHashMatchesDigest(t *testing.T) {
	var h [blake2s.Size]byte
	rand.Read(h[:])
	in := make([]byte, 2*shortInput+3)
	rand.Read(in)
	for n := 0; n <= len(in); n++ {
		d, _ := blake2s.New256(nil)
		d.Write(h[:])
		d.Write(in[:n])
		if got := mixHash(h, in[:n]); !bytes.Equal(got[:], d.Sum(nil)) {
			t.Fatalf("len %d: mismatch", n)
		}
	}
}

// The handshake's hashing is allocation-free: 19 HMACs and 9 hashes per
// handshake used to be about 400 of its 438 allocations.
func TestNoiseHashingDoesNotAllocate(t *testing.T) {
	var ck, out [32]byte
	var static [48]byte
	allocs := testing.AllocsPerRun(100, func() {
		a, b, c := kdf3(ck, out[:])
		out = mixHash(a, static[:])
		out[0] ^= b[0] ^ c[0]
	})
	if allocs != 0 {
		t.Fatalf("kdf3+mixHash allocate %v times, want 0", allocs)
	}
}

// dh with a cached key is the X25519 function of x/crypto, and a fresh
// ephemeral's public half is the base-point multiple of its scalar.
func TestDHMatchesX25519(t *testing.T) {
	for range 20 {
		k := mustKey(t)
		other := mustKey(t).PublicKey()
		want, err := curve25519.X25519(k[:], other[:])
		if err != nil {
			t.Fatal(err)
		}
		got, ok := dh(newStaticKey(k), (*[32]byte)(&other))
		if !ok || !bytes.Equal(got[:], want) {
			t.Fatalf("dh = %x, %v; want %x", got, ok, want)
		}

		eph, pub, err := newEphemeral()
		if err != nil {
			t.Fatal(err)
		}
		wantPub, _ := curve25519.X25519(eph.Bytes(), curve25519.Basepoint)
		if !bytes.Equal(pub[:], wantPub) {
			t.Fatalf("ephemeral public %x, want %x", pub, wantPub)
		}
	}
	if _, ok := dh(nil, &[32]byte{9}); ok {
		t.Fatal("dh without a key succeeded")
	}
	if newStaticKey(PrivateKey{}) != nil {
		t.Fatal("zero private key gave a DH key")
	}
}

// Points of small order give an all-zero shared secret, which an attacker
// could force; every DH must refuse them, and an initiation carrying one
// is rejected before any key is derived from it.
func TestDHRefusesLowOrderPoints(t *testing.T) {
	points := []string{
		"0000000000000000000000000000000000000000000000000000000000000000",
		"0100000000000000000000000000000000000000000000000000000000000000",
		"e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
		"5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
		"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
		"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
		"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	}
	k := newStaticKey(mustKey(t))
	clk := clock.NewManual(testEpoch)
	net := memnet.NewNetwork(clk, 1)
	x := newMemNode(t, net, clk, "127.0.0.1:6001", "10.0.0.1", nil)
	for _, s := range points {
		var p [32]byte
		if _, err := hex.Decode(p[:], []byte(s)); err != nil {
			t.Fatal(err)
		}
		if _, ok := dh(k, &p); ok {
			t.Errorf("dh accepted low-order point %s", s)
		}
		if _, err := x.e.consumeInitiation(&messageInitiation{ephemeral: p}); !errors.Is(err, errLowOrderPoint) {
			t.Errorf("initiation with ephemeral %s: err %v, want %v", s, err, errLowOrderPoint)
		}
	}
}

// One DH through x/crypto (a fresh ecdh key per call: two ladders) against
// dh with a key kept as *ecdh.PrivateKey (one ladder), the choice made in
// newStaticKey and newEphemeral.
func BenchmarkX25519XCrypto(b *testing.B) {
	k := mustKey(b)
	pub := mustKey(b).PublicKey()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := curve25519.X25519(k[:], pub[:]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkX25519ECDHKept(b *testing.B) {
	k := newStaticKey(mustKey(b))
	pub := mustKey(b).PublicKey()
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := dh(k, (*[32]byte)(&pub)); !ok {
			b.Fatal("dh")
		}
	}
}

func BenchmarkKDF2(b *testing.B) {
	var ck, in [32]byte
	b.ReportAllocs()
	for b.Loop() {
		ck, in = kdf2(ck, in[:])
	}
}
