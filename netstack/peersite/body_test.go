package peersite

import (
	"bytes"
	"io"
	"testing"
	"testing/iotest"
)

// TestBodyReader: reading the stream in pieces of any size gives Body.
func TestBodyReader(t *testing.T) {
	for _, n := range []int{0, 5, 8, 13, 1001} {
		if err := iotest.TestReader(newBodyReader(uint64(n)), Body(n)); err != nil {
			t.Errorf("n=%d: %v", n, err)
		}
		got, err := io.ReadAll(iotest.OneByteReader(newBodyReader(uint64(n))))
		if err != nil || !bytes.Equal(got, Body(n)) {
			t.Errorf("n=%d byte by byte: %v", n, err)
		}
	}
}
