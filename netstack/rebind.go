package netstack

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/protocol/clock"
	"github.com/wgbore/wgbore/protocol/udpbind"
)

// rebindRetryMax bounds the wait between attempts to reopen the host
// sockets after a failure: long enough not to spin while the host has no
// network, short enough that the tunnel comes back soon after it does.
const rebindRetryMax = 30 * time.Second

// Rebind replaces the host UDP sockets with new ones, for when the host's
// network changed: a phone moving from Wi-Fi to cellular, a laptop waking
// on another network. A program that hears of such a change from its
// platform calls it. The new sockets keep the UDP port when they can.
// Connections through the tunnel stay open: every peer with a session
// gets a keepalive and a handshake from the new sockets at once, and TCP
// retransmits what the change lost.
//
// Net also rebinds by itself, retrying with a growing pause, when its
// sockets fail (the system closed them, or every receive fails).
//
// When the new sockets cannot be opened (the network is gone for now),
// Rebind returns why, and Net keeps trying by itself as after a failure.
func (n *Net) Rebind() error {
	err := n.rebind()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		n.rebinder.failed(err)
	}
	return err
}

// rebind is one attempt, as Rebind and the rebinder make it.
func (n *Net) rebind() error {
	err := n.engine.Rebind(n.reopen)
	if err != nil {
		return err
	}
	n.log.Info("host UDP sockets reopened", "local", n.bind.Load().LocalAddrs())
	return nil
}

// reopen opens new host sockets on the port in use, or on the configured
// one (a free one when 0) if that is taken now.
func (n *Net) reopen() (protocol.Bind, error) {
	cfg := n.listen
	if old := n.bind.Load(); cfg.Port == 0 && old != nil {
		cfg.Port = old.Port()
	}
	b, err := udpbind.Listen(cfg)
	if err != nil && cfg.Port != n.listen.Port {
		b, err = udpbind.Listen(n.listen)
	}
	if err != nil {
		return nil, err
	}
	n.bind.Store(b)
	return b, nil
}

// rebinder reopens the host sockets after the engine reports them
// failed, or a Rebind could not open new ones, with a pause that doubles
// after each failed attempt, and after each failure that follows a
// reopen within rebindRetryMax, so sockets that keep failing are not
// reopened (and every peer greeted) once a second. It is one of Net's
// services, so Close stops it and waits for an attempt under way.
type rebinder struct {
	n     *Net
	clock clock.Clock
	log   *slog.Logger

	mu       sync.Mutex
	armed    bool        // n.engine is set; failures before that are Open's to report
	pending  clock.Timer // an attempt is scheduled
	pause    time.Duration
	reopened time.Time // when the last attempt succeeded
	stopped  bool
	wg       sync.WaitGroup
}

// arm lets failures schedule attempts, once Net is whole.
func (r *rebinder) arm() {
	r.mu.Lock()
	r.armed = true
	r.mu.Unlock()
}

// failed is the engine's BindFailed: it schedules an attempt unless one
// is already scheduled: at once, or after the doubled pause when the
// sockets it replaces were opened only a while ago. It does not block.
func (r *rebinder) failed(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.armed || r.stopped || r.pending != nil {
		return
	}
	delay := time.Duration(0)
	if !r.reopened.IsZero() && r.clock.Now().Sub(r.reopened) < rebindRetryMax {
		r.pause = min(max(2*r.pause, time.Second), rebindRetryMax)
		delay = r.pause
	} else {
		r.pause = 0
	}
	r.log.Warn("host UDP sockets failed; opening new ones", "err", err, "in", delay)
	r.scheduleLocked(delay)
}

func (r *rebinder) scheduleLocked(d time.Duration) {
	r.wg.Add(1)
	r.pending = r.clock.AfterFunc(d, r.attempt)
}

func (r *rebinder) attempt() {
	defer r.wg.Done()
	r.mu.Lock()
	r.pending = nil
	stopped := r.stopped
	r.mu.Unlock()
	if stopped {
		return
	}
	err := r.n.rebind()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		r.reopened = r.clock.Now()
		return
	}
	if errors.Is(err, net.ErrClosed) || r.stopped {
		return
	}
	r.pause = min(max(2*r.pause, time.Second), rebindRetryMax)
	r.log.Warn("cannot reopen the host UDP sockets; trying again", "err", err, "in", r.pause)
	if r.pending == nil {
		r.scheduleLocked(r.pause)
	}
}

func (r *rebinder) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	if r.pending != nil && r.pending.Stop() {
		r.wg.Done()
	}
	r.pending = nil
}

func (r *rebinder) wait() { r.wg.Wait() }
