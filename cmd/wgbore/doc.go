// Wgbore is a WireGuard tunnel that lives entirely in one unprivileged Go
// process: no TUN device, no root, no kernel module. Its own WireGuard
// engine (package protocol) feeds an embedded gVisor TCP/IP stack (package
// netstack), and SOCKS5/HTTP proxies and port forwarders (package proxy)
// dial through it. It serves as an unprivileged proxy (wgbore up), as a
// sidecar container, as a WireGuard server without root (wgbore serve),
// and, through package netstack, as a net.Dial replacement in Go programs.
//
// Usage:
//
//	wgbore <command> [flags]
//
// The commands are:
//
//	up           run the tunnel and its proxies until interrupted
//	serve        run a WireGuard server whose peers reach the host's network
//	reload       re-read a running tunnel's configuration and apply the difference
//	check        validate a configuration file
//	show         print a running tunnel's peers and transfer, as wg show does
//	healthcheck  exit 0 if a running tunnel's /healthz (or -url) answers 200
//	demo         run a server and a client on loopback, with proxies to try
//	genkey       print a new private key
//	pubkey       print the public key of the private key on stdin
//	genpsk       print a new preshared key
//	version      print the version
//
// "wgbore <command> -h" prints a command's usage and flags to stdout. Flags
// go before a command's arguments. Every command exits 0 on success, 1 on
// a runtime failure (a port in use, a listener that dies, a tunnel that
// cannot be reached) and 2 on a usage or configuration error, so scripts
// and supervisors can tell "fix your file" from "try again later".
//
// A first tunnel:
//
//	wgbore genkey | tee private.key | wgbore pubkey > public.key   # same output as wg's
//	wgbore check -c wg0.conf      # every problem as file:line; exit 2 if any
//	wgbore up -c wg0.conf         # until SIGINT/SIGTERM
//	curl --socks5-hostname 127.0.0.1:1080 http://intranet.example/
//
// # Up and serve
//
//	wgbore up -c FILE [flags]
//	wgbore serve -c FILE [flags]
//
// Up brings up the tunnel described by FILE (wg-quick or wireproxy format)
// and serves its proxy and tunnel sections. Serve is the other end: a
// WireGuard endpoint that the peers in FILE connect to, whose netstack
// also takes their flows to the host's network (see Server mode). Both
// take the same flags:
//
//	-c FILE
//		configuration file, wg-quick or wireproxy format; without it, the
//		text of the WGBORE_CONFIG environment variable
//	-grace D
//		how long open connections may finish after SIGINT or SIGTERM
//		(default 8s)
//	-handshake-wait D
//		how long to wait for the first handshakes before logging the
//		start-up summary (default 6s)
//	-interface-name NAME
//		name of the UAPI socket, for wg show NAME (default: the config
//		file's name without .conf, or wgbore for WGBORE_CONFIG)
//	-metrics HOST:PORT
//		serve /metrics, /healthz and /readyz there; wins over [Metrics]
//		BindAddress (no host means 127.0.0.1)
//	-uapi-dir DIR
//		directory of the UAPI socket (default /var/run/wireguard, the
//		only place wg looks)
//	-uapi-group GROUP
//		group, by name or GID, whose members may use the UAPI socket too:
//		the socket is then 0660 and the group's, not 0600
//	-memory-limit SIZE
//		memory budget of the whole process, such as 64MiB; wins over
//		[Interface] MemoryLimit (default: the container's limit, if it
//		has one; see Memory)
//	-log-level LEVEL
//		least severe level logged: debug, info (default), warn or error
//	-log-format FORMAT
//		text (logfmt, the default) or json (one object per line)
//
// At start, up begins a handshake with every peer that has an endpoint and
// logs one line: what listens where, the tunnel addresses and whether each
// peer answered (handshakes=1/1). Under a memory budget a "memory budget"
// line says what was chosen. Logs go to stderr, never stdout, which may be
// a tunnel ([STDIOTunnel]).
//
// The first SIGINT or SIGTERM stops the listeners and gives open
// connections -grace to finish; a second one ends them at once. Exit
// status: 0 after a signal, 1 on a runtime failure, 2 on a usage or
// configuration error. SIGHUP reloads the configuration (see Reloading).
// An [Egress] section has no effect in up, and up warns about it: only
// serve forwards peers' flows.
//
// # Other commands
//
//	wgbore check -c FILE
//
// Check reads a wg-quick or wireproxy file and reports every problem, one
// per line as FILE:LINE: KEY: message, then the warnings. It opens no
// socket and contacts no peer; it exits 0 when the file would run and 2
// when it would not. Without -c it reads WGBORE_CONFIG, as up and serve
// do, and messages name it $WGBORE_CONFIG:LINE.
//
//	wgbore show [-uapi-dir DIR] [NAME | all | interfaces] [FIELD]
//
// Show prints a running tunnel's interface and peers as wg show does, in
// the same layout, read from its UAPI socket DIR/NAME.sock wherever up or
// serve put it (wg looks only in /var/run/wireguard). Without NAME, or with
// all, it shows every tunnel in DIR; interfaces lists their names. FIELD
// prints one field per line for scripts, as wg show's do: public-key,
// listen-port, fwmark, peers, endpoints, allowed-ips, latest-handshakes,
// transfer or persistent-keepalive. Keys are never printed: private-key,
// preshared-keys and dump are left to wg.
//
//	wgbore show -uapi-dir ~/.wgbore wg0
//	wgbore show wg0 latest-handshakes
//
//	wgbore reload [-uapi-dir DIR] [NAME]
//
// Reload asks the running up or serve named NAME to re-read its file and
// apply the difference, as SIGHUP does, prints each change and waits for
// the outcome, which a signal cannot report. NAME may be left out when DIR
// holds one tunnel. It exits 0 when everything applied, 1 when some change
// failed (the rest applied) or the tunnel cannot be reached, and 2 when
// the file was refused.
//
//	wgbore healthcheck [-url URL] [-timeout D]
//
// Healthcheck gets URL (default http://127.0.0.1:9586/healthz) within
// -timeout (default 3s) and exits 0 if it answers 200 OK, 1 otherwise,
// printing the status and the start of the body. It is the HEALTHCHECK of
// an image that has no curl; -url http://127.0.0.1:9586/readyz asks for
// readiness instead.
//
//	wgbore demo [flags]
//
// Demo runs a serve and an up in one process on 127.0.0.1, with keys made
// up on the spot and no config file: the client serves SOCKS5 and HTTP
// proxies, and the server a page at http://demo.wg/ inside its tunnel
// (10.77.0.0/24, which never leaves the process), named by its own DNS
// server. It prints the curl commands to try and runs until Ctrl-C. Flags:
//
//	-socks ADDR
//		address of the client's SOCKS5 proxy (default 127.0.0.1:1080;
//		port 0: any free port)
//	-http ADDR
//		address of the client's HTTP proxy (default 127.0.0.1:8080)
//	-check
//		make one request through each proxy, print the results, and exit
//		0 if both worked, 1 if not (CI runs it)
//	-write-configs DIR
//		write server.conf and client.conf (mode 0600) to DIR and exit, to
//		run them as separate processes or point a real WireGuard client
//		at the server
//	-grace D
//		how long open connections may finish after Ctrl-C (default 2s)
//	-log-level, -log-format
//		as for up (the level defaults to warn)
//
// For example:
//
//	wgbore demo -write-configs ./demo
//	wgbore serve -c demo/server.conf & wgbore up -c demo/client.conf
//
//	wgbore genkey
//	wgbore genpsk
//	wgbore pubkey < private.key
//
// These print a new private key, a new preshared key, and the public key of
// the private key on stdin, in base64, as wg's commands of the same names
// do (umask 077 before writing keys to files).
//
//	wgbore version
//
// Version prints the version, the Go release it was built with, and the
// platform; wgbore -version does the same.
//
// # Configuration
//
// Up, serve and check take a wg-quick file, optionally extended with
// wireproxy's proxy and tunnel sections, or a wireproxy file unchanged.
// Section and key names are case-insensitive. Comments start with "#"
// anywhere or with ";" at the start of a line or after whitespace; a value
// in double quotes keeps both characters. A key that may appear once is an
// error the second time. Relative paths (PrivateKeyFile, PresharedKeyFile,
// WGConfig) resolve against the file's directory.
//
// A value that is exactly $NAME, in a file or in WGBORE_CONFIG, is read
// from the environment variable NAME ($$ for a literal $), so a config can
// leave its key to the environment. Without -c, up, serve and check read
// the whole configuration from WGBORE_CONFIG, for deployments with no file
// to mount; messages name it as they would a file ($WGBORE_CONFIG:3:
// PrivateKey: ...), a relative PrivateKeyFile resolves against the working
// directory, and the UAPI socket is named wgbore. When both are given, -c
// wins and a warning says the variable was ignored. A variable shows in
// docker inspect and in /proc/PID/environ to the same user; a key in a
// file named by PrivateKeyFile does not.
//
// The sections, with their keys:
//
//   - [Interface]: PrivateKey, or PrivateKeyFile (a file holding it, for
//     secrets a secret manager mounts); Address, one or more, the prefix
//     length kept as written (a bare address is /32 or /128); DNS, the
//     resolvers inside the tunnel for the names the proxies resolve
//     (entries that are not addresses are search domains, as in wg-quick);
//     MTU (default 1420, from 576 to 65535); ListenPort (0 or none: a
//     random port); CheckAlive and CheckAliveInterval (wireproxy's:
//     addresses pinged through the tunnel every interval, 5 s by default,
//     for /readyz); MemoryLimit (see Memory). wg-quick's Table, PreUp,
//     PostUp, PreDown, PostDown, SaveConfig and FwMark are accepted with a
//     warning and do nothing: a userspace tunnel has no routing table or
//     firewall to change.
//   - [Peer]: PublicKey; PresharedKey, or PresharedKeyFile; Endpoint (a
//     hostname is resolved at start and again while handshakes keep
//     failing); AllowedIPs; PersistentKeepalive.
//   - [Socks5]: BindAddress, Username, Password, MaxConnections,
//     DialTimeout. SOCKS5 CONNECT (IPv4, IPv6, and names resolved in the
//     tunnel) and UDP ASSOCIATE; an RFC 1929 login when Username is set.
//   - [HTTP], which wireproxy's files spell in lower case: BindAddress,
//     Username, Password, CertFile, KeyFile, MaxConnections, DialTimeout.
//     An HTTP proxy: CONNECT and absolute-form requests of every method;
//     Basic login (407); an HTTPS listener when CertFile and KeyFile are
//     both set.
//   - [TCPClientTunnel]: BindAddress, Target, MaxConnections, IdleTimeout.
//     A host port forwarded to Target in the tunnel.
//   - [TCPServerTunnel]: ListenPort, Target, MaxConnections, IdleTimeout.
//     A port on our tunnel addresses forwarded to Target on the host's
//     network.
//   - [UDPProxyTunnel]: BindAddress, Target, InactivityTimeout. Host UDP
//     relayed to Target in the tunnel, one session per client address.
//   - [UDPServerTunnel]: ListenPort, Target, InactivityTimeout. Tunnel UDP
//     relayed to Target on the host's network.
//   - [STDIOTunnel]: Target. Stdin and stdout connected to Target, for ssh
//     -o ProxyCommand='wgbore up -c f.conf'; wgbore exits when stdin ends.
//   - [Resolve]: ResolveStrategy, which family wins when a name has both:
//     auto (the default: IPv6 when the interface has an IPv6 address, else
//     IPv4), ipv4 or ipv6.
//   - [Metrics]: BindAddress of /metrics, /healthz and /readyz (see
//     Metrics and health).
//   - [Egress] and [DNSServer], for serve (see Server mode).
//   - WGConfig, at the top level (wireproxy's include): [Interface] and
//     [Peer] come from the file it names.
//
// Times (DialTimeout, IdleTimeout, InactivityTimeout, CheckAliveInterval,
// UDPTimeout) are in seconds. Sizes (MemoryLimit) take KiB, MiB, GiB or K,
// M, G, all binary, or a number of bytes. [Interface], [Resolve], [Egress],
// [DNSServer] and [Metrics] may appear once; [Peer] and the proxy and
// tunnel sections may repeat.
//
// Safe defaults, where wireproxy differs:
//
//   - A BindAddress without a host (:1080) listens on 127.0.0.1, not on
//     every interface; a proxy or forwarder that other machines can reach
//     without a password logs LISTENING BEYOND LOOPBACK WITHOUT
//     AUTHENTICATION.
//   - Each TCP listener serves at most MaxConnections at once (default
//     1024, scaled down under a memory budget); past it, clients are
//     refused at once (SOCKS5: reply 01, general failure; HTTP: 503 with
//     Retry-After; tunnels and HTTPS: closed), never left hanging. A dial
//     into the tunnel gives up after DialTimeout (30 s by default): SOCKS5
//     reply 04, host unreachable; HTTP 504. SOCKS5 and HTTP clients get
//     30 s to finish their request, and HTTP keep-alive connections close
//     after 2 minutes idle.
//   - UDP sessions end after InactivityTimeout of silence, 120 s by default
//     (0 keeps them forever, as in wireproxy).
//   - TCPClientTunnel and TCPServerTunnel relays close after IdleTimeout of
//     silence both ways (off by default).
//   - A [Peer] without AllowedIPs takes every address, as wireproxy does
//     (wg-quick would route nothing to it), with a warning.
//   - Check and up warn when a PrivateKeyFile or PresharedKeyFile is
//     readable by group or others.
//
// # The UAPI socket
//
// Up and serve offer WireGuard's userspace API on
// /var/run/wireguard/NAME.sock (mode 0600; NAME is -interface-name), so
// the real wg show wg0, wg set, wg showconf and wg setconf work against
// them. Where that directory is not writable, as for an unprivileged user,
// the log says so and -uapi-dir puts the socket elsewhere; wgbore show
// reads it there. -uapi-group makes the socket 0660 and gives it to that
// group, so its members can run wg show or wgbore show without being the
// tunnel's user. The socket is bound in a private directory and renamed
// into place, so it is never reachable with a looser mode; a stale one
// left by a crashed run is replaced, a live one never.
//
// On Windows the socket is an AF_UNIX socket in %LOCALAPPDATA%\wgbore,
// which only its user (and administrators) can open; wgbore show and
// wgbore reload use it. wg.exe cannot: wireguard-windows serves UAPI on
// named pipes under \\.\pipe\ProtectedPrefix\Administrators\, where
// only an elevated process may create one, and up says so at start.
//
// # Reloading
//
// SIGHUP, or wgbore reload [-uapi-dir DIR] NAME, makes up and serve read
// the file again and apply the difference without a restart:
//
//   - A file with any error is refused whole, with its file:line messages
//     (in the log, and printed by wgbore reload, which then exits 2); the
//     old configuration keeps running.
//   - Peers end up as the file says, as with wg syncconf: a new peer is
//     added, a changed one is updated in place (its sessions and the
//     connections through it are kept), and one the file no longer names
//     is removed, also one added through the UAPI. A peer whose section
//     did not change is not touched, so a wg set made to it survives.
//   - A proxy or tunnel section that changed is stopped and started
//     again; its open connections get -grace to finish. Sections that did
//     not change keep their listeners and connections; moving a section
//     within the file does not count as a change. A renewed HTTPS
//     certificate counts, so a reload picks it up. [Metrics] reloads like
//     a proxy section.
//   - The private key and CheckAlive are applied live. What the netstack
//     was built from (Address, MTU, ListenPort, DNS, [Resolve], [Egress],
//     [DNSServer], [STDIOTunnel]) needs a restart: the reload says so and
//     keeps the running value. The memory budget is chosen at start.
//
// wgbore reload speaks over the UAPI socket, so whoever may run wg set on
// the tunnel may reload it. A configuration that came from WGBORE_CONFIG
// has no file to re-read, and a reload says so.
//
// # Metrics and health
//
// [Metrics] BindAddress = 127.0.0.1:9586, or -metrics 127.0.0.1:9586
// (which wins), serves three endpoints. They stay on loopback unless told
// otherwise: a scrape shows the peers' public keys and traffic. None has a
// login.
//
// /metrics is in Prometheus text format. Per peer, labelled by public key:
//
//	wgbore_peer_receive_bytes_total
//	wgbore_peer_transmit_bytes_total
//	wgbore_peer_last_handshake_seconds
//	wgbore_peer_handshake_attempts_total
//	wgbore_peer_handshake_failures_total
//	wgbore_peer_handshakes_total
//	wgbore_peer_endpoint_changes_total
//	wgbore_peer_returns_total             heard again after a silence of a second or more
//
// Per peer, in serve only (labels peer, and reason: peer_limit,
// server_limit or memory):
//
//	wgbore_peer_flows                     TCP and UDP flows open through the egress
//	wgbore_peer_flows_refused_total{reason}   new flows refused by MaxFlowsPerPeer, MaxFlows or the memory budget
//
// Engine-wide:
//
//	wgbore_peers
//	wgbore_dropped_packets_total{reason}  every packet the engine discards, under one reason
//	wgbore_cookie_replies_sent_total
//	wgbore_tcp_acks_resent_total          see TCP through loss and outages
//
// The drop reasons, each written even at zero: malformed_message,
// malformed_packet, unknown_index, auth_failed, replay, not_allowed_ip,
// no_route, too_large, expired_keypair, peer_removed, handshake_queue_full,
// staged_overflow, no_endpoint, send_failed, bad_mac1, cookie_required,
// rate_limited, handshake_failed, bad_cookie_reply, martian_source.
//
// Per listener (labels kind, one of socks5, http, https, tcp_client_tunnel,
// ..., and addr; UDP forwarders count client sessions):
//
//	wgbore_listener_connections_active
//	wgbore_listener_connections_total
//	wgbore_listener_connections_refused_total   refused by MaxConnections or the memory budget
//
// Per CheckAlive target:
//
//	wgbore_check_alive_up
//	wgbore_check_alive_rtt_seconds
//
// The memory budget (see Memory):
//
//	wgbore_memory_budget_bytes               gauge; 0 without a budget
//	wgbore_memory_refused_connections_total  counter
//	wgbore_memory_in_use_bytes               gauge, only with a budget
//
// Then the Go runtime's and the process's: go_info, go_goroutines,
// go_gc_cycles_total, go_memstats_heap_alloc_bytes, go_memstats_sys_bytes,
// go_memstats_stack_inuse_bytes (connections' goroutines),
// process_resident_memory_bytes, process_open_fds and
// process_cpu_seconds_total. No key, PSK or password is ever there; a
// test looks for them.
//
// /healthz answers 200 while the process serves (liveness).
//
// /readyz answers 200 or 503, with a JSON body that gives the reasons. With
// CheckAlive targets, ready means every target answered its latest ping,
// no more than two intervals ago. Without them, ready means every peer
// that had traffic in the last 180 s (bytes, or handshake attempts) has a
// handshake younger than 180 s (RejectAfterTime: a session older than that
// carries nothing). So /readyz turns 503 within seconds of a CheckAlive
// target going quiet, and within 180 s otherwise.
//
// # Memory
//
// [Interface] MemoryLimit = 64MiB, or -memory-limit 64MiB on up and serve
// (which wins over the file), is the memory budget of the whole process.
// Sizes take KiB, MiB, GiB or K, M, G, all binary; the least is 16MiB.
// Without either, the container's cgroup memory limit (cgroup v2
// memory.max, v1 memory.limit_in_bytes) is the budget; with none of the
// three there is no budget. The budget is chosen at start, and the
// start-up log's "memory budget" line says what was chosen: the limit,
// where it came from, the Go soft limit and the default MaxConnections.
//
// Under a budget:
//
//   - The Go runtime's soft memory limit is set to 85% of what the budget
//     leaves after the binary's own resident pages, unless GOMEMLIMIT set
//     a lower one, so the collector works harder as the process nears it.
//   - Once 65% of the budget is in use, new connections and serve-mode
//     flows are refused at once (SOCKS5 reply 01, HTTP 503, tunnels
//     closed; in serve, a TCP reset or an ICMP unreachable); existing
//     connections keep working.
//   - The default MaxConnections (1024) scales down to what the budget
//     holds, at about 40 KiB per connection.
//   - A TCP connection's buffers may grow to at most a sixteenth of the
//     budget (at least 256 KiB) instead of 8 MiB.
//
// What 64 MiB holds is measured in the README (Performance, "Under a
// budget").
//
// Memory comes back after bursts, budget or not: once a second wgbore
// counts goroutines, the tunnel's TCP endpoints, peers and open proxy
// connections, and when the count has fallen by a quarter (and by at
// least 64) from its high and come to rest, it collects and returns free
// memory to the operating system at once, instead of waiting for the
// runtime's next forced collection. It does the same when a burst of
// work that leaves the count where it was (a thousand peers' handshakes
// at once) stops allocating. A connection that we close first stays in
// TIME_WAIT for 15 s (Linux: 60 s), and holds its state until then.
//
// Some memory does not come back, whatever wgbore does. Go's runtime
// keeps, for the life of the process, records for each of the most
// sockets it ever had open at once (reused by later sockets, never
// returned) and for each span of its heap at its largest, and gVisor's
// tables of endpoints and ports keep the size a burst grew them to. A
// process that once held thousands of connections stays above its idle
// size by what those records and tables hold.
//
// A mass close does not start a goroutine for every connection: the
// proxies' copies, woken when a side has bytes or has ended, and the
// work of the tunnel's TCP timers, which a burst of closes arms
// together, run on small pools of goroutines (a few per core) that take
// the next piece of work as they finish one, and grow past that size
// only while their queue stands still (a copy blocked on a slow reader).
// When thousands of proxied connections close at once, at most 256 of
// the relays' half-closes await acknowledgements of their FINs at a
// time, and the others start as those are acknowledged (see "TCP
// through loss and outages" below): sent all at once, the FINs queued
// behind each other for longer than the retransmission timeout, and
// every connection's timeouts, with the packets they queued, took the
// process's memory well past what it held while the connections were
// open. The close of a burst still takes a little more memory than
// holding it, briefly. The SOCKS5 proxy reads each handshake through a
// small reader borrowed from a pool, so a burst of new connections leaves
// little garbage behind it for the collector.
//
// About eight seconds after start, once the first handshakes are done,
// wgbore also reclaims once, and on Linux asks the kernel to take back
// the pages of its own binary that start-up touched (MADV_PAGEOUT). The
// same happens after a burst, once the process is back near idle, and
// once more a few seconds later, if it still is, for the pages that the
// burst's end touched after the first release; and after each of the
// garbage collections that the Go runtime forces every
// two minutes in a process that allocates too little to need one: such
// a collection reads the function tables and type data of everything
// alive, much of the binary, and nothing else reads those pages until
// the next one. A page needed again comes back with a fault, from the
// page cache or from disk if the system evicted it meanwhile, so the
// first packets after a long idle may take a little longer. A busy
// process whose data path allocates nothing can look idle this way too;
// the code it runs then comes back the same way, once every two minutes.
// Some pages come back within seconds of each release (the next timer or
// keepalive runs them), so resident memory is lowest just after one, and
// idle memory is best read a few minutes after start.
//
// The kernel takes back a file's pages only from a process that owns the
// file or may write it: a binary owned by root and run by another user
// keeps them all. The container image therefore gives /wgbore to the user
// it runs as; with a read-only root filesystem that user still cannot
// change it.
//
// The metrics wgbore_memory_budget_bytes (a gauge, 0 without a budget),
// wgbore_memory_refused_connections_total (a counter) and
// wgbore_memory_in_use_bytes (a gauge, only with a budget) report the
// budget; the listener's wgbore_listener_connections_refused_total also
// counts its refusals.
//
// # Server mode
//
// wgbore serve -c server.conf is a WireGuard server without root: peers
// connect to its ListenPort, and its netstack takes their flows to any
// destination and opens ordinary host sockets for them: TCP, UDP, and ICMP
// echo (through an unprivileged ping socket where net.ipv4.ping_group_range
// allows it, else a raw socket when running as root; without either, pings
// to the server's own address are answered and others dropped).
//
//	[Interface]
//	PrivateKey = ...
//	Address = 10.0.0.1/24
//	ListenPort = 51820
//
//	[Peer]
//	PublicKey = ...
//	AllowedIPs = 10.0.0.2/32
//
//	[Egress]                 # optional: who may go where
//	Allow = 127.0.0.1/32     # this host's loopback, at 10.0.0.1 (denied by default)
//	Deny = 203.0.113.0/24
//	HostAddress = 198.51.100.7   # this host's public address behind the cloud's NAT
//	MaxFlowsPerPeer = 1024   # TCP + UDP flows at once, per peer
//	MaxFlows = 65536         # ... and for all peers together
//	FlowMemory = 1GiB        # or: derive MaxFlows from the memory flows may take
//	UDPTimeout = 120         # seconds
//
//	[DNSServer]              # optional: DNS for peers on 10.0.0.1:53
//	Record = files.wg 10.0.0.1
//	Upstream = 127.0.0.53    # default: the host's /etc/resolv.conf
//
// Egress policy. By default peers reach public unicast addresses only: the
// server is an exit node. The host's loopback, link-local (cloud
// metadata), private (RFC 1918, fc00::/7), CGNAT, multicast and reserved
// ranges are denied unless Allow names them; the most specific prefix of
// Allow or Deny decides (Deny on a tie). NAT64 and 6to4 addresses go only
// where the IPv4 address inside them may, and a flow to the host itself is
// refused unless Allow names that destination: to an address on its
// interfaces (read when serve starts), to one HostAddress names (the
// public address a cloud maps to the host by 1:1 NAT, which the host
// cannot see), or one that turns out, when dialled, to be the host's. A refused flow gets a TCP
// reset or an ICMP port unreachable at once, and a debug log line. The
// policy is the same for every peer.
//
// The host's own services. A peer reaches a service on the server host's
// loopback at the server's tunnel address, as it would on a kernel
// WireGuard server: a flow to 10.0.0.1 on a port no listener of wgbore's
// holds goes to 127.0.0.1 on that port (::1 for an IPv6 tunnel address),
// if Allow names the loopback address. Dialling 127.0.0.1 through the
// tunnel does not work from a WireGuard client: the replies come from a
// loopback source, which wgbore, like the kernel, drops as spoofed.
//
// Limits. Each peer has at most MaxFlowsPerPeer (default 1024) TCP and UDP
// flows at once, and all peers together at most MaxFlows. MaxFlows
// defaults to FlowMemory divided by 64 KiB (a flow's reckoned cost: an
// idle one takes far less, a busy one more), else to 65,536 scaled down
// to the process's memory budget, if there is one. A flow past a cap is
// refused at once, like a denied destination, and counted per peer and
// cap; open flows are untouched. A UDP flow ends after UDPTimeout
// (default 120 s) of silence. An idle flow holds no goroutine (on Linux;
// one elsewhere) and no copy buffer: buffers come from a pool while bytes
// move.
//
// Server tunnels. [TCPServerTunnel] and [UDPServerTunnel] expose host
// services to peers on the server's tunnel addresses; the other sections
// ([Socks5], ...) work as in up.
//
// DNS. [DNSServer] answers its Record names (Record = NAME ADDRESS) and
// forwards the rest to Upstream, or to the host's resolvers, so peers can
// use DNS = 10.0.0.1. It answers 256 UDP queries and serves 256 TCP
// connections at once, at most 16 of each for one peer, so a peer that
// floods it at a slow upstream leaves the others their share.
//
// Processors. serve runs one Go processor more than the cores it may
// use (GOMAXPROCS). Go reads a socket that became ready when a processor
// finds no goroutine to run, or from a monitor thread once no one has
// polled for 10 ms; under a saturating download every processor stays
// busy, and a neighbour's packet or a host's reply can wait that long.
// With a processor more, whenever fewer goroutines are runnable than
// processors one thread sleeps in the kernel's poll and is woken as soon
// as a socket is ready. The GOMAXPROCS variable overrides this. Under a
// CPU quota below its cores on serve's own cgroup (cpu.max, or
// cpu.cfs_quota_us) serve keeps Go's default, which follows the quota: a
// processor more would spend it early in each period. Once serve has set it, Go no longer
// follows later changes to the CPU affinity or quota; restart serve, or
// set GOMAXPROCS, where those change while it runs. up keeps Go's
// default.
//
// Shares. Where serve's own CPU is what runs short, nothing is dropped,
// so no peer's TCP learns to slow down: downloads whose windows grew
// first would keep their lead. serve therefore divides 2 MiB among the
// connections waiting to send more, and sizes each one's TCP send buffer
// at its part when it writes: a lone download may keep up to 2 MiB in
// flight (enough for 40 MB/s to a peer 50 ms away), two 1 MiB each, and
// from five on each 256 KiB. A connection that stops writing keeps the
// part it last had. A memory budget that cuts TCP buffers below 2 MiB
// cuts these parts too. What peers upload, and every connection of up, may
// use up to 8 MiB (less under a memory budget).
//
// # Containers and services
//
// The Dockerfile builds wgbore statically (CGO off, with .ci/build-static)
// onto gcr.io/distroless/static-debian12:nonroot: no shell, no libc, user
// 65532, and no capability, NET_ADMIN or /dev/net/tun, since the tunnel
// lives in userspace.
//
//	docker build -t wgbore .
//	docker run --rm -v "$PWD/wg0.conf:/etc/wgbore/wg0.conf:ro" -p 127.0.0.1:1080:1080 wgbore
//
// The default command is up -c /etc/wgbore/wg0.conf -metrics
// 127.0.0.1:9586 -uapi-dir /tmp. The UAPI socket goes to /tmp because UID
// 65532 cannot write /var/run/wireguard (docker exec CONTAINER /wgbore show
// -uapi-dir /tmp wg0). For -p to reach the proxy, its BindAddress must be
// 0.0.0.0:1080: inside a container, 127.0.0.1 is the container's own
// loopback. The configuration may come from the environment instead:
//
//	docker run --rm -e WGBORE_CONFIG="$(cat wg0.conf)" wgbore up -metrics 127.0.0.1:9586 -uapi-dir /tmp
//	# wg0.conf says PrivateKey = $WG_KEY:
//	docker run --rm -e WG_KEY="$(cat private.key)" -v "$PWD/wg0.conf:/etc/wgbore/wg0.conf:ro" wgbore
//
// Probes. distroless has no curl, so wgbore healthcheck is the image's
// HEALTHCHECK against /healthz. It runs inside the container, so the
// endpoints can stay on loopback. In a container with a memory limit, that
// limit is wgbore's memory budget unless MemoryLimit or -memory-limit says
// otherwise.
//
// The examples directory has two deployments:
//
//   - examples/kubernetes: a Pod whose app uses
//     ALL_PROXY=socks5h://127.0.0.1:1080, with wgbore as a native sidecar
//     (an init container with restartPolicy: Always, so it starts, and is
//     ready, before the app). The key comes from a Secret mounted as a
//     file for PrivateKeyFile; the container runs as 65532 with a
//     read-only root and every capability dropped; exec probes run wgbore
//     healthcheck against /healthz (liveness) and /readyz (startup,
//     readiness).
//   - examples/systemd: wgbore@.service, one instance per
//     /etc/wgbore/NAME.conf, with DynamicUser, NoNewPrivileges, an empty
//     capability set, a read-only system, a system-call filter, the key as
//     a systemd credential and systemctl reload sending SIGHUP.
//
// No container engine runs in CI, so a test checks what the image ships:
// it runs .ci/build-static, the script the Dockerfile's build stage runs,
// checks that the binary has no ELF interpreter and no DT_NEEDED library,
// and, as root (as CI runs), runs demo -check and up under setpriv as UID
// and GID 65532 with empty capability sets and no_new_privs, reading
// /proc/PID/status to prove it (go test ./cmd/internal/systemtest -run
// StaticBuildRunsUnprivileged; -short skips the build). Another fails if
// the Dockerfile stops building with that script or running as that user
// (-run DockerfileUsesBuildScript).
//
// # The engine
//
// Package protocol implements sections 5 and 6 of the WireGuard whitepaper:
//
//   - Keys in wg's base64 form, clamped; key types never print themselves
//     (%v, %x, slog and JSON all show "(redacted)"), and compare in
//     constant time.
//   - Messages: initiation (148 B), response (92 B), cookie reply (64 B)
//     and transport data, parsed strictly (exact sizes, type byte, zero
//     reserved bytes) and fuzzed.
//   - Handshake: Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, TAI64N replay
//     protection, per-peer precomputed static-static DH, MAC1 always, MAC2
//     and cookie replies (XChaCha20-Poly1305, secret rotated every 120 s)
//     under load, with a per-source token bucket.
//   - Sessions: current, previous and next keypairs; the responder
//     confirms on the first authenticated transport message (the
//     initiator's keepalive or data); an 8128-packet replay window;
//     REKEY/REJECT after messages.
//   - Timers on an injected clock (protocol/clock): rekey after 120 s,
//     reject after 180 s, retries every 5 s with jitter for 90 s, keepalive
//     10 s, persistent keepalive, key material zeroed after 540 s.
//   - Cryptokey routing: longest-prefix AllowedIPs for IPv4 and IPv6, with
//     lock-free lookups; inbound packets from outside the peer's AllowedIPs
//     are dropped and counted. Peers are added, changed and removed at run
//     time.
//   - Endpoints roam with authenticated packets; a hostname endpoint is
//     resolved at start and again while handshakes keep failing.
//   - Batches end to end: a Bind moves UDP datagrams in batches (the host
//     one uses recvmmsg/sendmmsg on Linux, one socket per family), a PacketSide
//     receives decrypted IP packets in batches, crypto runs on a worker
//     pool with per-peer order kept, buffers have head- and tailroom so
//     encryption is in place, and the data path does not allocate. A
//     PacketSide that is also a PeerReturner hears when a peer is heard
//     again after a second or more of silence, unless data ended the
//     silence (the netstack re-sends its latest TCP acknowledgements
//     then). Engine.Trim gives back the idle
//     packet buffers a burst left behind.
//
// Every discarded packet is counted under one reason (Engine.Stats), and
// Engine.Peers reports what wg show would.
//
//	bind, _ := udpbind.Listen(udpbind.Config{Port: 51820})
//	eng, _ := protocol.New(protocol.Config{PrivateKey: key, Bind: bind, Packets: stack})
//	eng.SetPeer(protocol.PeerConfig{PublicKey: peer, Endpoint: "vpn.example.net:51820",
//		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}})
//	eng.WritePackets(ipPackets) // outbound; inbound arrives at stack.DeliverPackets
//
// On Linux the host Bind (protocol/udpbind) batches with recvmmsg and
// sendmmsg. Elsewhere it moves one datagram per system call, through
// Winsock on Windows and the net package on macOS and the BSDs; a Linux
// binary built with -tags portableudp takes the net package's path,
// which is how it is tested and measured.
//
// # TCP through loss and outages
//
// The tunnel's TCP is gVisor's. How the stack's settings and the link
// endpoint's changes fit together is told once, in package netstack's
// documentation (go doc github.com/wgbore/wgbore/netstack); this section
// gives what a user sees, with the figures measured. Against gVisor's
// defaults:
//
//   - No RACK loss detection. After a retransmission timeout, gVisor's
//     RACK re-enters SACK recovery counting the whole pre-outage flight as
//     still in the pipe, and sends about two segments per timeout: uploads
//     crawled for tens of seconds after a 3 s blackout, for minutes after
//     15 s. Loss is detected by SACK and three duplicates instead.
//   - Reno, not CUBIC: gVisor's CUBIC drops each ACK's fractional window
//     increase, so small windows hardly grow (0.33 against 0.87 MB/s on the
//     lossy path).
//   - A retransmission timeout between 20 ms and 2 s, with 460 retries
//     (the 15 minutes Linux allows). The 2 s ceiling bounds how long a
//     sender waits after any outage ends; gVisor's 120 s let the timer back
//     off to 25 s. The 20 ms floor lets uploads over a short lossy path
//     keep pace with wireguard-go's, where gVisor's 200 ms cut them by
//     more than half. Thousands of FINs sent at once outlast it too, which
//     the next change and the FIN floor below take care of.
//   - Half-closes are paced: at most 256 of them await acknowledgements
//     of their FINs at once (netstack/finpace.go), and a CloseWrite
//     beyond that starts when one is acknowledged, or has waited 200 ms.
//     The window is shared by all peers, so FINs to a peer that went away
//     let a window's worth of the others through every 200 ms; the
//     half-closes that wait take the free places in turns by the address
//     their FIN goes to, so in serve a peer's backlog holds up another
//     peer's half-close by one round at most. A write after CloseWrite
//     fails at once all the same. A full Close, and a connection
//     accepted through the library's Listen, are not paced.
//   - TIME_WAIT lasts 15 s, where Linux keeps 60 s, so a burst of closed
//     connections gives its memory back sooner. It still outlasts any
//     segment one WireGuard hop can delay, and timestamps (PAWS) reject an
//     old one even so.
//
// Four more changes work below TCP, in the link endpoint:
//
//   - While FINs go in a burst (64 or more within 200 ms, as in a mass
//     close), a FIN is not sent again within 200 ms (Linux's minimum
//     timeout) of its last copy (netstack/finresend.go). The
//     acknowledgements of thousands of FINs sent at once queue behind
//     the others for longer than the 20 ms floor, and the repeats
//     outnumbered the FINs and lengthened the queues. A FIN really lost
//     in such a burst goes again about when Linux would send it; a lone
//     one keeps the 20 ms floor.
//   - A pure acknowledgement of a request's answer waits up to a
//     millisecond for the next request to carry it (netstack/delack.go),
//     as Linux delays one: gVisor acknowledges every batch at once, so an
//     echo, an RPC or a keep-alive HTTP exchange cost two packets each
//     way where one does. Only the acknowledgement that follows our own
//     data, of at most one segment, with no SACK before or in it, waits;
//     a download's, duplicates and anything that opens or ends a
//     connection go at once.
//   - After a silence, the link endpoint chooses the timestamp echo of
//     our acknowledgements (netstack/recovery_echo.go): for one window of
//     data after a peer's segment ends 200 ms or more without any, the
//     echo is that segment's timestamp less 2 ms. gVisor's sender as it
//     ships (wireguard-go's tun/netstack, wireproxy, onetun-style
//     forwarders) crawls for minutes after an outage behind any receiver
//     that echoes as RFC 7323 says, and never recovered without
//     timestamps; with this echo it resends its flight in slow start.
//   - The latest acknowledgements are re-sent when a peer comes back
//     (netstack/recovery_acks.go, protocol.PeerReturner): when a
//     handshake message or a keepalive ends a second or more of silence,
//     the link endpoint re-sends each connection's latest pure
//     acknowledgement, so a sender that backed its timer off (Linux: to
//     13.6 s during a 15 s outage) learns at once what got through. To a
//     sender whose SYN is laid out as Linux lays it out, the echo is
//     about 70 minutes (2^22 ticks) older than its newest timestamp, so
//     that it takes no RTT sample and resends at once; with an echo from
//     before the outage it waited out a 22 s timer. Any other sender's
//     acknowledgement is kept back. The table holds 256 connections
//     (about 40 KB, no allocation); wgbore_tcp_acks_resent_total counts
//     what it re-sends. go test ./netstack -run '^$' -bench
//     'AckRecord|Echo' measures both tables (a little over 100 ns per
//     pure acknowledgement, well under that per segment received; about
//     1% of a receiving wgbore's CPU profile).
//
// The README's performance section tables the outcome: the first whole MiB
// after a 3 s and a 15 s blackout from each kind of sender (gVisor's TCP
// with and without RACK, Linux's behind a real TUN, wgbore's own stack),
// received by wgbore's stack and by wireguard-go's tun/netstack in the same
// run; go test ./cmd/internal/systemtest -run TCPRecoveryBenchBySender
// -recovery.bench -v -timeout 2h measures it (about 12 minutes, root for
// the Linux rows). Every byte arrives intact. Before timestamps were
// negotiated again, wgbore never recovered from gVisor's sender; with them,
// and before the re-sent acknowledgement had its ancient echo, Linux after
// a 15 s outage waited for its own next timeout, about 12 s after the path
// returned, as gVisor still does (about 10 s). The reference's crawl behind
// gVisor's defaults comes and goes from run to run.
//
// After a peer restarts and forgets our session, a new connection works
// again within KeepaliveTimeout + RekeyTimeout (15 s) of our first
// unanswered packet, plus one handshake: until then nothing tells us the
// session is gone (a WireGuard peer answers nothing to a packet for a
// session it does not know), and only then do we start a new handshake
// (15.25 s measured, go test ./cmd/internal/systemtest -run PeerRestart).
//
// # Known issues
//
//   - Throughput over a lossy, reordering path (5% loss, 2% reordering, 1%
//     duplication, 2 ms ± 1 ms each way) is only on a par with wireguard-go's
//     tun/netstack, where the goal is five times that. Loss-based
//     congestion control halves its window for every loss it sees; at 5%
//     random loss and a 4 to 6 ms round trip the Mathis bound is about
//     2 MB/s for any such controller, and the relay's jitter reorders
//     packets, which a receiver that sends no DSACK (gVisor's does not)
//     never teaches the sender to tolerate. Without loss, jitter alone held
//     uploads to 1.2 to 1.9 MB/s. Linux's own TCP shows the same bound:
//     sending through the same relay to our stack, Linux with Reno moved
//     0.98 MB/s, Linux with BBR 4.4 to 12.1 MB/s. gVisor offers only Reno
//     and CUBIC; going past the bound needs a controller that does not
//     read random loss as congestion (BBR), which gVisor lacks. Neither
//     RACK (1.36 to 1.39 MB/s) nor sending every datagram twice (1.59
//     MB/s) gets near it. The minimal reproductions are the lossy case of
//     go test ./cmd/internal/systemtest -run TCPRecoveryBench
//     -recovery.bench, the same with -recovery.linux-cc=reno for Linux,
//     and, for the reordering alone, the relay with Loss: 0.
//   - After an outage too short for a WireGuard handshake or keepalive to
//     end it (a few seconds), nothing tells wgbore that the path is back,
//     so nothing is re-sent: a remote sender resumes at its own next
//     timeout, and so does wgbore's own (its ceiling of 2 s bounds that
//     wait).
//   - After an outage of 15 s or more, a sender other than Linux (gVisor,
//     and systems not measured here) also resumes at its own next timeout,
//     about 10 s after the path returns for gVisor's TCP: no echo of the
//     re-sent acknowledgement was found that moves it and leaves its timer
//     sane. Linux is told by its SYN, and a Linux SYN that does not look
//     like one waits as well: a gateway that clamps the MSS (common in
//     front of WireGuard) breaks the window's rounding. A Linux sender
//     that stamps in microseconds (tcp_usec_ts, off by default) takes the
//     ancient echo for an RTT sample of a few seconds and waits out a
//     timer of that size.
//   - After a network change (a Rebind, or sockets reopened after a
//     failure) gVisor's TCP with RACK, sending to us, can crawl for tens of
//     seconds or more: when only a segment or two of its flight got
//     through, the SACK of them makes RACK mark the rest lost while its
//     pipe still counts it, and it resends two segments per retransmission
//     timeout until it has resent the whole flight, so a smaller receive
//     window (TCPBufferMax in the library) bounds the crawl. It happened
//     about once in a hundred 64 MiB downloads from wireguard-go's netstack
//     on two busy cores. Without RACK (wgbore's own TCP runs without it)
//     the same downloads resumed at once in each of 300 runs.
//   - On the clean path timestamps cost a little: 12 bytes of every
//     segment, and gVisor's work on them.
//
// # Using wgbore as a Go library
//
// Package netstack is the tunnel as a library; see its documentation
// (go doc github.com/wgbore/wgbore/netstack).
//
//	n, err := netstack.Open(ctx, netstack.Config{
//		PrivateKey: key,
//		Addresses:  []netip.Prefix{netip.MustParsePrefix("10.0.0.1/32")},
//		DNS:        []netip.Addr{netip.MustParseAddr("10.0.0.2")},
//		Peers: []protocol.PeerConfig{{PublicKey: peer, Endpoint: "vpn.example.net:51820",
//			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}}},
//	})
//	defer n.Close()
//	resp, err := n.HTTPClient().Get("http://web.internal/") // resolved by the tunnel's DNS
//	conn, err := n.DialContext(ctx, "tcp", "10.0.0.2:22")
//
// Or straight from a wg-quick (or wireproxy) file, with package
// netstack/wgquick:
//
//	n, err := wgquick.Open(ctx, "wg0.conf", wgquick.WithLogger(slog.Default()))
//
// When the host's network changes (a phone moving from Wi-Fi to
// cellular, a laptop waking elsewhere), a program that hears of it calls
// n.Rebind(): new host sockets, on the same port when it is free, and a
// keepalive and handshake to every peer with a session, so connections
// through the tunnel survive. Net rebinds by itself when its sockets fail
// (closed under it, or every receive failing for a second) or a Rebind
// cannot open new ones, retrying with a doubling pause up to 30 s; up and
// serve inherit that.
//
// config.Load parses such a file on its own; every problem in it comes back
// as file:line: Key: message, all of them at once. Package proxy holds the
// front ends, the SOCKS5 and HTTP proxies and the port forwarders, over a
// small Network interface that netstack.Net satisfies.
//
// # Platforms
//
// wgbore is pure Go with cgo off, so one command builds it for every
// platform: sh .ci/release [DIR] writes wgbore-VERSION-OS-ARCH for
// linux/amd64, arm64, arm and 386, windows/amd64 and arm64,
// darwin/amd64 and arm64, freebsd/amd64, openbsd/amd64 and
// android/arm64, each a static build from .ci/build-static with the Go
// it pins, and their SHA256SUMS. The version is git describe's (or
// WGBORE_VERSION), and wgbore version prints it with the commit, the Go
// release and the platform. The builds are reproducible: the same commit
// and Go give the same bytes. iOS programs need cgo and Apple's linker,
// so for ios/arm64 CI builds the library (config, netstack, protocol,
// proxy) instead.
//
// Linux differs in three places. Its host sockets batch with recvmmsg
// and sendmmsg and use UDP GSO and GRO; elsewhere one datagram moves per
// system call, through Winsock on Windows and the net package on the
// others (protocol/udpbind). process_open_fds,
// process_cpu_seconds_total and process_resident_memory_bytes come from
// /proc and are left out elsewhere, where the go_* figures remain. The
// memory budget reads cgroups, a Linux feature. Windows has no SIGHUP:
// wgbore reload does the same there. On Windows, Ctrl-C ends up and serve
// gracefully as SIGINT does elsewhere, and closing the console, logging
// off or shutting down as SIGTERM does (Go delivers those as SIGTERM);
// wgbore does not talk to the service manager, so running it as a
// Windows service needs a service wrapper.
//
// # Tests
//
// bash .ci/test is the whole suite, exactly as CI runs it (.ci/run installs
// curl, wireguard-tools, wireguard-go, iproute2, QEMU, a Debian kernel,
// Wine and MinGW first, as root): gofmt, go vet, go test -race ./...
// with .ci/cross beside it (every release binary, the iOS library, go vet
// and go test -c for Windows, macOS and FreeBSD), the engine's and the
// stack's tests again over the portable UDP path (-tags portableudp),
// wgbore demo -check, wgbench -quick, every fuzz target for 150,000 runs,
// and govulncheck. Set
// WGBORE_TEST_DEBUG=1 to see the engine's debug log in tests. What they
// prove:
//
//   - Against wireguard-go, a real peer over UDP on 127.0.0.1 and [::1]
//     (go test ./protocol -run Interop): both roles, with and without PSK,
//     byte-identical packets both ways, a rekey mid-stream without loss;
//     wrong keys or PSKs never deliver; under a flood each side demands a
//     cookie, and the other's MAC2 retry is accepted.
//   - Two engines on the in-memory network (protocol/memnet, a manual
//     clock): 24 h of protocol time in about a second (a rekey every 120 s,
//     nothing lost, no session used past RejectAfterTime, flat memory); 20%
//     loss, reordering and duplication, then replays; 10,000 spoofed
//     initiations; the section 6 timers observed on the wire; cryptokey
//     routing, roaming, hostname endpoints, key changes, order through
//     parallel crypto, and secrets kept out of logs.
//   - Fuzzing: FuzzParseMessages and FuzzReceivePath (random datagrams into
//     a live engine), seeded from protocol/testdata/fuzz.
//   - The command, end to end (cmd/internal/systemtest, whose tests the
//     -run names from here on are unless a package is named): the built
//     binary runs a wg-quick file written by the test against a
//     wireguard-go peer (netstack/peersite) serving HTTP, echo, discard,
//     source and DNS in its tunnel. -run EndToEnd drives it with real curl
//     (--socks5-hostname by IP, IPv6 and a name only the peer's DNS knows;
//     -x http://user:pass@ GET, a 10 MiB POST plain and chunked checked by
//     the peer's sha256, every method, CONNECT; wrong passwords get 407 or
//     a SOCKS failure) and Go's net/http, carries data through each
//     forwarder kind, and speaks RFC 1928 UDP ASSOCIATE by hand (DNS and
//     echo through the relay, a spoofed datagram dropped, the association
//     gone with its control connection). Others run a wireproxy-style file
//     with every section, STDIOTunnel included (-run WireproxyConfig),
//     cover signals and exit codes (-run
//     'GracefulShutdown|GraceEndsHeldConnections|StartFailures'); and
//     cmd/wgbore's own tests compare genkey, genpsk and pubkey with the
//     real wg (go test ./cmd/wgbore -run KeyCommandsMatchWG).
//   - Server mode: a wireguard-go client with its own netstack connects to
//     the serve binary, fetches 64 MiB from a host service that [Egress]
//     allows, sha256 intact, gets a UDP echo, and is refused at once, by
//     reset, for denied destinations (-run ServeWithWireGuardGoClient); the
//     files from demo -write-configs run as separate serve and up processes
//     with curl through the client's proxies (-run
//     DemoConfigsAsTwoProcesses); demo -check (go test ./cmd/wgbore -run
//     DemoCheck). In proxy/egress: the egress's refusals, flow limits,
//     half-close, UDP idle expiry and pings; in proxy/dnsserver, the DNS
//     server through the tunnel (FuzzDNSServer fuzzes its query path).
//   - Proxies over loopback (package proxy): SOCKS5 and HTTP with real
//     curl, HTTPS listeners, auth, caps, handshake timeouts, Shutdown and
//     Close leaving no goroutine, malformed requests; forwarders both ways
//     with half-close, idle timeouts and UDP session expiry; FuzzHTTPRequest
//     and FuzzSOCKSUDPHeader.
//   - Other platforms and network changes: wgbore.exe up, the Windows
//     build, runs under Wine against a wireguard-go peer and moves 64 MiB
//     each way through curl (-run WindowsUnderWine; Wine 8 lacks the
//     ProcessPrng that Go's runtime calls, so the test builds a stub from
//     its testdata/wine with MinGW); a Linux binary on the portable UDP
//     path does the same natively (-run PortableUDP), and the udpbind tests
//     run on both Linux paths. A 64 MiB download through the library
//     survives a Rebind and then sockets closed under the engine, each time
//     to a new source address the wireguard-go peer must follow (go test
//     ./netstack -run RebindMidDownload): once from a peer without RACK,
//     once from one as it ships, with our TCP buffers at 256 KiB so that
//     its crawl (Known issues) stays short.
//   - Operations (cmd/internal/systemtest, protocol/uapi): the real wg
//     (Debian's wireguard-tools) against a running up: wg show, wg set ...
//     allowed-ips and ... remove proved by dialing through the tunnel, wg
//     showconf/setconf round trip (-run WGToolAgainstUp); wgbore show
//     compared with wg show line by line, on a socket given to a group with
//     -uapi-group (-run ShowMatchesWG); FuzzUAPISet fuzzes the set parser.
//     A 32 MiB download and an echo connection stay alive across a SIGHUP
//     that adds a peer and an HTTP proxy and removes a forwarder; a broken
//     file is refused by SIGHUP and by wgbore reload; a reload removes the
//     peer again (-run ReloadKeepsTransfers); under the race detector a
//     changed forwarder rebinds on its own address and [Metrics] starts (go
//     test ./cmd/wgbore -run ReloadInProcess). /metrics is parsed with
//     Prometheus' own parser, its counters move with a download through
//     SOCKS5, and /readyz turns 503 when the wireguard-go peer goes down
//     and 200 when it comes back (-run MetricsAgainstUp).
//   - Linux TCP at the far end (root; -run KernelTCPBehindWireGuardGo):
//     in a network namespace of its own (deleted afterwards; the host's
//     interfaces are never touched), Debian's wireguard-go runs on a real
//     TUN, configured with wg and ip, and wgbore up beside it: 256 MiB each
//     way through SOCKS5 to and from the kernel's TCP, sha256 intact, 1,000
//     short connections and a UDP echo. -netns.rekey also waits for a real
//     rekey (120 s) with traffic flowing. It skips, saying why, without
//     root, ip, wireguard-go, wg or /dev/net/tun.
//   - The kernel's WireGuard (root; -run KernelWireGuard): Debian's kernel
//     boots under QEMU with an initramfs the test builds, a static Go /init
//     (cmd/internal/systemtest/kvmguest) that loads wireguard.ko and the
//     virtio NIC's modules in modules.dep order, makes wg0 through netlink,
//     and serves TCP echo, HTTP and UDP echo on it. QEMU's user-mode
//     network forwards a port on 127.0.0.1 to the guest's 51820 and maps
//     10.0.2.2 to the host's loopback; the guest has no default route. The
//     guest's kernel initiates to wgbore up and sends 64 MiB (-kvm.mib)
//     each way through a [TCPServerTunnel]; then up initiates and moves
//     64 MiB each way through SOCKS5 to the guest's HTTP server; both with
//     a PSK; then a wrong PSK, which must not handshake. The initramfs is
//     cached under ~/.cache/wgbore-kvm. It tries KVM first and falls back
//     to software emulation (TCG) when the guest does not come up under KVM
//     in 10 s, and logs which ran (nested KVM in a Firecracker guest hangs
//     the guest kernel at boot; under TCG the test takes about 50 s);
//     -kvm.accel=tcg skips the attempt. It skips with "no /dev/kvm" without
//     /dev/kvm, and says what to install when QEMU or a kernel with
//     wireguard.ko is missing (apt-get install --no-install-recommends
//     qemu-system-x86 linux-image-amd64).
//   - Faults, floods and abuse (the built binary against a wireguard-go
//     peer, with protocol/wgtest.Relay between them, a UDP impairment
//     relay: loss, duplication, reordering, delay and jitter, blackouts,
//     NAT rebinding): data both ways through SOCKS5 over 5% loss, 2%
//     reordering, 1% duplication and 2 ms ± 1 ms each way, sha256 intact;
//     a blackout mid-download (the transfer completes, a dial during it
//     gets its failure after DialTimeout); the peer's port moved
//     mid-download (nothing goes to the old port afterwards) (all three:
//     -run Faults); the peer restarted with its keys and port (-run
//     PeerRestart); a flood of the WireGuard port from 1,000 loopback
//     sources (cookie replies engage, the session holds, the peer still
//     handshakes afresh, CPU and RSS reported; -run Flood); ten thousand
//     SOCKS5 connections, the excess past MaxConnections refused at once,
//     descriptors and goroutines back to their baseline after (-run
//     TenThousandSOCKSConnections); no key, PSK or password in any output,
//     at debug level, through PSK handshakes, failures, a reload to a new
//     key and PSK, errors and /metrics (-run NoSecretsInAnyOutput). In
//     netstack, a peer's hostname endpoint follows its name through a
//     resolver the test controls. In proxy, the abuse tests: failed logins
//     dial nothing, foreign UDP ASSOCIATE senders are dropped, smuggling
//     (Content-Length with Transfer-Encoding) is answered once and the
//     connection closed, slowloris clients lose their slot.
//   - Memory: with -memory-limit 64MiB, up takes idle SOCKS5 connections
//     until its budget refuses them: resident memory never passes the
//     budget, the refusals are counted as the budget's, and every
//     connection opened before them still echoes (-run MemoryBudget; about
//     10 s, skipped by -short).
//   - TCP recovery (wgbore's stack in-process against a wireguard-go peer,
//     the relay between them, progress timed where the bytes land): the
//     path blacked out for 3 s at three points of an upload, where the
//     retransmission timer stands at different stages of its backoff, and
//     once more on a path with 5 ms each way; it fails if the first whole
//     MiB after the path returns takes more than 10 s (-run
//     TCPRecoveryAfterBlackouts). The download half (root, in a network
//     namespace as above): Linux's TCP sends from behind Debian's
//     wireguard-go on a real TUN, the relay sits in front of the client,
//     and wgbore's stack and wireguard-go's receive in turn; a download
//     blacked out for 3 s must see its first whole MiB within 10 s, and
//     one blacked out for 17 s on a 5 ms path within 30 s, the bound of
//     Linux's own backed-off timer (-run TCPRecoveryFromLinuxSender).
//     Whether Linux negotiated timestamps, SACK and window scaling, with
//     wgbore dialing Linux and Linux dialing wgbore, is asked of ss (-run
//     TCPTimestampsNegotiated, root). A download from gVisor's TCP with its
//     defaults (wireguard-go's netstack) through a 3 s and a 15 s blackout,
//     wgbore's stack and then wireguard-go's receiving, fails if wgbore's
//     first whole MiB takes more than 30 s or more than the reference's
//     (-run TCPRecoveryFromGVisorSender).
//   - Vulnerabilities: bash .ci/vulncheck runs govulncheck against a
//     database built from the golang.org/x/vulndb module (vuln.go.dev is
//     not reachable from CI); a reachable vulnerability in a required
//     module fails it, standard-library ones are listed with the Go release
//     that fixes them.
//
// Long and opt-in runs:
//
//	FUZZTIME=50000000x bash .ci/fuzz     # every fuzz target in turn, for as long as wanted
//	go test ./cmd/internal/systemtest -run Faults -faults.mib=256 -faults.blackout=15s -timeout 2h
//	go test ./cmd/internal/systemtest -run Flood -flood=20s
//	go test ./cmd/internal/systemtest -run KernelTCPBehindWireGuardGo -netns.rekey
//	go test ./cmd/internal/systemtest -run KernelWireGuard -kvm.accel=tcg
//	go test ./cmd/internal/systemtest -run TCPRecoveryBench -recovery.bench -v -timeout 2h
//
// A fuzz crasher is saved under the package's testdata/fuzz/TARGET by Go
// and becomes a regression case of the plain go test run. -flood=20s also
// holds the flood to its targets: a valid-MAC1 flood at most 25% of a
// core, a wrong-MAC1 flood at most 10%, a transfer at most 5% slower.
// -recovery.bench is the full recovery measurement (the uploads take about
// 6 minutes, the by-sender table about 12): wgbore's stack and wireguard-go's through the same
// impairment to the same peer in one run, a 64 MiB upload over the lossy
// path (-recovery.mib) and 128 MiB uploads through a 15 s blackout, on a
// bare path and on one with 5 ms each way; with root it adds the Linux
// sender's lossy path and 15 s blackouts, and the by-sender table.
// -recovery.trace logs wgbore's RTO, RTT, congestion window and recovery
// state every 100 ms, ss's view of a Linux sender, and the sender state
// (timer, window, pipe, recovery, RACK) of a gVisor site from its TCP
// probe. -recovery.only=lossy picks cases; -recovery.linux-cc=reno sets the
// namespace's congestion control (the host allows reno and bbr; bbr is its
// default).
//
// # Interoperability
//
//   - wireguard-go as a Go library, with its tun/netstack: we initiate and
//     we respond; handshakes, PSK, wrong keys refused, cookie replies both
//     ways, rekey mid-stream (go test ./protocol -run Interop).
//   - wireguard-go in the test process as the peer of the built binary: up
//     initiates, serve responds; SOCKS5, HTTP, forwarders, UDP ASSOCIATE,
//     DNS in the tunnel, loss, blackouts, NAT rebinding, floods, restarts
//     (go test ./cmd/internal/systemtest).
//   - Debian's wireguard-go on a real TUN, with Linux's TCP and UDP behind
//     it: up initiates; 256 MiB each way, 1,000 connections, UDP, a real
//     rekey (-run KernelTCPBehindWireGuardGo, root).
//   - wg (Debian's wireguard-tools), as a UAPI client of up: wg show, wg
//     set, showconf/setconf (go test ./cmd/internal/systemtest -run
//     'WGTool|ShowMatchesWG'), the key commands (go test ./cmd/wgbore -run
//     KeyCommandsMatchWG).
//   - curl and Go's net/http as proxy clients: --socks5-hostname, -x
//     http://, CONNECT, every method (-run EndToEnd).
//   - The Linux kernel's WireGuard module (Debian's 6.1 kernel in a QEMU
//     guest): the guest initiates and up responds through a
//     [TCPServerTunnel], and up initiates; 64 MiB each way in both roles,
//     PSK, a wrong PSK refused, TCP and UDP echo (-run KernelWireGuard,
//     root and /dev/kvm).
//
// # Benchmarks
//
// The performance suite is one command, cmd/wgbench; the README has its
// latest figures.
//
//	go run ./cmd/wgbench                 # the whole suite, about 5 minutes on 2 cores
//	go run ./cmd/wgbench -quick          # tiny sizes, one run each: CI's check that it still runs
//	go run ./cmd/wgbench -only A,B -size 64MiB -repeat 5
//	go run ./cmd/wgbench -only C -cpuprofile /tmp/prof   # then: go tool pprof -top /tmp/prof/wgbore-client-*.pprof
//
// It measures, in the same run, wgbore and the wireguard-go reference it
// is compared with. Every party is a process of its own (the program
// re-executes itself, or runs the built wgbore up), all over UDP on
// 127.0.0.1, so each process's CPU time is read from /proc alone. Before
// each measurement it waits up to -quiet-wait (10s) for the CPU to be 90%
// idle, and says when it measured anyway; each figure is the median of
// -repeat runs (3). The pairs run interleaved (a run of A, then B, then
// C, ... and again), so a busy moment weighs on both sides of a ratio.
// wgbench is not part of go test ./.... The parts (-only):
//
//   - A: wgbore's netstack as a library to a wireguard-go peer (its
//     tun/netstack) serving TCP echo (7), discard (9) and source (19).
//   - B: wireguard-go's tun/netstack as the client to the same kind of
//     peer: the reference for A.
//   - C: wgbore library to wgbore library peer. D: wireguard-go to
//     wireguard-go, the reference for C (the same setup as B, measured
//     again).
//   - E: the built wgbore up (the release build of .ci/build-static, as
//     the image ships it, unless -wgbore names a binary; [Socks5] and
//     [HTTP]) to the wireguard-go peer, driven through SOCKS5 CONNECT
//     (E-socks5) and HTTP CONNECT (E-http) by a client process.
//   - M: wgbore up's RSS idle after its handshake, and with 1,000 and
//     10,000 idle TCP connections held open through its SOCKS5 proxy (KiB
//     per connection over idle).
//   - H: go test -bench of ./protocol on one core: handshakes per second,
//     and allocs/op of Encrypt, Decrypt and SendPath (the data path). It
//     needs the go command.
//   - S: the built wgbore serve with -scale-peers (1,000) peers, each a
//     client on our engine with its own key and UDP socket on 127.0.0.1,
//     in wgbench's process. All handshake at once (the time until the
//     last has a session, cookie replies, drops); serve's RSS with no
//     peer, with them configured (added by reload), and with their
//     sessions; -scale-flow-peers (20) of them, with a netstack each,
//     hold -scale-flows (1,000, fewer if the open-file limit says so)
//     idle TCP flows and as many UDP ones to host services at the
//     server's tunnel address (RSS per flow, and serve's idle CPU); a
//     1-byte echo alone and beside another peer's download (p50, p99);
//     ten peers downloading at once (the furthest from an equal share,
//     and the CPU serve and each peer took); 1,000 peers added,
//     handshaken and removed by reload while a peer echoes (serve's RSS
//     against before, the longest pause between echoes, and in which
//     step of the churn it began). The downloading peers run at nice 19
//     and the churn's clients under SCHED_IDLE, as if on machines of
//     their own. -quick runs it with 100 peers and 2,000 flows.
//
// Throughput is one TCP stream of -size bytes (256MiB) each way, in MB/s,
// with CPU-seconds per GB for every process involved; latency is 1-byte
// echo round trips on one connection (p50, p99); connection rate is 50
// parallel loops of dial, 1-byte echo, close. Latency and connection rate
// also give each process's CPU microseconds per round trip and per
// connection, which show which process bounds them, and the idle RSS is
// split into anonymous memory and the binary's own file-backed pages. The
// output starts with the machine (CPU, cores, kernel, Go), then the
// progress of each part, a table, the project's targets as
// ratio-or-figure want got PASS|MISS, and last one machine-readable line
// per figure, such as
//
//	wgbench measure=throughput pair=A dir=download mbps=123.4
//	wgbench measure=cpu pair=A dir=download proc=wgbore cpu_s_per_gb=5.6
//	wgbench measure=target name=throughput_A/B_download value=1.6 op=>= want=1.5 status=PASS
//
// Read the ratios (A/B, C/D), not the raw figures: they compare two
// implementations on the same machine in the same minutes, which raw MB/s
// from different machines or days do not. The wireguard-go parties cannot
// use wireguard-go's StdNetBind, which binds every address; their UDP
// socket, on 127.0.0.1 only, does what StdNetBind does on Linux (7 MiB
// socket buffers, 128 datagrams per recvmmsg/sendmmsg) except UDP GSO/GRO.
//
// The go test benchmarks it builds on. The engine's run with
//
//	go test -run '^$' -bench . -benchmem ./protocol/
//
// and the others with the command each names:
//
//   - Encrypt and Decrypt: one 1420-byte transport message, reported next
//     to the bare chacha20poly1305 Seal and Open measured in the same run
//     (-cpu 1 gives per-core figures).
//   - SendPath: the whole outbound engine (routing, staging, parallel
//     encryption, in-order sending) into a discarding Bind; allocs/op
//     counts every goroutine.
//   - EngineToEngineUDP: one engine to another over real UDP on 127.0.0.1,
//     reporting delivered MB/s and loss.
//   - Handshake: complete handshakes (initiation, response, both consumed,
//     both sessions derived) per second.
//   - go test -run '^$' -bench TCPThroughput ./netstack/: one TCP stream to
//     a wireguard-go peer through our Net and, in the same run, through
//     wireguard-go's own tun/netstack; MB/s and CPU-seconds per GB.
//   - go test -run '^$' -bench Serve -benchtime 200x
//     ./cmd/internal/systemtest/: a TCP stream through the up and serve
//     binaries (both ours) and, in the same run, through wireguard-go on
//     both ends; MB/s and CPU-seconds per GB of every process involved.
//     -bench ForwardTCP ./netstack/ measures the server side alone against
//     a wireguard-go client.
//   - go test -run '^$' -bench EndToEnd -benchtime 200x
//     ./cmd/internal/systemtest/: the built binary against a wireguard-go
//     peer: download and upload MB/s and 1-byte echo p50/p99 through SOCKS5
//     and HTTP CONNECT, next to the same transfers from our netstack as a
//     library ("direct") and from wireguard-go's netstack ("wggo"),
//     measured in the same run.
//   - go test ./cmd/internal/systemtest -run '^$' -bench IdleConnMemory
//     -benchtime 1x: the resident memory of a wgbore up process idle and
//     per idle TCP connection held through its SOCKS5 proxy, at 1,000 and
//     10,000. IdleTunnelMemory does the same through the HTTP proxy's
//     CONNECT.
//   - go test ./cmd/internal/systemtest -run '^$' -bench BurstMemory
//     -benchtime 1x -v: wgbore up's resident memory through a burst of
//     -burst.n (5,000) idle SOCKS5 connections: idle, held, right after
//     they all close, and 30 s later, with the peak of samples every
//     100 ms. Both memory benchmarks start processes of their own and ignore
//     b.N, so run them once; they use go build's binary unless
//     WGBORE_BENCH_BINARY names another (such as the release build), and
//     with WGBORE_MEM_STATUS naming a directory they save the process's
//     memory maps there.
//
// # Security
//
// What wgbore defends, and what it leaves to you.
//
// A network attacker without keys (anyone who can send to the WireGuard
// port):
//
//   - Gets no reply without our public key: every handshake message must
//     carry a MAC1 keyed by it, checked on receipt before any Curve25519
//     work (protocol/receive.go, cookie.go). Garbage, bad MACs and unknown
//     session indexes are dropped and counted, never answered.
//   - With the public key (shown by /metrics, show and the logs: not
//     secret, but not worth publishing), each initiation costs us a
//     Curve25519 operation. Past a burst of 2,048 and then 500 a second
//     (so a restarted server's peers all come back at once on their first
//     try), or once a handshake waited over a second in the queue, we are
//     under load: a handshake without a valid MAC2 gets a 64-byte cookie
//     reply (smaller than the initiation; the secret
//     rotates every 120 s), and a source that proved its address gets 20
//     handshakes a second, burst 5, per IPv4 address or IPv6 /64
//     (protocol/ratelimiter.go). Below that rate there is no per-source
//     limit.
//   - Cannot decrypt or inject. Replayed data falls outside the replay
//     window (8,128 counters, protocol/replay.go); a replayed initiation
//     fails its TAI64N timestamp; a peer may initiate at most every 20 ms.
//   - Can drop, delay and reorder packets, and sees their sizes (padded to
//     16 bytes), timing and both endpoints; one who resends a captured
//     packet first, from elsewhere, moves our idea of the peer's endpoint
//     until its next packet. That is availability only, and nothing here
//     prevents it.
//
// A local user on the same host:
//
//   - The UAPI socket is 0600 (0660 and the group's with -uapi-group),
//     bound in a private directory and renamed into place, never
//     reachable with a looser mode (protocol/uapi/listen.go). Whoever can
//     open it owns the tunnel: get=1 returns the private key and PSKs in
//     hex, as the protocol says; wg set changes keys and peers; wgbore
//     reload re-reads the file.
//   - Listeners on 127.0.0.1 are open to every local user. [Socks5] and
//     [HTTP] can demand a login (sent in clear text; CertFile and KeyFile
//     make the HTTP proxy HTTPS); TCPClientTunnel and UDPProxyTunnel
//     cannot. /metrics, /healthz and /readyz have no login: they show
//     public keys, listener addresses and traffic, never a key, PSK or
//     password.
//   - Check and up warn when a PrivateKeyFile or PresharedKeyFile is
//     readable by group or others (config/parse.go), but not about the
//     config file itself, which may hold PrivateKey inline: chmod 600 it
//     (demo -write-configs writes 0600).
//
// Beyond loopback. A BindAddress without a host means 127.0.0.1. A proxy
// or forwarder bound elsewhere without a login logs LISTENING BEYOND
// LOOPBACK WITHOUT AUTHENTICATION; the metrics endpoint gets no warning.
// Each listener serves at most MaxConnections (1024) at once, shared by
// all clients, so one client can take every slot (the rest are refused at
// once and counted in wgbore_listener_connections_refused_total); SOCKS5
// and HTTP clients get 30 s for their request, and idle HTTP keep-alives
// close after 2 min. A memory budget refuses new connections before the
// process runs out, for every client alike.
//
// Server mode egress (proxy/egress/policy.go). Only serve forwards peers'
// flows to the host's network. By default every peer may reach any public
// unicast address: the server is an exit node. Loopback, link-local (cloud
// metadata), RFC 1918, fc00::/7, CGNAT, multicast and reserved ranges are
// denied unless Allow names them; NAT64 and 6to4 addresses are judged by
// the IPv4 address inside; a flow that lands on the host through one of
// its own addresses needs an explicit Allow. The policy is the same for
// every peer, with at most MaxFlowsPerPeer (1024) flows each and MaxFlows
// in all. Whatever a peer's AllowedIPs, a packet from it whose source is
// loopback, unspecified, multicast, broadcast or one of our own tunnel
// addresses is dropped (martian_source), in up and serve alike.
//
// Secrets. Key and password types print as "(redacted)" through %v, %x,
// slog and JSON; config errors name file, line and key, never the value;
// UAPI requests are never logged. Keys and MACs compare with
// crypto/subtle; proxy logins are kept as SHA-256 hashes and compared in
// constant time. Handshake chaining keys are wiped once a session is made,
// and sessions dropped 540 s after the last handshake; the static key
// stays in memory while the process runs, and Go cannot promise every copy
// is erased. The debug log holds public keys, endpoints, client addresses,
// refused destinations and, for an HTTP response cut short, its URL with
// the password removed but the query kept. A test runs the binary at debug
// level through PSK handshakes, failures and a reload to a new key and
// PSK, and finds no key, PSK or password in any output.
//
// # Dependencies
//
//   - gvisor.dev/gvisor: the userspace TCP/IP stack inside the tunnel.
//   - golang.org/x/crypto: Curve25519, ChaCha20-Poly1305,
//     XChaCha20-Poly1305, BLAKE2s.
//   - golang.org/x/sys: recvmmsg/sendmmsg on Linux, with no allocation per
//     datagram.
//   - golang.org/x/net: DNS messages (dns/dnsmessage) for lookups inside
//     the tunnel, ICMP echo for server mode's pings, and the demo's SOCKS5
//     client.
//   - github.com/things-go/go-socks5 v0.1.x (never v0.0.x): SOCKS5's wire
//     format for the proxy, the parsers of its messages and the replies,
//     and RFC 1929's login; wgbore reads the handshake and serves the
//     commands itself.
//   - golang.zx2c4.com/wireguard (tests only): wireguard-go, the
//     independent peer the engine is proven against.
//   - github.com/prometheus/common (tests only): the reference parser for
//     the text exposition, to prove /metrics parses; the runtime writes
//     the format by hand (one file, no dependency tree).
//
// wgbore is licensed under BSD-3-Clause; see the LICENSE file.
package main
