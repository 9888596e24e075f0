package protocol

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/wgbore/wgbore/protocol/clock"
)

var cookieStart = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

// cookiePair is a responder's checker and an initiator's generator for
// that responder, on one manual clock.
type cookiePair struct {
	clk       *clock.Manual
	checker   *cookieChecker
	generator *cookieGenerator
	r         *rand.Rand
}

func newCookiePair(t *testing.T) *cookiePair {
	t.Helper()
	k, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	clk := clock.NewManual(cookieStart)
	c := &cookiePair{clk: clk, checker: &cookieChecker{}, generator: &cookieGenerator{}, r: rand.New(rand.NewPCG(11, 12))}
	c.checker.init(clk, k.PublicKey())
	c.generator.init(clk, k.PublicKey())
	return c
}

// message returns a handshake-message-shaped buffer of the given size with
// random contents in front of the MACs, as the MAC functions only care
// about the bytes before them.
func (c *cookiePair) message(size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(c.r.Uint32())
	}
	return b
}

func cookieMAC2(msg []byte) []byte { return msg[len(msg)-macSize:] }

func cookieIsZero(b []byte) bool { return bytes.Equal(b, make([]byte, len(b))) }

// TestCookieMAC1 checks that MAC1 made for the responder's public key is
// accepted, that any flipped bit in the covered bytes or in MAC1 itself is
// rejected, and that MAC2's bytes are outside MAC1's coverage (MAC2 is
// computed over MAC1, not the other way round).
func TestCookieMAC1(t *testing.T) {
	c := newCookiePair(t)
	for _, size := range []int{MessageInitiationSize, MessageResponseSize} {
		msg := c.message(size)
		c.generator.addMACs(msg)
		if !c.checker.checkMAC1(msg) {
			t.Fatalf("size %d: MAC1 from the matching generator rejected", size)
		}
		if !cookieIsZero(cookieMAC2(msg)) {
			t.Fatalf("size %d: MAC2 set without a cookie", size)
		}
		for bit := 0; bit < (size-macSize)*8; bit++ {
			b := bytes.Clone(msg)
			b[bit/8] ^= 1 << (bit % 8)
			if c.checker.checkMAC1(b) {
				t.Fatalf("size %d: MAC1 accepted with bit %d flipped", size, bit)
			}
		}
		for bit := (size - macSize) * 8; bit < size*8; bit++ {
			b := bytes.Clone(msg)
			b[bit/8] ^= 1 << (bit % 8)
			if !c.checker.checkMAC1(b) {
				t.Fatalf("size %d: flipping MAC2 bit %d broke MAC1", size, bit)
			}
		}
	}

	// A generator keyed for someone else's public key does not pass.
	other, _ := GeneratePrivateKey()
	var g cookieGenerator
	g.init(c.clk, other.PublicKey())
	msg := c.message(MessageInitiationSize)
	g.addMACs(msg)
	if c.checker.checkMAC1(msg) {
		t.Fatalf("MAC1 keyed to another public key accepted")
	}
}

// TestCookieReplyBinding checks that a cookie reply can only be opened by
// the sender of the message it answers: it is encrypted with that
// message's MAC1 as associated data, so a spoofed reply for another
// message, or a replayed one, does not install a cookie.
func TestCookieReplyBinding(t *testing.T) {
	c := newCookiePair(t)
	src := netip.MustParseAddrPort("192.0.2.1:51820")

	m1 := c.message(MessageInitiationSize)
	c.generator.addMACs(m1)
	m2 := c.message(MessageInitiationSize)
	c.generator.addMACs(m2) // the generator now expects a reply to m2

	reply1, err := c.checker.createReply(m1, 1, src)
	if err != nil {
		t.Fatal(err)
	}
	if reply1.receiver != 1 {
		t.Fatalf("reply receiver = %d, want the index it was given", reply1.receiver)
	}
	if c.generator.consumeReply(&reply1) {
		t.Fatalf("reply to an earlier message accepted")
	}

	reply2, err := c.checker.createReply(m2, 2, src)
	if err != nil {
		t.Fatal(err)
	}
	// Through the wire and back, as the engine receives it.
	wire := make([]byte, MessageCookieReplySize)
	reply2.marshal(wire)
	var got messageCookieReply
	if err := got.unmarshal(wire); err != nil {
		t.Fatal(err)
	}
	tampered := got
	tampered.cookie[3] ^= 0x10
	if c.generator.consumeReply(&tampered) {
		t.Fatalf("reply with a tampered cookie accepted")
	}
	tampered = got
	tampered.nonce[0] ^= 1
	if c.generator.consumeReply(&tampered) {
		t.Fatalf("reply with a tampered nonce accepted")
	}
	if !c.generator.consumeReply(&got) {
		t.Fatalf("reply to the last message rejected")
	}
	if c.generator.consumeReply(&got) {
		t.Fatalf("the same reply accepted twice")
	}
	if reply1.nonce == reply2.nonce {
		t.Fatalf("two replies share a nonce")
	}

	// A generator that has sent nothing accepts nothing.
	var fresh cookieGenerator
	fresh.init(c.clk, PublicKey{})
	if fresh.consumeReply(&got) {
		t.Fatalf("generator with no sent message accepted a reply")
	}
}

