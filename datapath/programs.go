package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// pinned lists the programs of a build's program directory, by pin name.
func pinned(p *program.BpfbridgePrograms) []pin[ebpf.Program] {
	return []pin[ebpf.Program]{
		{"from_container", &p.FromContainer}, {"to_container", &p.ToContainer},
		{"uplink_egress", &p.UplinkEgress}, {"uplink_ingress", &p.UplinkIngress},
	}
}

// loadPrograms makes this build's programs available, from their pins when
// this node already loaded them (the common case: no verification on the
// ADD path) or by loading the collection, which also creates or reuses the
// pinned maps. fresh reports that this build's programs were new on the node.
func (d *Datapath) loadPrograms() (fresh bool, err error) {
	dir := d.state.progDir(programSetTag())
	if d.progs, err = loadPinnedPrograms(dir); err == nil {
		return false, nil
	}
	unlock, err := lock(d.state.root)
	if err != nil {
		return false, err
	}
	defer unlock()
	// Another plugin run may have loaded them while we waited.
	if d.progs, err = loadPinnedPrograms(dir); err == nil {
		return false, nil
	}
	// Loading creates the node's maps when it has none: never beside a
	// live datapath whose pins this run does not see.
	if d.state.freshState() {
		if err := d.state.checkNoLiveEndpoints(); err != nil {
			return false, err
		}
	}
	spec, err := program.LoadSpec()
	if err != nil {
		return false, fmt.Errorf("read embedded programs: %w", err)
	}
	var objs program.BpfbridgeObjects
	err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: d.state.mapsDir()}})
	if errors.Is(err, os.ErrNotExist) {
		if err = os.MkdirAll(d.state.mapsDir(), 0o700); err == nil {
			err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: d.state.mapsDir()}})
		}
	}
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return false, fmt.Errorf("maps pinned in %s differ from this build's (bump LAYOUT_VERSION in bpf/endpoint.h): %w", d.state.mapsDir(), err)
	}
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) {
		return false, fmt.Errorf("load programs: %+v", verr)
	}
	if err != nil {
		return false, fmt.Errorf("load programs: %w", err)
	}
	objs.BpfbridgeMaps.Close() // the programs hold their maps; the pins stay
	if err := pinPrograms(&objs.BpfbridgePrograms, dir); err != nil {
		objs.BpfbridgePrograms.Close()
		return false, err
	}
	d.progs = &objs.BpfbridgePrograms
	return true, nil
}

func loadPinnedPrograms(dir string) (*program.BpfbridgePrograms, error) {
	progs := &program.BpfbridgePrograms{}
	for _, p := range pinned(progs) {
		prog, err := ebpf.LoadPinnedProgram(filepath.Join(dir, p.name), nil)
		if err != nil {
			progs.Close()
			return nil, err
		}
		*p.dst = prog
	}
	return progs, nil
}

// pinPrograms pins the programs into dir. They are pinned in a temporary
// directory that is then renamed, so a program directory is either absent
// or complete, whatever happens to this process.
func pinPrograms(progs *program.BpfbridgePrograms, dir string) error {
	// bpffs refuses names with dots.
	tmp := filepath.Join(filepath.Dir(dir), "tmp-"+filepath.Base(dir))
	_ = os.RemoveAll(tmp)
	err := os.MkdirAll(tmp, 0o700)
	for _, p := range pinned(progs) {
		if err == nil {
			err = (*p.dst).Pin(filepath.Join(tmp, p.name))
		}
	}
	if err == nil {
		err = os.Rename(tmp, dir)
	}
	if err != nil {
		_ = os.RemoveAll(tmp)
		return fmt.Errorf("pin programs in %s: %w", dir, err)
	}
	return nil
}

// Upgrade moves the node onto this build: state pinned under an older map
// layout into this build's maps (layout.go), then every endpoint whose
// programs are not this build's onto them, replacing them atomically on
// each veth (a tcx link update or a cls_bpf filter replace: no packet sees
// a veth without a program), then the uplinks; only when all of that
// succeeded does it unpin the old layouts and the program sets no endpoint
// uses any more. It returns how many endpoints it moved. The plugin calls
// it when NeedsUpgrade says so; `bridge datapath upgrade` calls it
// explicitly.
func (d *Datapath) Upgrade() (int, error) {
	if d.progs == nil {
		return 0, errors.New("upgrade needs the programs: open the datapath with Open")
	}
	unlock, err := lock(d.state.root)
	if err != nil {
		return 0, err
	}
	defer unlock()
	migrated, err := d.migrateLayouts()
	if err != nil {
		return 0, err
	}
	tag := programSetTag()
	var (
		moved int
		errs  []error
	)
	err = d.eachEndpoint(func(key EndpointKey, m *program.BpfbridgeEndpointMeta) {
		if program.CString(m.ProgTag[:]) == tag {
			return
		}
		// Maps this build added (mac_owners) learn the endpoint first.
		if err := d.writeEntries(m, bridgeOf(m.Ifindex)); err != nil {
			errs = append(errs, fmt.Errorf("endpoint %s/%s: %w", program.CString(m.ContainerId[:]), program.CString(m.Ifname[:]), err))
			return
		}
		if err := d.replacePrograms(key, m); err != nil {
			errs = append(errs, fmt.Errorf("endpoint %s/%s: %w", program.CString(m.ContainerId[:]), program.CString(m.Ifname[:]), err))
			return
		}
		if err := d.markVeth(m); err != nil {
			errs = append(errs, err)
			return
		}
		program.SetCString(m.ProgTag[:], tag)
		if err := d.maps.meta.Update(key, m, ebpf.UpdateExist); err != nil {
			errs = append(errs, err)
			return
		}
		moved++
	})
	if err != nil {
		return moved, err
	}
	errs = append(errs, d.upgradeUplinks())
	if errors.Join(errs...) == nil {
		errs = append(errs, d.finishLayouts(migrated), d.unpinOldPrograms(tag))
	}
	return moved, errors.Join(errs...)
}

// unpinOldPrograms removes the program sets of other builds. It runs only
// after every endpoint was moved to the current set, so none is in use.
func (d *Datapath) unpinOldPrograms(current string) error {
	entries, err := os.ReadDir(d.state.progsDir())
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if e.Name() != current {
			errs = append(errs, os.RemoveAll(filepath.Join(d.state.progsDir(), e.Name())))
		}
	}
	return errors.Join(errs...)
}
