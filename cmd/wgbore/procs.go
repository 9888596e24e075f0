package main

// serveProcs is how many Go processors serve runs with: one more than
// the cores it may use, unless the user chose (the GOMAXPROCS variable)
// or a CPU quota did.
//
// Go looks for sockets that became readable only when a processor has
// run out of goroutines to run, or else from its monitor thread, every
// 10 ms at the fastest. A server that relays a saturating download keeps
// every processor busy, so a neighbour's packet or a host's reply can
// wait that long before anything reads it. With one processor more than
// the cores, one is idle most of the time, and its thread sleeps in the
// kernel's poll, which wakes it as soon as a socket is ready; the kernel
// then shares the cores between the threads at a finer grain than Go's
// own preemption.
//
// Under a quota the runtime's default already sits at the quota, and a
// processor more would spend the quota early in each period, then wait
// for the rest of it: that case keeps the default. So does a current
// value other than cpus, which means a quota or a choice this function
// does not know of.
func serveProcs(envGOMAXPROCS string, current, cpus int) (int, bool) {
	if envGOMAXPROCS != "" || current != cpus || cpus < 1 {
		return current, false
	}
	return cpus + 1, true
}
