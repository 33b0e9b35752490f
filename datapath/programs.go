package datapath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// A build's program set is loaded in two groups, each verified only when a
// node first needs it: the endpoint programs on the node's first ADD (or at
// install time, `bridge datapath load`), the uplink programs when a network
// first masquerades. Verification dominates a fresh node's first ADD, and a
// node without masquerade never pays for the NAT programs. Both groups are
// pinned in the build's program directory, <tag>/<program>: the set's
// identity is its tag, whichever groups are loaded.

// programGroup is a group of a build's programs, by pin name (the
// program's name in the collection).
type programGroup func(p *program.BpfbridgePrograms) []pin[ebpf.Program]

// endpointPrograms are what every endpoint's veth runs.
func endpointPrograms(p *program.BpfbridgePrograms) []pin[ebpf.Program] {
	return []pin[ebpf.Program]{{"from_container", &p.FromContainer}, {"to_container", &p.ToContainer}}
}

// uplinkPrograms are what masquerading uplinks run.
func uplinkPrograms(p *program.BpfbridgePrograms) []pin[ebpf.Program] {
	return []pin[ebpf.Program]{{"uplink_egress", &p.UplinkEgress}, {"uplink_ingress", &p.UplinkIngress}}
}

// loadPrograms makes this build's endpoint programs available, from their
// pins when this node already loaded them (the common case: no
// verification on the ADD path) or by loading them, which also creates or
// reuses the pinned maps, all of them. fresh reports that this build's
// programs were new on the node.
func (d *Datapath) loadPrograms() (fresh bool, err error) {
	d.progs = &program.BpfbridgePrograms{}
	return d.loadGroup(endpointPrograms)
}

// loadUplinkPrograms makes this build's uplink programs available, loading
// and pinning them on the node's first masquerading network.
func (d *Datapath) loadUplinkPrograms() error {
	if d.progs == nil {
		return errors.New("masquerade needs the programs: open the datapath with Open")
	}
	_, err := d.loadGroup(uplinkPrograms)
	return err
}

// LoadAllPrograms loads and pins every program of this build that the node
// does not have yet, the uplink and node-socket programs too, so that no ADD
// pays for their verification (`bridge datapath load`, at install time).
func (d *Datapath) LoadAllPrograms() error {
	if err := d.loadUplinkPrograms(); err != nil {
		return err
	}
	_, err := d.loadGroup(sockPrograms)
	return err
}

// loadGroup loads the group's programs into d.progs, from their pins or,
// under the state lock, from the embedded collection.
func (d *Datapath) loadGroup(group programGroup) (fresh bool, err error) {
	pins := group(d.progs)
	if *pins[0].dst != nil {
		return false, nil // loaded by this process already
	}
	dir := d.state.progDir(programSetTag())
	if loadPinnedPrograms(dir, pins) == nil {
		return false, nil
	}
	unlock, err := d.lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	// Another plugin run may have loaded them while we waited.
	if loadPinnedPrograms(dir, pins) == nil {
		return false, nil
	}
	// Loading creates the node's maps when it has none: never beside a
	// live datapath whose pins this run does not see.
	if d.state.freshState() {
		if err := d.state.checkNoLiveEndpoints(); err != nil {
			return false, err
		}
	}
	if err := d.loadFromSpec(pins); err != nil {
		return false, err
	}
	if err := pinPrograms(pins, dir); err != nil {
		closePins(pins)
		return false, err
	}
	return true, nil
}

// loadFromSpec loads the group's programs from the embedded collection: its
// maps first, created or reused from their pins, then the group's programs
// in one collection; the other programs are not verified (the verifier's
// time is most of a fresh node's first ADD). Verifying the programs in
// parallel, one collection each, made concurrent uplink attachments fail in
// TestStorm (EINVAL from cls_bpf): not done.
func (d *Datapath) loadFromSpec(pins []pin[ebpf.Program]) error {
	spec, err := program.LoadSpec()
	if err != nil {
		return fmt.Errorf("read embedded programs: %w", err)
	}
	if err := d.loadMaps(spec); err != nil {
		return err
	}
	only := spec.Copy()
	only.Programs = map[string]*ebpf.ProgramSpec{}
	for _, p := range pins {
		only.Programs[p.name] = spec.Programs[p.name]
	}
	coll, err := d.newCollection(only)
	if err != nil {
		return err
	}
	for _, p := range pins {
		*p.dst = coll.DetachProgram(p.name)
	}
	coll.Close()
	return nil
}

// loadMaps creates the collection's pinned maps that do not exist yet.
func (d *Datapath) loadMaps(spec *ebpf.CollectionSpec) error {
	only := spec.Copy()
	clear(only.Programs)
	coll, err := d.newCollection(only)
	if errors.Is(err, os.ErrNotExist) {
		if err = os.MkdirAll(d.state.mapsDir(), 0o700); err == nil {
			coll, err = d.newCollection(only)
		}
	}
	if err != nil {
		return err
	}
	coll.Close() // the pins stay
	return nil
}

// newCollection loads spec with its maps pinned in the node's maps
// directory.
func (d *Datapath) newCollection(spec *ebpf.CollectionSpec) (*ebpf.Collection, error) {
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: d.state.mapsDir()}})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, fmt.Errorf("maps pinned in %s differ from this build's (bump LAYOUT_VERSION in bpf/endpoint.h): %w", d.state.mapsDir(), err)
	}
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) {
		return nil, fmt.Errorf("load programs: %+v", verr)
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load programs: %w", err)
	}
	return coll, err
}

// loadPinnedPrograms opens the group's pins in dir; on error it leaves
// none of them open.
func loadPinnedPrograms(dir string, pins []pin[ebpf.Program]) error {
	for _, p := range pins {
		prog, err := ebpf.LoadPinnedProgram(filepath.Join(dir, p.name), nil)
		if err != nil {
			closePins(pins)
			return err
		}
		*p.dst = prog
	}
	return nil
}

func closePins(pins []pin[ebpf.Program]) {
	for _, p := range pins {
		if *p.dst != nil {
			(*p.dst).Close()
			*p.dst = nil
		}
	}
}

// pinPrograms pins the group's programs into dir. They are pinned in a
// temporary directory and then renamed into place, so that a program
// directory holds the endpoint programs completely or is absent, and a pin
// is complete or absent, whatever happens to this process.
func pinPrograms(pins []pin[ebpf.Program], dir string) error {
	// bpffs refuses names with dots.
	tmp := filepath.Join(filepath.Dir(dir), "tmp-"+filepath.Base(dir))
	_ = os.RemoveAll(tmp)
	err := os.MkdirAll(tmp, 0o700)
	for _, p := range pins {
		if err == nil {
			err = (*p.dst).Pin(filepath.Join(tmp, p.name))
		}
	}
	if err == nil {
		err = os.Rename(tmp, dir)
		if errors.Is(err, fs.ErrExist) || errors.Is(err, unix.ENOTEMPTY) {
			// The directory exists (another group is pinned): the pins
			// move in one by one, each replacing a leftover.
			err = nil
			for _, p := range pins {
				if err == nil {
					err = os.Rename(filepath.Join(tmp, p.name), filepath.Join(dir, p.name))
				}
			}
		}
	}
	_ = os.RemoveAll(tmp)
	if err != nil {
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
	unlock, err := d.lock()
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
		// Endpoints of builds that did not mark their veths get the mark;
		// a veth gone with its container needs none.
		if d.vethExists(m) {
			if err := d.markVeth(m); err != nil {
				errs = append(errs, err)
				return
			}
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
	errs = append(errs, d.upgradeUplinks(), d.upgradeSockLinks())
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
