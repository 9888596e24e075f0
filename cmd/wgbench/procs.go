package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wgbore/wgbore/protocol"
)

// child is one party of a measurement in a process of its own.
type child struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *json.Decoder
	log   *tailBuffer
}

// tailBuffer keeps the start and the end of a child's stderr for an
// error message: a crash says why at its start, an error at the end.
type tailBuffer struct {
	mu         sync.Mutex
	head, tail []byte
	dropped    int
}

const headMax, tailMax = 3 << 10, 2 << 10

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	q := p
	if n := min(len(q), headMax-len(t.head)); n > 0 {
		t.head = append(t.head, q[:n]...)
		q = q[n:]
	}
	t.tail = append(t.tail, q...)
	if len(t.tail) > 2*tailMax {
		t.dropped += len(t.tail) - tailMax
		t.tail = append([]byte(nil), t.tail[len(t.tail)-tailMax:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dropped == 0 {
		return strings.TrimSpace(string(t.head) + string(t.tail))
	}
	return strings.TrimSpace(fmt.Sprintf("%s\n[... %d bytes ...]\n%s", t.head, t.dropped, t.tail))
}

// startRole re-executes this program as role and waits for its first
// line: a peer's UDP port or a client's "ready".
func startRole(name, role string, key protocol.PrivateKey, peer protocol.PublicKey, args ...string) (*child, reply, error) {
	return startRoleAt(normalPriority, name, role, key, peer, args...)
}

// rolePriority is the CPU priority a role runs at.
type rolePriority int

const (
	normalPriority rolePriority = iota
	// lowPriority is nice 19, for load that stands for other machines:
	// what it takes of the CPU then comes from idle time first, not
	// from the process measured.
	lowPriority
	// idlePriority is Linux's SCHED_IDLE, for bursts of such load
	// whose timing is measured against: at nice 19 a task keeps the
	// core it has until its slice ends, up to a scheduler tick, while
	// the measured process waits; one of SCHED_IDLE gives way as soon
	// as any other task wakes. Where chrt(1) cannot set it, it is
	// lowPriority.
	idlePriority
)

// priorityCommand is the command that runs a program at prio, and the
// priority it reaches here. SCHED_IDLE is tried once through chrt(1): a
// sandbox may refuse the policy, and BusyBox's chrt takes short options
// only; nice 19 stands in for it where chrt cannot set it, and normal
// priority for both where nice(1) is missing too.
func priorityCommand(prio rolePriority) ([]string, rolePriority) {
	if prio == idlePriority {
		if chrt, err := exec.LookPath("chrt"); err == nil && exec.Command(chrt, "-i", "0", "true").Run() == nil {
			return []string{chrt, "-i", "0"}, idlePriority
		}
	}
	if prio != normalPriority {
		if nice, err := exec.LookPath("nice"); err == nil {
			return []string{nice, "-n", "19"}, lowPriority
		}
	}
	return nil, normalPriority
}

// startRoleAt is startRole at prio, or as near it as priorityCommand
// gets; the caller says once for all such roles what they run at
// instead (sayIfNotLowered).
func startRoleAt(prio rolePriority, name, role string, key protocol.PrivateKey, peer protocol.PublicKey, args ...string) (*child, reply, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, reply{}, err
	}
	prefix, _ := priorityCommand(prio)
	argv := append(append(prefix, self, "-role", role), args...)
	return startChild(name, exec.Command(argv[0], argv[1:]...), key, peer)
}

// sayIfNotLowered says once, for the roles that who names, what they run
// at when prio cannot be had here.
func sayIfNotLowered(prio rolePriority, who string) {
	switch _, got := priorityCommand(prio); {
	case got == prio:
	case got == normalPriority:
		fmt.Printf("   (no nice(1): %s run at normal priority)\n", who)
	default:
		fmt.Printf("   (chrt(1) cannot set SCHED_IDLE here: %s run at nice 19)\n", who)
	}
}

// startChild starts cmd, a role of this program, with its keys in the
// environment, and waits for its first line.
func startChild(name string, cmd *exec.Cmd, key protocol.PrivateKey, peer protocol.PublicKey) (*child, reply, error) {
	var err error
	cmd.Env = append(os.Environ(), envKey+"="+key.Base64(), envPeer+"="+peer.String())
	c := &child{name: name, cmd: cmd, log: &tailBuffer{}}
	cmd.Stderr = c.log
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, reply{}, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, reply{}, err
	}
	c.out = json.NewDecoder(bufio.NewReader(stdout))
	if err := cmd.Start(); err != nil {
		return nil, reply{}, err
	}
	var first reply
	if err := c.out.Decode(&first); err != nil {
		c.stop()
		return nil, reply{}, fmt.Errorf("%s did not start: %v: %s", name, err, c.log)
	}
	if first.Stalls > 0 {
		fmt.Printf("   WARNING: %s: %d first connection(s) through the tunnel stalled and were retried: %s\n", name, first.Stalls, first.Stalled)
	}
	return c, first, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// send sends a command to a client process without waiting for an
// answer: one that answers only once a later command stops it.
func (c *child) send(cmd command) error {
	line, _ := json.Marshal(cmd)
	if _, err := c.stdin.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("%s: %v: %s", c.name, err, c.log)
	}
	return nil
}

