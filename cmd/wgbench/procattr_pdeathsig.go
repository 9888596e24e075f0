//go:build linux || freebsd

package main

import "syscall"

// dieWithParent has the kernel send the child SIGTERM when this process
// dies, however it dies.
func dieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
