// Package store keeps host-local IP allocations on disk, in the layout of the
// reference host-local plugin (containernetworking/plugins), so that plugin
// and ours can share a data directory in both directions.
//
// A network's directory <dataDir>/<network> holds:
//
//   - one file per allocated address, named by the address (netip.Addr.String,
//     the same text as net.IP.String), mode 0600, containing
//     "<containerID>\r\n<ifname>"; files written by old reference versions
//     contain only the container ID and are honoured;
//   - last_reserved_ip.<rangeSetIndex>, the address last handed out from that
//     range set, from which allocation continues round-robin;
//   - lock, an empty file held with flock(LOCK_EX) while the store changes,
//     which serializes us against the reference plugin;
//   - .attachments/, our attachment index (see index.go), which the reference
//     ignores because no index file's content can match its lookups;
//   - .reserving, while an address file is being written (see
//     createAddrFile), which the reference ignores because it takes
//     addresses only from names that parse as IPs; one a killed writer left
//     is removed by the next Lock.
package store

import (
	"bytes"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	lockName           = "lock"
	lastReservedPrefix = "last_reserved_ip."
	// reservingName is the temporary file an address file's record is
	// written to before it is linked into place. One name serves every
	// writer: only the lock holder writes it.
	reservingName = ".reserving"
	// lineBreak separates container ID and ifname in an address file.
	lineBreak = "\r\n"
)

// Attachment identifies what an address is allocated to: a container's
// interface. Mesos attaches one container to several networks in parallel
// under one ID, so the ifname is part of the key.
type Attachment struct {
	ContainerID string
	IfName      string
}

// record is the content of an address file owned by a.
func (a Attachment) record() string {
	return a.ContainerID + lineBreak + a.IfName
}

// Reservation asks Reserve for one address on behalf of a range set.
type Reservation struct {
	IP       netip.Addr
	RangeSet int // index of the range set, names its last_reserved_ip file
}

// Store is one network's directory, locked for the lifetime of the value.
type Store struct {
	dir    string
	lockFD int
}

// Lock creates <dataDir>/<network> if needed and takes the network's lock,
// waiting for other holders (in this or any other process). The lock file is
// opened on every call because flock belongs to an open file description:
// goroutines sharing one descriptor would not exclude each other.
func Lock(dataDir, network string) (*Store, error) {
	dir := filepath.Join(dataDir, network)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// Same flags and mode as go-filemutex, which the reference uses.
	path := filepath.Join(dir, lockName)
	fd, err := unix.Open(path, unix.O_CREAT|unix.O_RDONLY|unix.O_CLOEXEC, 0o750)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	for {
		err = unix.Flock(fd, unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "flock", Path: path, Err: err}
	}
	s := &Store{dir: dir, lockFD: fd}
	// A holder killed while writing an address file left the temporary file.
	s.removeReserving()
	return s, nil
}

// Unlock releases the lock; the Store must not be used afterwards.
func (s *Store) Unlock() error {
	// Closing the only descriptor of the open file description drops the flock.
	return unix.Close(s.lockFD)
}

func (s *Store) addrPath(ip netip.Addr) string {
	return filepath.Join(s.dir, ip.String())
}

func (s *Store) lastReservedPath(rangeSet int) string {
	return filepath.Join(s.dir, lastReservedPrefix+strconv.Itoa(rangeSet))
}

// Free reports whether no file exists for ip. Under the lock this is as good
// as the reference's O_EXCL probe, and it lets Reserve write the index before
// any address file exists.
func (s *Store) Free(ip netip.Addr) (bool, error) {
	_, err := os.Lstat(s.addrPath(ip))
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	return false, err
}

// LastReserved returns the address last reserved for the range set, or the
// zero Addr if there is none or it cannot be read: it only steers where the
// round-robin search starts, so a damaged file must not fail an ADD (the
// reference ignores it as well).
func (s *Store) LastReserved(rangeSet int) netip.Addr {
	data, err := os.ReadFile(s.lastReservedPath(rangeSet))
	if err != nil {
		return netip.Addr{}
	}
	ip, err := netip.ParseAddr(string(bytes.TrimSpace(data)))
	if err != nil {
		return netip.Addr{}
	}
	return ip
}

