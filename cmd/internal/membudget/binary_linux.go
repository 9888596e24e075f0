package membudget

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ReleaseBinary unmaps the pages of the executable's code and read-only
// data that the process has touched, so that only those it touches again
// count in its resident memory.
//
// Most of an idle process's resident memory is its own binary: start-up
// runs every package's initialisation, and the kernel maps each touched
// page together with its neighbours (fault-around), so far more of the
// file is resident than the idle loops use. The pages stay in the page
// cache while the system has room for them; one that is needed again
// comes back with a minor fault, or a read if it was evicted.
func ReleaseBinary() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if p, err := filepath.EvalSymlinks(exe); err == nil {
		exe = p
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		// address perms offset dev inode pathname
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[5] != exe || f[1][1] == 'w' {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		if err := pageOut(uintptr(start), uintptr(end-start)); err != nil {
			return err
		}
	}
	return sc.Err()
}
