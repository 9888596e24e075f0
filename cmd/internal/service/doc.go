// Package service runs a wgbore tunnel from start to shutdown: the
// userspace WireGuard engine and its netstack, the proxy and tunnel
// sections of the configuration, the metrics endpoints, CheckAlive, the
// UAPI socket, reloads and the memory budget.
//
// It is apart from the command line so that cmd/wgbore keeps to what a
// user types and reads back (flags, usage, signals and exit codes), and
// so that the commands, the demo and the tests start, reload and stop a
// tunnel through the same few calls: [Check] validates a configuration
// into a [Plan], [Start] runs it as a [Service], and [Service.Shutdown]
// ends it. What the command line adds to the file (serve mode, -metrics,
// -memory-limit, -grace) and the process's outside world (logger, file
// system, stdin and stdout) come in through [Options]: nothing here
// parses flags or reads the environment, and one process may run
// several services, as the demo does. The memory budget and the reclaimer
// are the process's, not a service's: the Go runtime's memory limit, the
// garbage collector and the goroutine count they act on are
// process-wide, so a process that runs several gives a budget to one at
// most.
package service
