package openset

import (
	"slices"
	"sync"
	"testing"
)

func TestSet(t *testing.T) {
	var s Set[int]
	for i := range 3 {
		if !s.Add(i) {
			t.Fatalf("Add(%d) refused before Close", i)
		}
	}
	s.Remove(1)
	s.Remove(7) // never added: no harm
	if got := sorted(s.All()); !slices.Equal(got, []int{0, 2}) {
		t.Fatalf("All = %v, want [0 2]", got)
	}
	if got := sorted(s.Close()); !slices.Equal(got, []int{0, 2}) {
		t.Fatalf("Close = %v, want [0 2]", got)
	}
	if s.Add(3) {
		t.Fatal("Add after Close was taken")
	}
	if got := s.Close(); len(got) != 0 {
		t.Fatalf("a second Close = %v, want nothing", got)
	}
	s.Remove(0) // after Close: no harm
}

// TestSetCloseMissesNothing: whatever Adds race with Close, each thing
// is either returned by Close or refused to its adder, never both and
// never neither.
func TestSetCloseMissesNothing(t *testing.T) {
	const n = 1000
	var s Set[int]
	refused := make([]bool, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { refused[i] = !s.Add(i) })
	}
	closed := s.Close()
	wg.Wait()
	seen := make([]bool, n)
	for _, i := range closed {
		seen[i] = true
	}
	for i := range n {
		if seen[i] == refused[i] {
			t.Fatalf("thing %d: returned by Close %v, refused %v; want exactly one", i, seen[i], refused[i])
		}
	}
}

// TestSetEmptiedForgetsItsMap: a burst leaves no map behind.
func TestSetEmptiedForgetsItsMap(t *testing.T) {
	var s Set[int]
	for i := range 100 {
		s.Add(i)
	}
	for i := range 100 {
		s.Remove(i)
	}
	if s.open != nil {
		t.Fatal("the emptied set keeps its map")
	}
}

func sorted(s []int) []int {
	slices.Sort(s)
	return s
}
