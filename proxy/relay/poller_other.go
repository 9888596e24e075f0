//go:build !linux

package relay

import (
	"errors"
	"net"
)

// Poller is Linux's alone: elsewhere NewPoller fails, and relays from
// host sockets keep a goroutine each.
type Poller struct{}

// NewPoller reports that this platform has no poller.
func NewPoller() (*Poller, error) { return nil, errors.ErrUnsupported }

// Close does nothing.
func (p *Poller) Close() error { return nil }

// Watch returns nil: no socket can be watched here.
func (p *Poller) Watch(net.Conn) ReadNotifier { return nil }
