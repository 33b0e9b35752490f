package store

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// TestCutAllocationIsReleased leaves the store as an ADD killed at each
// write of an allocation leaves it (the writes of Reserve in order, then
// what earlier versions, which wrote the record into the created address
// file, left), and checks that DEL of the attachment releases the address,
// leaves no file behind, and that the next ADD can allocate it again.
func TestCutAllocationIsReleased(t *testing.T) {
	ip := addr("10.0.0.2")
	index := string(formatIndex(c1eth0, []netip.Addr{ip}))
	record := c1eth0.record()
	cuts := []struct {
		name                   string
		index, reserving, file *string // nil: the file does not exist
	}{
		{name: "index half written", index: ptr(index[:len(index)/2])},
		{name: "index written", index: &index},
		{name: "temporary file created", index: &index, reserving: ptr("")},
		{name: "temporary file half written", index: &index, reserving: ptr(record[:5])},
		{name: "temporary file written", index: &index, reserving: &record},
		{name: "address file linked", index: &index, reserving: &record, file: &record},
		{name: "temporary file removed", index: &index, file: &record},
		{name: "address file without index", file: &record},
		{name: "earlier version: address file created", index: &index, file: ptr("")},
		{name: "earlier version: container ID written", index: &index, file: ptr(c1eth0.ContainerID)},
		{name: "earlier version: ifname half written", index: &index, file: ptr(record[:len(record)-2])},
	}
	for _, c := range cuts {
		t.Run(c.name, func(t *testing.T) {
			dataDir := t.TempDir()
			dir := filepath.Join(dataDir, "net")
			// The killed ADD held the lock; its death released it.
			st := lockFor(t, dataDir)
			if err := os.Mkdir(filepath.Join(dir, indexDir), 0o755); err != nil {
				t.Fatal(err)
			}
			for path, content := range map[string]*string{
				st.indexPath(c1eth0): c.index, filepath.Join(dir, reservingName): c.reserving, st.addrPath(ip): c.file,
			} {
				if content != nil {
					writeFile(t, filepath.Dir(path), filepath.Base(path), *content)
				}
			}
			st.Unlock()

			st = lockFor(t, dataDir) // DEL
			if _, err := st.Release(c1eth0); err != nil {
				t.Fatalf("Release: %v", err)
			}
			st.Unlock()
			if exists(st.addrPath(ip)) {
				t.Errorf("address file left: %q", readFile(t, st.addrPath(ip)))
			}
			if names := indexEntries(t, dir); len(names) != 0 {
				t.Errorf("index entries left: %v", names)
			}

			st = lockFor(t, dataDir) // the next ADD
			defer st.Unlock()
			if exists(filepath.Join(dir, reservingName)) {
				t.Error("temporary file survived the next Lock")
			}
			if free, err := st.Free(ip); !free || err != nil {
				t.Fatalf("Free(%v) = %v, %v after DEL", ip, free, err)
			}
			if err := st.Reserve(c2eth0, []Reservation{{IP: ip}}, nil); err != nil {
				t.Fatalf("Reserve after DEL: %v", err)
			}
			if got := readFile(t, st.addrPath(ip)); got != c2eth0.record() {
				t.Errorf("address file = %q, want %q", got, c2eth0.record())
			}
		})
	}
}

// TestReserveLeavesNoTemporaryFile: the temporary file is gone once the
// address file is in place, and one left by a killed writer does not stop
// the next reservation.
func TestReserveLeavesNoTemporaryFile(t *testing.T) {
	st, dir := lockedStore(t)
	writeFile(t, dir, reservingName, "c9\r\neth0") // as if left behind
	reserve(t, st, c1eth0, "10.0.0.2", "fd00::2")
	if exists(filepath.Join(dir, reservingName)) {
		t.Error("temporary file left after Reserve")
	}
	for _, name := range []string{"10.0.0.2", "fd00::2"} {
		if got := readFile(t, filepath.Join(dir, name)); got != c1eth0.record() {
			t.Errorf("%s = %q, want %q", name, got, c1eth0.record())
		}
	}
}

// TestClaimedOnlyThroughTheIndex: an empty address file the attachment's
// index entry does not list is not the attachment's to release.
func TestClaimedOnlyThroughTheIndex(t *testing.T) {
	st, dir := lockedStore(t)
	writeFile(t, dir, "10.0.0.2", "")
	writeFile(t, dir, "10.0.0.3", "c1\r\neth1")
	if got, err := st.Release(c1eth0); err != nil || len(got) != 0 {
		t.Errorf("Release = %v, %v; want nothing released", got, err)
	}
	if !exists(filepath.Join(dir, "10.0.0.2")) || !exists(filepath.Join(dir, "10.0.0.3")) {
		t.Error("released a file the index does not list for c1/eth0")
	}
}

func ptr(s string) *string { return &s }

// lockFor locks the network "net" of dataDir, as one plugin process does.
func lockFor(t *testing.T, dataDir string) *Store {
	t.Helper()
	st, err := Lock(dataDir, "net")
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestGCKeepsClaimedFile: GC frees a cut address file only when no valid
// attachment's index entry lists it.
func TestGCKeepsClaimedFile(t *testing.T) {
	st, dir := lockedStore(t)
	reserve(t, st, c1eth0, "10.0.0.2")
	reserve(t, st, c2eth0, "10.0.0.3")
	for _, name := range []string{"10.0.0.2", "10.0.0.3"} {
		writeFile(t, dir, name, "") // as an ADD of an earlier version left them
	}
	released, err := st.GC([]Attachment{c1eth0})
	if err != nil {
		t.Fatal(err)
	}
	if len(released) != 1 || released[0] != addr("10.0.0.3") {
		t.Errorf("GC released %v, want only c2/eth0's 10.0.0.3", released)
	}
	if !exists(filepath.Join(dir, "10.0.0.2")) {
		t.Error("GC freed the address of valid c1/eth0")
	}
}
