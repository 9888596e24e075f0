package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	socks5 "github.com/things-go/go-socks5"
	"github.com/things-go/go-socks5/statute"
)

// handshakeBuffer is the size of the reader a SOCKS5 handshake is read
// through. A greeting takes at most 257 bytes and a request at most 262;
// a login with a name and a password of 255 bytes each takes 513, and is
// read whole all the same, through a second read. The buffer lets a
// client that sends its messages together be read with one system call.
// A client's first bytes, sent right behind its request, land in what is
// left, and the rest of them wait in the socket.
const handshakeBuffer = 512

// The server negotiates SOCKS5 itself, with go-socks5's parsers and
// replies. go-socks5's own ServeConn reads the handshake through a new
// 4 KiB bufio.Reader per connection, which is garbage the moment the
// request has been read: a burst of thousands of new connections piles
// that up faster than the collector returns it, and the process's peak
// is the pile's. Here each handshake borrows a small reader from a pool,
// and a CONNECT gives it back as soon as the bytes it buffered past the
// request are sent on.

// negotiate serves one client connection from its greeting until its
// request has been served: for a CONNECT, until the relay has been
// handed over or has ended; for a UDP ASSOCIATE, until the association
// ends.
func (s *SOCKS5) negotiate(conn net.Conn) error {
	br := s.readers.get(conn)
	req, err := s.readRequest(conn, br)
	if err != nil {
		s.readers.put(br)
		return err
	}
	err = s.serveRequest(conn, req)
	if req.Reader != nil {
		// A refusal, a failed dial or an association: nothing gave the
		// reader back before.
		req.Reader = nil
		s.readers.put(br)
	}
	return err
}

// handshakeReaders is a pool of handshake readers that counts those
// taken and not yet given back, so that a test can see an open relay
// hold none.
type handshakeReaders struct {
	pool sync.Pool
	out  atomic.Int64
}

func (r *handshakeReaders) get(conn net.Conn) *bufio.Reader {
	r.out.Add(1)
	br, _ := r.pool.Get().(*bufio.Reader)
	if br == nil {
		br = bufio.NewReaderSize(nil, handshakeBuffer)
	}
	br.Reset(conn)
	return br
}

// put gives a reader back, dropping what it still buffers and its
// connection.
func (r *handshakeReaders) put(br *bufio.Reader) {
	br.Reset(nil)
	r.pool.Put(br)
	r.out.Add(-1)
}

// readRequest reads the greeting, authenticates the client with the one
// method the server offers, and reads the request, answering the
// failures the protocol has an answer for. The answers go out through
// conn (a handoff, which may hold them back to join the request's reply).
func (s *SOCKS5) readRequest(conn net.Conn, br *bufio.Reader) (*socks5.Request, error) {
	greeting, err := statute.ParseMethodRequest(br)
	if err != nil {
		return nil, fmt.Errorf("read greeting: %w", err)
	}
	if greeting.Ver != statute.VersionSocks5 {
		return nil, statute.ErrNotSupportVersion
	}
	var auth *socks5.AuthContext
	method := statute.MethodNoAuth
	if s.creds != nil {
		method = statute.MethodUserPassAuth
	}
	if bytes.IndexByte(greeting.Methods, method) < 0 {
		conn.Write([]byte{statute.VersionSocks5, statute.MethodNoAcceptable})
		return nil, fmt.Errorf("failed to authenticate: %w", statute.ErrNoSupportedAuth)
	}
	if s.creds != nil {
		addr := ""
		if a := conn.RemoteAddr(); a != nil {
			addr = a.String()
		}
		if auth, err = (socks5.UserPassAuthenticator{Credentials: s.creds}).Authenticate(br, conn, addr); err != nil {
			return nil, fmt.Errorf("failed to authenticate: %w", err)
		}
	} else if _, err := conn.Write([]byte{statute.VersionSocks5, statute.MethodNoAuth}); err != nil {
		return nil, fmt.Errorf("failed to authenticate: %w", err)
	}

	req, err := socks5.ParseRequest(br)
	if err != nil {
		if errors.Is(err, statute.ErrUnrecognizedAddrType) {
			if err := socks5.SendReply(conn, statute.RepAddrTypeNotSupported, nil); err != nil {
				return nil, fmt.Errorf("failed to send reply, %w", err)
			}
		}
		return nil, fmt.Errorf("failed to read destination address, %w", err)
	}
	req.AuthContext = auth
	req.LocalAddr = conn.LocalAddr()
	req.RemoteAddr = conn.RemoteAddr()
	req.DestAddr = req.RawDestAddr
	return req, nil
}

// serveRequest serves a request's command: CONNECT, with its name
// resolved on the Network first; UDP ASSOCIATE where the Network carries
// datagrams (its address names where the client sends from, and a name
// there is not looked up); and "command not supported" for the others,
// BIND among them, at once.
func (s *SOCKS5) serveRequest(conn net.Conn, req *socks5.Request) error {
	switch req.Command {
	case statute.CommandConnect:
		ctx := context.Background()
		if dest := req.RawDestAddr; dest.FQDN != "" {
			var err error
			ctx, dest.IP, err = s.resolve(ctx, dest.FQDN)
			if err != nil {
				if err := socks5.SendReply(conn, statute.RepHostUnreachable, nil); err != nil {
					return fmt.Errorf("failed to send reply, %w", err)
				}
				return fmt.Errorf("failed to resolve destination[%v], %w", dest.FQDN, err)
			}
		}
		if err := s.endHandshake(conn); err != nil {
			return err
		}
		return s.connect(ctx, conn, req)
	case statute.CommandAssociate:
		if _, ok := s.nw.(packetListener); ok {
			return s.associate(conn, req)
		}
	}
	return socksRefuseCommand(conn, req)
}
