// Package uapi serves WireGuard's cross-platform userspace API, the text
// protocol of https://www.wireguard.com/xplatform/, so that the real `wg`
// tool can show and change a running wgbore: `wg show`, `wg set`,
// `wg showconf`, `wg setconf` and `wg syncconf` all speak it over the unix
// socket /var/run/wireguard/<name>.sock.
//
// A request is an operation line, `get=1` or `set=1`, then for `set` its
// key=value lines, then an empty line. The reply ends with `errno=N` and
// an empty line; N is 0 or a positive Linux errno value, which `wg`
// prints with strerror. One connection may carry many requests.
package uapi

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"

	"github.com/wgbore/wgbore/protocol"
)

// Device is what the UAPI needs from a WireGuard engine; *protocol.Engine
// satisfies it. It is an interface so the parser can be fuzzed against a
// fake without sockets.
type Device interface {
	// PrivateKey is read only to answer `get`, over a 0600 socket.
	PrivateKey() protocol.PrivateKey
	SetPrivateKey(protocol.PrivateKey)
	PublicKey() protocol.PublicKey
	ListenPort() uint16
	Peers() []protocol.PeerStatus
	PeerPresharedKey(protocol.PublicKey) (protocol.PresharedKey, bool)
	// UpdatePeers sets and removes peers as protocol.Engine's does:
	// errs has one entry per peer of set, and removed lists the keys of
	// remove that were peers.
	UpdatePeers(set []protocol.PeerConfig, remove []protocol.PublicKey) (errs []error, removed []protocol.PublicKey)
}

var _ Device = (*protocol.Engine)(nil)

// Errno values, as on Linux, because `wg` turns them into text with
// strerror on the client side. They are the ones wireguard-go's ipc
// package answers with.
const (
	errnoIO           = 5  // EIO: the engine refused a change after parsing
	errnoInvalid      = 22 // EINVAL: a malformed or meaningless line
	errnoProtocol     = 71 // EPROTO
	errnoNotSupported = 95 // EOPNOTSUPP: valid, but userspace wgbore cannot do it
)

// Error is a request the UAPI refused; its Errno goes on the wire.
// Messages never contain key material.
type Error struct {
	Errno int
	Msg   string
}

func (e *Error) Error() string { return fmt.Sprintf("uapi: %s (errno %d)", e.Msg, e.Errno) }

func errorf(errno int, format string, args ...any) *Error {
	return &Error{Errno: errno, Msg: fmt.Sprintf(format, args...)}
}

// maxLine bounds one request line. The longest legitimate line is an
// allowed_ip or endpoint with an IPv6 address, far below this; the bound
// keeps a misbehaving client from growing our buffer without end.
const maxLine = 4096

// Handler answers UAPI requests for one device, on any number of
// connections.
type Handler struct {
	dev Device
	// setMu serialises the device's `set`s: a set reads the peers'
	// current state and writes the merged result, and two interleaved
	// sets from two connections would each lose the other's change.
	setMu sync.Mutex
	// ops are the program's own operations; see Operation.
	ops map[string]Operation
}

// NewHandler returns a Handler for dev.
func NewHandler(dev Device) *Handler { return &Handler{dev: dev} }

// An Operation answers a request other than get and set, so a program
// can offer its own commands on the socket that already has the right
// owner and mode, instead of opening a second one. `wg` never sends
// them. The request is "name=1", then an empty line; the reply is the
// key=value lines the Operation writes (no newline in a value), then
// errno=N with the errno it returns. Names are the program's own, e.g.
// "wgbore_reload", so they cannot clash with a future UAPI operation.
type Operation func(w io.Writer) (errno int)

// AddOperation adds an Operation; the request for it is "name=1". It
// must be called before the Handler serves.
func (h *Handler) AddOperation(name string, op Operation) {
	if h.ops == nil {
		h.ops = make(map[string]Operation)
	}
	h.ops[name+"=1"] = op
}

