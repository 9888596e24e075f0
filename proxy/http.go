package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wgbore/wgbore/proxy/relay"
)

// HTTPConfig configures an HTTP proxy.
type HTTPConfig struct {
	// Username and Password, when Username is non-empty, are demanded from
	// every client as Basic credentials in Proxy-Authorization.
	Username, Password string
	// Logger receives one line per failed request; nil discards.
	Logger *slog.Logger

	// TLS, when set, makes the proxy speak HTTPS to its clients (curl's
	// "-x https://..."), so credentials and the names of the sites
	// visited do not cross the client's network in the clear. Only
	// HTTP/1.1 is offered: CONNECT takes over the client's connection,
	// which HTTP/2 does not allow.
	TLS *tls.Config

	// MaxConnections caps the client connections served at once, per
	// listener given to Serve, CONNECT tunnels included; <= 0 means
	// DefaultMaxConnections. Past the cap, new clients get 503 at once.
	MaxConnections int

	// Admit, when set, is asked before each new connection is served;
	// false refuses it as the cap does. A memory budget uses it to turn
	// clients away before the process runs out.
	Admit func() bool

	// HandshakeTimeout bounds the time a client has to send a request's
	// header (the first from accept, TLS handshake included; a later one
	// from its first byte, a keep-alive connection idling in between up
	// to two minutes); 0 means DefaultHTTPHandshakeTimeout.
	HandshakeTimeout time.Duration

	// DialTimeout bounds a dial into the tunnel, for CONNECT and for
	// forwarded requests; 0 means DefaultDialTimeout. Past it the client
	// gets 504.
	DialTimeout time.Duration
}

// DefaultHTTPHandshakeTimeout is HTTPConfig.HandshakeTimeout when unset.
// It stops a client that opens a connection and never finishes its
// request header from holding a goroutine and a connection slot for
// longer; a real client sends its header in one go.
const DefaultHTTPHandshakeTimeout = 30 * time.Second

const (
	// httpIdleTimeout closes a keep-alive client connection that has
	// sent no new request for this long. Browsers and package managers
	// reuse a connection within seconds; an idle one only holds a slot
	// of MaxConnections.
	httpIdleTimeout = 2 * time.Minute
	// proxyRealm is what a client is told to authenticate against.
	proxyRealm = `Basic realm="wgbore"`
)

// HTTP is an HTTP proxy whose every outbound connection goes through a
// Network. It serves CONNECT tunnels and absolute-form requests of any
// method; requests meant for an origin server (origin-form) are refused.
type HTTP struct {
	nw          Network
	log         *slog.Logger
	creds       *credentials // nil: no authentication
	tls         *tls.Config  // nil: plain HTTP
	maxConns    int
	admit       func() bool
	dialTimeout time.Duration
	conns       connCounter // summed over every Serve
	srv         *http.Server
	transport   *http.Transport

	// ctx is the base of every request's context, so Close cancels round
	// trips and dials that are still in progress.
	ctx    context.Context
	cancel context.CancelFunc

	// connTracker holds the CONNECT tunnels' conns, both sides, and the
	// WaitGroup counting the handlers and the relays they start. Its
	// listeners stay empty: http.Server closes its own.
	*connTracker
	// relays hands CONNECT tunnels over once many are open, so that an
	// idle one holds no goroutine.
	relays handOver
}

