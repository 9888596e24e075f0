package proxy

import (
	"bytes"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"
)

// writeLog records the size of each write the server makes to one
// accepted connection.
type writeLog struct {
	mu     sync.Mutex
	writes []int
}

func (w *writeLog) sizes() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int(nil), w.writes...)
}

type loggedConn struct {
	net.Conn
	log *writeLog
}

func (c loggedConn) Write(p []byte) (int, error) {
	c.log.mu.Lock()
	c.log.writes = append(c.log.writes, len(p))
	c.log.mu.Unlock()
	return c.Conn.Write(p)
}

// CloseWrite lets a relay half-close as it would the TCP conn.
func (c loggedConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// loggingListener hands each accepted connection's write log to logs.
type loggingListener struct {
	net.Listener
	logs chan *writeLog
}

func (l loggingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	w := &writeLog{}
	l.logs <- w
	return loggedConn{Conn: c, log: w}, nil
}

// TestSOCKS5PipelinedAnswersInOneWrite checks that a client that sends
// its greeting, login and request at once gets every answer in one
// write, and that one that waits for each answer still gets each in
// time, with and without a login. The echo through the tunnel after the
// reply shows the connection still relays.
func TestSOCKS5PipelinedAnswersInOneWrite(t *testing.T) {
	echo := serveTCP(t, "127.0.0.1:0", echoConn)
	_, p, _ := net.SplitHostPort(echo)
	port, _ := strconv.Atoi(p)
	request := []byte{5, 1, 0, 1, 127, 0, 0, 1, byte(port >> 8), byte(port)}
	login := []byte{1, 1, 'u', 1, 'p'}

	for _, tc := range []struct {
		name      string
		auth      bool
		pipelined bool
		want      []int // the server's writes before the echo's
	}{
		{"pipelined", false, true, []int{2 + 10}},
		{"pipelined with login", true, true, []int{2 + 2 + 10}},
		{"step by step", false, false, []int{2, 10}},
		{"step by step with login", true, false, []int{2, 2, 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := SOCKS5Config{}
			greeting := []byte{5, 1, 0}
			if tc.auth {
				cfg.Username, cfg.Password = "u", "p"
				greeting = []byte{5, 1, 2}
			}
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ll := loggingListener{Listener: l, logs: make(chan *writeLog, 1)}
			s := NewSOCKS5(newSOCKSNetwork(), cfg)
			serveInBackground(t, func() error { return s.Serve(ll) }, s.Close)

			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			var steps [][]byte
			if tc.pipelined {
				steps = [][]byte{bytes.Join([][]byte{greeting, login[:len(login)*btoi(tc.auth)], request}, nil)}
			} else {
				steps = [][]byte{greeting}
				if tc.auth {
					steps = append(steps, login)
				}
				steps = append(steps, request)
			}
			// Each step's answer must arrive before the client sends the
			// next: a held answer would stall a client that waits.
			answers := []int{2, 2, 10}
			if !tc.auth {
				answers = []int{2, 10}
			}
			var all []byte
			for i, step := range steps {
				if _, err := c.Write(step); err != nil {
					t.Fatal(err)
				}
				n := answers[i]
				if tc.pipelined {
					n = 0
					for _, a := range answers {
						n += a
					}
				}
				got := make([]byte, n)
				if _, err := io.ReadFull(c, got); err != nil {
					t.Fatalf("step %d: reading %d bytes of answers: %v", i, n, err)
				}
				all = append(all, got...)
			}
			want := []byte{5, greeting[2]}
			if tc.auth {
				want = append(want, 1, 0)
			}
			want = append(want, 5, 0, 0, 1)
			if !bytes.HasPrefix(all, want) {
				t.Fatalf("answers % x, want them to begin % x", all, want)
			}
			wrote := (<-ll.logs).sizes()
			if !equalInts(wrote, tc.want) {
				t.Fatalf("server wrote %v before relaying, want %v", wrote, tc.want)
			}
			socksPing(t, c)
		})
	}
}

// TestSOCKS5PipelinedRefusalsAreAnswered checks that answers held for a
// pipelined client are not lost when the server refuses: a wrong login
// and an unreachable target are each answered before the close.
func TestSOCKS5PipelinedRefusalsAreAnswered(t *testing.T) {
	_, proxyAddr, _ := startSOCKS5(t, newSOCKSNetwork(), SOCKS5Config{Username: "u", Password: "p"})
	closed := serveTCP(t, "127.0.0.1:0", func(net.Conn) {})
	_, p, _ := net.SplitHostPort(closed)
	port, _ := strconv.Atoi(p)

	// A wrong password: the method chosen, then the login's failure.
	got := exchangeRaw(t, proxyAddr, []byte{5, 1, 2, 1, 1, 'u', 1, 'x', 5, 1, 0, 1, 127, 0, 0, 1, byte(port >> 8), byte(port)})
	if len(got) != 4 || got[0] != 5 || got[1] != 2 || got[2] != 1 || got[3] == 0 {
		t.Fatalf("wrong password answered % x, want 05 02 01 and a failure", got)
	}

	// An address with nothing listening (port 1 on loopback): the method
	// and login, then a refusal.
	got = exchangeRaw(t, proxyAddr, []byte{5, 1, 2, 1, 1, 'u', 1, 'p', 5, 1, 0, 1, 127, 0, 0, 1, 0, 1})
	if len(got) != 4+10 || !bytes.Equal(got[:4], []byte{5, 2, 1, 0}) || got[4] != 5 || got[5] == 0 {
		t.Fatalf("unreachable target answered % x, want 05 02 01 00 and a refusal", got)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
