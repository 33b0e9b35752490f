package datapath

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// A load that fails (or is killed) part-way through creating a fresh
// node's maps must not leave the endpoint records pinned: DEL and GC take
// a set with records for a complete one and open its other maps by name.
// Here nat_gen cannot be created (a map of another shape holds its pin),
// as a stand-in for a load killed before it got there.
func TestLoadMapsPinsTheRecordsLast(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts a bpffs")
	}
	bpffs := t.TempDir()
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount a bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(bpffs, unix.MNT_DETACH) })
	d := &Datapath{state: state{root: filepath.Join(bpffs, "bpfbridge")}}
	if err := os.MkdirAll(d.state.mapsDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	other, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	blocker := filepath.Join(d.state.mapsDir(), program.BpfbridgeMapNatGen)
	if err := other.Pin(blocker); err != nil {
		t.Fatal(err)
	}
	embedded, err := embeddedSpec()
	if err != nil {
		t.Fatal(err)
	}
	records := filepath.Join(d.state.mapsDir(), program.BpfbridgeMapEndpointMeta)

	if err := d.loadMaps(embedded.Copy()); !errors.Is(err, ebpf.ErrMapIncompatible) {
		t.Fatalf("loadMaps with a foreign nat_gen: %v, want ErrMapIncompatible", err)
	}
	if _, err := os.Stat(records); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("endpoint_meta pinned by a load that did not create every map (stat: %v)", err)
	}

	if err := other.Unpin(); err != nil {
		t.Fatal(err)
	}
	if err := d.loadMaps(embedded.Copy()); err != nil {
		t.Fatalf("loadMaps after the foreign map went: %v", err)
	}
	for name, m := range embedded.Maps {
		if m.Pinning != ebpf.PinByName {
			continue
		}
		if _, err := os.Stat(filepath.Join(d.state.mapsDir(), name)); err != nil {
			t.Errorf("map %s not pinned: %v", name, err)
		}
	}
}
