package datapath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

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

// loadPrograms makes this build's endpoint programs available (and the
// uplink programs too when the caller will masquerade), from their pins
// when this node already loaded them (the common case: no verification on
// the ADD path) or by loading them, which also creates or reuses the pinned
// maps, all of them. fresh reports that this build's endpoint programs were
// new on the node.
func (d *Datapath) loadPrograms() (fresh bool, err error) {
	d.progs = &program.BpfbridgePrograms{}
	loaded, err := d.loadGroups(groupsFor(d.opts.Masquerade)...)
	return loaded[0], err
}

// groupsFor lists the program groups an ADD or CHECK needs, the endpoint
// programs first: the uplink programs too when it masquerades.
func groupsFor(masquerade bool) []programGroup {
	if masquerade {
		return []programGroup{endpointPrograms, uplinkPrograms}
	}
	return []programGroup{endpointPrograms}
}

// loadUplinkPrograms makes this build's uplink programs available, loading
// and pinning them on the node's first masquerading network.
func (d *Datapath) loadUplinkPrograms() error {
	if d.progs == nil {
		return errors.New("masquerade needs the programs: open the datapath with Open")
	}
	_, err := d.loadGroups(uplinkPrograms)
	return err
}

// LoadAllPrograms loads and pins every program of this build that the node
// does not have yet, the uplink and node-socket programs too, so that no ADD
// pays for their verification (`bridge datapath load`, at install time).
func (d *Datapath) LoadAllPrograms() error {
	if d.progs == nil {
		return errors.New("loading the programs needs an open datapath: open it with Open")
	}
	_, err := d.loadGroups(uplinkPrograms, sockPrograms)
	return err
}

// loadGroups loads the groups' programs into d.progs, from their pins or,
// under the state lock, from the embedded collection, all the groups'
// missing programs at once (verified in parallel). loaded[i] reports that
// groups[i] was loaded from the collection, new on the node.
func (d *Datapath) loadGroups(groups ...programGroup) (loaded []bool, err error) {
	loaded = make([]bool, len(groups))
	dir := d.state.progDir(programSetTag())
	// missing lists the groups that are neither open in this process nor
	// pinned on the node.
	missing := func() []int {
		var out []int
		for i, g := range groups {
			pins := g(d.progs)
			if *pins[0].dst == nil && loadPinnedPrograms(dir, pins) != nil {
				out = append(out, i)
			}
		}
		return out
	}
	if len(missing()) == 0 {
		return loaded, nil
	}
	unlock, err := d.lock()
	if err != nil {
		return loaded, err
	}
	defer unlock()
	// Another plugin run may have loaded them while we waited.
	todo := missing()
	if len(todo) == 0 {
		return loaded, nil
	}
	// Loading creates the node's maps when it has none: never beside a
	// live datapath whose pins this run does not see.
	if d.state.freshState() {
		if err := d.state.checkNoLiveEndpoints(); err != nil {
			return loaded, err
		}
	}
	var pins []pin[ebpf.Program]
	for _, i := range todo {
		pins = append(pins, groups[i](d.progs)...)
	}
	if err := d.loadFromSpec(pins); err != nil {
		return loaded, err
	}
	for _, i := range todo {
		if err := pinPrograms(groups[i](d.progs), dir); err != nil {
			closePins(pins)
			return loaded, err
		}
		loaded[i] = true
	}
	return loaded, nil
}

