package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
)

// version is set at link time by release builds
// (-ldflags "-X main.version=v1.2.3"); otherwise it comes from the build
// information Go records.
var version = ""

func versionString() string {
	v, rev, dirty := version, "", false
	if info, ok := debug.ReadBuildInfo(); ok {
		if v == "" {
			v = info.Main.Version
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	if rev != "" {
		v += " " + rev[:min(12, len(rev))]
		if dirty {
			v += "-dirty"
		}
	}
	return fmt.Sprintf("wgbore %s (%s, %s/%s)", v, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func cmdVersion(_ context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "version", "Usage: wgbore version\n\nPrints the version, the Go release it was built with, and the platform.\n\nExample:\n  wgbore version\n")
	if code, done := parseFlags(e, fs, args); done {
		return code
	}
	fmt.Fprintln(e.stdout, versionString())
	return exitOK
}
