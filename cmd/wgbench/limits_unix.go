//go:build unix

package main

import "syscall"

// raiseFileLimit lifts the soft limit on open files to the hard one: the
// memory measurement holds ten thousand connections, and the children
// inherit the limit.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// openFileLimit is the soft limit on open files, if it can be read. The
// conversion is for FreeBSD, whose limits are signed.
func openFileLimit() (uint64, bool) {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) != nil {
		return 0, false
	}
	return uint64(l.Cur), true
}