// loadFromSpec loads the programs of pins from the embedded collection: its
// maps first, created or reused from their pins, then each program in a
// collection of its own, all verified at once, in parallel: the verifier's
// time is a good part of a fresh node's first ADD (≈ 20 ms of CPU for
// from_container, 13,000 instructions, here: bpf/subprog.h), and each
// program is verified on one CPU.
// The programs not asked for are not verified.
func (d *Datapath) loadFromSpec(pins []pin[ebpf.Program]) error {
	embedded, err := embeddedSpec()
	if err != nil {
		return fmt.Errorf("read embedded programs: %w", err)
	}
	spec := embedded.Copy()
	// Where the programs' kernel functions are not all in vmlinux, the
	// loader needs the kernel's BTF decoded (see kfunc.go): that is done
	// while the kernel creates the maps, one being Go's CPU time, the other
	// the kernel's.
	var types *btf.Cache
	decoded := make(chan struct{})
	go func() {
		defer close(decoded)
		if !resolveKfuncs(spec) {
			types = kernelTypes()
		}
	}()
	err = d.loadMaps(spec)
	<-decoded
	if err != nil {
		return err
	}
	d.opts.Trace.Mark("create-maps")
	progs := make([]*ebpf.Program, len(pins))
	errs := make([]error, len(pins))
	var wg sync.WaitGroup
	for i, p := range pins {
		// One copy per load, made here: a CollectionSpec is not safe for
		// concurrent use.
		only := spec.Copy()
		only.Programs = map[string]*ebpf.ProgramSpec{p.name: only.Programs[p.name]}
		wg.Go(func() {
			coll, err := d.newCollection(only, types)
			if err != nil {
				errs[i] = err
				return
			}
			progs[i] = coll.DetachProgram(p.name)
			coll.Close()
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, p := range progs {
			if p != nil {
				p.Close()
			}
		}
		return err
	}
	for i, p := range pins {
		*p.dst = progs[i]
	}
	return nil
}

// embeddedSpec is the embedded collection, parsed once per process; callers
// copy it before they change it.
var embeddedSpec = sync.OnceValues(program.LoadSpec)

// kernelTypes is the kernel's BTF as the program loads of this process share
// it, decoded once with the types of the kfuncs the programs call, for
// kernels where resolveKfuncs cannot resolve them: the fast path's
// conntrack lookup pulls in much of the kernel's networking types (50–75 ms
// of CPU here). Errors are left to the loads, which meet them again.
var kernelTypes = sync.OnceValue(func() *btf.Cache {
	cache := btf.NewCache()
	spec, err := embeddedSpec()
	if err != nil {
		return cache
	}
	kernel, err := cache.Kernel()
	if err != nil {
		return cache
	}
	for name := range kfuncNames(spec) {
		var fn *btf.Func
		_ = kernel.TypeByName(name, &fn)
	}
	return cache
})

// Prefetch starts, in the background, the part of loading this build's
// programs that needs nothing of the node: parsing the embedded collection
// and finding the kernel functions it calls in the kernel's BTF (see
// kfunc.go). ADD calls it first, so that on a node that
// does not have this build's programs yet that work runs beside the bridge,
// veth and address setup; where they are pinned it does nothing.
func Prefetch(opts Options) {
	opts = opts.withDefaults()
	root, err := stateRoot(opts.BPFFS, opts.defaultBPFFS)
	if err != nil {
		return
	}
	dir := state{root: root}.progDir(programSetTag())
	for _, g := range groupsFor(opts.Masquerade) {
		for _, p := range g(&program.BpfbridgePrograms{}) {
			if _, err := os.Stat(filepath.Join(dir, p.name)); err != nil {
				go func() {
					if kfuncIDs() == nil {
						kernelTypes()
					}
				}()
				return
			}
		}
	}
}

// loadMaps creates the collection's pinned maps that do not exist yet, all
// at once: the kernel takes ≈ 28 ms here to allocate them one after the
// other (the hash tables of 2^18 and 2^19 entries take 2 to 4 ms each),
// and the two CPUs share that. Each is created alone, with the BTF of its
// key and value only: a collection per map (as the programs are loaded)
// would load the object's whole BTF into the kernel once per map, which
// took a third of the time on top. The maps that are not pinned (the
// programs' global variables) are each program's own, created with its
// collection.
//
// The endpoint records (endpoint_meta) come last, once every other map is
// pinned: DEL and GC open a node's state by them (OpenExisting, which
// completes a set that lacks one of its maps), and a first ADD killed
// while it creates the maps must not leave them a set that has its
// records but lacks a map they go on to open (TestStorm kills ADDs).
func (d *Datapath) loadMaps(spec *ebpf.CollectionSpec) error {
	if err := os.MkdirAll(d.state.mapsDir(), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", d.state.mapsDir(), err)
	}
	create := func(name string, m *ebpf.MapSpec) error {
		created, err := ebpf.NewMapWithOptions(m.Copy(), ebpf.MapOptions{PinPath: d.state.mapsDir()})
		if err != nil {
			return d.loadError("create map "+name, err)
		}
		return created.Close() // the pin stays
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for name, m := range spec.Maps {
		if m.Pinning != ebpf.PinByName || name == program.BpfbridgeMapEndpointMeta {
			continue
		}
		wg.Go(func() {
			err := create(name, m)
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return create(program.BpfbridgeMapEndpointMeta, spec.Maps[program.BpfbridgeMapEndpointMeta])
}

// newCollection loads spec with its maps pinned in the node's maps
// directory, resolving kfuncs with kernelTypes (the process's, see
// kernelTypes).
func (d *Datapath) newCollection(spec *ebpf.CollectionSpec, kernelTypes *btf.Cache) (*ebpf.Collection, error) {
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Maps:  ebpf.MapOptions{PinPath: d.state.mapsDir()},
		Cache: kernelTypes,
	})
	if err != nil {
		return nil, d.loadError("load programs", err)
	}
	return coll, nil
}

// loadError says what went wrong doing what: a pinned map of another
// layout, with what to do about it, or the verifier's whole log.
func (d *Datapath) loadError(what string, err error) error {
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return fmt.Errorf("maps pinned in %s differ from this build's (bump LAYOUT_VERSION in bpf/endpoint.h): %w", d.state.mapsDir(), err)
	}
	if errors.Is(err, os.ErrNotExist) {
		return err
	}
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) {
		return fmt.Errorf("%s: %+v", what, verr)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// loadPinnedPrograms opens the group's pins in dir; on error it leaves
// none of them open.
func loadPinnedPrograms(dir string, pins []pin[ebpf.Program]) error {
	for _, p := range pins {
		prog, err := openPinnedProgram(filepath.Join(dir, p.name))
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