// Handle answers one connection's requests until it reaches EOF. A
// refused request is answered with its errno and the connection goes on;
// only an I/O error, or a line longer than maxLine, ends it with an error.
func (h *Handler) Handle(rw io.ReadWriter) error {
	dev := h.dev
	r := bufio.NewReaderSize(rw, maxLine)
	w := bufio.NewWriter(rw)
	for {
		op, err := readLine(r)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		var reqErr *Error
		switch op {
		case "get=1":
			lines, err := readBlock(r)
			if err != nil {
				return eofIsNil(err)
			}
			if len(lines) != 0 {
				reqErr = errorf(errnoInvalid, "get takes no arguments")
				break
			}
			writeGet(w, dev)
		case "set=1":
			lines, err := readBlock(r)
			if err != nil {
				return eofIsNil(err)
			}
			req, perr := parseSet(lines)
			if perr != nil {
				reqErr = perr
				break
			}
			h.setMu.Lock()
			reqErr = req.apply(dev)
			h.setMu.Unlock()
		case "":
			// A stray empty line: nothing was asked, so nothing is
			// answered, as wireguard-go does.
			continue
		default:
			lines, err := readBlock(r)
			if err != nil {
				return eofIsNil(err)
			}
			op := h.ops[op]
			switch {
			case op == nil:
				reqErr = errorf(errnoInvalid, "unknown operation")
			case len(lines) != 0:
				reqErr = errorf(errnoInvalid, "the operation takes no arguments")
			default:
				if errno := op(w); errno != 0 {
					reqErr = &Error{Errno: errno}
				}
			}
		}
		errno := 0
		if reqErr != nil {
			errno = reqErr.Errno
		}
		fmt.Fprintf(w, "errno=%d\n\n", errno)
		if err := w.Flush(); err != nil {
			return err
		}
	}
}

func eofIsNil(err error) error {
	if err == io.EOF {
		return nil
	}
	return err
}

// readLine returns one line without its newline. A last line without a
// newline counts as EOF: the client hung up mid-request.
func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return "", errors.New("uapi: request line too long")
	}
	if err != nil {
		return "", err
	}
	return string(line[:len(line)-1]), nil
}

// readBlock returns the lines up to the empty line that ends a request.
func readBlock(r *bufio.Reader) ([]string, error) {
	var lines []string
	for {
		line, err := readLine(r)
		if err != nil {
			return nil, err
		}
		if line == "" {
			return lines, nil
		}
		lines = append(lines, line)
	}
}

// writeGet answers `get=1` in wireguard-go's order and spelling. fwmark is
// left out because it is always 0 here, as wireguard-go leaves out a zero
// fwmark.
func writeGet(w *bufio.Writer, dev Device) {
	if k := dev.PrivateKey(); !k.IsZero() {
		fmt.Fprintf(w, "private_key=%s\n", hex.EncodeToString(k[:]))
	}
	fmt.Fprintf(w, "listen_port=%d\n", dev.ListenPort())
	for _, p := range dev.Peers() {
		psk, ok := dev.PeerPresharedKey(p.PublicKey)
		if !ok {
			continue // removed since Peers was taken
		}
		fmt.Fprintf(w, "public_key=%s\n", hex.EncodeToString(p.PublicKey[:]))
		fmt.Fprintf(w, "preshared_key=%s\n", hex.EncodeToString(psk[:]))
		w.WriteString("protocol_version=1\n")
		if p.Endpoint.IsValid() {
			fmt.Fprintf(w, "endpoint=%s\n", p.Endpoint)
		}
		var sec, nsec int64
		if !p.LastHandshake.IsZero() {
			sec, nsec = p.LastHandshake.Unix(), int64(p.LastHandshake.Nanosecond())
		}
		fmt.Fprintf(w, "last_handshake_time_sec=%d\n", sec)
		fmt.Fprintf(w, "last_handshake_time_nsec=%d\n", nsec)
		fmt.Fprintf(w, "tx_bytes=%d\n", p.TxBytes)
		fmt.Fprintf(w, "rx_bytes=%d\n", p.RxBytes)
		w.WriteString("persistent_keepalive_interval=" + strconv.Itoa(int(p.PersistentKeepalive.Seconds())) + "\n")
		for _, a := range p.AllowedIPs {
			fmt.Fprintf(w, "allowed_ip=%s\n", a)
		}
	}
}

// Serve answers UAPI requests on l, one goroutine per connection, until
// ctx is done; then it closes l and every open connection, waits for
// their goroutines and returns nil. Any other Accept error is returned,
// after the same clean-up.
// Requests are never logged with their values, since they carry keys.
func Serve(ctx context.Context, l net.Listener, dev Device, log *slog.Logger) error {
	return ServeHandler(ctx, l, NewHandler(dev), log)
}

// ServeHandler is Serve with a Handler of the caller's, which may have
// Operations of its own.
func ServeHandler(ctx context.Context, l net.Listener, h *Handler, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	closeAll := func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	}
	stop := context.AfterFunc(ctx, closeAll)
	defer func() {
		stop()
		closeAll()
		wg.Wait()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			c.Close()
			return nil
		}
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.Handle(c); err != nil && ctx.Err() == nil {
				log.Debug("uapi connection ended", "err", err)
			}
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
			c.Close()
		}()
	}
}