// TestCookieMAC2 runs the under-load exchange end to end: after consuming
// a cookie the generator adds MAC2, which the checker accepts from the
// address and port the cookie was issued to and from nowhere else, until
// CookieRefreshTime has passed.
func TestCookieMAC2(t *testing.T) {
	c := newCookiePair(t)
	src := netip.MustParseAddrPort("192.0.2.1:51820")

	first := c.message(MessageInitiationSize)
	c.generator.addMACs(first)
	if c.checker.checkMAC2(first, src) {
		t.Fatalf("MAC2 accepted before any cookie was issued")
	}
	reply, err := c.checker.createReply(first, 7, src)
	if err != nil {
		t.Fatal(err)
	}
	if !c.generator.consumeReply(&reply) {
		t.Fatalf("cookie reply rejected")
	}

	retry := c.message(MessageInitiationSize)
	c.generator.addMACs(retry)
	if cookieIsZero(cookieMAC2(retry)) {
		t.Fatalf("generator holds a cookie but left MAC2 zero")
	}
	if !c.checker.checkMAC1(retry) {
		t.Fatalf("MAC1 broken by adding MAC2")
	}
	if !c.checker.checkMAC2(retry, src) {
		t.Fatalf("MAC2 rejected from the address the cookie was issued to")
	}
	// The same address written as IPv4-mapped IPv6 is the same source.
	if !c.checker.checkMAC2(retry, netip.MustParseAddrPort("[::ffff:192.0.2.1]:51820")) {
		t.Fatalf("MAC2 rejected from the IPv4-mapped form of the source")
	}
	for _, other := range []string{"192.0.2.1:51821", "192.0.2.2:51820", "[2001:db8::1]:51820", "192.0.2.1:0"} {
		if c.checker.checkMAC2(retry, netip.MustParseAddrPort(other)) {
			t.Fatalf("MAC2 accepted from %s, not the cookie's source", other)
		}
	}
	// MAC2 covers MAC1 and the body.
	for _, i := range []int{0, 50, initiationMAC1Offset, initiationMAC2Offset - 1, initiationMAC2Offset} {
		b := bytes.Clone(retry)
		b[i] ^= 0x01
		if c.checker.checkMAC2(b, src) {
			t.Fatalf("MAC2 accepted with byte %d changed", i)
		}
	}
	// Responses carry MAC2 the same way.
	resp := c.message(MessageResponseSize)
	c.generator.addMACs(resp)
	if !c.checker.checkMAC2(resp, src) {
		t.Fatalf("MAC2 on a response rejected")
	}

	// Just before CookieRefreshTime both sides still use the cookie.
	c.clk.Advance(CookieRefreshTime - time.Millisecond)
	late := c.message(MessageInitiationSize)
	c.generator.addMACs(late)
	if cookieIsZero(cookieMAC2(late)) || !c.checker.checkMAC2(late, src) {
		t.Fatalf("cookie unusable before CookieRefreshTime")
	}

	// At CookieRefreshTime the checker's secret has expired and the
	// generator's cookie with it.
	c.clk.Advance(time.Millisecond)
	if c.checker.checkMAC2(retry, src) || c.checker.checkMAC2(late, src) {
		t.Fatalf("checker accepts a cookie older than CookieRefreshTime")
	}
	expired := c.message(MessageInitiationSize)
	c.generator.addMACs(expired)
	if !cookieIsZero(cookieMAC2(expired)) {
		t.Fatalf("generator still adds MAC2 after CookieRefreshTime: %x", cookieMAC2(expired))
	}
	if !c.checker.checkMAC1(expired) {
		t.Fatalf("MAC1 broken after expiry")
	}

	// The next reply mints a new secret. The fresh secret must not
	// validate MAC2s made with the old cookie.
	reply, err = c.checker.createReply(expired, 8, src)
	if err != nil {
		t.Fatal(err)
	}
	if c.checker.checkMAC2(late, src) {
		t.Fatalf("new secret accepts a MAC2 made with the old cookie")
	}
	if !c.generator.consumeReply(&reply) {
		t.Fatalf("reply after rotation rejected")
	}
	again := c.message(MessageInitiationSize)
	c.generator.addMACs(again)
	if !c.checker.checkMAC2(again, src) {
		t.Fatalf("MAC2 with the new cookie rejected")
	}
}

// checkMAC1 reuses keyed hash states; after our key changes, a state
// keyed with the old key must not verify anything.
func TestCookieMAC1AfterKeyChange(t *testing.T) {
	c := newCookiePair(t)
	msg := c.message(MessageInitiationSize)
	c.generator.addMACs(msg)
	for range 3 { // leave states in the pool
		if !c.checker.checkMAC1(msg) {
			t.Fatal("MAC1 rejected")
		}
	}
	k, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	c.checker.init(c.clk, k.PublicKey())
	if c.checker.checkMAC1(msg) {
		t.Fatal("MAC1 for the old key accepted after the key changed")
	}
	var g cookieGenerator
	g.init(c.clk, k.PublicKey())
	g.addMACs(msg)
	if !c.checker.checkMAC1(msg) {
		t.Fatal("MAC1 for the new key rejected")
	}
}
