package netstack

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/faketime"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/wgbore/wgbore/netstack/peersite"
	"github.com/wgbore/wgbore/protocol"
)

// fakeFINEndpoint is an endpoint whose TCP state the test sets.
type fakeFINEndpoint struct{ state atomic.Uint32 }

func (e *fakeFINEndpoint) State() uint32 { return e.state.Load() }

// pacedCloses drives a finPacer of the given window over n endpoints:
// closeWrite(i) half-closes endpoint i (its FIN goes out: FIN_WAIT_1),
// ack(i) acknowledges it, and started lists the half-closes begun so
// far, in order.
type pacedCloses struct {
	clock *faketime.ManualClock
	p     *finPacer
	eps   []*fakeFINEndpoint
	// to is the address endpoint i's FIN goes to; nil means one address
	// for all.
	to func(i int) netip.Addr

	mu    sync.Mutex
	order []int
}

func newPacedCloses(window, n int) *pacedCloses {
	c := &pacedCloses{clock: faketime.NewManualClock()}
	c.p = newFINPacer(c.clock, window)
	for range n {
		e := &fakeFINEndpoint{}
		e.state.Store(uint32(tcp.StateEstablished))
		c.eps = append(c.eps, e)
	}
	return c
}

func (c *pacedCloses) closeWrite(i int) {
	if start := c.start(i); c.p.admit(c.eps[i], c.addr(i), start) {
		start()
	}
}

func (c *pacedCloses) addr(i int) netip.Addr {
	if c.to == nil {
		return netip.MustParseAddr("10.0.0.2")
	}
	return c.to(i)
}

// start is endpoint i's shutdown: its FIN goes out.
func (c *pacedCloses) start(i int) func() {
	return func() {
		c.eps[i].state.Store(uint32(tcp.StateFinWait1))
		c.mu.Lock()
		c.order = append(c.order, i)
		c.mu.Unlock()
	}
}

func (c *pacedCloses) ack(i ...int) {
	for _, i := range i {
		c.eps[i].state.Store(uint32(tcp.StateFinWait2))
	}
}

func (c *pacedCloses) started() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.order)
}

// awaitingFINAck reports whether ep has sent a FIN that its peer has
// not acknowledged.
func awaitingFINAck(ep finState) bool {
	switch tcp.EndpointState(ep.State()) {
	case tcp.StateFinWait1, tcp.StateClosing, tcp.StateLastAck:
		return true
	}
	return false
}

func upTo(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// TestFINPacerWindow: of a burst of half-closes, a window's worth start
// at once; the rest wait, in order, and start as earlier FINs are
// acknowledged, or have held their place for finHold.
func TestFINPacerWindow(t *testing.T) {
	c := newPacedCloses(4, 12)
	for i := range 10 {
		c.closeWrite(i)
	}
	if got := c.started(); !slices.Equal(got, upTo(4)) {
		t.Fatalf("started %v at once, want the window's first 4", got)
	}
	c.clock.Advance(finPoll)
	if got := c.started(); len(got) != 4 {
		t.Fatalf("started %v with no FIN acknowledged, want the first 4 only", got)
	}
	c.ack(0, 2)
	c.clock.Advance(finPoll)
	if got := c.started(); !slices.Equal(got, upTo(6)) {
		t.Fatalf("started %v once two FINs were acknowledged, want 0 to 5", got)
	}
	// A half-close after the others waits behind them, though a place
	// is free now.
	c.ack(1)
	c.closeWrite(10)
	if got := c.started(); len(got) != 6 {
		t.Fatalf("started %v: a new half-close went before those waiting", got)
	}
	c.clock.Advance(finPoll)
	if got := c.started(); !slices.Equal(got, upTo(7)) {
		t.Fatalf("started %v, want 0 to 6", got)
	}
	// No acknowledgement comes: once finHold has passed, the FINs give
	// up their places and the rest start.
	c.clock.Advance(finHold)
	if got := c.started(); !slices.Equal(got, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}) {
		t.Fatalf("started %v after finHold without acknowledgements, want all 11 in order", got)
	}
	c.p.mu.Lock()
	armed, waiting := c.p.armed, len(c.p.waiting)
	c.p.mu.Unlock()
	if armed != finHold || waiting != 0 {
		t.Fatalf("with nothing waiting, the poll is armed for %v with %d waiting, want finHold and none", armed, waiting)
	}
	// With the window's room back, the next starts at once.
	c.ack(3, 4, 5, 6, 7, 8, 9, 10)
	c.closeWrite(11)
	if got := c.started(); len(got) != 12 {
		t.Fatalf("started %v: the last half-close waited with the window empty", got)
	}
	// Once every FIN is acknowledged or has held its place for finHold,
	// the pacer keeps no endpoint, and its timer stops.
	c.clock.Advance(2 * finHold)
	c.p.mu.Lock()
	armed, sent := c.p.armed, len(c.p.sent)
	c.p.mu.Unlock()
	if armed != 0 || sent != 0 {
		t.Fatalf("after 2 finHold, the pacer keeps %d endpoints and its poll is armed for %v, want none and stopped", sent, armed)
	}
}

