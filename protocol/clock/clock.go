// Package clock is the engine's only source of time. Every WireGuard timer
// (rekey, keepalive, cookie secret rotation, rate-limiter refill) reads it,
// so a test can drive a day of protocol time in well under a second with
// Manual, while production uses System.
package clock

import (
	"sort"
	"sync"
	"time"
)

// Clock tells the time and schedules callbacks.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine (System) or in the goroutine
	// advancing the clock (Manual) once d has passed.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is the part of *time.Timer the engine uses.
type Timer interface {
	Stop() bool
	Reset(d time.Duration) bool
}

// System is the real clock.
type System struct{}

func (System) Now() time.Time { return time.Now() }

func (System) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// Manual is a clock that moves only when told to. Callbacks run in the
// goroutine that calls Advance, in deadline order, with the clock set to
// each callback's deadline while it runs, so a callback that schedules
// another one sees a consistent present.
type Manual struct {
	mu     sync.Mutex
	now    time.Time
	seq    uint64
	timers map[*manualTimer]struct{}
}

// NewManual returns a Manual clock reading start.
func NewManual(start time.Time) *Manual {
	return &Manual{now: start, timers: make(map[*manualTimer]struct{})}
}

func (m *Manual) Now() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.now
}

func (m *Manual) AfterFunc(d time.Duration, f func()) Timer {
	t := &manualTimer{clock: m, f: f}
	t.Reset(d)
	return t
}

// Advance moves the clock forward by d, firing every timer that falls due
// on the way.
func (m *Manual) Advance(d time.Duration) {
	m.mu.Lock()
	target := m.now.Add(d)
	m.mu.Unlock()
	for {
		m.mu.Lock()
		next := m.earliestLocked(target)
		if next == nil {
			m.now = target
			m.mu.Unlock()
			return
		}
		delete(m.timers, next)
		if next.when.After(m.now) {
			m.now = next.when
		}
		f := next.f
		m.mu.Unlock()
		f()
	}
}

// Pending reports how many timers are armed; tests use it to show that
// nothing leaks.
func (m *Manual) Pending() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.timers)
}

func (m *Manual) earliestLocked(target time.Time) *manualTimer {
	var due []*manualTimer
	for t := range m.timers {
		if !t.when.After(target) {
			due = append(due, t)
		}
	}
	if len(due) == 0 {
		return nil
	}
	sort.Slice(due, func(i, j int) bool {
		if !due[i].when.Equal(due[j].when) {
			return due[i].when.Before(due[j].when)
		}
		return due[i].seq < due[j].seq
	})
	return due[0]
}

type manualTimer struct {
	clock *Manual
	f     func()
	when  time.Time
	seq   uint64
}

func (t *manualTimer) Stop() bool {
	m := t.clock
	m.mu.Lock()
	defer m.mu.Unlock()
	_, armed := m.timers[t]
	delete(m.timers, t)
	return armed
}

func (t *manualTimer) Reset(d time.Duration) bool {
	m := t.clock
	m.mu.Lock()
	defer m.mu.Unlock()
	_, armed := m.timers[t]
	m.seq++
	t.seq = m.seq
	t.when = m.now.Add(d)
	m.timers[t] = struct{}{}
	return armed
}
