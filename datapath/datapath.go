// Package datapath is the Go side of bpfbridge's eBPF datapath. It loads the
// tc programs of package program once per node (and once per new build),
// pins them and their maps in a bpffs, attaches them to each container's
// host-side veth (clsact + cls_bpf direct-action, or tcx links) and keeps the maps that tell the programs what each container may
// send and to whom.
//
// A CNI plugin is a short-lived process, so everything that must outlive it
// is pinned: maps, programs and tcx links. An ADD on a node whose programs
// are already loaded only opens pins, writes map entries and attaches.
package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/bpfbridge/bpfbridge/datapath/program"
	"github.com/bpfbridge/bpfbridge/datapath/trace"
)

// DefaultBPFFS is where the node's bpffs is mounted (and mounted if missing).
const DefaultBPFFS = "/sys/fs/bpf"

// AttachMode is how programs are attached to a veth: enum attach_mode in
// bpf/endpoint.h, as endpoint_meta.attach records it. The zero value is
// "not attached yet" in a record and the default (AttachLegacy) in Options.
type AttachMode uint32

const (
	// AttachLegacy, the default, uses a clsact qdisc with cls_bpf
	// direct-action filters: it works on every supported kernel and an
	// attach costs about half a millisecond.
	AttachLegacy = AttachMode(program.BpfbridgeAttachModeATTACH_LEGACY)
	// AttachTCX uses tcx links (kernel 6.6+), pinned in the bpffs, and
	// falls back to AttachLegacy on older kernels. The kernel attaches a
	// tcx program under the RTNL lock and waits for an RCU grace period
	// before returning (it swaps the device's program array), so each ADD
	// holds every netlink user on the node for two grace periods: measured
	// 6 to 20 ms each on our test machines.
	AttachTCX = AttachMode(program.BpfbridgeAttachModeATTACH_TCX)
)

// attachModeNames are the config's names of the modes ("datapath.attach").
var attachModeNames = map[AttachMode]string{AttachLegacy: "legacy", AttachTCX: "tcx"}

// String is the mode's config name, "" for the zero value, or "attach-N"
// for a value this build does not know.
func (m AttachMode) String() string {
	if name, ok := attachModeNames[m]; ok || m == 0 {
		return name
	}
	return fmt.Sprintf("attach-%d", uint32(m))
}

