//go:build !unix

package main

// raiseFileLimit does nothing: there is no RLIMIT_NOFILE here (Windows
// has no soft limit on handles to raise).
func raiseFileLimit() {}

// openFileLimit says there is no limit to check the connections against.
func openFileLimit() (uint64, bool) { return 0, false }
