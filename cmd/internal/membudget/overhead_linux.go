package membudget

import (
	"bytes"
	"os"
	"runtime/metrics"
	"strconv"
)

// Overhead measures the resident memory that the Go runtime does not
// account for (the binary's text and data): the process's resident size
// less what the runtime holds and has not returned. Call it early, while
// little else is resident.
func Overhead() int64 {
	raw, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return defaultOverhead
	}
	f := bytes.Fields(raw)
	if len(f) < 2 {
		return defaultOverhead
	}
	pages, err := strconv.ParseInt(string(f[1]), 10, 64)
	if err != nil {
		return defaultOverhead
	}
	s := []metrics.Sample{{Name: mTotal}, {Name: mReleased}}
	metrics.Read(s)
	runtime := int64(s[0].Value.Uint64() - s[1].Value.Uint64())
	return max(0, pages*int64(os.Getpagesize())-runtime)
}
