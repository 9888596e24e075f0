// Package membudget keeps a wgbore process inside a memory budget and
// gives memory back to the operating system once a burst is over.
//
// A sidecar is killed when it crosses its container's limit, so what
// counts is the peak of resident memory and how soon it falls again,
// not only the cost of one idle connection. Two mechanisms serve that:
//
//   - The budget (a [Budget]) sets the Go runtime's soft memory limit a
//     little under itself, so the collector works harder as the process
//     nears it, and it answers [Budget.Admit] for every new connection:
//     past a share of the budget new connections are refused at once,
//     and the ones already open keep what they have. It also scales the
//     defaults that decide how much memory connections take. When the
//     configuration gives no budget, the container's limit is one
//     (package cgroup finds it).
//   - A [Reclaimer] watches a count of the things that hold memory
//     (goroutines, TCP endpoints) and, once it has fallen steeply and
//     come to rest, collects and returns the free pages at once, instead
//     of waiting for the runtime's next forced collection, which may be
//     minutes away. When the process is idle again, [ReleaseBinary] also
//     gives back the pages of the executable that start-up or the burst
//     touched, and so it does after the collection the runtime forces
//     every two minutes in an idle process, whose look at every stack and
//     live object reads much of the binary that nothing else reads.
package membudget
