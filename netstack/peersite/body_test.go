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

func TestCheckBody(t *testing.T) {
	if err := CheckBody(bytes.NewReader(Body(100)), 100); err != nil {
		t.Error(err)
	}
	for _, wrong := range [][]byte{Body(99), Body(101)[:100], append(Body(100), 0)} {
		if err := CheckBody(bytes.NewReader(wrong), 100); err == nil {
			t.Errorf("%d wrong bytes pass as Body(100)", len(wrong))
		}
	}
}
