package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// ServeSTDIO connects to target ("host:port") through dial and relays in
// to it and its replies to out: what ssh's ProxyCommand expects of a
// command. When in reaches EOF the conn's write side is half-closed and
// replies are still read, so a protocol that sends its last request and
// then waits for the answer keeps working. It returns nil once both
// directions are done, or an error when one fails or ctx ends.
//
// A Read on in that is blocked when ServeSTDIO returns early (the target
// failed, or ctx ended) cannot be interrupted unless in has
// SetReadDeadline, as an *os.File pipe does; otherwise the goroutine
// copying it exits at in's next Read, which for a process's stdin is at
// exit.
func ServeSTDIO(ctx context.Context, dial func(ctx context.Context, network, address string) (net.Conn, error), target string, in io.Reader, out io.Writer) error {
	dialCtx, cancel := context.WithTimeout(ctx, forwardDialTimeout)
	up, err := dial(dialCtx, "tcp", target)
	cancel()
	if err != nil {
		return fmt.Errorf("stdio: dial %s: %w", target, err)
	}
	defer up.Close()
	ctxClosed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		up.Close()
		close(ctxClosed)
	})
	defer func() {
		// Leave nothing running: once started, the close is waited for.
		if !stop() {
			<-ctxClosed
		}
	}()

	sent := make(chan error, 1)
	go func() {
		err := sendSTDIO(up, in)
		if err != nil {
			up.Close() // the replies cannot usefully go on alone
		}
		sent <- err
	}()

	_, err = io.Copy(out, up)
	sendDone := false
	switch {
	case ctx.Err() != nil:
		err = ctx.Err()
	case err == nil:
		// The target finished sending; the session ends when in does.
		select {
		case err = <-sent:
			sendDone = true
		case <-ctx.Done():
			err = ctx.Err()
		}
	default:
		// A failed send closes up, which fails the copy above too; the
		// send's error is the cause worth reporting. Nothing else closes
		// up while ctx is live, so after ErrClosed the send has ended.
		if errors.Is(err, net.ErrClosed) {
			if sendErr := <-sent; sendErr != nil {
				err = sendErr
			}
			sendDone = true
		}
	}
	if err == nil {
		return nil
	}

	// Stop the other direction's writes, and its read if in allows it,
	// so its goroutine does not outlive the call.
	up.Close()
	if d, ok := in.(interface{ SetReadDeadline(time.Time) error }); ok && !sendDone && d.SetReadDeadline(time.Now()) == nil {
		<-sent
		d.SetReadDeadline(time.Time{})
	}
	return fmt.Errorf("stdio: relay to %s: %w", target, err)
}

// sendSTDIO copies in to up and passes in's EOF on as a half-close.
func sendSTDIO(up net.Conn, in io.Reader) error {
	if _, err := io.Copy(up, in); err != nil {
		return err
	}
	// A failed half-close is not an error of the relay: it fails only
	// when the target has already gone, and then the reading side sees
	// the end too. Without a half-close the conn stays open for the
	// replies, and the target sees the end only when it closes.
	if cw, ok := up.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	return nil
}