// do sends a command to a client process and waits for its answer.
func (c *child) do(cmd command) (reply, error) {
	if err := c.send(cmd); err != nil {
		return reply{}, err
	}
	var r reply
	if err := c.out.Decode(&r); err != nil {
		return reply{}, fmt.Errorf("%s: %v: %s", c.name, err, c.log)
	}
	if r.Err != "" {
		return r, fmt.Errorf("%s %s %s: %s", c.name, cmd.Op, cmd.Addr, r.Err)
	}
	return r, nil
}

// stop closes the child's stdin, which ends every role, and kills one
// that has not exited a few seconds later.
func (c *child) stop() {
	c.stdin.Close()
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// upDaemon is a `wgbore up` process and the addresses it listens on.
type upDaemon struct {
	cmd    *exec.Cmd
	listen []string
	log    *tailBuffer
	dir    string
	done   chan struct{}
	// logFile has the whole log; it is kept after a failure, with a
	// goroutine dump, for whoever debugs the failure.
	logFile *os.File
	failed  bool
	// reloads has the outcome of each reload, as the log reports it.
	reloads chan reloadOutcome
}

// reloadOutcome is a reload as wgbore's log reports it once done; Msg
// is every log line's message.
type reloadOutcome struct {
	Msg    string `json:"msg"`
	Failed int    `json:"failed"`
	Err    string `json:"err"`
}

// startUp runs `wgbore up -c conf` and waits for its start-up summary,
// whose "listen" field names the proxies' addresses.
func startUp(binary, conf string) (*upDaemon, error) {
	return startWgbore(binary, "up", conf)
}

// startWgbore runs `wgbore COMMAND -c conf` (up or serve) as startUp
// does; the file stays at d.conf(), for a reload to rewrite.
func startWgbore(binary, command, conf string, args ...string) (*upDaemon, error) {
	return startWgboreIn("", binary, command, conf, args...)
}

// startWgboreIn is startWgbore with the process started in the cgroup
// whose cgroup.procs file is procs (none if empty): a shell moves itself
// there and becomes wgbore, which so finds its CPU quota from its first
// instruction on, as in a container.
func startWgboreIn(procs, binary, command, conf string, args ...string) (*upDaemon, error) {
	dir, err := os.MkdirTemp("", "wgbench")
	if err != nil {
		return nil, err
	}
	path := dir + "/wg0.conf"
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	d := &upDaemon{dir: dir, log: &tailBuffer{}, done: make(chan struct{}), reloads: make(chan reloadOutcome, 16)}
	if d.logFile, err = os.CreateTemp("", "wgbench-up-*.log"); err != nil {
		return nil, err
	}
	argv := append([]string{binary, command, "-c", path, "-log-format", "json", "-log-level", "info", "-uapi-dir", dir}, args...)
	if procs == "" {
		d.cmd = exec.Command(argv[0], argv[1:]...)
	} else {
		d.cmd = exec.Command("/bin/sh", append([]string{"-c", `echo $$ > "$0" && exec "$@"`, procs}, argv...)...)
	}
	// up does not read stdin, so a bench process killed by a signal would
	// leave it running without this.
	d.cmd.SysProcAttr = dieWithParent()
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := d.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		d.logFile.Close()
		os.Remove(d.logFile.Name())
		return nil, err
	}
	ready := make(chan []string, 1)
	go func() {
		defer close(d.done)
		sc := bufio.NewScanner(io.TeeReader(stderr, d.logFile))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			d.log.Write(append(sc.Bytes(), '\n'))
			var line struct {
				reloadOutcome
				Listen []string `json:"listen"`
			}
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				continue
			}
			switch {
			case line.Msg == "wgbore is up":
				ready <- line.Listen
			case line.Msg == "reloaded" || strings.HasPrefix(line.Msg, "reload rejected"):
				select {
				case d.reloads <- line.reloadOutcome:
				default:
				}
			}
		}
		io.Copy(d.logFile, stderr)
		d.cmd.Wait()
	}()
	select {
	case d.listen = <-ready:
		return d, nil
	case <-d.done:
		os.RemoveAll(dir)
		d.logFile.Close()
		os.Remove(d.logFile.Name())
		return nil, fmt.Errorf("wgbore %s exited before its summary: %s", command, d.log)
	case <-time.After(60 * time.Second):
		return nil, fmt.Errorf("wgbore %s: no start-up summary after 60s: log in %s", command, d.fail())
	}
}

