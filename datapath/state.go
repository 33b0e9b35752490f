package datapath

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// layoutVersion names the directory the maps are pinned in: LAYOUT_VERSION
// in bpf/endpoint.h, bumped there whenever a map or a struct in it changes.
// A binary with a new layout then pins fresh maps instead of failing on
// incompatible old ones, and moves the node's state over (layout.go).
const layoutVersion = int(program.BpfbridgeLayoutLAYOUT_VERSION)

// stateDirName is the directory of bpfbridge's pins inside the bpffs.
const stateDirName = "bpfbridge"

// initBPFFS is where the default bpffs is seen from the machine's initial
// mount namespace. `ip netns exec` runs the plugin in a mount namespace of
// its own with /sys remounted, which hides the node's bpffs at
// DefaultBPFFS; a bpffs mounted there instead would be private to the
// plugin run and vanish with it, taking isolation along.
func initBPFFS() string { return filepath.Join(initProc(), "root", DefaultBPFFS) }

// initProc is the /proc directory of a process in the machine's initial
// namespaces: kthreadd (pid 2), as kernel threads never leave them, or,
// where pid 2 is not kthreadd (a pid namespace), the init process.
// kthreadd comes first because reading pid 1's namespaces needs ptrace
// rights over it, which a confined root may lack.
func initProc() string {
	if comm, err := os.ReadFile("/proc/2/comm"); err == nil && string(comm) == "kthreadd\n" {
		return "/proc/2"
	}
	return "/proc/1"
}

// stateRoot is the node's state directory in the bpffs. A node is a network
// namespace: ifindexes, which key the maps, are unique only within one. An
// explicitly configured bpffs is the node's own; in the default one, nodes
// other than the machine's initial network namespace (nested nodes, test
// clusters, runtimes calling the plugin from a namespace of their own) each
// get a directory named after their namespace's cookie, which the kernel
// never reuses while it runs (and the bpffs does not outlive a boot).
func stateRoot(bpffs string, scoped bool) (string, error) {
	if !scoped {
		return filepath.Join(bpffs, stateDirName), nil
	}
	initial, err := inInitialNS("net")
	if err != nil || initial {
		return filepath.Join(bpffs, stateDirName), err
	}
	cookie, err := netnsCookie()
	if err != nil {
		return "", err
	}
	return filepath.Join(bpffs, stateDirName+"-netns"+strconv.FormatUint(cookie, 10)), nil
}

// inInitialNS reports whether the calling thread's namespace of the kind
// ("net", "mnt") is the machine's initial one.
func inInitialNS(kind string) (bool, error) {
	var self, init unix.Stat_t
	if err := unix.Stat(filepath.Join("/proc/thread-self/ns", kind), &self); err != nil {
		return false, fmt.Errorf("identify this %s namespace: %w", kind, err)
	}
	if err := unix.Stat(filepath.Join(initProc(), "ns", kind), &init); err != nil {
		return false, fmt.Errorf("identify the initial %s namespace: %w", kind, err)
	}
	return self.Ino == init.Ino && self.Dev == init.Dev, nil
}

// errSuffix is ": err" for a non-nil err.
func errSuffix(err error) string {
	if err == nil {
		return ""
	}
	return ": " + err.Error()
}

// netnsCookie is the calling thread's network namespace cookie.
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	defer unix.Close(fd)
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	return cookie, nil
}

// state is the on-bpffs layout of one node's datapath:
//
//	<bpffs>/bpfbridge/maps/v<layout>/<map>      maps, pinned by name
//	<bpffs>/bpfbridge/progs/<tag>/<program>     programs of one build
//	<bpffs>/bpfbridge/links/<key>/{ingress,egress}  tcx links of an endpoint
type state struct{ root string }

// mapsDir is where this build's maps are pinned.
func (s state) mapsDir() string { return s.layoutDir(currentLayout()) }

// layoutDir is where maps of layout version v are pinned.
func (s state) layoutDir(v int) string {
	return filepath.Join(s.root, "maps", "v"+strconv.Itoa(v))
}
func (s state) progsDir() string          { return filepath.Join(s.root, "progs") }
func (s state) progDir(tag string) string { return filepath.Join(s.progsDir(), tag) }
func (s state) linkDir(k EndpointKey) string {
	return filepath.Join(s.linksDir(), k.String())
}

func (s state) linksDir() string { return filepath.Join(s.root, "links") }

// EndpointKey identifies an attachment by container ID and interface name,
// as CNI does. It is a hash because container IDs may be long and contain
// dots, which bpffs refuses in file names.
type EndpointKey [32]byte

// KeyOf returns the key of the attachment (containerID, ifname).
func KeyOf(containerID, ifname string) EndpointKey {
	return sha256.Sum256([]byte(containerID + "\x00" + ifname))
}

func (k EndpointKey) String() string { return hex.EncodeToString(k[:16]) }

// bpffsMagic is BPF_FS_MAGIC, the f_type statfs reports for a bpffs.
const bpffsMagic = 0xcafe4a11

// ensureBPFFS makes sure a bpffs is mounted at dir, mounting one when it is
// not (a fresh node has none at /sys/fs/bpf). The default place is mounted
// only from the machine's initial mount namespace: anywhere else (`ip netns
// exec`, which remounts /sys; a container without the host's bpffs) the
// mount would be private to this plugin run and vanish with it, and the
// node would silently get a datapath per ADD.
func ensureBPFFS(dir string, configured bool) error {
	if IsBPFFS(dir) {
		return nil
	}
	if !configured {
		if initial, err := inInitialNS("mnt"); err != nil || !initial {
			return fmt.Errorf("no bpffs at %s in this mount namespace, nor at %s (`ip netns exec` remounts /sys): "+
				"set datapath.bpffs, or %s, to the node's bpffs%s", dir, initBPFFS(), "BPFBRIDGE_BPFFS", errSuffix(err))
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create bpffs mount point %s: %w", dir, err)
	}
	// Concurrent ADDs on a fresh node would each mount a bpffs there,
	// stacked, and each see its own: serialize on the mount point's
	// parent (not on the bpffs, which does not exist yet) and look again.
	unlock, err := lock(filepath.Dir(dir))
	if err != nil {
		return err
	}
	defer unlock()
	if IsBPFFS(dir) {
		return nil
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", dir, err)
	}
	return nil
}

// IsBPFFS reports whether a bpffs is mounted at dir.
func IsBPFFS(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && uint32(st.Type) == bpffsMagic
}

// lock takes an exclusive flock on the state directory, serializing the
// rare operations that change programs (first load, upgrade) between
// concurrent plugin runs. ADD and DEL of endpoints do not take it: each
// touches only its own entries.
func lock(dir string) (unlock func(), err error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	for {
		err = unix.Flock(fd, unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "flock", Path: dir, Err: err}
	}
	return func() { unix.Close(fd) }, nil
}
