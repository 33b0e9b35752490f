package datapath

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// This file holds the read-only views of the node's datapath that
// `bridge inspect` shows. Nothing here creates or changes state.

// ErrNoEndpoint reports that the node has no endpoint record for an
// attachment.
var ErrNoEndpoint = errors.New("no such endpoint on this node")

// EndpointRecord is an attachment as the node's datapath state records it,
// with its counters.
type EndpointRecord struct {
	Endpoint
	// Attach is how its programs were attached; empty while an ADD has
	// recorded the endpoint but not attached yet (or crashed doing so).
	Attach AttachMode
	// ProgTag is the build whose programs it runs (program.Tag).
	ProgTag  string
	Created  time.Time
	Counters Counters
	// Stale says why the endpoint's container looks gone, "veth-gone" or
	// "netns-gone"; empty while its host veth and netns exist.
	Stale string
}

// Endpoints returns every endpoint recorded on the node, ordered by
// network, container ID and ifname.
func (d *Datapath) Endpoints() ([]EndpointRecord, error) {
	var (
		recs []EndpointRecord
		errs []error
	)
	err := d.eachEndpoint(func(_ EndpointKey, m *program.BpfbridgeEndpointMeta) {
		rec, err := d.record(m)
		recs = append(recs, rec)
		errs = append(errs, err)
	})
	slices.SortFunc(recs, func(a, b EndpointRecord) int {
		return strings.Compare(a.Network+"\x00"+a.ContainerID+"\x00"+a.IfName, b.Network+"\x00"+b.ContainerID+"\x00"+b.IfName)
	})
	return recs, errors.Join(append(errs, err)...)
}

// Endpoint returns the record of the attachment (containerID, ifname), or
// an error wrapping ErrNoEndpoint.
func (d *Datapath) Endpoint(containerID, ifname string) (EndpointRecord, error) {
	var meta program.BpfbridgeEndpointMeta
	err := d.maps.meta.Lookup(KeyOf(containerID, ifname), &meta)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return EndpointRecord{}, fmt.Errorf("%s/%s: %w", containerID, ifname, ErrNoEndpoint)
	}
	if err != nil {
		return EndpointRecord{}, fmt.Errorf("look up endpoint %s/%s: %w", containerID, ifname, err)
	}
	return d.record(&meta)
}

// record decodes an endpoint_meta value and reads the endpoint's counters.
func (d *Datapath) record(m *program.BpfbridgeEndpointMeta) (EndpointRecord, error) {
	rec := EndpointRecord{
		Endpoint: Endpoint{
			ContainerID: cString(m.ContainerId[:]),
			IfName:      cString(m.Ifname[:]),
			Network:     cString(m.Network[:]),
			Netns:       cString(m.Netns[:]),
			HostIfindex: int(m.Ifindex),
			HostIfName:  cString(m.HostIfname[:]),
			MAC:         net.HardwareAddr(m.Ep.Mac[:]),
			IPs:         endpointIPs(&m.Ep),
			Isolation:   Isolation(m.Ep.Isolation),
			TaggedOK:    m.Ep.Flags&epFlagTaggedOK != 0,
		},
		Attach:  attachModeOf(m.Attach),
		ProgTag: cString(m.ProgTag[:]),
		Created: time.Unix(0, int64(m.CreatedNs)),
		Stale:   d.staleness(m),
	}
	var err error
	rec.Counters, err = d.countersOf(m.Ifindex)
	if err != nil {
		err = fmt.Errorf("counters of %s/%s: %w", rec.ContainerID, rec.IfName, err)
	}
	return rec, err
}

// attachModeOf names endpoint_meta.attach; zero (not attached yet) is "".
func attachModeOf(attach uint32) AttachMode {
	switch attach {
	case attachedTCX:
		return AttachTCX
	case attachedLegacy:
		return AttachLegacy
	}
	return ""
}

// DropTotals returns the node's drops by reason, summed over CPUs: those
// of every endpoint, and those on veths that have no endpoint (which no
// endpoint counts).
func (d *Datapath) DropTotals() ([program.NumDropReasons]uint64, error) {
	var totals [program.NumDropReasons]uint64
	m, err := d.pinnedMap(program.BpfbridgeMapDropTotals)
	if err != nil {
		return totals, err
	}
	defer m.Close()
	var perCPU []uint64
	for r := range uint32(program.NumDropReasons) {
		if err := m.Lookup(r, &perCPU); err != nil {
			return totals, fmt.Errorf("read drop_totals[%d]: %w", r, err)
		}
		for _, n := range perCPU {
			totals[r] += n
		}
	}
	return totals, nil
}

