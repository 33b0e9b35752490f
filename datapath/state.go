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
// incompatible old ones.
const layoutVersion = int(program.BpfbridgeLayoutLAYOUT_VERSION)

// stateDirName is the directory of bpfbridge's pins inside the bpffs.
const stateDirName = "bpfbridge"

// state is the on-bpffs layout of one node's datapath:
//
//	<bpffs>/bpfbridge/maps/v<layout>/<map>      maps, pinned by name
//	<bpffs>/bpfbridge/progs/<tag>/<program>     programs of one build
//	<bpffs>/bpfbridge/links/<key>/{ingress,egress}  tcx links of an endpoint
type state struct{ root string }

func (s state) mapsDir() string {
	return filepath.Join(s.root, "maps", "v"+strconv.Itoa(layoutVersion))
}
func (s state) progsDir() string          { return filepath.Join(s.root, "progs") }
func (s state) progDir(tag string) string { return filepath.Join(s.progsDir(), tag) }
func (s state) linkDir(k EndpointKey) string {
	return filepath.Join(s.root, "links", k.String())
}

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
// not (a fresh node has none at /sys/fs/bpf).
func ensureBPFFS(dir string) error {
	if IsBPFFS(dir) {
		return nil
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
