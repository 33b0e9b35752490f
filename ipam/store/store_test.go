package store

import (
	"errors"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var (
	c1eth0 = Attachment{ContainerID: "c1", IfName: "eth0"}
	c1eth1 = Attachment{ContainerID: "c1", IfName: "eth1"}
	c2eth0 = Attachment{ContainerID: "c2", IfName: "eth0"}
)

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// lockedStore returns a locked store in a fresh data dir and the network dir.
func lockedStore(t *testing.T) (*Store, string) {
	t.Helper()
	dataDir := t.TempDir()
	st, err := Lock(dataDir, "net")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Unlock() })
	return st, filepath.Join(dataDir, "net")
}

func reserve(t *testing.T, st *Store, a Attachment, ips ...string) {
	t.Helper()
	var rs []Reservation
	for _, ip := range ips {
		rs = append(rs, Reservation{IP: addr(ip), RangeSet: 0})
	}
	if err := st.Reserve(a, rs, nil); err != nil {
		t.Fatal(err)
	}
}

// writeFile writes an address file as the reference plugin would.
func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func indexEntries(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, indexDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// assertIndexEntries fails t unless the index of dir holds want entries.
func assertIndexEntries(t *testing.T, dir string, want int) {
	t.Helper()
	if names := indexEntries(t, dir); len(names) != want {
		t.Errorf("index entries %v, want %d", names, want)
	}
}

func TestReserveLayoutMatchesReference(t *testing.T) {
	st, dir := lockedStore(t)
	if err := st.Reserve(c1eth0, []Reservation{{IP: addr("10.0.0.2"), RangeSet: 0}, {IP: addr("fd00::2"), RangeSet: 1}}, nil); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"10.0.0.2":           "c1\r\neth0",
		"fd00::2":            "c1\r\neth0",
		"last_reserved_ip.0": "10.0.0.2",
		"last_reserved_ip.1": "fd00::2",
	} {
		path := filepath.Join(dir, name)
		if got := readFile(t, path); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
		fi, _ := os.Stat(path)
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %v, want 0600", name, fi.Mode().Perm())
		}
	}
	// The reference names files with net.IP.String.
	if got := net.ParseIP("fd00::2").String(); !exists(filepath.Join(dir, got)) {
		t.Errorf("no file named %q", got)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("network dir mode = %v, %v; want 0755", fi.Mode().Perm(), err)
	}
	if !exists(filepath.Join(dir, lockName)) {
		t.Error("lock file missing")
	}
}

// TestIndexNeverMatchesReferenceLookups: the reference reads every file under
// the network dir and matches trimmed content against "<id>\r\n<ifname>" and
// "<id>"; an index entry must never match either.
func TestIndexNeverMatchesReferenceLookups(t *testing.T) {
	st, dir := lockedStore(t)
	a := Attachment{ContainerID: "9.0.1.2", IfName: "eth0"} // an ID that looks like an address
	reserve(t, st, a, "9.0.1.2")
	names := indexEntries(t, dir)
	if len(names) != 1 {
		t.Fatalf("index entries = %v, want 1", names)
	}
	content := strings.TrimSpace(readFile(t, filepath.Join(dir, indexDir, names[0])))
	if content == a.record() || content == a.ContainerID {
		t.Errorf("index content %q matches a reference lookup", content)
	}
}

func TestReleaseUsesVerifiedIndex(t *testing.T) {
	st, dir := lockedStore(t)
	reserve(t, st, c1eth0, "10.0.0.2", "fd00::2")
	reserve(t, st, c1eth1, "10.0.0.3")
	got, err := st.Release(c1eth0)
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Addr{addr("10.0.0.2"), addr("fd00::2")}; !slices.Equal(got, want) {
		t.Errorf("released %v, want %v", got, want)
	}
	if exists(filepath.Join(dir, "10.0.0.2")) || exists(filepath.Join(dir, "fd00::2")) {
		t.Error("address files of c1/eth0 left behind")
	}
	if !exists(filepath.Join(dir, "10.0.0.3")) {
		t.Error("released c1/eth1's address too")
	}
	assertIndexEntries(t, dir, 1) // c1/eth1's
}

// TestReleaseWithoutIndexScans covers allocations made by the reference.
func TestReleaseWithoutIndexScans(t *testing.T) {
	st, dir := lockedStore(t)
	writeFile(t, dir, "10.0.0.2", "c1\r\neth0")
	writeFile(t, dir, "10.0.0.3", "c1\r\neth1")
	writeFile(t, dir, "10.0.0.4", "c2\r\neth0")
	got, err := st.Release(c1eth0)
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Addr{addr("10.0.0.2")}; !slices.Equal(got, want) {
		t.Errorf("released %v, want %v", got, want)
	}
	if !exists(filepath.Join(dir, "10.0.0.3")) || !exists(filepath.Join(dir, "10.0.0.4")) {
		t.Error("released another attachment's address")
	}
}

func TestOldFormatHonoured(t *testing.T) {
	st, dir := lockedStore(t)
	writeFile(t, dir, "10.0.0.2", "c1\n") // old reference: ID only
	held, err := st.Held(c1eth0)
	if err != nil || !slices.Equal(held, []netip.Addr{addr("10.0.0.2")}) {
		t.Fatalf("Held = %v, %v; want [10.0.0.2]", held, err)
	}
	if free, _ := st.Free(addr("10.0.0.2")); free {
		t.Error("old-format address reported free")
	}
	if _, err := st.Release(c1eth0); err != nil {
		t.Fatal(err)
	}
	if exists(filepath.Join(dir, "10.0.0.2")) {
		t.Error("old-format file not released")
	}
}

