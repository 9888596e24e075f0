package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/wgbore/wgbore/protocol"
)

// The key commands print exactly what wg(8)'s do, one base64 key and a
// newline, so scripts written for wg work unchanged.

func cmdGenkey(_ context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "genkey", "Usage: wgbore genkey\n\nPrints a new random private key, base64, as wg genkey does.\n\nExample:\n  umask 077; wgbore genkey > private.key\n")
	if code, done := parseFlags(e, fs, args); done {
		return code
	}
	k, err := protocol.GeneratePrivateKey()
	if err != nil {
		fmt.Fprintf(e.stderr, "wgbore genkey: %v\n", err)
		return exitFailure
	}
	fmt.Fprintln(e.stdout, k.Base64())
	return exitOK
}

func cmdGenpsk(_ context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "genpsk", "Usage: wgbore genpsk\n\nPrints a new random preshared key, base64, as wg genpsk does.\n\nExample:\n  umask 077; wgbore genpsk > peer.psk\n")
	if code, done := parseFlags(e, fs, args); done {
		return code
	}
	k, err := protocol.GeneratePresharedKey()
	if err != nil {
		fmt.Fprintf(e.stderr, "wgbore genpsk: %v\n", err)
		return exitFailure
	}
	fmt.Fprintln(e.stdout, k.Base64())
	return exitOK
}

// maxKeyInput bounds what pubkey reads: a key is 44 characters, and a
// stray pipe from a large file should not be slurped whole.
const maxKeyInput = 1024

func cmdPubkey(_ context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "pubkey", "Usage: wgbore pubkey < private.key\n\nReads a base64 private key on stdin and prints its public key, as wg pubkey does.\n\nExample:\n  wgbore genkey | tee private.key | wgbore pubkey > public.key\n")
	if code, done := parseFlags(e, fs, args); done {
		return code
	}
	in, err := io.ReadAll(io.LimitReader(bufio.NewReader(e.stdin), maxKeyInput))
	if err != nil {
		fmt.Fprintf(e.stderr, "wgbore pubkey: reading stdin: %v\n", err)
		return exitFailure
	}
	// wg accepts the key followed by whitespace (the newline genkey
	// writes), nothing else.
	k, err := protocol.ParsePrivateKey(strings.TrimRight(string(in), " \t\r\n"))
	if err != nil {
		fmt.Fprintln(e.stderr, "wgbore pubkey: stdin does not hold a base64 WireGuard private key")
		return exitUsage
	}
	fmt.Fprintln(e.stdout, k.PublicKey())
	return exitOK
}
