package membudget

import "golang.org/x/sys/unix"

// pageOut asks the kernel to reclaim the pages of [start, start+n), a
// read-only mapping of the executable taken from the process's own maps.
// The range is passed as numbers: no Go pointer into it is made.
func pageOut(start, n uintptr) error {
	if _, _, errno := unix.Syscall(unix.SYS_MADVISE, start, n, unix.MADV_PAGEOUT); errno != 0 {
		return errno
	}
	return nil
}