// Reserve records rs for a in one step: the index entry (listing rs and
// prior, the addresses a already holds), one address file per reservation
// (created atomically, failing where one exists), and last_reserved_ip per
// range set. The index is written first so that, even after a crash
// half-way, it lists every address file of a; a listed address without its
// file only makes Release fall back to a scan. On failure Reserve removes
// what it wrote and returns an error wrapping fs.ErrExist if an address was
// taken behind the lock's back.
func (s *Store) Reserve(a Attachment, rs []Reservation, prior []netip.Addr) (err error) {
	held := append([]netip.Addr{}, prior...)
	for _, r := range rs {
		held = append(held, r.IP)
	}
	var created []netip.Addr
	defer func() {
		if err == nil {
			return
		}
		for _, ip := range created {
			os.Remove(s.addrPath(ip))
		}
		s.restoreIndex(a, prior)
	}()
	if err := s.writeIndex(a, held); err != nil {
		return err
	}
	for _, r := range rs {
		if err := s.createAddrFile(a, r.IP); err != nil {
			return err
		}
		created = append(created, r.IP)
	}
	for _, r := range rs {
		if err := overwrite(s.lastReservedPath(r.RangeSet), []byte(r.IP.String())); err != nil {
			return err
		}
	}
	return nil
}

// overwrite sets the content of the file at path, creating it with mode 0600
// like os.WriteFile does. It writes over the old content and trims the rest
// instead of truncating first: ext4 (auto_da_alloc) writes out a file that
// was truncated to zero when it is closed, which costs a synchronous disk
// write on every ADD.
func overwrite(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(data, 0)
	if err == nil {
		err = f.Truncate(int64(len(data)))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// createAddrFile makes ip's file appear with a's record in one step, so that
// no crash leaves an empty or partial address file, which no DEL could match
// to its owner: the record goes to the temporary file, which link(2) then
// puts in place. Like O_EXCL, link fails with EEXIST when ip's file exists.
func (s *Store) createAddrFile(a Attachment, ip netip.Addr) error {
	tmp := filepath.Join(s.dir, reservingName)
	s.removeReserving() // one a failed removal left; O_EXCL would trip on it
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(a.record())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(tmp, s.addrPath(ip))
	}
	s.removeReserving()
	return err
}

// removeReserving removes the temporary file of createAddrFile. A failure
// is left to the next Lock: the file holds no address.
func (s *Store) removeReserving() {
	os.Remove(filepath.Join(s.dir, reservingName))
}

// content reads the address file of ip, trimmed like the reference does,
// which tolerates hand-edited files.
func (s *Store) content(ip netip.Addr) (string, error) {
	data, err := os.ReadFile(s.addrPath(ip))
	return string(bytes.TrimSpace(data)), err
}

// owner reads the address file of ip. ifname is empty for the old format,
// which held the container ID only.
func (s *Store) owner(ip netip.Addr) (id, ifname string, err error) {
	rec, err := s.content(ip)
	if err != nil {
		return "", "", err
	}
	id, ifname, _ = strings.Cut(rec, lineBreak)
	return id, ifname, nil
}

// claimedBy reports whether ip's file holds a's record or the start of it
// (nothing, the container ID alone, part of the ifname): what an ADD of an
// earlier version, which wrote the record into the file it had created,
// left when cut short. Only for an address a's index entry lists is that
// proof enough.
func (s *Store) claimedBy(ip netip.Addr, a Attachment) bool {
	rec, err := s.content(ip)
	return err == nil && strings.HasPrefix(a.record(), rec)
}

// Addresses lists every allocated address of the network, that is every
// regular file named by an address.
func (s *Store) Addresses() ([]netip.Addr, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		// lock, last_reserved_ip.N and anything foreign do not parse.
		if ip, err := netip.ParseAddr(e.Name()); err == nil {
			ips = append(ips, ip)
		}
	}
	return ips, nil
}

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

