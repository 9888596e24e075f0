// Package systemtest tests the wgbore command as users run it: the built
// binary, end to end, against real peers and clients, and under faults.
//
// Its tests build cmd/wgbore with go build (once per test process and set
// of build tags), start it as up or serve with a configuration file the
// test writes, and judge it only by what a user or a supervisor sees: exit
// statuses, stdout and stderr, the JSON log, the listeners' behaviour,
// /metrics, /healthz and /readyz, and the UAPI socket. They live apart
// from package main, whose own tests call its functions in-process, so
// that none of them can lean on the command's internals: what they prove
// holds for the program a user runs.
//
// The peers and clients are real ones: wireguard-go in the test process
// (netstack/peersite); Debian's wireguard-go on a real TUN with the Linux
// kernel's TCP behind it, in a network namespace of its own; the Linux
// kernel's WireGuard module in a QEMU guest whose /init is the kvmguest
// command in this directory; the Windows build under Wine; the static
// build of .ci/build-static, run as the container image runs it; curl as
// a proxy client and wg as a UAPI client. The faults come from
// protocol/wgtest's impairment relay (loss, reordering, duplication,
// delay, blackouts, NAT rebinding), from spoofed handshake floods, peer
// restarts, reloads mid-transfer, a memory budget spent, and ten thousand
// connections. The TCP recovery tests run wgbore's stack in-process
// against wireguard-go, Linux and gVisor senders behind the relay. The
// benchmarks measure the binary's throughput, CPU and resident memory
// beside wireguard-go's.
//
// The non-test files hold the helpers that cmd/wgbore's tests share with
// these, so that each has one home.
//
// # Running
//
//	go test ./cmd/internal/systemtest
//
// runs every test; -short skips the slowest. Some need system tools or
// privileges, and skip saying what is missing: curl and wg; root for
// the network namespaces (with ip, wireguard-go and /dev/net/tun), for
// wg's sockets in /var/run/wireguard, for a memory cgroup and for
// running the static build as an unprivileged user; /dev/kvm,
// qemu-system-x86_64 and a Debian kernel with wireguard.ko for the
// kernel's WireGuard; wine64 and MinGW for the Windows build. With CI
// set in the environment a missing curl, wg or setpriv fails the test
// instead, since CI installs them (.ci/run).
//
// Flags make some tests longer or stricter than the default run:
//
//	go test ./cmd/internal/systemtest -run Faults -faults.mib=256 -faults.blackout=15s -timeout 2h
//	go test ./cmd/internal/systemtest -run Flood -flood=20s
//	go test ./cmd/internal/systemtest -run KernelTCPBehindWireGuardGo -netns.rekey
//	go test ./cmd/internal/systemtest -run KernelWireGuard -kvm.accel=tcg -kvm.mib=256
//	go test ./cmd/internal/systemtest -run TCPRecoveryBench -recovery.bench -v -timeout 2h
//
// -flood at 20s or more also holds the flood to its CPU and throughput
// targets. -recovery.bench runs the full recovery measurement against the
// reference; -recovery.mib sizes its lossy uploads, -recovery.only picks
// cases by name, -recovery.trace logs the senders' state as it goes, and
// -recovery.linux-cc sets the congestion control of Linux's TCP in the
// namespace.
//
// The benchmarks start processes of their own:
//
//	go test ./cmd/internal/systemtest -run '^$' -bench 'EndToEnd|Serve$' -benchtime 200x
//	go test ./cmd/internal/systemtest -run '^$' -bench 'IdleConnMemory|IdleTunnelMemory|ServeIdleFlowMemory' -benchtime 1x
//	go test ./cmd/internal/systemtest -run '^$' -bench BurstMemory -benchtime 1x -v -burst.n=5000
//
// The memory benchmarks ignore b.N, so run them once (-benchtime 1x).
// IdleConnMemory, IdleTunnelMemory and BurstMemory run go build's binary
// unless WGBORE_BENCH_BINARY names another, such as the release build,
// and with WGBORE_MEM_STATUS naming a directory they save the process's
// memory maps there. -flowmem.settle is how long ServeIdleFlowMemory lets
// its flows idle before it measures.
package systemtest
