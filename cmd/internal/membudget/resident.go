package membudget

import (
	"bytes"
	"os"
	"runtime/metrics"
	"strconv"
)

// Resident reads the process's resident memory, in bytes, from
// /proc/self/statm; ok is false where there is no such file, as outside
// Linux.
func Resident() (int64, bool) {
	raw, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, false
	}
	f := bytes.Fields(raw)
	if len(f) < 2 {
		return 0, false
	}
	pages, err := strconv.ParseInt(string(f[1]), 10, 64)
	if err != nil {
		return 0, false
	}
	return pages * int64(os.Getpagesize()), true
}

// Overhead measures the resident memory that the Go runtime does not
// account for (the binary's text and data): the process's resident size
// less what the runtime holds and has not returned. Call it early, while
// little else is resident. Where the resident size cannot be read, a
// typical binary's stands in.
func Overhead() int64 {
	rss, ok := Resident()
	if !ok {
		return defaultOverhead
	}
	s := []metrics.Sample{{Name: mTotal}, {Name: mReleased}}
	metrics.Read(s)
	runtime := int64(s[0].Value.Uint64() - s[1].Value.Uint64())
	return max(0, rss-runtime)
}
