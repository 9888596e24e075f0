package wgtest

import (
	"testing"
	"time"
)

// WaitFor polls cond every millisecond until it holds, and fails the test
// if it still does not once limit has passed. The code under test hands
// work between goroutines and sockets, so a test waits for the state it
// expects rather than sleeping for a fixed time: the wait ends as soon as
// the state is reached, and limit only bounds a wait that would otherwise
// hang, so it can be generous for a loaded machine. what names the state
// in the failure message. limit is measured in real time, whatever clock
// the code under test runs on.
func WaitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(time.Millisecond)
	}
}
