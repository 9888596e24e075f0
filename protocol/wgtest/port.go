package wgtest

import (
	"net"
	"testing"
)

// FreeLoopbackUDPPort returns a UDP port that is free on 127.0.0.1 now,
// for a configuration that has to name its port before whatever reads
// the configuration opens the socket. The socket the port was found with
// is closed again, so another process could take the port first; that
// shows as a bind error in the test, not as a wrong result.
func FreeLoopbackUDPPort(t testing.TB) uint16 {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}