// NewHTTP returns an HTTP proxy that dials and resolves through nw.
func NewHTTP(nw Network, cfg HTTPConfig) *HTTP {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	headerTimeout := cfg.HandshakeTimeout
	if headerTimeout <= 0 {
		headerTimeout = DefaultHTTPHandshakeTimeout
	}
	dialTimeout := cfg.DialTimeout
	if dialTimeout <= 0 {
		dialTimeout = DefaultDialTimeout
	}
	h := &HTTP{
		nw:          nw,
		log:         log,
		maxConns:    cfg.MaxConnections,
		admit:       cfg.Admit,
		dialTimeout: dialTimeout,
		ctx:         ctx,
		cancel:      cancel,
		connTracker: newConnTracker(),
		relays:      handOver{from: defaultHandOverFrom, log: log},
	}
	if cfg.Username != "" {
		// Hashing both sides to a fixed length lets the comparison take
		// the same time whatever the lengths of the guess and the secret.
		h.creds = newCredentials(cfg.Username, cfg.Password)
	}
	if cfg.TLS != nil {
		h.tls = cfg.TLS.Clone()
		h.tls.NextProtos = []string{"http/1.1"}
	}
	h.transport = &http.Transport{
		Proxy:       nil, // the tunnel is the only way out
		DialContext: h.dial,
		// The body must reach the client exactly as the origin sent it;
		// with compression on, the Transport would ask for gzip and
		// silently inflate it.
		DisableCompression:    true,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: 0,
	}
	h.srv = &http.Server{
		Handler:           http.HandlerFunc(h.serveHTTP),
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       httpIdleTimeout,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		// An empty map turns HTTP/2 off even if a client asks for it:
		// CONNECT tunnels hijack the connection, which HTTP/2 forbids.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	return h
}

// Serve accepts proxy clients on l until Close or Shutdown, and then
// returns nil. It serves at most HTTPConfig.MaxConnections clients at a
// time, and closes l when it returns. With HTTPConfig.TLS set, l carries
// TLS.
func (h *HTTP) Serve(l net.Listener) error {
	refuse := refuseHTTP
	if h.tls != nil {
		// A TLS client cannot read a plain answer, and a handshake
		// per refusal would cost more than the refusal saves.
		refuse = nil
	}
	l = limitConnections(l, h.maxConns, h.admit, &h.conns, refuse)
	if h.tls != nil {
		// tls.NewListener hands out *tls.Conn, which net/http
		// recognises: it then bounds the handshake by
		// ReadHeaderTimeout, so a client that stalls mid-handshake is
		// dropped like one that stalls mid-request.
		l = tls.NewListener(l, h.tls)
	}
	err := h.srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Stats counts the client connections of every Serve together, TLS
// ones from before their handshake, for metrics.
func (h *HTTP) Stats() ConnStats { return h.conns.stats() }

// Close stops every Serve, drops every client connection, including
// CONNECT tunnels in flight, and waits for every goroutine the proxy
// started to return.
func (h *HTTP) Close() error {
	// http.Server.Close knows nothing of hijacked conns, so they are
	// closed here; closing them unblocks the relays copying them.
	if !h.closeAll() {
		return nil
	}
	err := h.srv.Close()
	h.cancel()
	h.wg.Wait()
	h.relays.close()
	h.transport.CloseIdleConnections()
	return err
}

// Shutdown stops the proxy gracefully: it stops accepting, lets requests
// in progress and CONNECT tunnels finish on their own, and closes idle
// client connections. When ctx is done first, it ends the rest as Close
// does and returns ctx's error. Either way, every goroutine the proxy
// started has exited when it returns.
func (h *HTTP) Shutdown(ctx context.Context) error {
	// http.Server.Shutdown waits for the connections it still owns; the
	// hijacked ones, the tunnels, it has forgotten.
	err := h.srv.Shutdown(ctx)
	h.drain()
	if err == nil {
		err = h.waitActive(ctx)
	}
	if cerr := h.Close(); err == nil {
		err = cerr
	}
	return err
}

// waitActive waits for the handlers and tunnels in flight, or for ctx.
func (h *HTTP) waitActive(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		h.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		// Close ends what is left, which lets the goroutine above
		// return too.
		return ctx.Err()
	}
}

func (h *HTTP) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.enter() {
		http.Error(w, "proxy is shutting down", http.StatusServiceUnavailable)
		return
	}
	defer h.wg.Done()

	// A request with both Content-Length and Transfer-Encoding may be
	// framed one way by a client-side hop and the other way by us; what
	// one side takes for the body's tail the other parses as the next
	// request, a smuggled one. RFC 9112, section 6.1, therefore has the
	// server close the connection after answering such a request.
	// net/http lets Transfer-Encoding win but keeps the connection, and
	// drops Content-Length before we see the request, so every request
	// with a Transfer-Encoding ends its connection: a chunked upload
	// costs its client one reconnect.
	if len(r.TransferEncoding) > 0 {
		w.Header().Set("Connection", "close")
	}
	if !h.authorized(r) {
		w.Header().Set("Proxy-Authenticate", proxyRealm)
		http.Error(w, "proxy authentication required", http.StatusProxyAuthRequired)
		return
	}
	switch {
	case r.Method == http.MethodConnect:
		h.serveConnect(w, r)
	case r.URL.IsAbs():
		h.serveForward(w, r)
	default:
		// An origin-form request is meant for a web server, not a proxy:
		// answering it would make the proxy guess where to send it.
		http.Error(w, "not a proxy request: use absolute-form or CONNECT", http.StatusBadRequest)
	}
}

