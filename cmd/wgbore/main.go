package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
)

// Exit codes. Scripts and supervisors tell "fix your file" (2) from "try
// again later" (1) by them.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// env is the process as the commands see it, injected so that tests run
// the commands in-process with their own pipes and signals.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	// signals delivers SIGINT and SIGTERM; the first starts a graceful
	// shutdown, the second cuts it short.
	signals <-chan os.Signal
	// catchSignals, when set, routes SIGINT and SIGTERM to signals. Only
	// `up` calls it: every other command keeps the default, so Ctrl-C
	// still ends a `wgbore pubkey` waiting on a terminal.
	catchSignals func()
	// hangups delivers SIGHUP, once catchSignals has run: up and serve
	// reload their configuration on it.
	hangups <-chan os.Signal
	// lookupEnv reads the environment: WGBORE_CONFIG and the "$NAME"
	// values in a config. Nil is an empty environment, so a test sees
	// only the variables it sets.
	lookupEnv func(name string) (string, bool)
	// root is the host's file system, where up and serve find their
	// container's memory limit and serve its CPU quota; nil means none is
	// found.
	root fs.FS
	// maxProcs and numCPU are runtime.GOMAXPROCS and runtime.NumCPU,
	// through which serve takes a processor more than its cores
	// (serveProcs); nil leaves the process's setting alone, as tests that
	// run serve in-process need.
	maxProcs func(n int) int
	numCPU   func() int
}

func main() {
	// Nothing in wgbore reads heap profiles, and their records grow with
	// every allocation site a burst of connections passes through, then
	// stay: with sampling off that memory comes back after a burst too.
	runtime.MemProfileRate = 0
	sig := make(chan os.Signal, 2)
	hup := make(chan os.Signal, 1)
	e := &env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, signals: sig, hangups: hup, root: os.DirFS("/"),
		catchSignals: func() {
			signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
			signal.Notify(hup, syscall.SIGHUP)
		},
		lookupEnv: os.LookupEnv, maxProcs: runtime.GOMAXPROCS, numCPU: runtime.NumCPU}
	os.Exit(run(context.Background(), e, os.Args[1:]))
}

type command struct {
	name, summary string
	run           func(ctx context.Context, e *env, args []string) int
}

func commands() []command {
	return []command{
		{"up", "run the tunnel and its proxies until interrupted", cmdUp},
		{"serve", "run a WireGuard server whose peers reach the host's network", cmdServe},
		{"reload", "re-read a running tunnel's configuration and apply the difference", cmdReload},
		{"check", "validate a configuration file", cmdCheck},
		{"show", "print a running tunnel's peers and transfer, as wg show does", cmdShow},
		{"healthcheck", "exit 0 if a running tunnel's /healthz (or -url) answers 200", cmdHealthcheck},
		{"demo", "run a server and a client on loopback, with proxies to try", cmdDemo},
		{"genkey", "print a new private key", cmdGenkey},
		{"pubkey", "print the public key of the private key on stdin", cmdPubkey},
		{"genpsk", "print a new preshared key", cmdGenpsk},
		{"version", "print the version", cmdVersion},
	}
}

const mainUsage = `wgbore is a WireGuard tunnel in userspace: no TUN device, no root.
It serves SOCKS5 and HTTP proxies and port forwarders into the tunnel.

Usage:
  wgbore <command> [flags]

Commands:
%s
Examples:
  wgbore genkey | tee private.key | wgbore pubkey > public.key
  wgbore check -c wg0.conf
  wgbore up -c wg0.conf
  curl --socks5-hostname 127.0.0.1:1080 http://internal.example/

Run "wgbore <command> -h" for a command's flags.
`

func printMainUsage(w io.Writer) {
	var list string
	for _, c := range commands() {
		list += fmt.Sprintf("  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, mainUsage, list)
}

func run(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 {
		printMainUsage(e.stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		printMainUsage(e.stdout)
		return exitOK
	case "-version", "--version":
		return cmdVersion(ctx, e, nil)
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, e, args[1:])
		}
	}
	fmt.Fprintf(e.stderr, "wgbore: unknown command %q\n\n", args[0])
	printMainUsage(e.stderr)
	return exitUsage
}

// newFlagSet returns a FlagSet whose -h prints usage and examples to
// stdout, where a user asked for it, and whose mistakes go to stderr.
func newFlagSet(e *env, name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet("wgbore "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		if hasFlags(fs) {
			fmt.Fprintln(fs.Output(), "\nFlags:")
			fs.PrintDefaults()
		}
	}
	return fs
}

func hasFlags(fs *flag.FlagSet) bool {
	any := false
	fs.VisitAll(func(*flag.Flag) { any = true })
	return any
}

// parseFlags parses args, answering -h itself. done reports that the
// command should return code without running.
func parseFlags(e *env, fs *flag.FlagSet, args []string) (code int, done bool) {
	return parseFlagsAndArgs(e, fs, args, 0)
}

// parseFlagsAndArgs is parseFlags for a command that takes up to maxArgs
// arguments after its flags, left in fs.Args().
func parseFlagsAndArgs(e *env, fs *flag.FlagSet, args []string, maxArgs int) (code int, done bool) {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(e.stdout)
		fs.Usage()
		return exitOK, true
	}
	if err != nil {
		return exitUsage, true
	}
	// The flag package stops at the first argument, so a flag after it
	// would be taken for an argument and silently not apply.
	for _, arg := range fs.Args() {
		if strings.HasPrefix(arg, "-") {
			fmt.Fprintf(e.stderr, "%s: flags go before the arguments: %q\n", fs.Name(), arg)
			return exitUsage, true
		}
	}
	if fs.NArg() > maxArgs {
		fmt.Fprintf(e.stderr, "%s: unexpected argument %q\n", fs.Name(), fs.Arg(maxArgs))
		return exitUsage, true
	}
	return exitOK, false
}
