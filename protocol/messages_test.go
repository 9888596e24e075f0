package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"
)

// msgRand is a deterministic source so that a failing round trip
// reproduces.
func msgRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x6d736773)) }

func msgFill(r *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(r.Uint32())
	}
}

func msgRandomInitiation(r *rand.Rand) messageInitiation {
	var m messageInitiation
	m.sender = r.Uint32()
	msgFill(r, m.ephemeral[:])
	msgFill(r, m.static[:])
	msgFill(r, m.timestamp[:])
	msgFill(r, m.mac1[:])
	msgFill(r, m.mac2[:])
	return m
}

func msgRandomResponse(r *rand.Rand) messageResponse {
	var m messageResponse
	m.sender = r.Uint32()
	m.receiver = r.Uint32()
	msgFill(r, m.ephemeral[:])
	msgFill(r, m.empty[:])
	msgFill(r, m.mac1[:])
	msgFill(r, m.mac2[:])
	return m
}

func msgRandomCookieReply(r *rand.Rand) messageCookieReply {
	var m messageCookieReply
	m.receiver = r.Uint32()
	msgFill(r, m.nonce[:])
	msgFill(r, m.cookie[:])
	return m
}

// msgLE32 is the little-endian encoding the whitepaper mandates for
// indices, written out independently of the code under test.
func msgLE32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

// msgConcat builds the expected wire image field by field, in the
// whitepaper's order, so that a round trip through a marshal/unmarshal pair
// that agreed on a wrong layout would still be caught.
func msgConcat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// TestMessageInitiationRoundTrip checks size, exact layout and that
// unmarshal inverts marshal for random contents.
func TestMessageInitiationRoundTrip(t *testing.T) {
	if MessageInitiationSize != 148 {
		t.Fatalf("MessageInitiationSize = %d, want 148", MessageInitiationSize)
	}
	r := msgRand(1)
	for range 500 {
		m := msgRandomInitiation(r)
		buf := make([]byte, MessageInitiationSize)
		msgFill(r, buf) // marshal must overwrite every byte, including reserved ones
		m.marshal(buf)
		want := msgConcat([]byte{1, 0, 0, 0}, msgLE32(m.sender), m.ephemeral[:], m.static[:], m.timestamp[:], m.mac1[:], m.mac2[:])
		if !bytes.Equal(buf, want) {
			t.Fatalf("marshal layout:\n got %x\nwant %x", buf, want)
		}
		var back messageInitiation
		if err := back.unmarshal(buf); err != nil {
			t.Fatalf("unmarshal of marshalled message: %v", err)
		}
		if back != m {
			t.Fatalf("round trip changed the message:\n got %+v\nwant %+v", back, m)
		}
		if !bytes.Equal(buf[initiationMAC1Offset:initiationMAC1Offset+macSize], m.mac1[:]) ||
			!bytes.Equal(buf[initiationMAC2Offset:], m.mac2[:]) {
			t.Fatalf("MAC offsets do not point at the MACs")
		}
	}
}

func TestMessageResponseRoundTrip(t *testing.T) {
	if MessageResponseSize != 92 {
		t.Fatalf("MessageResponseSize = %d, want 92", MessageResponseSize)
	}
	r := msgRand(2)
	for range 500 {
		m := msgRandomResponse(r)
		buf := make([]byte, MessageResponseSize)
		msgFill(r, buf)
		m.marshal(buf)
		want := msgConcat([]byte{2, 0, 0, 0}, msgLE32(m.sender), msgLE32(m.receiver), m.ephemeral[:], m.empty[:], m.mac1[:], m.mac2[:])
		if !bytes.Equal(buf, want) {
			t.Fatalf("marshal layout:\n got %x\nwant %x", buf, want)
		}
		var back messageResponse
		if err := back.unmarshal(buf); err != nil {
			t.Fatalf("unmarshal of marshalled message: %v", err)
		}
		if back != m {
			t.Fatalf("round trip changed the message:\n got %+v\nwant %+v", back, m)
		}
		if !bytes.Equal(buf[responseMAC1Offset:responseMAC1Offset+macSize], m.mac1[:]) ||
			!bytes.Equal(buf[responseMAC2Offset:], m.mac2[:]) {
			t.Fatalf("MAC offsets do not point at the MACs")
		}
	}
}

