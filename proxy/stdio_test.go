package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runSTDIO runs ServeSTDIO to target through the loopback dialer in a
// goroutine and delivers what it returned.
func runSTDIO(ctx context.Context, target string, in io.Reader, out io.Writer) <-chan error {
	done := make(chan error, 1)
	go func() { done <- ServeSTDIO(ctx, forwardDial, target, in, out) }()
	return done
}

func waitSTDIO(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("ServeSTDIO did not return; still running:\n%s", strings.Join(proxyGoroutines(forwardCode...), "\n\n"))
		return nil
	}
}

func TestSTDIORelaysAndHalfCloses(t *testing.T) {
	// The target answers only once it has read to EOF, so the answer
	// arrives only if in's EOF travels on as a half-close.
	target := serveTCP(t, "127.0.0.1:0", func(c net.Conn) {
		h := sha256.New()
		n, _ := io.Copy(h, c)
		fmt.Fprintf(c, "got %d bytes, sha256 %x", n, h.Sum(nil))
	})
	payload := make([]byte, 1<<20)
	rand.Read(payload)

	inR, inW := io.Pipe()
	defer inR.Close()
	var out bytes.Buffer // written by ServeSTDIO's own goroutine only
	done := runSTDIO(t.Context(), target, inR, &out)
	go func() {
		inW.Write(payload)
		inW.Close()
	}()
	if err := waitSTDIO(t, done); err != nil {
		t.Fatalf("ServeSTDIO = %v, want nil", err)
	}
	if want := fmt.Sprintf("got %d bytes, sha256 %x", len(payload), sha256.Sum256(payload)); out.String() != want {
		t.Fatalf("out = %q, want %q", out.String(), want)
	}
}

func TestSTDIOWaitsForInAfterTargetEnds(t *testing.T) {
	// A target that speaks first and hangs up, as an SSH server refusing
	// a client does. The relay still ends only when in does.
	target := serveTCP(t, "127.0.0.1:0", func(c net.Conn) {
		io.WriteString(c, "SSH-2.0-test\r\n")
	})
	inR, inW := io.Pipe()
	defer inR.Close()
	var out bytes.Buffer
	done := runSTDIO(t.Context(), target, inR, &out)
	select {
	case err := <-done:
		t.Fatalf("ServeSTDIO returned %v with in still open", err)
	case <-time.After(100 * time.Millisecond):
	}
	inW.Close()
	if err := waitSTDIO(t, done); err != nil {
		t.Fatalf("ServeSTDIO = %v, want nil", err)
	}
	if out.String() != "SSH-2.0-test\r\n" {
		t.Fatalf("out = %q", out.String())
	}
}

func TestSTDIOContextEnds(t *testing.T) {
	target := serveTCP(t, "127.0.0.1:0", echoConn)
	// An *os.File pipe has read deadlines, so ServeSTDIO can stop its
	// reader too and leave no goroutine behind.
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer inR.Close()
	defer inW.Close()
	outR, outW := io.Pipe()
	defer outR.Close()

	ctx, cancel := context.WithCancel(t.Context())
	done := runSTDIO(ctx, target, inR, outW)
	io.WriteString(inW, "ping")
	got := make([]byte, 4)
	if _, err := io.ReadFull(outR, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo through stdio = %q, %v", got, err)
	}
	cancel()
	if err := waitSTDIO(t, done); !errors.Is(err, context.Canceled) {
		t.Fatalf("ServeSTDIO after cancel = %v, want context.Canceled", err)
	}
	forwardNoGoroutinesLeft(t, "ServeSTDIO returned")
}

func TestSTDIODialFailure(t *testing.T) {
	closed := forwardListen(t, "tcp", "127.0.0.1:0")
	target := closed.Addr().String()
	closed.Close()
	err := ServeSTDIO(t.Context(), forwardDial, target, strings.NewReader("x"), io.Discard)
	if !errors.Is(err, syscall.ECONNREFUSED) || !strings.Contains(err.Error(), target) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("ServeSTDIO to a closed port = %v; want one line naming %s and wrapping ECONNREFUSED", err, target)
	}
}