// pinnedMap opens the map pinned as name, read-only. It returns an error
// wrapping fs.ErrNotExist when there is no such pin.
func (d *Datapath) pinnedMap(name string) (*ebpf.Map, error) {
	path := filepath.Join(d.state.mapsDir(), name)
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w", path, err)
	}
	return m, nil
}

// Program is one program of a build pinned on the node.
type Program struct {
	ID   ebpf.ProgramID
	Name string
	Tag  string // the kernel's tag, a hash of the instructions (as bpftool shows it)
	// Build is the program set it belongs to (program.Tag of the binary
	// that loaded it); Current is true for this binary's own build.
	Build   string
	Current bool
	Pin     string
	// RunCount and RunTime count every run since load, while the kernel
	// collects program statistics (see BPFStatsEnabled).
	RunCount uint64
	RunTime  time.Duration
}

// Programs returns the programs of every build pinned on the node, the
// current build's first.
func (d *Datapath) Programs() ([]Program, error) {
	builds, err := os.ReadDir(d.state.progsDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	current := programSetTag()
	var progs []Program
	for _, b := range builds {
		// pinPrograms renames a complete tmp-<tag> into place; a
		// leftover of a crashed run is not a build.
		if !b.IsDir() || strings.HasPrefix(b.Name(), "tmp-") {
			continue
		}
		pins, err := os.ReadDir(d.state.progDir(b.Name()))
		if err != nil {
			return nil, err
		}
		for _, pin := range pins {
			p, err := pinnedProgram(filepath.Join(d.state.progDir(b.Name()), pin.Name()))
			if err != nil {
				return nil, err
			}
			p.Build, p.Current = b.Name(), b.Name() == current
			progs = append(progs, p)
		}
	}
	slices.SortStableFunc(progs, func(a, b Program) int {
		switch {
		case a.Current == b.Current:
			return strings.Compare(a.Build, b.Build)
		case a.Current:
			return -1
		}
		return 1
	})
	return progs, nil
}

func pinnedProgram(path string) (Program, error) {
	prog, err := ebpf.LoadPinnedProgram(path, nil)
	if err != nil {
		return Program{}, fmt.Errorf("open pinned program %s: %w", path, err)
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		return Program{}, fmt.Errorf("program %s: %w", path, err)
	}
	stats, err := prog.Stats()
	if err != nil {
		return Program{}, fmt.Errorf("program %s: %w", path, err)
	}
	id, _ := info.ID()
	return Program{ID: id, Name: info.Name, Tag: info.Tag, Pin: path,
		RunCount: stats.RunCount, RunTime: stats.Runtime}, nil
}

// BPFStatsEnabled reports whether the kernel counts program runs and run
// time (sysctl kernel.bpf_stats_enabled); while it does not, Program's
// RunCount and RunTime stand still.
func BPFStatsEnabled() bool {
	b, err := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// tcHooks are the two tc hooks of an interface, as far as finding what is
// attached to them goes.
var tcHooks = []hook{
	{pin: "ingress", tcx: ebpf.AttachTCXIngress, parent: netlink.HANDLE_MIN_INGRESS},
	{pin: "egress", tcx: ebpf.AttachTCXEgress, parent: netlink.HANDLE_MIN_EGRESS},
}

// TCAttachment is a program attached to a tc hook of an interface.
type TCAttachment struct {
	Ifindex   int
	IfName    string
	Direction string // "ingress" or "egress"
	Mode      AttachMode
	ProgramID ebpf.ProgramID
}

// TCAttachments lists the tc programs (tcx links and cls_bpf filters)
// attached to every interface of the calling thread's network namespace,
// whoever attached them. It asks the kernel rather than the endpoint
// records, so it also shows what the records miss: programs left on a veth
// without an endpoint, or an endpoint whose programs are gone.
func TCAttachments() ([]TCAttachment, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	tcx := true
	var out []TCAttachment
	for _, l := range links {
		idx, name := l.Attrs().Index, l.Attrs().Name
		for _, h := range tcHooks {
			at := TCAttachment{Ifindex: idx, IfName: name, Direction: h.pin}
			if tcx {
				ids, err := tcxProgramIDs(idx, h)
				if errors.Is(err, ebpf.ErrNotSupported) {
					tcx = false // a kernel before 6.6
				} else if err != nil {
					return nil, err
				}
				at.Mode = AttachTCX
				for _, id := range ids {
					at.ProgramID = id
					out = append(out, at)
				}
			}
			ids, err := legacyProgramIDs(idx, h)
			// An interface without a clsact qdisc has no filters.
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
				continue
			}
			if err != nil {
				return nil, err
			}
			at.Mode = AttachLegacy
			for _, id := range ids {
				at.ProgramID = id
				out = append(out, at)
			}
		}
	}
	return out, nil
}
