package config

import (
	"fmt"
	"strings"
)

// Error is one problem in a config file. It carries the position as fields,
// not only as text, so an editor integration or a test can point at the
// line without parsing the message back.
type Error struct {
	File string
	// Line is 1-based; 0 means the problem belongs to the file as a whole,
	// such as a missing [Interface] section.
	Line int
	// Key is the canonical spelling of the key at fault ("PrivateKey" even
	// if the file says "privatekey"), or "" when the problem is the line or
	// the section itself.
	Key string
	Msg string
	// Err is the underlying cause, if there is one, so callers can still
	// match protocol.ErrBadKey or fs.ErrNotExist with errors.Is.
	Err error
}

// Error renders "file:line: Key: msg" on one line, the form compilers use,
// so editors and terminals turn it into a link.
func (e *Error) Error() string {
	return position(e.File, e.Line, e.Key) + e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// Errors is every problem found in one parse. Reporting them all at once
// saves the user an edit-run cycle per typo.
type Errors []*Error

// Error puts one problem per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap exposes the individual errors, so errors.As finds an *Error and
// errors.Is finds a cause in any of them.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// Warning is a problem that does not stop the config from working, such as a
// wg-quick-only key or a key file others can read. Warnings are returned,
// not logged, so the caller decides where they go and at which level.
type Warning struct {
	File string
	Line int
	Key  string
	Msg  string
}

// String renders a warning the same way Error renders an error.
func (w Warning) String() string {
	return position(w.File, w.Line, w.Key) + w.Msg
}

func position(file string, line int, key string) string {
	var b strings.Builder
	b.WriteString(file)
	if line > 0 {
		fmt.Fprintf(&b, ":%d", line)
	}
	b.WriteString(": ")
	if key != "" {
		b.WriteString(key)
		b.WriteString(": ")
	}
	return b.String()
}
