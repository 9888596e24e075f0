package wgtest

import (
	"net"
	"testing"
	"time"
)

// The kernel stamps a datagram with when it arrived, not when it was read.
func TestArrivalStamp(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	enableArrivalStamps(c)
	sent := time.Now()
	if _, err := c.WriteToUDP([]byte("x"), c.LocalAddr().(*net.UDPAddr)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // read well after it arrived
	buf, oob := make([]byte, 16), make([]byte, arrivalOOBSize)
	_, oobn, _, _, err := c.ReadMsgUDPAddrPort(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	read := time.Now()
	wall, ok := arrivalStamp(oob[:oobn])
	if !ok {
		t.Fatal("no arrival stamp on the datagram")
	}
	at := time.Unix(0, wall)
	if at.Before(sent.Add(-time.Second)) || !at.Before(read.Add(-50*time.Millisecond)) {
		t.Fatalf("arrival stamped %v; sent %v, read %v", at, sent, read)
	}
}
