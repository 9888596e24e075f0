package protocol

import (
	"bytes"
	"encoding/binary"
	"time"
)

// timestampSize is the length of a TAI64N label.
const timestampSize = 12

// tai64nBase is 2^62, the TAI64 label of the Unix epoch, plus the ten
// seconds TAI was ahead of UTC in 1972; WireGuard implementations agree
// on this value, so ours must too for monotonicity to mean the same thing.
const tai64nBase = uint64(0x400000000000000a)

// whitenerMask rounds nanoseconds down to about 16 ms. The timestamp is sent
// encrypted but still reveals the sender's clock to the responder; coarse
// values leak less, and initiations more often than every 20 ms are refused
// anyway.
const whitenerMask = uint32(0x1000000 - 1)

type timestamp [timestampSize]byte

func makeTimestamp(t time.Time) timestamp {
	var ts timestamp
	secs := tai64nBase + uint64(t.Unix())
	nano := uint32(t.Nanosecond()) &^ whitenerMask
	binary.BigEndian.PutUint64(ts[:8], secs)
	binary.BigEndian.PutUint32(ts[8:], nano)
	return ts
}

// after reports whether ts is strictly newer than o; big-endian makes the
// byte order the time order.
func (ts timestamp) after(o timestamp) bool {
	return bytes.Compare(ts[:], o[:]) > 0
}
