//go:build !linux && !freebsd

package main

import "syscall"

// dieWithParent asks for nothing: this system has no parent-death
// signal, so a child outlives a bench that is killed by a signal.
func dieWithParent() *syscall.SysProcAttr { return nil }
