package service

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wgbore/wgbore/config"
	"github.com/wgbore/wgbore/protocol"
	"github.com/wgbore/wgbore/proxy"
)

// slowServer is a front end whose graceful stop takes the whole grace
// period, as a proxy with a client that does not hang up does.
type slowServer struct{ draining chan struct{} }

func (s slowServer) Shutdown(ctx context.Context) error {
	close(s.draining)
	<-ctx.Done()
	return ctx.Err()
}
func (slowServer) Close() error           { return nil }
func (slowServer) Stats() proxy.ConnStats { return proxy.ConnStats{} }

// TestReloadDuringShutdownIsRefused: a `wgbore reload` that reaches the
// UAPI socket while shutdown waits out its grace period is answered with
// a refusal at once, and the shutdown ends. Closing the UAPI socket
// waits for the request under way, so a reload that waited for the
// shutdown instead would hold both for good.
func TestReloadDuringShutdownIsRefused(t *testing.T) {
	key, err := protocol.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	text := "[Interface]\nPrivateKey = " + key.Base64() + "\nAddress = 10.0.0.1/32\n"
	cfg, err := config.Parse("wg0.conf", []byte(text), config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := Check(cfg, "wg0.conf")
	if err != nil {
		t.Fatal(err)
	}
	svc, err := Start(context.Background(), p, Options{
		Logger: slog.New(slog.DiscardHandler), ListenAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Reread: func() (*config.Config, string, error) { return cfg, "wg0.conf", nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	// A unix socket's path is short; t.TempDir's can be too long.
	dir, err := os.MkdirTemp("", "wgb")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	svc.StartUAPI(dir, "wg0", -1)
	slow := slowServer{draining: make(chan struct{})}
	svc.addServer(server{desc: "slow", impl: slow})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		svc.Shutdown(ctx)
	}()
	<-slow.draining

	c, err := net.Dial("unix", filepath.Join(dir, "wg0.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Long enough for any machine; a reload that waits for the shutdown
	// never answers.
	c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := c.Write([]byte(ReloadOperation + "=1\n\n")); err != nil {
		t.Fatal(err)
	}
	var reply []string
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("no answer to a reload during shutdown (got %q): %v", reply, err)
		}
		reply = append(reply, strings.TrimSuffix(line, "\n"))
		if strings.HasPrefix(line, "errno=") {
			break
		}
	}
	if got := strings.Join(reply, "|"); !strings.Contains(got, "error="+errShuttingDown.Error()) || !strings.HasSuffix(got, "errno=22") {
		t.Fatalf("reload during shutdown answered %q, want a refusal saying it is shutting down", got)
	}
	select {
	case <-stopped:
	case <-time.After(time.Minute):
		t.Fatal("shutdown did not end after the grace period")
	}
}
