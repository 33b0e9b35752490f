package datapath

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// Map layouts and their migration.
//
// Maps are pinned per layout version (maps/v<N>), so a build whose maps
// differ never meets pins it cannot use. A node that ran an older build
// still holds that build's maps, with its live endpoints, translations and
// counters: this build moves them into its own maps, re-attaches every
// endpoint to its programs (atomically, per veth), and only then unpins the
// old layout. The old programs keep their maps alive until the last veth
// leaves them, so traffic never meets a program without state.

// testLayoutBump raises the layout version in test builds only (set by the
// linker: -X github.com/bpfbridge/bpfbridge/datapath.testLayoutBump=1), as a
// build with new map layouts would, so that the migration of a live node can
// be tested without a real layout change. Release builds leave it empty.
var testLayoutBump string

// SetTestLayoutBump sets testLayoutBump in a process that is not a plugin
// build: an end-to-end test that inspects a node which a layout-bumped
// plugin took over must read it as that build does.
func SetTestLayoutBump(bump int) { testLayoutBump = strconv.Itoa(bump) }

// currentLayout is this build's layout version.
func currentLayout() int {
	bump, _ := strconv.Atoi(testLayoutBump)
	return layoutVersion + bump
}

// sameRecords reports whether maps of layout v hold records in this build's
// types, so that they move over as they are. That is true of the layouts a
// test bump skipped over; a real layout change must add the conversion of
// the layouts before it here, or the node's state is refused, not lost.
func sameRecords(v int) bool { return v >= layoutVersion && v < currentLayout() }

// buildTag is program.Tag, computed once: it hashes the embedded object,
// and an ADD asks for it several times.
var buildTag = sync.OnceValue(program.Tag)

// programSetTag names this build's program set: the programs bind their
// maps at load, so the set of one build differs per layout as well.
func programSetTag() string {
	if currentLayout() == layoutVersion {
		return buildTag()
	}
	sum := sha256.Sum256([]byte(buildTag() + "/v" + strconv.Itoa(currentLayout())))
	return hex.EncodeToString(sum[:6])
}

// layouts lists the layout versions that have maps pinned on the node,
// oldest first.
func (s state) layouts() []int {
	entries, err := os.ReadDir(filepath.Join(s.root, "maps"))
	if err != nil {
		return nil
	}
	var vs []int
	for _, e := range entries {
		if v, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "v")); err == nil && strings.HasPrefix(e.Name(), "v") {
			vs = append(vs, v)
		}
	}
	slices.Sort(vs)
	return vs
}

// olderLayouts lists the layouts other than this build's pinned on the
// node, oldest first.
func (s state) olderLayouts() []int {
	return slices.DeleteFunc(s.layouts(), func(v int) bool { return v == currentLayout() })
}

// migrateLayouts moves the node's state out of every older layout into this
// build's maps. It runs inside Upgrade, with the node lock held and this
// build's programs loaded; Upgrade then re-attaches the moved endpoints and
// uplinks, and finishLayouts unpins what was moved. It returns the layouts
// whose state moved.
func (d *Datapath) migrateLayouts() ([]int, error) {
	var moved []int
	for _, v := range d.state.olderLayouts() {
		if v > currentLayout() {
			return moved, fmt.Errorf("maps of layout v%d, newer than this build's v%d, are pinned in %s: a newer bpfbridge runs this node; downgrading is not supported", v, currentLayout(), d.state.layoutDir(v))
		}
		if !sameRecords(v) {
			return moved, fmt.Errorf("maps of layout v%d are pinned in %s: this build (layout v%d) has no conversion from it", v, d.state.layoutDir(v), currentLayout())
		}
		old, err := openMapSet(d.state.layoutDir(v))
		if err != nil {
			return moved, fmt.Errorf("open layout v%d: %w", v, err)
		}
		err = d.copyState(&old, d.state.layoutDir(v))
		old.close()
		if err != nil {
			return moved, fmt.Errorf("migrate layout v%d: %w", v, err)
		}
		moved = append(moved, v)
	}
	return moved, nil
}

