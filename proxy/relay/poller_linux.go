package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Poller waits on many host sockets with one goroutine and one epoll
// instance, so that a relay direction reading a host socket needs no
// goroutine of its own while the socket is silent: with Watch, a host
// TCP or UDP socket becomes a ReadNotifier, which Start relays from as
// it does from a tunnel connection.
//
// The runtime's own poller has no such hook: it wakes a goroutine parked
// in Read, and each parked goroutine holds a stack. The epoll instance
// here is a second one beside the runtime's, edge-triggered, used only to
// learn that a socket may have become readable; every read still goes
// through the socket's RawConn, which keeps the descriptor from being
// closed and reused under the read.
type Poller struct {
	epfd   int
	wakeR  int // the read end of a pipe whose byte ends run
	wakeW  int
	mu     sync.Mutex
	next   uint64
	fire   map[uint64]func()
	closed bool
	done   chan struct{}
	// fdMu is held shared by a registration's removal while it uses
	// epfd, and exclusively by Close while it closes it. The removal's
	// system call runs outside mu, so that thousands of sockets leaving
	// at once (a mass close) do not hold up the poller's goroutine, nor
	// each other's map updates, for the length of one.
	fdMu     sync.RWMutex
	fdClosed bool
}

// wakeID is the pipe's registration; sockets get ids from 1 on.
const wakeID = 0

// NewPoller starts a poller.
func NewPoller() (*Poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	var pipe [2]int
	if err := unix.Pipe2(pipe[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("pipe2", err)
	}
	p := &Poller{epfd: epfd, wakeR: pipe[0], wakeW: pipe[1], next: wakeID + 1, fire: map[uint64]func(){}, done: make(chan struct{})}
	if err := p.ctl(unix.EPOLL_CTL_ADD, p.wakeR, wakeID); err != nil {
		p.closeFDs()
		return nil, err
	}
	go p.run()
	return p, nil
}

func (p *Poller) ctl(op, fd int, id uint64) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(id), Pad: int32(id >> 32)}
	return os.NewSyscallError("epoll_ctl", unix.EpollCtl(p.epfd, op, fd, &ev))
}

func (p *Poller) run() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		for _, ev := range events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if id == wakeID {
				return
			}
			p.mu.Lock()
			f := p.fire[id]
			p.mu.Unlock()
			if f != nil {
				f()
			}
		}
	}
}

// Close stops the poller once its goroutine has returned. Sockets still
// watched are no longer notified; their own Close still wakes their
// relay.
func (p *Poller) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	unix.Write(p.wakeW, []byte{1})
	<-p.done
	p.fdMu.Lock()
	p.fdClosed = true
	p.closeFDs()
	p.fdMu.Unlock()
	return nil
}

func (p *Poller) closeFDs() {
	unix.Close(p.epfd)
	unix.Close(p.wakeR)
	unix.Close(p.wakeW)
}

