package main

import (
	"errors"
	"fmt"

	"github.com/wgbore/wgbore/config"
)

// configEnv holds a whole configuration, for deployments that pass
// everything through the environment (twelve-factor apps, a `docker run
// -e`, a Kubernetes Secret exposed as a variable) and have no file to
// mount.
const configEnv = "WGBORE_CONFIG"

// configEnvName stands in for the file name when the configuration comes
// from configEnv: messages read "$WGBORE_CONFIG:3: PrivateKey: ...", which
// says where to look as a path would, and its directory is ".", so
// relative key files resolve against the working directory.
const configEnvName = "$" + configEnv

// lookup reads the injected environment; a nil lookupEnv is an empty one.
func (e *env) lookup(name string) (string, bool) {
	if e.lookupEnv == nil {
		return "", false
	}
	return e.lookupEnv(name)
}

// configGiven settles where a command's configuration comes from: -c
// FILE when given, else WGBORE_CONFIG, in which case *path becomes
// configEnvName, which loadConfig understands and every later use of the
// path (messages, a reload) carries along. It prints the usage error
// itself when neither is there.
func configGiven(e *env, cmd string, path *string) bool {
	if *path != "" {
		return true
	}
	if _, ok := e.lookup(configEnv); ok {
		*path = configEnvName
		return true
	}
	fmt.Fprintf(e.stderr, "wgbore %s: -c FILE is required, or the configuration's text in %s\n", cmd, configEnv)
	return false
}

// loadConfig reads the file, or WGBORE_CONFIG when path is configEnvName,
// and prints each problem on its own line. When -c names a file while
// WGBORE_CONFIG is set as well, the file wins, as a flag beats the
// environment everywhere else, and a warning says so: an operator who
// set the variable expected it to count.
func loadConfig(e *env, path string) (*config.Config, bool) {
	opts := config.Options{LookupEnv: e.lookup}
	var (
		cfg *config.Config
		err error
	)
	text, fromEnv := e.lookup(configEnv)
	if path == configEnvName && fromEnv {
		cfg, err = config.Parse(configEnvName, []byte(text), opts)
	} else {
		cfg, err = config.Load(path, opts)
	}
	ignored := fromEnv && path != configEnvName
	if err != nil {
		printErrors(e, err)
		if ignored {
			// Most likely an image's default -c naming a file that was
			// never mounted, by someone who meant the variable.
			fmt.Fprintf(e.stderr, "note: %s is set too but ignored, as -c wins; drop -c to use it\n", configEnv)
		}
		return nil, false
	}
	if ignored {
		cfg.Warnings = append(cfg.Warnings, config.Warning{File: path,
			Msg: fmt.Sprintf("%s is set too and ignored: -c wins", configEnv)})
	}
	return cfg, true
}

// errCannotReload is a reload of a process that has no file to re-read.
var errCannotReload = errors.New("the configuration came from " + configEnvName + ", not a file: restart wgbore to change it")

// rereadConfig loads the file at path again for a reload. A configuration
// that came from WGBORE_CONFIG cannot change under a running process, so
// there is nothing to re-read.
func rereadConfig(e *env, path string) (*config.Config, string, error) {
	if path == "" || path == configEnvName {
		return nil, "", errCannotReload
	}
	cfg, err := config.Load(path, config.Options{LookupEnv: e.lookup})
	return cfg, path, err
}
