package protocol

import "testing"

func TestFreeListTrim(t *testing.T) {
	made := 0
	f := newFreeList(100, func() *int { made++; return new(int) })
	var xs []*int
	xs = f.getN(xs, 50)
	f.putN(xs)
	f.trim(10)
	if len(f.items) != 10 {
		t.Fatalf("after trim(10) %d idle items remain", len(f.items))
	}
	for i := len(f.items); i < cap(f.items); i++ {
		if f.items[:cap(f.items)][i] != nil {
			t.Fatal("trim left a reference to a dropped item behind the slice's end")
		}
	}
	f.trim(20) // more than it holds: nothing to do
	if len(f.items) != 10 {
		t.Fatalf("trim(20) changed the list to %d items", len(f.items))
	}
	made = 0
	f.getN(nil, 12)
	if made != 2 {
		t.Fatalf("getN(12) from 10 idle items made %d new ones, want 2", made)
	}
}