func TestMessageCookieReplyRoundTrip(t *testing.T) {
	if MessageCookieReplySize != 64 {
		t.Fatalf("MessageCookieReplySize = %d, want 64", MessageCookieReplySize)
	}
	r := msgRand(3)
	for range 500 {
		m := msgRandomCookieReply(r)
		buf := make([]byte, MessageCookieReplySize)
		msgFill(r, buf)
		m.marshal(buf)
		want := msgConcat([]byte{3, 0, 0, 0}, msgLE32(m.receiver), m.nonce[:], m.cookie[:])
		if !bytes.Equal(buf, want) {
			t.Fatalf("marshal layout:\n got %x\nwant %x", buf, want)
		}
		var back messageCookieReply
		if err := back.unmarshal(buf); err != nil {
			t.Fatalf("unmarshal of marshalled message: %v", err)
		}
		if back != m {
			t.Fatalf("round trip changed the message:\n got %+v\nwant %+v", back, m)
		}
	}
}

// msgUnmarshalers lists the three fixed-size messages with their type and
// size, for the rejection tests.
var msgUnmarshalers = []struct {
	name      string
	typ       byte
	size      int
	unmarshal func([]byte) error
}{
	{"initiation", MessageInitiationType, 148, func(b []byte) error { var m messageInitiation; return m.unmarshal(b) }},
	{"response", MessageResponseType, 92, func(b []byte) error { var m messageResponse; return m.unmarshal(b) }},
	{"cookie reply", MessageCookieReplyType, 64, func(b []byte) error { var m messageCookieReply; return m.unmarshal(b) }},
}

// TestMessageUnmarshalRejects checks that exactly one length, one type
// byte and all-zero reserved bytes are accepted: any slack would give one
// message two encodings, and reserved bytes are where a future version
// would announce itself.
func TestMessageUnmarshalRejects(t *testing.T) {
	r := msgRand(4)
	for _, u := range msgUnmarshalers {
		good := make([]byte, u.size)
		msgFill(r, good)
		good[0], good[1], good[2], good[3] = u.typ, 0, 0, 0
		if err := u.unmarshal(good); err != nil {
			t.Fatalf("%s: well-formed message rejected: %v", u.name, err)
		}

		// Every wrong length, with a correct header where there is room
		// for one, so that only the length is wrong.
		for n := 0; n <= 200; n++ {
			if n == u.size {
				continue
			}
			b := make([]byte, n)
			msgFill(r, b)
			copy(b, []byte{u.typ, 0, 0, 0})
			err := u.unmarshal(b)
			if err == nil {
				t.Errorf("%s: %d-byte message accepted", u.name, n)
			} else if !errors.Is(err, ErrMalformed) {
				t.Errorf("%s: %d bytes: error %v does not wrap ErrMalformed", u.name, n, err)
			}
		}

		for typ := range 256 {
			if byte(typ) == u.typ {
				continue
			}
			b := bytes.Clone(good)
			b[0] = byte(typ)
			if err := u.unmarshal(b); err == nil || !errors.Is(err, ErrMalformed) {
				t.Errorf("%s: type byte %d: err = %v, want ErrMalformed", u.name, typ, err)
			}
		}

		for i := 1; i <= 3; i++ {
			for v := 1; v < 256; v++ {
				b := bytes.Clone(good)
				b[i] = byte(v)
				if err := u.unmarshal(b); err == nil || !errors.Is(err, ErrMalformed) {
					t.Errorf("%s: reserved byte %d = %#x: err = %v, want ErrMalformed", u.name, i, v, err)
				}
			}
		}
	}
}