// scan reads every address file and returns those recorded for a in the
// current format and, separately, those recorded for a's container ID in the
// old ID-only format.
func (s *Store) scan(a Attachment) (current, old []netip.Addr, err error) {
	ips, err := s.Addresses()
	if err != nil {
		return nil, nil, err
	}
	for _, ip := range ips {
		id, ifname, err := s.owner(ip)
		switch {
		case err != nil || id != a.ContainerID:
		case ifname == a.IfName:
			current = append(current, ip)
		case ifname == "":
			old = append(old, ip)
		}
	}
	return current, old, nil
}

// Indexed returns the addresses that a's index entry lists and that are still
// recorded for a. It costs O(addresses of a), not O(allocations), and is what
// ADD's duplicate check uses; an allocation made for a by the reference
// plugin has no index entry and is not seen.
func (s *Store) Indexed(a Attachment) []netip.Addr {
	held, _ := s.verifiedIndex(a)
	return held
}

// Held returns the addresses recorded for a: from the index when every entry
// still verifies, otherwise from a scan of all address files that also
// counts old ID-only files, as the reference's CHECK does.
func (s *Store) Held(a Attachment) ([]netip.Addr, error) {
	held, complete := s.verifiedIndex(a)
	if complete {
		return held, nil
	}
	current, old, err := s.scan(a)
	return append(current, old...), err
}

// Release frees every address recorded for a and returns them. It trusts a
// fully verified index entry; otherwise (no entry: the reference allocated,
// or a half-finished ADD; or a stale entry: the reference released) it
// releases what the entry still claims and scans like the reference,
// releasing current-format files of a, or if there are none, old ID-only
// files of a's container. Releasing nothing is no error.
func (s *Store) Release(a Attachment) ([]netip.Addr, error) {
	held, complete := s.verifiedIndex(a)
	if !complete {
		current, old, err := s.scan(a)
		if err != nil {
			return nil, err
		}
		if len(held) == 0 && len(current) == 0 {
			current = old
		}
		for _, ip := range current {
			if !slices.Contains(held, ip) {
				held = append(held, ip)
			}
		}
	}
	var errs []error
	for _, ip := range held {
		if err := os.Remove(s.addrPath(ip)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := s.removeIndex(a); err != nil {
		errs = append(errs, err)
	}
	return held, errors.Join(errs...)
}

// GC releases every allocation whose attachment is not in valid and drops
// index entries of attachments not in valid. An old ID-only file is kept when
// any valid attachment has its container ID, and a cut one (see claimedBy)
// when a valid attachment's index entry lists it. It returns the released
// addresses.
func (s *Store) GC(valid []Attachment) ([]netip.Addr, error) {
	keep := make(map[Attachment]bool, len(valid))
	keepID := make(map[string]bool, len(valid))
	keepIP := map[netip.Addr]bool{} // claimed by a valid attachment's index
	for _, a := range valid {
		keep[a] = true
		keepID[a.ContainerID] = true
		held, _ := s.verifiedIndex(a)
		for _, ip := range held {
			keepIP[ip] = true
		}
	}
	ips, err := s.Addresses()
	if err != nil {
		return nil, err
	}
	var released []netip.Addr
	var errs []error
	for _, ip := range ips {
		id, ifname, err := s.owner(ip)
		if err != nil {
			// Unreadable: leave it rather than free an address in use.
			continue
		}
		if ifname == "" && keepID[id] || keep[Attachment{id, ifname}] || keepIP[ip] {
			continue
		}
		if err := os.Remove(s.addrPath(ip)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		released = append(released, ip)
	}
	if err := s.gcIndex(keep); err != nil {
		errs = append(errs, err)
	}
	return released, errors.Join(errs...)
}