// TestFINPacerTurns: half-closes that wait for a place go round the
// addresses their FINs go to, so a backlog to one address (a peer that
// went away: its FINs are never acknowledged and hold their places for
// finHold) does not hold up another address's half-close past one round.
func TestFINPacerTurns(t *testing.T) {
	c := newPacedCloses(4, 23)
	gone, other := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	c.to = func(i int) netip.Addr {
		if i >= 20 {
			return other
		}
		return gone
	}
	for i := range 16 {
		c.closeWrite(i)
	}
	c.closeWrite(20)
	c.closeWrite(21)
	if got := c.started(); !slices.Equal(got, upTo(4)) {
		t.Fatalf("started %v at once, want the window's first 4", got)
	}
	// No acknowledgement comes from the address that went away: after
	// finHold its FINs give up their places, which go round.
	c.clock.Advance(finHold)
	if got, want := c.started(), []int{0, 1, 2, 3, 4, 20, 5, 21}; !slices.Equal(got, want) {
		t.Fatalf("started %v after finHold, want %v: the other address waited behind the backlog", got, want)
	}
	// An address whose queue ran dry and fills again keeps one turn a
	// round.
	c.closeWrite(22)
	c.ack(4, 20)
	c.clock.Advance(finPoll)
	if got, want := c.started(), []int{0, 1, 2, 3, 4, 20, 5, 21, 6, 22}; !slices.Equal(got, want) {
		t.Fatalf("started %v with two places free, want %v", got, want)
	}
	c.p.mu.Lock()
	queued, turns := c.p.queued, slices.Clone(c.p.turns)
	c.p.mu.Unlock()
	if queued != 9 || len(turns) > 2 {
		t.Fatalf("%d half-closes wait over turns %v, want 9 over at most the two addresses", queued, turns)
	}
	// The next round drops the address with nothing left.
	c.ack(5, 21)
	c.clock.Advance(finPoll)
	c.p.mu.Lock()
	queued, turns = c.p.queued, slices.Clone(c.p.turns)
	c.p.mu.Unlock()
	if queued != 7 || !slices.Equal(turns, []netip.Addr{gone}) {
		t.Fatalf("%d half-closes wait over turns %v, want 7 over the address that went away only", queued, turns)
	}
	// The backlog drains, in order, and the pacer keeps no queue after it.
	c.clock.Advance(3 * finHold)
	if got := c.started(); !slices.Equal(got[len(got)-9:], []int{7, 8, 9, 10, 11, 12, 13, 14, 15}) {
		t.Fatalf("started %v, want the backlog's last 9 in order at the end", got)
	}
	c.p.mu.Lock()
	queued, waiting := c.p.queued, c.p.waiting
	c.p.mu.Unlock()
	if queued != 0 || waiting != nil {
		t.Fatalf("after the backlog, %d wait and the queues are kept (%v)", queued, waiting)
	}
}

// TestFINQueueKeepsWhatWaits: a queue that never runs dry (closes still
// coming to a peer that went away) holds about what waits, not every
// close it ever held.
func TestFINQueueKeepsWhatWaits(t *testing.T) {
	var q finQueue
	for range 10 {
		q.closes = append(q.closes, waitingFIN{})
	}
	for range 100000 {
		q.closes = append(q.closes, waitingFIN{})
		q.pop()
	}
	if n := len(q.closes) - q.head; n != 10 {
		t.Fatalf("%d wait, want 10", n)
	}
	if c := cap(q.closes); c > 256 {
		t.Fatalf("a queue of 10 keeps an array of %d", c)
	}
}

// TestFINPacerClose: closing the pacer drops the half-closes that wait
// (their stack is closing) and lets later ones start at once.
func TestFINPacerClose(t *testing.T) {
	c := newPacedCloses(1, 3)
	c.closeWrite(0)
	c.closeWrite(1)
	c.p.close()
	c.clock.Advance(finHold + finPoll)
	if got := c.started(); !slices.Equal(got, []int{0}) {
		t.Fatalf("started %v, want only the first: the waiting one goes with the pacer", got)
	}
	c.closeWrite(2)
	if got := c.started(); !slices.Equal(got, []int{0, 2}) {
		t.Fatalf("started %v after close, want 0 and 2", got)
	}
}

