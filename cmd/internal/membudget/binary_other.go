//go:build !linux

package membudget

// ReleaseBinary does nothing where the process cannot ask the kernel to
// reclaim its own pages.
func ReleaseBinary() error { return nil }
