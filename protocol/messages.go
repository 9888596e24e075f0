package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
)

// Message types, the first byte of every WireGuard datagram. The next three
// bytes are reserved and must be zero.
const (
	MessageInitiationType  = 1
	MessageResponseType    = 2
	MessageCookieReplyType = 3
	MessageTransportType   = 4
)

// Wire sizes, straight from the whitepaper's message layouts.
const (
	tagSize    = chacha20poly1305.Overhead // 16
	macSize    = 16
	cookieSize = 16

	MessageInitiationSize  = 148
	MessageResponseSize    = 92
	MessageCookieReplySize = 64
	// MessageTransportHeaderSize is type, reserved, receiver and counter.
	// Buffers keep this much headroom in front of a plaintext packet so
	// that encryption writes the header and ciphertext in place.
	MessageTransportHeaderSize = 16
	// MessageTransportOverhead is what a transport message adds to its
	// plaintext; buffers keep tagSize of tailroom for the tag.
	MessageTransportOverhead = MessageTransportHeaderSize + tagSize
	// MessageKeepaliveSize is a transport message with an empty payload.
	MessageKeepaliveSize = MessageTransportOverhead

	transportOffsetReceiver = 4
	transportOffsetCounter  = 8
	transportOffsetContent  = 16
)

// Offsets of the two MACs, which cover everything before them.
const (
	initiationMAC1Offset = MessageInitiationSize - 2*macSize // 116
	initiationMAC2Offset = MessageInitiationSize - macSize   // 132
	responseMAC1Offset   = MessageResponseSize - 2*macSize   // 60
	responseMAC2Offset   = MessageResponseSize - macSize     // 76
)

// ErrMalformed is wrapped by every parse error.
var ErrMalformed = errors.New("malformed message")

// messageInitiation is the first handshake message, initiator to responder.
type messageInitiation struct {
	sender    uint32
	ephemeral [32]byte
	static    [32 + tagSize]byte
	timestamp [timestampSize + tagSize]byte
	mac1      [macSize]byte
	mac2      [macSize]byte
}

// messageResponse is the second handshake message, responder to initiator.
type messageResponse struct {
	sender    uint32
	receiver  uint32
	ephemeral [32]byte
	empty     [tagSize]byte
	mac1      [macSize]byte
	mac2      [macSize]byte
}

// messageCookieReply answers a handshake message under load: it carries
// the cookie the sender must MAC its retry with.
type messageCookieReply struct {
	receiver uint32
	nonce    [chacha20poly1305.NonceSizeX]byte
	cookie   [cookieSize + tagSize]byte
}

// checkHeader enforces the exact size, the type byte and zero reserved
// bytes. Any slack would let two encodings of one message exist, and
// reserved bytes are how a future protocol version would announce itself.
func checkHeader(b []byte, typ byte, size int) error {
	if len(b) != size {
		return fmt.Errorf("%w: type %d message is %d bytes, want %d", ErrMalformed, typ, len(b), size)
	}
	if b[0] != typ {
		return fmt.Errorf("%w: type byte %d, want %d", ErrMalformed, b[0], typ)
	}
	if b[1]|b[2]|b[3] != 0 {
		return fmt.Errorf("%w: reserved bytes not zero", ErrMalformed)
	}
	return nil
}

func (m *messageInitiation) unmarshal(b []byte) error {
	if err := checkHeader(b, MessageInitiationType, MessageInitiationSize); err != nil {
		return err
	}
	m.sender = binary.LittleEndian.Uint32(b[4:])
	copy(m.ephemeral[:], b[8:40])
	copy(m.static[:], b[40:88])
	copy(m.timestamp[:], b[88:116])
	copy(m.mac1[:], b[116:132])
	copy(m.mac2[:], b[132:148])
	return nil
}

