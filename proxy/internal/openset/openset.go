// Package openset holds what a server has open (its flows, the sockets
// it serves) for its Close to end.
package openset

import (
	"maps"
	"slices"
	"sync"
)

// Set is the things a server has open, for its Close to end. Add after
// Close refuses, under the same lock that Close takes, so nothing opened
// while Close runs escapes it: either Close returns it, or Add refuses
// it and its opener ends it. The zero value is an empty, open Set.
type Set[T comparable] struct {
	mu     sync.Mutex
	closed bool
	open   map[T]struct{}
}

// Add registers x for Close to end. It reports false, leaving x to the
// caller, once Close has begun.
func (s *Set[T]) Add(x T) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.open == nil {
		s.open = make(map[T]struct{})
	}
	s.open[x] = struct{}{}
	return true
}

// Remove forgets x, which has ended. When the last one goes, so does the
// map: a Go map keeps the buckets of its largest size, so after a burst
// of thousands it would hold them for the life of the server.
func (s *Set[T]) Remove(x T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.open, x)
	if len(s.open) == 0 {
		s.open = nil
	}
}

// All returns what is open now.
func (s *Set[T]) All() []T {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Keys(s.open))
}

// Close refuses every later Add and returns what is open, for the caller
// to end; a later call returns nothing.
func (s *Set[T]) Close() []T {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	open := slices.Collect(maps.Keys(s.open))
	s.open = nil
	return open
}