// TestFINPacerStates: a FIN awaits its acknowledgement in FIN_WAIT_1,
// CLOSING and LAST_ACK only; an admitted half-close holds its place
// there and before its shutdown has run (ESTABLISHED, CLOSE_WAIT); only
// those two states are paced at all.
func TestFINPacerStates(t *testing.T) {
	type want struct{ awaiting, holds, paced bool }
	for s, w := range map[tcp.EndpointState]want{
		tcp.StateEstablished: {false, true, true}, tcp.StateCloseWait: {false, true, true},
		tcp.StateFinWait1: {true, true, false}, tcp.StateClosing: {true, true, false},
		tcp.StateLastAck: {true, true, false}, tcp.StateFinWait2: {false, false, false},
		tcp.StateTimeWait: {false, false, false}, tcp.StateClose: {false, false, false},
		tcp.StateError: {false, false, false},
	} {
		e := &fakeFINEndpoint{}
		e.state.Store(uint32(s))
		if got := (want{awaitingFINAck(e), holdsPlace(e), paceable(e)}); got != w {
			t.Errorf("in %v: awaiting, holds a place, paced = %v, want %v", s, got, w)
		}
	}
}

// TestFINPacerAdmittedNotYetSent: a half-close admitted but whose
// shutdown has not run yet (it runs outside the pacer's lock) holds its
// place: a poll in between lets no other in past the window.
func TestFINPacerAdmittedNotYetSent(t *testing.T) {
	c := newPacedCloses(2, 3)
	var later []func()
	for i := range 3 {
		if start := c.start(i); c.p.admit(c.eps[i], c.addr(i), start) {
			later = append(later, start) // admitted; its shutdown is still to run
		}
	}
	if len(later) != 2 {
		t.Fatalf("%d admitted at once with a window of 2", len(later))
	}
	c.clock.Advance(finPoll)
	if got := c.started(); len(got) != 0 {
		t.Fatalf("started %v while the two admitted had not sent their FINs: the window was passed", got)
	}
	for _, f := range later {
		f()
	}
	c.ack(0)
	c.clock.Advance(finPoll)
	if got := c.started(); !slices.Equal(got, []int{0, 1, 2}) {
		t.Fatalf("started %v once the first FIN was acknowledged, want 0, 1, 2", got)
	}
}

// TestFINPacedBurst: a burst of half-closes to wireguard-go's stack, with
// a small window. At no look are more FINs awaiting acknowledgements
// than the window allows, a write after CloseWrite fails at once though
// its FIN may wait, and every echo still reads the end of its stream.
func TestFINPacedBurst(t *testing.T) {
	key, _ := protocol.GeneratePrivateKey()
	site := peersite.Start(t, key.PublicKey(), peersite.Options{})
	n := openOurs(t, key, site)
	const window = 8
	n.fins.mu.Lock()
	n.fins.window = window
	n.fins.hold = time.Minute // no place is given up for time: the count below is exact
	n.fins.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	conns := echoConns(ctx, t, n, 8*window)
	// awaiting counts the FINs awaiting acknowledgements, with the pacer
	// held still: none can be admitted meanwhile, so the count is of one
	// moment. It also reports whether half-closes still wait.
	awaiting := func() (k int, waiting bool) {
		n.fins.mu.Lock()
		defer n.fins.mu.Unlock()
		for _, c := range conns {
			if awaitingFINAck(c.ep) {
				k++
			}
		}
		return k, n.fins.queued > 0
	}
	for _, c := range conns {
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conns[len(conns)-1].Write([]byte("late")); err == nil || !strings.Contains(err.Error(), "closed for send") {
		t.Fatalf("a write after CloseWrite: %v, want the endpoint's closed-for-send error", err)
	}
	ends := endsOfStream(conns)
	most, looks := 0, 0
	for done := false; !done; looks++ {
		k, waiting := awaiting()
		most = max(most, k)
		select {
		case <-ctx.Done():
			t.Fatalf("the burst's FINs were not all acknowledged in time (%d awaiting, half-closes waiting: %v)", k, waiting)
		case <-time.After(100 * time.Microsecond):
			done = k == 0 && !waiting
		}
	}
	if err := ends(); err != nil {
		t.Fatalf("after a paced burst of FINs: read %v, want the end of the echo's stream", err)
	}
	if most > window {
		t.Fatalf("%d FINs awaited their acknowledgements at once, want at most the window's %d", most, window)
	}
	t.Logf("at most %d of %d FINs awaited acknowledgements at once, in %d looks", most, len(conns), looks)
}

// echoConns dials count connections to the peer site's echo, each proven
// by one echo, with a 20 s deadline; they close when the test ends.
func echoConns(ctx context.Context, t *testing.T, n *Net, count int) []*TCPConn {
	t.Helper()
	conns := make([]*TCPConn, count)
	for i := range conns {
		c, err := n.DialContext(ctx, "tcp", netip.AddrPortFrom(peersite.TheirV4, 7).String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*TCPConn)
	}
	return conns
}

// endsOfStream reads from every connection at once until its end of
// stream; wait returns the first read that ended otherwise, or nil.
func endsOfStream(conns []*TCPConn) (wait func() error) {
	var wg sync.WaitGroup
	errs := make(chan error, len(conns))
	for _, c := range conns {
		wg.Go(func() {
			if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
				errs <- err
			}
		})
	}
	return func() error {
		wg.Wait()
		close(errs)
		return <-errs
	}
}
