// Package systemtest holds the test helpers that the wgbore command's
// tests share: files and directories for a test's configuration and UAPI
// socket, system tools to compare against, echo checks through a tunnel,
// and checks of the [Metrics] endpoints, in the test's process or of a
// running wgbore.
package systemtest
