package wgtest

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// The kernel stamps a datagram with when it arrived, not when it was read.
// Linux turns arrival stamping on a moment after the first socket asks
// for it (a deferred static key), and until then a datagram is stamped
// when it is read; so the test tries a few times.
func TestArrivalStamp(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	enableArrivalStamps(c)
	var tries []string
	for range 5 {
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
		if !at.Before(sent.Add(-time.Second)) && at.Before(read.Add(-50*time.Millisecond)) {
			return
		}
		tries = append(tries, fmt.Sprintf("stamped %v, sent %v, read %v", at, sent, read))
	}
	t.Fatalf("no datagram was stamped on arrival:\n%s", strings.Join(tries, "\n"))
}
