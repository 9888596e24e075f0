//go:build !unix

package main

// setSocketBuffers keeps the system's default buffers: wgbench measures
// on Linux, and elsewhere it is only built.
func setSocketBuffers(uintptr) {}
