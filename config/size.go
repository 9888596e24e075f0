package config

import (
	"fmt"
	"strconv"
	"strings"
)

// MinMemoryLimit is the smallest MemoryLimit accepted: below it the
// binary, the runtime and the tunnel's stack leave no room for
// connections.
const MinMemoryLimit = 16 << 20

// ParseMemoryLimit reads a MemoryLimit value, as the key and the
// -memory-limit flag take it: a size of at least MinMemoryLimit.
func ParseMemoryLimit(s string) (int64, error) {
	b, err := ParseSize(s)
	if err == nil && b < MinMemoryLimit {
		err = fmt.Errorf("%s is below the %d MiB that wgbore needs to run", s, MinMemoryLimit>>20)
	}
	return b, err
}

// sizeUnits are the suffixes ParseSize knows, longest first so that
// "MiB" is not read as "B". K, M and G are binary too, as container
// tools (docker --memory 64m) use them.
var sizeUnits = []struct {
	suffix string
	shift  uint
}{
	{"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"TiB", 40},
	{"K", 10}, {"M", 20}, {"G", 30}, {"T", 40},
	{"B", 0},
}

// ParseSize reads a byte count such as "64MiB", "512M", "1GiB" or
// "67108864". The suffixes are case-insensitive and binary, as
// GOMEMLIMIT's and container limits' are.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	shift := uint(0)
	for _, u := range sizeUnits {
		if len(t) > len(u.suffix) && strings.EqualFold(t[len(t)-len(u.suffix):], u.suffix) {
			t, shift = strings.TrimSpace(t[:len(t)-len(u.suffix)]), u.shift
			break
		}
	}
	n, err := strconv.ParseUint(t, 10, 63)
	if err != nil || n > (1<<63-1)>>shift {
		return 0, fmt.Errorf("%q is not a size such as 64MiB, 1GiB or a number of bytes", s)
	}
	return int64(n << shift), nil
}

// FormatSize writes a byte count as ParseSize reads it, in the largest
// unit that divides it.
func FormatSize(b int64) string {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if b != 0 && b%(1<<u.shift) == 0 {
			return strconv.FormatInt(b>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(b, 10)
}