// TestReleasePrefersCurrentFormat mirrors the reference: ID-only files are
// released only when no file names the ifname.
func TestReleasePrefersCurrentFormat(t *testing.T) {
	st, dir := lockedStore(t)
	writeFile(t, dir, "10.0.0.2", "c1\r\neth0")
	writeFile(t, dir, "10.0.0.3", "c1")
	if _, err := st.Release(c1eth0); err != nil {
		t.Fatal(err)
	}
	if exists(filepath.Join(dir, "10.0.0.2")) || !exists(filepath.Join(dir, "10.0.0.3")) {
		t.Error("want 10.0.0.2 released and the ID-only 10.0.0.3 kept")
	}
}

// TestStaleIndexFallsBackToScan: the reference released our address and
// allocated another for the same attachment; our index still lists the old.
func TestStaleIndexFallsBackToScan(t *testing.T) {
	st, dir := lockedStore(t)
	reserve(t, st, c1eth0, "10.0.0.2")
	os.Remove(filepath.Join(dir, "10.0.0.2"))
	writeFile(t, dir, "10.0.0.2", "c2\r\neth0") // now someone else's
	writeFile(t, dir, "10.0.0.7", "c1\r\neth0")
	if got := st.Indexed(c1eth0); len(got) != 0 {
		t.Errorf("Indexed = %v, want none: the listed address is not c1's any more", got)
	}
	got, err := st.Release(c1eth0)
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Addr{addr("10.0.0.7")}; !slices.Equal(got, want) {
		t.Errorf("released %v, want %v", got, want)
	}
	if readFile(t, filepath.Join(dir, "10.0.0.2")) != "c2\r\neth0" {
		t.Error("released c2's address through a stale index entry")
	}
	assertIndexEntries(t, dir, 0)
}

// TestIndexedIgnoresUnindexed documents the deliberate limit of ADD's
// duplicate check: it only consults the index.
func TestIndexedIgnoresUnindexed(t *testing.T) {
	st, dir := lockedStore(t)
	writeFile(t, dir, "10.0.0.2", "c1\r\neth0")
	if got := st.Indexed(c1eth0); len(got) != 0 {
		t.Errorf("Indexed = %v, want none", got)
	}
	if got, _ := st.Held(c1eth0); len(got) != 1 {
		t.Errorf("Held = %v, want the scanned address", got)
	}
}

func TestReserveRollsBack(t *testing.T) {
	st, dir := lockedStore(t)
	writeFile(t, dir, "fd00::2", "other\r\neth0") // taken behind the lock's back
	err := st.Reserve(c1eth0, []Reservation{{IP: addr("10.0.0.2"), RangeSet: 0}, {IP: addr("fd00::2"), RangeSet: 1}}, nil)
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Reserve error = %v, want fs.ErrExist", err)
	}
	if exists(filepath.Join(dir, "10.0.0.2")) {
		t.Error("first reservation left behind")
	}
	assertIndexEntries(t, dir, 0)
	if readFile(t, filepath.Join(dir, "fd00::2")) != "other\r\neth0" {
		t.Error("touched the other attachment's file")
	}
}

func TestReserveKeepsPriorInIndex(t *testing.T) {
	st, dir := lockedStore(t)
	reserve(t, st, c1eth0, "10.0.0.2")
	prior := st.Indexed(c1eth0)
	if err := st.Reserve(c1eth0, []Reservation{{IP: addr("10.0.1.2"), RangeSet: 0}}, prior); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Release(c1eth0); err != nil {
		t.Fatal(err)
	}
	if exists(filepath.Join(dir, "10.0.0.2")) || exists(filepath.Join(dir, "10.0.1.2")) {
		t.Error("Release missed an address the attachment held")
	}
}

func TestLastReserved(t *testing.T) {
	st, dir := lockedStore(t)
	if ip := st.LastReserved(0); ip.IsValid() {
		t.Errorf("LastReserved with no file = %v", ip)
	}
	writeFile(t, dir, "last_reserved_ip.3", "10.0.0.9")
	if ip := st.LastReserved(3); ip != addr("10.0.0.9") {
		t.Errorf("LastReserved(3) = %v", ip)
	}
	writeFile(t, dir, "last_reserved_ip.4", "garbage")
	if ip := st.LastReserved(4); ip.IsValid() {
		t.Errorf("LastReserved of garbage = %v", ip)
	}
}

func TestGC(t *testing.T) {
	st, dir := lockedStore(t)
	reserve(t, st, c1eth0, "10.0.0.2")
	reserve(t, st, c1eth1, "10.0.0.3")
	reserve(t, st, c2eth0, "10.0.0.4")
	writeFile(t, dir, "10.0.0.5", "c1")   // old format, c1 still valid
	writeFile(t, dir, "10.0.0.6", "gone") // old format, stale
	released, err := st.GC([]Attachment{c1eth0})
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(released, netip.Addr.Compare)
	if want := []netip.Addr{addr("10.0.0.3"), addr("10.0.0.4"), addr("10.0.0.6")}; !slices.Equal(released, want) {
		t.Errorf("released %v, want %v", released, want)
	}
	got, _ := st.Addresses()
	slices.SortFunc(got, netip.Addr.Compare)
	if want := []netip.Addr{addr("10.0.0.2"), addr("10.0.0.5")}; !slices.Equal(got, want) {
		t.Errorf("left %v, want %v", got, want)
	}
	if names := indexEntries(t, dir); len(names) != 1 {
		t.Errorf("index entries %v, want only c1/eth0's", names)
	}
	if held := st.Indexed(c1eth0); len(held) != 1 {
		t.Errorf("c1/eth0's index entry lost: %v", held)
	}
}