// fail stops the daemon with SIGQUIT, whose goroutine dump goes to the
// log, and keeps the log: the path is for the failure's message.
func (d *upDaemon) fail() string {
	if d.failed {
		return d.logFile.Name()
	}
	d.failed = true
	d.end(syscall.SIGQUIT)
	return d.logFile.Name()
}

// reload sends SIGHUP and waits for the log's report that the reload is
// done, which costs the process nothing more, unlike asking its metrics
// until they show the change.
func (d *upDaemon) reload() error {
	for len(d.reloads) > 0 {
		<-d.reloads
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return err
	}
	select {
	case o := <-d.reloads:
		if o.Msg != "reloaded" {
			return fmt.Errorf("%s: %s", o.Msg, o.Err)
		}
		if o.Failed > 0 {
			return fmt.Errorf("reload: %d changes failed: log in %s", o.Failed, d.fail())
		}
		return nil
	case <-d.done:
		return fmt.Errorf("wgbore exited during a reload: %s", d.log)
	case <-time.After(60 * time.Second):
		return fmt.Errorf("no reload reported within 60 s: log in %s", d.fail())
	}
}

// addr is the address of the listener whose description starts with
// prefix ("socks5 ", "http ").
func (d *upDaemon) addr(prefix string) (string, error) {
	for _, l := range d.listen {
		if rest, ok := strings.CutPrefix(l, prefix); ok {
			return strings.Fields(strings.Split(rest, "→")[0])[0], nil
		}
	}
	return "", fmt.Errorf("no %q listener in %v", strings.TrimSpace(prefix), d.listen)
}

func (d *upDaemon) pid() int { return d.cmd.Process.Pid }

// conf is the path of the daemon's configuration file.
func (d *upDaemon) conf() string { return d.dir + "/wg0.conf" }

func (d *upDaemon) stop() {
	if d.failed {
		return
	}
	d.end(os.Interrupt)
	os.Remove(d.logFile.Name())
}

// end sends sig, waits up to 10 s for the exit (then kills), and removes
// the daemon's directory; the log file stays, closed, for the caller.
func (d *upDaemon) end(sig os.Signal) {
	d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
	os.RemoveAll(d.dir)
	d.logFile.Close()
}

// buildWgbore builds cmd/wgbore into dir: E and M measure the program
// people run, not the library, and as it is shipped: with the release
// build of the Dockerfile (.ci/build-static: CGO off, static, stripped).
// A default `go build` links libc through cgo, which adds about 2.5 MB of
// idle RSS that the released binary does not have.
func buildWgbore(dir string) (string, error) {
	out := dir + "/wgbore"
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	cmd := exec.Command("sh", filepath.Join(root, ".ci", "build-static"), out)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf(".ci/build-static: %v: %s", err, stderr.String())
	}
	return out, nil
}

// upConfig is the wg-quick file for `wgbore up` as the client of the
// wireguard-go peer at port, with both proxies on loopback.
func upConfig(key protocol.PrivateKey, peer protocol.PublicKey, port uint16) string {
	return fmt.Sprintf(`[Interface]
PrivateKey = %s
Address = %s/32

[Peer]
PublicKey = %s
Endpoint = 127.0.0.1:%d
AllowedIPs = %s/32

[Socks5]
BindAddress = 127.0.0.1:0
MaxConnections = 20000

[http]
BindAddress = 127.0.0.1:0
Username = %s
Password = %s
`, key.Base64(), clientAddr, peer, port, peerAddr, proxyUser, proxyPass)
}
