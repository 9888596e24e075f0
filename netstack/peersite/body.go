package peersite

import (
	"encoding/binary"
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
