//go:build !linux

package main

import "errors"

type wireCapture struct{}

func startWire(uint16) (*wireCapture, error) {
	return nil, errors.New("the wire capture needs Linux's packet sockets")
}

func (*wireCapture) stop() ([]wirePacket, error) { return nil, nil }