// Watch makes c, a host *net.TCPConn or *net.UDPConn, a ReadNotifier
// whose notifications come from p. It returns nil, and c is untouched,
// when c is of another kind, has no descriptor, or cannot be registered
// (epoll's watch limit, fs.epoll.max_user_watches): the caller then
// relays from c as it would without a poller.
func (p *Poller) Watch(c net.Conn) ReadNotifier {
	var stream bool
	switch c.(type) {
	case *net.TCPConn:
		stream = true
	case *net.UDPConn:
	default:
		return nil
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	w := &watched{Conn: c, rc: rc, p: p, id: p.next, stream: stream}
	// Until a read has found the socket empty, it may hold data.
	w.drained.Store(^uint64(0))
	var regErr error
	if err := rc.Control(func(fd uintptr) { regErr = p.ctl(unix.EPOLL_CTL_ADD, int(fd), w.id) }); err != nil || regErr != nil {
		return nil
	}
	p.next++
	p.fire[w.id] = w.wake
	return w
}

// watched is a host socket that a Poller notifies for.
type watched struct {
	net.Conn
	rc     syscall.RawConn
	p      *Poller
	id     uint64
	stream bool

	mu     sync.Mutex
	notify func()
	closed atomic.Bool
	// events counts the poller's events for the socket, and drained is
	// what it was when a read last found the socket empty: an event
	// since then means there may be something to read. Readable thus
	// costs no system call.
	events, drained atomic.Uint64
}

// NotifyReadable has f called on the poller's events for the socket,
// which Watch registered; stop ends that registration.
func (w *watched) NotifyReadable(f func()) (stop func()) {
	w.mu.Lock()
	w.notify = f
	w.mu.Unlock()
	return func() {
		w.forget()
		w.mu.Lock()
		w.notify = nil
		w.mu.Unlock()
	}
}

// forget takes the socket out of the poller, unless the poller has
// closed (its epoll descriptor's number may be another file's by now).
func (w *watched) forget() {
	p := w.p
	p.mu.Lock()
	if _, ok := p.fire[w.id]; !ok || p.closed {
		p.mu.Unlock()
		return
	}
	delete(p.fire, w.id)
	if len(p.fire) == 0 {
		// A map keeps the buckets of its largest size: after a burst
		// of thousands of sockets, they would stay for good.
		p.fire = map[uint64]func(){}
	}
	p.mu.Unlock()
	// An event that comes before the removal finds no entry and is
	// dropped.
	p.fdMu.RLock()
	if !p.fdClosed {
		w.rc.Control(func(fd uintptr) { p.ctl(unix.EPOLL_CTL_DEL, int(fd), w.id) })
	}
	p.fdMu.RUnlock()
}

func (w *watched) wake() {
	w.events.Add(1)
	w.mu.Lock()
	f := w.notify
	w.mu.Unlock()
	if f != nil {
		f()
	}
}

// Readable reports whether the poller has seen the socket become readable
// since a read last found it empty (a closed socket counts: its TryRead
// says so). The events are edge-triggered, so one that came in between
// that read and the relay's arming for the next is caught here.
func (w *watched) Readable() bool {
	return w.closed.Load() || w.events.Load() != w.drained.Load()
}

func (w *watched) TryRead(b []byte) (n int, wouldBlock bool, err error) {
	// The count before the read: an event during it is not lost.
	seen := w.events.Load()
	var rerr error
	if cerr := w.rc.Read(func(fd uintptr) bool {
		n, rerr = readFD(fd, b)
		return true
	}); cerr != nil {
		return 0, false, cerr
	}
	switch {
	case rerr == unix.EAGAIN:
		w.drained.Store(seen)
		return 0, true, nil
	case rerr != nil:
		return 0, false, w.opError(rerr)
	case n == 0 && w.stream:
		return 0, false, io.EOF
	}
	return n, false, nil
}

func (w *watched) opError(err error) error {
	network := "udp"
	if w.stream {
		network = "tcp"
	}
	return &net.OpError{Op: "read", Net: network, Source: w.LocalAddr(), Addr: w.RemoteAddr(), Err: os.NewSyscallError("read", err)}
}

// lingerRead reads straight into b, as TryRead does, so that an error
// the kernel hands out once (a reset, an ICMP error on UDP) is returned
// by the read that took it.
func (w *watched) lingerRead(b []byte, d time.Duration) (n int, wouldBlock bool, err error) {
	if w.Conn.SetReadDeadline(time.Now().Add(d)) != nil {
		return 0, true, nil
	}
	var seen uint64
	tried := false
	var rerr error
	cerr := w.rc.Read(func(fd uintptr) bool {
		// The count before each read, as in TryRead: only a read that
		// found the socket empty may mark the events before it seen.
		// The deadline can pass before any read is tried at all.
		s := w.events.Load()
		n, rerr = readFD(fd, b)
		if rerr == unix.EAGAIN {
			seen, tried = s, true
			return false
		}
		return true
	})
	w.Conn.SetReadDeadline(time.Time{})
	switch {
	case errors.Is(cerr, os.ErrDeadlineExceeded):
		if tried {
			w.drained.Store(seen)
		}
		return 0, true, nil
	case cerr != nil:
		return 0, false, cerr
	case rerr != nil:
		return 0, false, w.opError(rerr)
	case n == 0 && w.stream:
		return 0, false, io.EOF
	}
	return n, false, nil
}

// Close closes the socket and wakes the relay, which the poller cannot:
// a closed descriptor leaves the epoll instance without an event.
func (w *watched) Close() error {
	w.closed.Store(true)
	w.forget()
	err := w.Conn.Close()
	w.wake()
	return err
}

func (w *watched) CloseWrite() error {
	if cw, ok := w.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
