package peersite

import (
	"runtime"
	"strings"
)

// Goroutines lists the running goroutines by ID with their stacks, for
// tests that check a Close left none of its own behind.
func Goroutines() map[string]string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	out := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		id, _, _ := strings.Cut(g, " [")
		out[id] = g
	}
	return out
}
