package main

import (
	"errors"
	"flag"
	"fmt"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
)

// interfaceName is the UAPI socket's name: the flag's, or the config
// file's base name without its extension, as wg-quick names interfaces
// after their files (wg0.conf is wg0).
func interfaceName(flagValue, configPath string) string {
	if flagValue != "" {
		return flagValue
	}
	if configPath == configEnvName {
		return "wgbore"
	}
	base := filepath.Base(configPath)
	return strings.TrimSuffix(base, filepath.Ext(base))
}

// gidFlag is -uapi-group. It resolves the group while the flags are
// parsed, so that a mistyped group is a usage error before the tunnel
// starts, not a warning after.
type gidFlag struct {
	name string
	gid  int // -1 when not set
}

// groupFlag defines a -name flag taking a group name or numeric GID.
func groupFlag(fs *flag.FlagSet, name, usage string) *gidFlag {
	g := &gidFlag{gid: -1}
	fs.Var(g, name, usage)
	return g
}

func (g *gidFlag) String() string {
	if g == nil {
		return ""
	}
	return g.name
}

func (g *gidFlag) Set(s string) error {
	gid, err := lookupGID(s)
	if err != nil {
		return err
	}
	g.name, g.gid = s, gid
	return nil
}

// lookupGID accepts a number as it is, as chgrp does, since a group
// need not have a name in /etc/group.
func lookupGID(s string) (int, error) {
	if n, err := strconv.ParseUint(s, 10, 31); err == nil {
		return int(n), nil
	}
	grp, err := user.LookupGroup(s)
	var unknown user.UnknownGroupError
	if errors.As(err, &unknown) {
		return -1, fmt.Errorf("no group %q on this system", s)
	}
	if err != nil {
		return -1, fmt.Errorf("looking up group %q: %w", s, err)
	}
	n, err := strconv.Atoi(grp.Gid)
	if err != nil {
		return -1, fmt.Errorf("group %q has a non-numeric GID %q", s, grp.Gid)
	}
	return n, nil
}
