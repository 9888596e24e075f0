package membudget

import (
	"io/fs"

	"github.com/wgbore/wgbore/cmd/internal/cgroup"
)

// CgroupLimit returns the memory limit of the cgroup this process runs
// in, as a container runtime sets it (docker --memory, a Kubernetes
// limit), read from fsys, the root file system. It knows cgroup v2's
// memory.max and v1's memory.limit_in_bytes; ok is false when there is
// no limit or no cgroup file system, as outside Linux.
func CgroupLimit(fsys fs.FS) (limit int64, ok bool) { return cgroup.MemoryLimit(fsys) }