// authorized reports whether r carries the configured credentials.
func (h *HTTP) authorized(r *http.Request) bool {
	if h.creds == nil {
		return true
	}
	scheme, encoded, ok := strings.Cut(strings.TrimSpace(r.Header.Get("Proxy-Authorization")), " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return false
	}
	decoded, err := base64.StdEncoding.DecodeString(strings.TrimSpace(encoded))
	if err != nil {
		return false
	}
	user, pass, ok := strings.Cut(string(decoded), ":")
	if !ok {
		return false
	}
	return h.creds.match(user, pass)
}

// dial connects to address inside the network. A name is resolved by the
// network's LookupNetIP, never by the host, and each address it returns
// is tried in turn.
func (h *HTTP) dial(ctx context.Context, network, address string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, h.dialTimeout)
	defer cancel()
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return nil, &net.AddrError{Err: "invalid port", Addr: address}
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return h.nw.DialContext(ctx, network, netip.AddrPortFrom(ip.Unmap(), uint16(port)).String())
	}
	ips, err := h.nw.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	if len(ips) == 0 {
		return nil, &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}}
	}
	return dialAddrs(ctx, h.nw, network, ips, uint16(port))
}

// serveConnect opens a tunnel to r.Host and relays bytes both ways until
// each side has finished sending.
func (h *HTTP) serveConnect(w http.ResponseWriter, r *http.Request) {
	target := r.Host
	// An empty host or port 0 is the client's mistake, not the
	// network's: answering 400 keeps an empty name from reaching the
	// Network's resolver, which could take it for its own.
	host, portStr, err := net.SplitHostPort(target)
	if port, perr := strconv.ParseUint(portStr, 10, 16); err != nil || host == "" || perr != nil || port == 0 {
		http.Error(w, "CONNECT needs host:port", http.StatusBadRequest)
		return
	}
	upstream, err := h.dial(r.Context(), "tcp", target) // bounded by DialTimeout
	if err != nil {
		h.failUpstream(w, r, target, err)
		return
	}
	if !h.track(upstream) {
		http.Error(w, "proxy is shutting down", http.StatusServiceUnavailable)
		return
	}
	client, buffered, err := http.NewResponseController(w).Hijack()
	if err != nil {
		h.untrack(upstream)
		h.log.Warn("http proxy: hijack failed", "target", target, "err", err)
		http.Error(w, "cannot tunnel on this connection", http.StatusInternalServerError)
		return
	}
	if !h.track(client) {
		h.untrack(upstream)
		return
	}
	if !h.startTunnel(client, buffered.Reader, upstream) {
		h.untrack(client)
		h.untrack(upstream)
		return
	}
	// The handler holds a count of h.wg, so the group cannot be at zero.
	if lc, ok := client.(*limitedConn); ok && h.relays.try(h.connTracker, h.conns.active.Load(), lc, upstream) {
		return
	}
	relay.Both(client, upstream, &h.wg)
	h.untrack(client)
	h.untrack(upstream)
}

// startTunnel answers a CONNECT on the hijacked client and sends on the
// bytes it sent behind its request, reporting whether both went through.
func (h *HTTP) startTunnel(client net.Conn, buffered *bufio.Reader, upstream net.Conn) bool {
	// The server may have set deadlines for reading the request; a tunnel
	// lives as long as its two ends want it to.
	client.SetDeadline(time.Time{})
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return false
	}
	// A client may send its first bytes (a TLS ClientHello) right behind
	// the CONNECT request, and the server will have read them already.
	if n := buffered.Buffered(); n > 0 {
		early, _ := buffered.Peek(n)
		if _, err := upstream.Write(early); err != nil {
			return false
		}
	}
	return true
}

