package datapath

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
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

// convertible reports whether maps of the older layout v convert into this
// build's. Layout 2 differs from 3 in the number of drop reasons
// endpoint_stats and drop_totals count (copyStats, copyDropTotals copy them
// by reason) and in the NAT ring, usage and quota maps, which are new
// (indexFlows rebuilds the first two from the flows moved over).
func convertible(v int) bool { return v == 2 && layoutVersion == 3 }

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
		if !sameRecords(v) && !convertible(v) {
			return moved, fmt.Errorf("maps of layout v%d are pinned in %s: this build (layout v%d) has no conversion from it", v, d.state.layoutDir(v), currentLayout())
		}
		old, err := openMaps(d.state.layoutDir(v), true)
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

// carry is how one pinned map's state reaches this build's maps when an
// older layout is migrated.
type carry uint8

const (
	// carryEntries: the old map's entries, as they are (copyEntries).
	carryEntries carry = iota
	// carryEndpoints: the endpoint records, each copied and then written
	// out again into the maps derived from it.
	carryEndpoints
	// carryDerived: written anew from the endpoint records (writeEntries).
	carryDerived
	// carryCounters: added up reason by reason, which converts between
	// layouts that count different reasons (copyStats, copyDropTotals).
	carryCounters
	// carryIndex: rebuilt from the flows moved over (indexFlows).
	carryIndex
	// carryNothing: transient state the programs refill on their own (the
	// drop events' rate budget, events not yet read).
	carryNothing
)

// carried says how every pinned map migrates. A test holds it to the
// object's pinned maps, so that a map the C side gains cannot be left
// behind at the next layout change: its flows' generations, for one, keep
// the replies of a reused address from reaching the address's old flows.
var carried = map[string]carry{
	program.BpfbridgeMapEndpointMeta:     carryEndpoints,
	program.BpfbridgeMapEndpoints:        carryDerived,
	program.BpfbridgeMapIpOwners:         carryDerived,
	program.BpfbridgeMapMacOwners:        carryDerived,
	program.BpfbridgeMapGatewayMacs:      carryDerived,
	program.BpfbridgeMapEndpointStats:    carryCounters,
	program.BpfbridgeMapDropTotals:       carryCounters,
	program.BpfbridgeMapFastPathStats:    carryEntries,
	program.BpfbridgeMapNatConfig:        carryEntries,
	program.BpfbridgeMapNatQuota:         carryEntries,
	program.BpfbridgeMapNatUplinks:       carryEntries,
	program.BpfbridgeMapNatNetworks:      carryEntries,
	program.BpfbridgeMapNatExclude:       carryEntries,
	program.BpfbridgeMapNatGen:           carryEntries,
	program.BpfbridgeMapNatOut:           carryEntries,
	program.BpfbridgeMapNatIn:            carryEntries,
	program.BpfbridgeMapNatFrags:         carryEntries,
	program.BpfbridgeMapPortMaps:         carryEntries,
	program.BpfbridgeMapPortmapNodeAddrs: carryEntries,
	program.BpfbridgeMapPortmapConfig:    carryEntries,
	program.BpfbridgeMapPortmapSockRev:   carryEntries,
	program.BpfbridgeMapNatRing:          carryIndex,
	program.BpfbridgeMapNatRingPos:       carryIndex,
	program.BpfbridgeMapNatUsage:         carryIndex,
	program.BpfbridgeMapEventBudget:      carryNothing,
	program.BpfbridgeMapDropEvents:       carryNothing,
}

// copyState copies an older layout's state into this build's maps, as
// carried says. The endpoint records come first with everything derived
// from them (entries, owners, counters), so that a veth moved onto the new
// programs finds its endpoint and its peers; then the masquerade and port
// mapping state, flows and their generations included. Existing entries
// are kept: an endpoint attached by this build already knows better than
// the old record.
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
		errs = append(errs, copyStats(old.stats, d.maps.stats, meta.Ifindex))
		errs = append(errs, d.writeEntries(&meta, bridgeOf(meta.Ifindex)))
	}
	errs = append(errs, it.Err(), copyDropTotals(dir, d.state.mapsDir()))
	for name, how := range carried {
		if how == carryEntries {
			errs = append(errs, d.copyPinned(dir, name))
		}
	}
	return errors.Join(errs...)
}

// copyPinned copies the entries of the map name pinned in the layout
// directory dir; a layout older than the map has nothing to copy.
func (d *Datapath) copyPinned(dir, name string) error {
	from, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer from.Close()
	to, err := d.writableMap(name)
	if err != nil {
		return err
	}
	defer to.Close()
	return copyEntries(from, to)
}

// copyFlows copies the translations both ways, keeping those already in
// the new maps. finishLayouts calls it again once the uplinks run the new
// programs, for the flows the old programs created in between.
func (d *Datapath) copyFlows(old *maps) error {
	return errors.Join(copyEntries(old.natOut, d.maps.natOut), copyEntries(old.natIn, d.maps.natIn))
}

// copyEntries copies every entry of from missing in to. Both maps have the
// same definition, so raw bytes carry the records. Array slots always
// exist: they are overwritten (the new maps are fresh at migration, and
// the control plane rewrites its configuration at every ADD anyway).
func copyEntries(from, to *ebpf.Map) error {
	if from == nil {
		return nil // the old build had no such map
	}
	var (
		k    []byte
		v    = any(new([]byte))
		errs []error
	)
	if perCPU(from.Type()) {
		// One value per CPU: a slice of values of the map's size.
		v = reflect.New(reflect.SliceOf(reflect.ArrayOf(int(from.ValueSize()), reflect.TypeFor[byte]()))).Interface()
	}
	flags := ebpf.UpdateNoExist
	if from.Type() == ebpf.Array || from.Type() == ebpf.PerCPUArray {
		flags = ebpf.UpdateAny
	}
	it := from.Iterate()
	for it.Next(&k, v) {
		if err := to.Update(k, reflect.ValueOf(v).Elem().Interface(), flags); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(append(errs, it.Err())...)
}

// copyStats copies an endpoint's per-CPU counters from an endpoint_stats
// of any layout: the packet and byte counters, then the drops by reason, as
// many as both count (a layout with fewer reasons leaves the new ones 0).
func copyStats(from, to *ebpf.Map, ifindex uint32) error {
	const counters = 4 // from/to packets and bytes, before the drops
	width := int(from.ValueSize()) / 8
	perCPU := reflect.New(reflect.SliceOf(reflect.ArrayOf(width, reflect.TypeFor[uint64]())))
	if err := from.Lookup(ifindex, perCPU.Interface()); err != nil {
		return ignoreMissing(err)
	}
	old := perCPU.Elem()
	stats := make([]program.BpfbridgeEndpointStats, old.Len())
	for cpu := range stats {
		v, st := old.Index(cpu), &stats[cpu]
		st.FromPackets, st.FromBytes = v.Index(0).Uint(), v.Index(1).Uint()
		st.ToPackets, st.ToBytes = v.Index(2).Uint(), v.Index(3).Uint()
		for r := range min(width-counters, len(st.Drops)) {
			st.Drops[r] = v.Index(counters + r).Uint()
		}
	}
	return to.Update(ifindex, stats, ebpf.UpdateAny)
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
		old, err := openMaps(d.state.layoutDir(v), true)
		if err == nil {
			errs = append(errs, d.copyFlows(&old))
			old.close()
		}
		errs = append(errs, os.RemoveAll(d.state.layoutDir(v)))
	}
	if len(moved) > 0 {
		errs = append(errs, d.indexFlows())
	}
	return errors.Join(errs...)
}
