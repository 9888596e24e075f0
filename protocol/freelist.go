package protocol

import "sync"

// freeList recycles the data path's buffers. Unlike sync.Pool it is not
// emptied by the garbage collector, so at steady state no packet
// allocates at all; unlike a channel it hands out and takes back whole
// batches under one lock. It keeps at most max items: a burst's surplus
// goes back to the garbage collector.
type freeList[T any] struct {
	mu      sync.Mutex
	items   []*T
	max     int
	newItem func() *T
}

func newFreeList[T any](max int, newItem func() *T) *freeList[T] {
	return &freeList[T]{max: max, newItem: newItem, items: make([]*T, 0, max)}
}

func (f *freeList[T]) get() *T {
	f.mu.Lock()
	if n := len(f.items); n > 0 {
		x := f.items[n-1]
		f.items[n-1] = nil
		f.items = f.items[:n-1]
		f.mu.Unlock()
		return x
	}
	f.mu.Unlock()
	return f.newItem()
}

// getN appends n items to dst.
func (f *freeList[T]) getN(dst []*T, n int) []*T {
	f.mu.Lock()
	k := min(n, len(f.items))
	rest := len(f.items) - k
	dst = append(dst, f.items[rest:]...)
	clear(f.items[rest:])
	f.items = f.items[:rest]
	f.mu.Unlock()
	for ; k < n; k++ {
		dst = append(dst, f.newItem())
	}
	return dst
}

func (f *freeList[T]) put(x *T) {
	f.mu.Lock()
	if len(f.items) < f.max {
		f.items = append(f.items, x)
	}
	f.mu.Unlock()
}

// putN takes back every item of xs; xs itself stays the caller's.
func (f *freeList[T]) putN(xs []*T) {
	f.mu.Lock()
	room := min(len(xs), f.max-len(f.items))
	f.items = append(f.items, xs[:room]...)
	f.mu.Unlock()
}

// trim lets all but keep of the idle items go to the garbage collector.
func (f *freeList[T]) trim(keep int) {
	f.mu.Lock()
	if len(f.items) > keep {
		clear(f.items[keep:])
		f.items = f.items[:keep]
	}
	f.mu.Unlock()
}