func (m *messageInitiation) marshal(b []byte) {
	_ = b[MessageInitiationSize-1]
	b[0], b[1], b[2], b[3] = MessageInitiationType, 0, 0, 0
	binary.LittleEndian.PutUint32(b[4:], m.sender)
	copy(b[8:40], m.ephemeral[:])
	copy(b[40:88], m.static[:])
	copy(b[88:116], m.timestamp[:])
	copy(b[116:132], m.mac1[:])
	copy(b[132:148], m.mac2[:])
}

func (m *messageResponse) unmarshal(b []byte) error {
	if err := checkHeader(b, MessageResponseType, MessageResponseSize); err != nil {
		return err
	}
	m.sender = binary.LittleEndian.Uint32(b[4:])
	m.receiver = binary.LittleEndian.Uint32(b[8:])
	copy(m.ephemeral[:], b[12:44])
	copy(m.empty[:], b[44:60])
	copy(m.mac1[:], b[60:76])
	copy(m.mac2[:], b[76:92])
	return nil
}

func (m *messageResponse) marshal(b []byte) {
	_ = b[MessageResponseSize-1]
	b[0], b[1], b[2], b[3] = MessageResponseType, 0, 0, 0
	binary.LittleEndian.PutUint32(b[4:], m.sender)
	binary.LittleEndian.PutUint32(b[8:], m.receiver)
	copy(b[12:44], m.ephemeral[:])
	copy(b[44:60], m.empty[:])
	copy(b[60:76], m.mac1[:])
	copy(b[76:92], m.mac2[:])
}

func (m *messageCookieReply) unmarshal(b []byte) error {
	if err := checkHeader(b, MessageCookieReplyType, MessageCookieReplySize); err != nil {
		return err
	}
	m.receiver = binary.LittleEndian.Uint32(b[4:])
	copy(m.nonce[:], b[8:32])
	copy(m.cookie[:], b[32:64])
	return nil
}

func (m *messageCookieReply) marshal(b []byte) {
	_ = b[MessageCookieReplySize-1]
	b[0], b[1], b[2], b[3] = MessageCookieReplyType, 0, 0, 0
	binary.LittleEndian.PutUint32(b[4:], m.receiver)
	copy(b[8:32], m.nonce[:])
	copy(b[32:64], m.cookie[:])
}

// transportHeader is the cleartext part of a transport message.
type transportHeader struct {
	receiver uint32
	counter  uint64
}

// readTransportHeader checks a transport message's framing without
// allocating, for the receive path: the smallest message is a keepalive,
// header plus tag around nothing.
func readTransportHeader(b []byte) (transportHeader, bool) {
	if len(b) < MessageKeepaliveSize || b[0] != MessageTransportType || b[1]|b[2]|b[3] != 0 {
		return transportHeader{}, false
	}
	return transportHeader{
		receiver: binary.LittleEndian.Uint32(b[transportOffsetReceiver:]),
		counter:  binary.LittleEndian.Uint64(b[transportOffsetCounter:]),
	}, true
}

// parseTransportHeader is readTransportHeader with an error that says
// what is wrong.
func parseTransportHeader(b []byte) (transportHeader, error) {
	if h, ok := readTransportHeader(b); ok {
		return h, nil
	}
	switch {
	case len(b) < MessageKeepaliveSize:
		return transportHeader{}, fmt.Errorf("%w: transport message is %d bytes, want at least %d", ErrMalformed, len(b), MessageKeepaliveSize)
	case b[0] != MessageTransportType:
		return transportHeader{}, fmt.Errorf("%w: type byte %d, want %d", ErrMalformed, b[0], MessageTransportType)
	default:
		return transportHeader{}, fmt.Errorf("%w: reserved bytes not zero", ErrMalformed)
	}
}

// MessageKind names a datagram for logs and drop counters without parsing
// it; it says nothing about validity.
func MessageKind(b []byte) string {
	if len(b) == 0 {
		return "empty"
	}
	switch b[0] {
	case MessageInitiationType:
		return "initiation"
	case MessageResponseType:
		return "response"
	case MessageCookieReplyType:
		return "cookie reply"
	case MessageTransportType:
		return "transport"
	}
	return "unknown"
}
