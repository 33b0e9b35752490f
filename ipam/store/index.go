package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// The attachment index lets ADD's duplicate check and DEL find an
// attachment's addresses without reading every address file, so their cost
// does not grow with the number of allocations. It is a hint, never the
// truth: every address it lists is verified against its address file before
// use, and when an entry is missing or stale the callers fall back to the
// reference's full scan.
//
// An entry is the file .attachments/<sha256 of the attachment's record>,
// hashed because container IDs have no length limit. Its content is
//
//	containerID <id>
//	ifname <ifname>
//	ip <address>      (one line per address)
//
// The reference walks into .attachments and compares each file's trimmed
// content with "<id>\r\n<ifname>" and "<id>": an entry contains spaces, which
// no container ID does, and no carriage return, so it never matches.
const indexDir = ".attachments"

func (s *Store) indexPath(a Attachment) string {
	sum := sha256.Sum256([]byte(a.record()))
	return filepath.Join(s.dir, indexDir, hex.EncodeToString(sum[:]))
}

func formatIndex(a Attachment, ips []netip.Addr) []byte {
	var b strings.Builder
	b.WriteString("containerID " + a.ContainerID + "\nifname " + a.IfName + "\n")
	for _, ip := range ips {
		b.WriteString("ip " + ip.String() + "\n")
	}
	return []byte(b.String())
}

// parseIndex is the inverse of formatIndex; ok is false for anything else.
func parseIndex(data []byte) (a Attachment, ips []netip.Addr, ok bool) {
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) < 2 {
		return a, nil, false
	}
	var hasID, hasIf bool
	a.ContainerID, hasID = strings.CutPrefix(lines[0], "containerID ")
	a.IfName, hasIf = strings.CutPrefix(lines[1], "ifname ")
	if !hasID || !hasIf {
		return a, nil, false
	}
	for _, line := range lines[2:] {
		text, found := strings.CutPrefix(line, "ip ")
		ip, err := netip.ParseAddr(text)
		if !found || err != nil {
			return a, nil, false
		}
		ips = append(ips, ip)
	}
	return a, ips, true
}

// verifiedIndex returns the addresses of a's index entry whose address files
// a still claims (see claimedBy). complete is true when the entry exists, is
// a's, and every address in it verified: only then is the entry the whole
// truth (Reserve writes it before the address files). Unreadable entries
// count as missing.
func (s *Store) verifiedIndex(a Attachment) (held []netip.Addr, complete bool) {
	data, err := os.ReadFile(s.indexPath(a))
	if err != nil {
		return nil, false
	}
	owner, ips, ok := parseIndex(data)
	if !ok || owner != a {
		return nil, false
	}
	complete = true
	for _, ip := range ips {
		if s.claimedBy(ip, a) {
			held = append(held, ip)
		} else {
			complete = false
		}
	}
	return held, complete
}

func (s *Store) writeIndex(a Attachment, ips []netip.Addr) error {
	if err := os.Mkdir(filepath.Join(s.dir, indexDir), 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return overwrite(s.indexPath(a), formatIndex(a, ips))
}

// restoreIndex puts a's entry back to prior after a failed Reserve. Errors
// are ignored: an entry left listing addresses without files is stale, and
// stale entries are detected and rewritten.
func (s *Store) restoreIndex(a Attachment, prior []netip.Addr) {
	if len(prior) == 0 {
		s.removeIndex(a)
		return
	}
	s.writeIndex(a, prior)
}

func (s *Store) removeIndex(a Attachment) error {
	if err := os.Remove(s.indexPath(a)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// gcIndex removes the entries of attachments not in keep and any file in the
// index directory that is not an entry.
func (s *Store) gcIndex(keep map[Attachment]bool) error {
	dir := filepath.Join(s.dir, indexDir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(path)
		if err == nil {
			if a, _, ok := parseIndex(data); ok && keep[a] {
				continue
			}
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