// hopByHopHeaders describe one connection, not the message, so a proxy
// must not pass them on (RFC 9110, section 7.6.1).
var hopByHopHeaders = []string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

func removeHopByHop(hdr http.Header) {
	for _, v := range hdr.Values("Connection") {
		for name := range strings.SplitSeq(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				hdr.Del(name)
			}
		}
	}
	for _, name := range hopByHopHeaders {
		hdr.Del(name)
	}
}

// serveForward sends an absolute-form request on through the network and
// streams the answer back.
func (h *HTTP) serveForward(w http.ResponseWriter, r *http.Request) {
	if r.URL.Scheme != "http" && r.URL.Scheme != "https" {
		http.Error(w, "unsupported scheme "+strconv.Quote(r.URL.Scheme), http.StatusBadRequest)
		return
	}
	if r.URL.Hostname() == "" {
		http.Error(w, "absolute-form request without a host", http.StatusBadRequest)
		return
	}
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.Close = false // the client's wish to close is about its own hop
	removeHopByHop(out.Header)
	if _, ok := out.Header["User-Agent"]; !ok {
		// Without this the Transport would add its own User-Agent, which
		// tells the origin what is behind the tunnel.
		out.Header["User-Agent"] = []string{""}
	}
	if r.ContentLength == 0 {
		out.Body = nil
	}

	res, err := h.transport.RoundTrip(out)
	if err != nil {
		h.failUpstream(w, r, r.URL.Host, err)
		return
	}
	defer res.Body.Close()

	removeHopByHop(res.Header)
	dst := w.Header()
	for k, vv := range res.Header {
		dst[k] = vv
	}
	// The server would otherwise add a sniffed Content-Type and a Date the
	// origin never sent.
	for _, k := range []string{"Content-Type", "Date"} {
		if _, ok := dst[k]; !ok {
			dst[k] = nil
		}
	}
	for k := range res.Trailer {
		dst.Add("Trailer", k)
	}
	w.WriteHeader(res.StatusCode)

	// A body of unknown length may be a stream the client is waiting on
	// piece by piece, so each piece is flushed as it arrives.
	flushEach := res.ContentLength < 0
	if err := copyResponseBody(w, res.Body, flushEach); err != nil {
		if r.Context().Err() == nil {
			h.log.Debug("http proxy: response body cut short", "url", r.URL.Redacted(), "err", err)
		}
		// The status is already sent; aborting is the only way left to
		// tell the client the body is incomplete.
		panic(http.ErrAbortHandler)
	}
	for k, vv := range res.Trailer {
		dst[http.TrailerPrefix+k] = vv
	}
}

func copyResponseBody(w http.ResponseWriter, body io.Reader, flushEach bool) error {
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if flushEach {
				if ferr := rc.Flush(); ferr != nil {
					return ferr
				}
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// failUpstream answers a request whose target could not be reached: 504
// when the tunnel timed out, 502 for any other failure.
func (h *HTTP) failUpstream(w http.ResponseWriter, r *http.Request, target string, err error) {
	if r.Context().Err() != nil && h.ctx.Err() == nil {
		return // the client left; nobody is waiting for an answer
	}
	status := http.StatusBadGateway
	if isDialTimeout(err) {
		status = http.StatusGatewayTimeout
	}
	h.log.Info("http proxy: upstream failed", "method", r.Method, "target", target, "status", status, "err", err)
	http.Error(w, fmt.Sprintf("wgbore: cannot reach %s: %s", target, dialFailureReason(err)), status)
}

func isDialTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// dialFailureReason names why a target was unreachable in a few words,
// without the host-side addresses that a raw error would show.
func dialFailureReason(err error) string {
	var dnsErr *net.DNSError
	switch {
	case isDialTimeout(err):
		return "timed out"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return "no such host"
	}
	msg := err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	return msg
}

// refuseHTTP answers a client over the listener's MaxConnections with 503
// and Retry-After, after reading its request head so that the client is
// not mid-write when the connection closes.
func refuseHTTP(c net.Conn) {
	r := bufio.NewReaderSize(c, 4096)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil || len(bytes.TrimRight(line, "\r\n")) == 0 {
			break
		}
	}
	const body = "wgbore: this proxy listener is at its MaxConnections; try again\n"
	fmt.Fprintf(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}