// TestMessageTransportHeader checks the framing check on the data path:
// at least a keepalive's 32 bytes, type 4, zero reserved bytes, and the
// receiver index and counter read little-endian from their offsets.
func TestMessageTransportHeader(t *testing.T) {
	if MessageKeepaliveSize != 32 || MessageTransportHeaderSize != 16 {
		t.Fatalf("keepalive %d, header %d; want 32 and 16", MessageKeepaliveSize, MessageTransportHeaderSize)
	}
	r := msgRand(5)
	for n := 0; n <= 200; n++ {
		b := make([]byte, n)
		msgFill(r, b)
		copy(b, []byte{4, 0, 0, 0, 0x01, 0x02, 0x03, 0x04, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18})
		h, err := parseTransportHeader(b)
		if n < 32 {
			if err == nil || !errors.Is(err, ErrMalformed) {
				t.Errorf("%d bytes: err = %v, want ErrMalformed", n, err)
			}
			if h != (transportHeader{}) {
				t.Errorf("%d bytes: rejected header is %+v, want zero", n, h)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if h.receiver != 0x04030201 || h.counter != 0x1817161514131211 {
			t.Fatalf("%d bytes: receiver %#x counter %#x; want 0x04030201 and 0x1817161514131211", n, h.receiver, h.counter)
		}
	}

	good := make([]byte, 32)
	good[0] = 4
	for typ := range 256 {
		if typ == 4 {
			continue
		}
		b := bytes.Clone(good)
		b[0] = byte(typ)
		if _, err := parseTransportHeader(b); err == nil || !errors.Is(err, ErrMalformed) {
			t.Errorf("type %d: err = %v, want ErrMalformed", typ, err)
		}
	}
	for i := 1; i <= 3; i++ {
		for v := 1; v < 256; v++ {
			b := bytes.Clone(good)
			b[i] = byte(v)
			if _, err := parseTransportHeader(b); err == nil || !errors.Is(err, ErrMalformed) {
				t.Errorf("reserved byte %d = %#x: err = %v, want ErrMalformed", i, v, err)
			}
		}
	}

	// Extremes of the fields.
	b := make([]byte, 48)
	b[0] = 4
	binary.LittleEndian.PutUint32(b[4:], 0xffffffff)
	binary.LittleEndian.PutUint64(b[8:], 0xffffffffffffffff)
	h, err := parseTransportHeader(b)
	if err != nil || h.receiver != 0xffffffff || h.counter != 0xffffffffffffffff {
		t.Fatalf("max fields: %+v, %v", h, err)
	}
}

// TestMessageKind checks the log names, including for bytes that are not
// valid messages (MessageKind must not judge validity, nor panic).
func TestMessageKind(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want string
	}{
		{nil, "empty"},
		{[]byte{}, "empty"},
		{[]byte{1}, "initiation"},
		{make([]byte, 148), "unknown"}, // type 0
		{append([]byte{1}, make([]byte, 147)...), "initiation"},
		{[]byte{2, 9, 9}, "response"},
		{[]byte{3}, "cookie reply"},
		{[]byte{4, 0, 0, 0}, "transport"},
		{[]byte{0}, "unknown"},
		{[]byte{5}, "unknown"},
		{[]byte{0x45, 0, 0, 20}, "unknown"}, // a bare IPv4 header
		{[]byte{255}, "unknown"},
	} {
		if got := MessageKind(tc.in); got != tc.want {
			t.Errorf("MessageKind(%x) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// msgFuzzSeeds are synthetic seeds added with f.Add; the committed corpus
// under testdata/fuzz/FuzzParseMessages holds real engine-made handshake
// messages as well.
func msgFuzzSeeds() [][]byte {
	r := msgRand(6)
	ini := msgRandomInitiation(r)
	resp := msgRandomResponse(r)
	cookie := msgRandomCookieReply(r)
	ib := make([]byte, MessageInitiationSize)
	ini.marshal(ib)
	rb := make([]byte, MessageResponseSize)
	resp.marshal(rb)
	cb := make([]byte, MessageCookieReplySize)
	cookie.marshal(cb)
	keepalive := make([]byte, MessageKeepaliveSize)
	keepalive[0] = MessageTransportType
	binary.LittleEndian.PutUint32(keepalive[4:], 0x01020304)
	binary.LittleEndian.PutUint64(keepalive[8:], 7)
	msgFill(r, keepalive[16:])
	// Plaintext IP packets, for innerPacket: a 28-byte IPv4 packet padded
	// to 32, an IPv6 one padded to 48, and one whose length field lies.
	v4 := make([]byte, 32)
	v4[0] = 0x45
	binary.BigEndian.PutUint16(v4[2:], 28)
	v6 := make([]byte, 48)
	v6[0] = 0x60
	binary.BigEndian.PutUint16(v6[4:], 4)
	liar := bytes.Clone(v4)
	binary.BigEndian.PutUint16(liar[2:], 1500)
	return [][]byte{
		ib, rb, cb, keepalive, v4, v6, liar,
		ib[:147], rb[:91], cb[:63], keepalive[:31],
		{}, {1}, {4, 0, 0, 0},
	}
}

// FuzzParseMessages feeds arbitrary datagrams to every parser the receive
// path runs on untrusted bytes. Beyond not panicking, a successful parse
// must be lossless: marshalling the result must give back the input
// exactly, so no two byte strings decode to one message (which would let a
// peer alter a message without breaking its MACs' meaning).
func FuzzParseMessages(f *testing.F) {
	for _, s := range msgFuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = MessageKind(b)

		var mi messageInitiation
		if err := mi.unmarshal(b); err == nil {
			out := make([]byte, MessageInitiationSize)
			mi.marshal(out)
			if !bytes.Equal(out, b) {
				t.Fatalf("initiation re-marshals differently:\n in %x\nout %x", b, out)
			}
		} else if !errors.Is(err, ErrMalformed) {
			t.Fatalf("initiation error %v does not wrap ErrMalformed", err)
		}

		var mr messageResponse
		if err := mr.unmarshal(b); err == nil {
			out := make([]byte, MessageResponseSize)
			mr.marshal(out)
			if !bytes.Equal(out, b) {
				t.Fatalf("response re-marshals differently:\n in %x\nout %x", b, out)
			}
		} else if !errors.Is(err, ErrMalformed) {
			t.Fatalf("response error %v does not wrap ErrMalformed", err)
		}

		var mc messageCookieReply
		if err := mc.unmarshal(b); err == nil {
			out := make([]byte, MessageCookieReplySize)
			mc.marshal(out)
			if !bytes.Equal(out, b) {
				t.Fatalf("cookie reply re-marshals differently:\n in %x\nout %x", b, out)
			}
		} else if !errors.Is(err, ErrMalformed) {
			t.Fatalf("cookie reply error %v does not wrap ErrMalformed", err)
		}

		if h, err := parseTransportHeader(b); err == nil {
			if len(b) < MessageKeepaliveSize || b[0] != MessageTransportType || b[1]|b[2]|b[3] != 0 {
				t.Fatalf("transport header accepted from %x", b)
			}
			if h.receiver != binary.LittleEndian.Uint32(b[4:]) || h.counter != binary.LittleEndian.Uint64(b[8:]) {
				t.Fatalf("transport header %+v misread from %x", h, b)
			}
		} else if !errors.Is(err, ErrMalformed) {
			t.Fatalf("transport error %v does not wrap ErrMalformed", err)
		}

		// The engine calls innerPacket only on non-empty plaintext (an
		// empty one is a keepalive) and then reads the source address.
		if len(b) > 0 {
			pkt, ok := innerPacket(b)
			if ok {
				if len(pkt) > len(b) || (len(pkt) > 0 && &pkt[0] != &b[0]) {
					t.Fatalf("innerPacket returned bytes that are not a prefix of its input")
				}
				switch b[0] >> 4 {
				case 4:
					if len(pkt) < 20 || len(pkt) != int(binary.BigEndian.Uint16(b[2:])) {
						t.Fatalf("IPv4 packet of %d bytes from header claiming %d", len(pkt), binary.BigEndian.Uint16(b[2:]))
					}
				case 6:
					if len(pkt) != 40+int(binary.BigEndian.Uint16(b[4:])) {
						t.Fatalf("IPv6 packet of %d bytes from payload length %d", len(pkt), binary.BigEndian.Uint16(b[4:]))
					}
				default:
					t.Fatalf("innerPacket accepted version %d", b[0]>>4)
				}
				if _, ok := source(pkt); !ok {
					t.Fatalf("source() rejects a packet innerPacket accepted")
				}
			}
		}
	})
}
