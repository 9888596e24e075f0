package peersite

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
)

// Body returns n deterministic bytes, so both ends of a transfer can hash
// them without sending the expected digest along. The same n always
// gives the same bytes; different sizes give unrelated bytes.
func Body(n int) []byte {
	b := make([]byte, n)
	io.ReadFull(newBodyReader(uint64(n)), b)
	return b
}

// CheckBody reads r to EOF and reports whether it held exactly Body(n),
// without holding either in memory. Its error says how much arrived.
func CheckBody(r io.Reader, n int) error {
	got, want := sha256.New(), sha256.New()
	m, err := io.Copy(got, r)
	if err != nil {
		return fmt.Errorf("after %d bytes: %w", m, err)
	}
	io.Copy(want, newBodyReader(uint64(n)))
	if m != int64(n) || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		return fmt.Errorf("got %d bytes with sha256 %x, want Body(%d) with %x", m, got.Sum(nil), n, want.Sum(nil))
	}
	return nil
}

// BodyReader streams Body(n), for transfers too large to hold.
func BodyReader(n int64) io.Reader { return newBodyReader(uint64(n)) }

// bodyReader yields Body(n) piece by piece, so the site can serve
// gigabytes without holding them in memory.
type bodyReader struct {
	rng  *rand.Rand
	left uint64  // bytes still to come
	word [8]byte // the current random word, of which word[used:] is unread
	used int
}

func newBodyReader(n uint64) *bodyReader {
	return &bodyReader{rng: rand.New(rand.NewPCG(n, 7)), left: n, used: len(bodyReader{}.word)}
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.left == 0 {
		return 0, io.EOF
	}
	if uint64(len(p)) > b.left {
		p = p[:b.left]
	}
	n := copy(p, b.word[b.used:])
	b.used += n
	for ; len(p)-n >= 8; n += 8 {
		binary.LittleEndian.PutUint64(p[n:], b.rng.Uint64())
	}
	if n < len(p) {
		binary.LittleEndian.PutUint64(b.word[:], b.rng.Uint64())
		b.used = copy(p[n:], b.word[:])
		n = len(p)
	}
	b.left -= uint64(n)
	return n, nil
}
