package store

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
)

// DefaultDataDir is the store's root when ipam.dataDir is not set, the
// reference host-local's default.
const DefaultDataDir = "/var/lib/cni/networks"

// Allocation is an allocated address and the attachment its file names.
// Attachment.IfName is empty in files of the old, ID-only format.
type Allocation struct {
	IP netip.Addr
	Attachment
}

// Networks lists the network directories of the store rooted at dataDir.
func Networks(dataDir string) ([]string, error) {
	entries, err := os.ReadDir(dataDir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// List returns the allocations of network in the store rooted at dataDir,
// ordered by address, for inspection. It reads without the lock and never
// writes: an allocation released meanwhile is left out.
func List(dataDir, network string) ([]Allocation, error) {
	s := &Store{dir: filepath.Join(dataDir, network)} // read-only: no lock taken
	ips, err := s.Addresses()
	if err != nil {
		return nil, err
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	var out []Allocation
	for _, ip := range ips {
		id, ifname, err := s.owner(ip)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, Allocation{IP: ip, Attachment: Attachment{ContainerID: id, IfName: ifname}})
	}
	return out, nil
}
