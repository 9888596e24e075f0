package uapi

import (
	"fmt"
	"io"
	"slices"
	"testing"
)

// TestOperation checks a program's own operation: its lines and errno
// come back in UAPI form, the connection goes on serving get, and an
// operation with arguments, or an unknown one, is refused with EINVAL.
func TestOperation(t *testing.T) {
	dev := newEngine(t)
	h := NewHandler(dev)
	calls := 0
	h.AddOperation("test_op", func(w io.Writer) int {
		calls++
		fmt.Fprintf(w, "message=call %d\n", calls)
		if calls == 2 {
			return 5
		}
		return 0
	})
	c := serveHandler(t, h)

	if lines, errno := c.do("test_op=1\n\n"); errno != 0 || !slices.Equal(lines, []string{"message=call 1"}) {
		t.Fatalf("first call: %q errno=%d", lines, errno)
	}
	if lines, errno := c.do("test_op=1\n\n"); errno != 5 || !slices.Equal(lines, []string{"message=call 2"}) {
		t.Fatalf("failing call: %q errno=%d, want errno=5", lines, errno)
	}
	if _, errno := c.do("test_op=1\nkey=value\n\n"); errno != errnoInvalid {
		t.Fatalf("call with arguments: errno=%d, want %d", errno, errnoInvalid)
	}
	if _, errno := c.do("other_op=1\n\n"); errno != errnoInvalid {
		t.Fatalf("unknown operation: errno=%d, want %d", errno, errnoInvalid)
	}
	if calls != 2 {
		t.Fatalf("operation ran %d times, want 2", calls)
	}
	if lines := c.get(); !slices.ContainsFunc(lines, func(s string) bool { return len(s) > 12 && s[:12] == "private_key=" }) {
		t.Fatalf("get after operations: %q", lines)
	}
}
