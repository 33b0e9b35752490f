package datapath

import (
	"errors"
	"io/fs"

	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// staleness says why an endpoint's container looks gone, "veth-gone" or
// "netns-gone", or "" when its host veth and network namespace are still
// there (the reasons `bridge inspect ipam` uses too): a container that
// exited without the runtime's DEL reaching bpfbridge leaves its record
// behind, and `bridge inspect` flags it rather than showing it as live.
func (d *Datapath) staleness(m *program.BpfbridgeEndpointMeta) string {
	if m.Attach != 0 && !d.vethExists(m) {
		return "veth-gone"
	}
	// The netns path is the runtime's: a missing file, or a file that is
	// no longer a namespace (an unmounted /run/netns entry), means the
	// namespace was released. A path this mount namespace cannot see at
	// all is not evidence either way, so only ENOENT counts.
	path := program.CString(m.Netns[:])
	if path == "" {
		return ""
	}
	var st unix.Statfs_t
	err := unix.Statfs(path, &st)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "netns-gone"
	case err == nil && st.Type != unix.NSFS_MAGIC:
		return "netns-gone"
	}
	return ""
}