// copyState copies an older layout's state into this build's maps. The
// endpoint records come first with everything derived from them (entries,
// owners, counters), so that a veth moved onto the new programs finds its
// endpoint and its peers; then the masquerade configuration and flows.
// Existing entries are kept: an endpoint attached by this build already
// knows better than the old record.
func (d *Datapath) copyState(old *maps, dir string) error {
	var (
		key  program.BpfbridgeEndpointKey
		meta program.BpfbridgeEndpointMeta
		errs []error
	)
	it := old.meta.Iterate()
	for it.Next(&key, &meta) {
		if err := d.maps.meta.Update(&key, &meta, ebpf.UpdateNoExist); errors.Is(err, ebpf.ErrKeyExist) {
			continue
		} else if err != nil {
			errs = append(errs, err)
			continue
		}
		var stats []program.BpfbridgeEndpointStats
		if old.stats.Lookup(meta.Ifindex, &stats) == nil {
			errs = append(errs, d.maps.stats.Update(meta.Ifindex, stats, ebpf.UpdateAny))
		}
		errs = append(errs, d.writeEntries(&meta))
	}
	errs = append(errs, it.Err())
	for _, m := range []struct{ from, to *ebpf.Map }{
		{old.natConfig, d.maps.natConfig}, {old.natUplinks, d.maps.natUplinks},
		{old.natNetworks, d.maps.natNetworks}, {old.natExclude, d.maps.natExclude},
	} {
		errs = append(errs, copyEntries(m.from, m.to))
	}
	errs = append(errs, d.copyFlows(old), copyDropTotals(dir, d.state.mapsDir()))
	return errors.Join(errs...)
}

// copyFlows copies the translations both ways, keeping those already in
// the new maps. Upgrade calls it again once the uplinks run the new
// programs, for the flows the old programs created in between.
func (d *Datapath) copyFlows(old *maps) error {
	return errors.Join(copyEntries(old.natOut, d.maps.natOut), copyEntries(old.natIn, d.maps.natIn))
}

// copyEntries copies every entry of from missing in to. Both maps have the
// same definition, so raw bytes carry the records. Array slots always
// exist: they are overwritten (the new maps are fresh at migration, and
// the control plane rewrites its configuration at every ADD anyway).
func copyEntries(from, to *ebpf.Map) error {
	var k, v []byte
	var errs []error
	flags := ebpf.UpdateNoExist
	if from.Type() == ebpf.Array {
		flags = ebpf.UpdateAny
	}
	it := from.Iterate()
	for it.Next(&k, &v) {
		if err := to.Update(k, v, flags); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(append(errs, it.Err())...)
}

// copyDropTotals adds the old layout's drop totals to the new ones, per CPU,
// so the node's counters survive the migration.
func copyDropTotals(fromDir, toDir string) error {
	from, err := ebpf.LoadPinnedMap(filepath.Join(fromDir, program.BpfbridgeMapDropTotals), nil)
	if err != nil {
		return err
	}
	defer from.Close()
	to, err := ebpf.LoadPinnedMap(filepath.Join(toDir, program.BpfbridgeMapDropTotals), nil)
	if err != nil {
		return err
	}
	defer to.Close()
	var errs []error
	for r := uint32(0); r < min(from.MaxEntries(), to.MaxEntries()); r++ {
		var old, cur []uint64
		if err := from.Lookup(r, &old); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := to.Lookup(r, &cur); err != nil {
			errs = append(errs, err)
			continue
		}
		for cpu := range min(len(old), len(cur)) {
			cur[cpu] += old[cpu]
		}
		errs = append(errs, to.Update(r, cur, ebpf.UpdateExist))
	}
	return errors.Join(errs...)
}

// finishLayouts unpins the migrated layouts. Upgrade calls it only once
// every endpoint and uplink runs this build's programs, so no veth uses the
// old maps any more; their programs free them as they are unpinned.
func (d *Datapath) finishLayouts(moved []int) error {
	var errs []error
	for _, v := range moved {
		old, err := openMapSet(d.state.layoutDir(v))
		if err == nil {
			errs = append(errs, d.copyFlows(&old))
			old.close()
		}
		errs = append(errs, os.RemoveAll(d.state.layoutDir(v)))
	}
	return errors.Join(errs...)
}
