package wgtest

import "runtime"

// HeapInUse returns the bytes of heap in use after two garbage
// collections, for a test that compares two readings to see what its
// objects cost or whether they leak. One collection can leave garbage to
// the next (an object with a finalizer, for one, is freed only by a
// collection after its finalizer has run), so collecting twice keeps
// more of it out of the reading. The figure counts whole spans in use,
// so it includes their unused room and bounds what live objects take
// from above.
func HeapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