// MarshalText writes the mode's name, as the configuration spells it.
func (m AttachMode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// ParseAttachMode parses a config name of a mode; "" is the zero value (the
// default).
func ParseAttachMode(s string) (AttachMode, bool) {
	for m, name := range attachModeNames {
		if name == s {
			return m, true
		}
	}
	return 0, s == ""
}

// Options says where a node's datapath state lives and how to attach.
type Options struct {
	// BPFFS is the mount point of the bpffs holding the state (in its
	// "bpfbridge" directory); default DefaultBPFFS, where each network
	// namespace other than the initial one has a directory of its own.
	BPFFS  string
	Attach AttachMode // default AttachLegacy
	// Trace, when on, times the datapath's phases of the call.
	Trace *trace.Tracer
	// Masquerade says that the caller will enable masquerade: Open loads
	// the uplink programs too, up front. Without it a node never verifies
	// them until a masquerading network comes (they load on demand then).
	Masquerade bool

	// defaultBPFFS: BPFFS was not configured.
	defaultBPFFS bool
}

func (o Options) withDefaults() Options {
	if o.BPFFS == "" {
		o.BPFFS, o.defaultBPFFS = DefaultBPFFS, true
		if init := initBPFFS(); !IsBPFFS(DefaultBPFFS) && IsBPFFS(init) {
			o.BPFFS = init
		}
	}
	if o.Attach == 0 {
		o.Attach = AttachLegacy
	}
	return o
}

// ErrNoState reports that the node has no bpfbridge datapath state (no
// attachment was ever made, or the bpffs was reset by a reboot).
var ErrNoState = errors.New("no bpfbridge datapath state on this node")

// Datapath is one node's datapath: its pinned maps and, once needed, the
// programs of this build.
type Datapath struct {
	opts  Options
	state state
	maps  maps
	progs *program.BpfbridgePrograms
	// networkIDs is the registry of network ids (networks.go); nil when
	// opened by OpenExisting on a node whose state predates it.
	networkIDs *ebpf.Map
	// newPrograms: this build's programs were not on the node before Open.
	newPrograms bool
	// lockDepth counts the holds of the state lock by this Datapath (see
	// lock), which nest: Upgrade loads the uplink programs under it.
	lockDepth int
}

// lock takes the node's state lock unless this Datapath holds it already.
func (d *Datapath) lock() (unlock func(), err error) {
	if d.lockDepth > 0 {
		d.lockDepth++
		return func() { d.lockDepth-- }, nil
	}
	release, err := lock(d.state.root)
	if err != nil {
		return nil, err
	}
	d.lockDepth = 1
	return func() {
		if d.lockDepth--; d.lockDepth == 0 {
			release()
		}
	}, nil
}

// maps are the pinned maps the control plane writes or reads.
type maps struct {
	endpoints *ebpf.Map // ifindex → endpoint
	ipOwners  *ebpf.Map // address → owning endpoint
	macOwners *ebpf.Map // MAC → owning endpoint
	meta      *ebpf.Map // endpoint key → control-plane record
	stats     *ebpf.Map // ifindex → per-CPU counters
	fastPath  *ebpf.Map // ifindex → per-CPU packets sent by the fast path
	gateways  *ebpf.Map // bridge ifindex → its MAC, the gateway the fast path routes for

	// Masquerade (see masquerade.go).
	natConfig   *ebpf.Map // [0] → ports and timeouts
	natUplinks  *ebpf.Map // uplink ifindex → its addresses
	natNetworks *ebpf.Map // network id → flags
	natExclude  *ebpf.Map // (network, prefix) → never masqueraded
	natOut      *ebpf.Map // container's tuple → translation
	natIn       *ebpf.Map // reply's tuple → container's address and port
}

// pin names an object of a pinned set (a map or a program) and where its
// handle goes.
type pin[T any] struct {
	name string
	dst  **T
}

// all lists the maps with their pinned names.
func (m *maps) all() []pin[ebpf.Map] {
	return []pin[ebpf.Map]{
		{"endpoints", &m.endpoints}, {"ip_owners", &m.ipOwners}, {"mac_owners", &m.macOwners},
		{"endpoint_meta", &m.meta}, {"endpoint_stats", &m.stats}, {"fast_path_stats", &m.fastPath},
		{"gateway_macs", &m.gateways},
		{"nat_config", &m.natConfig}, {"nat_uplinks", &m.natUplinks},
		{"nat_networks", &m.natNetworks}, {"nat_exclude", &m.natExclude},
		{"nat_out", &m.natOut}, {"nat_in", &m.natIn},
	}
}

// Open opens the node's datapath, creating what is missing: the bpffs
// mount, the pinned maps, and this build's programs (loaded and verified
// once per node). When they are new on the node, NeedsUpgrade reports it and
// the caller should move existing endpoints onto them with Upgrade.
func Open(opts Options) (*Datapath, error) {
	opts = opts.withDefaults()
	if err := ensureBPFFS(opts.BPFFS, !opts.defaultBPFFS); err != nil {
		return nil, err
	}
	root, err := stateRoot(opts.BPFFS, opts.defaultBPFFS)
	if err != nil {
		return nil, err
	}
	d := &Datapath{opts: opts, state: state{root: root}}
	if err := os.MkdirAll(d.state.root, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", d.state.root, err)
	}
	opts.Trace.Mark("bpffs")
	if d.newPrograms, err = d.loadPrograms(); err != nil {
		d.Close()
		return nil, err
	}
	opts.Trace.Mark("programs")
	if d.maps, err = openMapSet(d.state.mapsDir()); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.openNetworkIDs(true); err != nil {
		d.Close()
		return nil, err
	}
	opts.Trace.Mark("open-maps")
	return d, nil
}

// NeedsUpgrade reports whether endpoints may be waiting for Upgrade: Open
// loaded this build's programs for the first time on the node, or state
// from an older map layout is still pinned (a migration that did not
// finish is taken up again).
func (d *Datapath) NeedsUpgrade() bool {
	return d.newPrograms || len(d.state.olderLayouts()) > 0
}

// OpenExisting opens the node's datapath state without creating anything
// and without loading programs, for DEL, GC and inspection. It returns
// ErrNoState when the node has none. On a node whose state is still in an
// older build's map layout it migrates the state first (loading this
// build's programs, as Open does): DEL and GC must find the endpoints that
// build created, and the old layout's maps are not this build's to write.
func OpenExisting(opts Options) (*Datapath, error) {
	opts = opts.withDefaults()
	root, err := stateRoot(opts.BPFFS, opts.defaultBPFFS)
	if err != nil {
		return nil, err
	}
	d := &Datapath{opts: opts, state: state{root: root}}
	if len(d.state.olderLayouts()) > 0 {
		return openMigrated(opts)
	}
	if _, err := os.Stat(d.state.mapsDir()); errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoState
	}
	if d.maps, err = openMapSet(d.state.mapsDir()); errors.Is(err, ErrNoState) {
		// A map this build added is not pinned yet: the node still runs
		// an earlier build of this layout.
		return openMigrated(opts)
	} else if err != nil {
		return nil, err
	}
	return d, d.openNetworkIDs(false)
}

// openMigrated opens the datapath with this build's programs and moves the
// node onto them and onto this build's map layout.
func openMigrated(opts Options) (*Datapath, error) {
	d, err := Open(opts)
	if err != nil {
		return nil, err
	}
	if _, err := d.Upgrade(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// openMapSet opens the maps pinned in dir; any missing is ErrNoState.
func openMapSet(dir string) (maps, error) { return openMaps(dir, false) }

// openMaps opens the maps pinned in dir. With partial, maps that are not
// pinned stay nil (an older build's layout lacks the maps added since), but
// the endpoint records must be there.
func openMaps(dir string, partial bool) (maps, error) {
	var m maps
	for _, p := range m.all() {
		path := filepath.Join(dir, p.name)
		mp, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) && partial && p.dst != &m.meta {
			continue
		}
		if errors.Is(err, os.ErrNotExist) {
			m.close()
			return maps{}, ErrNoState
		}
		if err != nil {
			m.close()
			return maps{}, fmt.Errorf("open pinned map %s: %w", path, err)
		}
		*p.dst = mp
	}
	return m, nil
}

func (m *maps) close() {
	for _, p := range m.all() {
		if *p.dst != nil {
			(*p.dst).Close()
			*p.dst = nil
		}
	}
}

// Close releases the file descriptors; pinned state stays.
func (d *Datapath) Close() error {
	d.maps.close()
	if d.networkIDs != nil {
		d.networkIDs.Close()
	}
	if d.progs != nil {
		d.progs.Close()
	}
	return nil
}

// Dir is the node's state directory in the bpffs.
func (d *Datapath) Dir() string { return d.state.root }
