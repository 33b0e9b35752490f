package datapath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// This file holds the read-only views of the node's datapath that
// `bridge inspect` shows. Nothing here creates or changes state.

// ErrNoEndpoint reports that the node has no endpoint record for an
// attachment.
var ErrNoEndpoint = errors.New("no such endpoint on this node")

// EndpointRecord is an attachment as the node's datapath state records it,
// with its counters. It is what `bridge inspect endpoint` prints, and
// marshals to its JSON.
type EndpointRecord struct {
	Endpoint
	// Attach is how its programs were attached; empty while an ADD has
	// recorded the endpoint but not attached yet (or crashed doing so).
	Attach AttachMode `json:"attach_mode"`
	// ProgTag is the build whose programs it runs (program.Tag).
	ProgTag string    `json:"prog_tag"`
	Created time.Time `json:"created"`
	// NATPairs is how many masquerade translations it holds (nat_usage),
	// against its budget.
	NATPairs int32 `json:"nat_pairs"`
	Counters
	// StaleReason says why the endpoint's container looks gone,
	// "veth-gone" or "netns-gone"; empty while its host veth and netns
	// exist. Stale is StaleReason != "", for JSON consumers.
	StaleReason string `json:"stale_reason"`
	Stale       bool   `json:"stale"`
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
	n := m.Names()
	rec := EndpointRecord{
		Endpoint: Endpoint{
			ContainerID: n.ContainerID,
			IfName:      n.IfName,
			Network:     n.Network,
			Netns:       n.Netns,
			HostIfindex: int(m.Ifindex),
			HostIfName:  n.HostIfName,
			MAC:         macOf(m.Ep.Mac),
			IPs:         m.Ep.IPs(),
			Isolation:   Isolation(m.Ep.Isolation),
			TaggedOK:    m.Ep.Flags&uint8(program.BpfbridgeEndpointFlagsEP_F_TAGGED_OK) != 0,
			FastPath:    m.Ep.Flags&uint8(program.BpfbridgeEndpointFlagsEP_F_FAST_PATH) != 0,
		},
		Attach:  AttachMode(m.Attach),
		ProgTag: n.ProgTag,
		Created: time.Unix(0, int64(m.CreatedNs)),
	}
	rec.StaleReason = d.staleness(m)
	rec.Stale = rec.StaleReason != ""
	var err error
	rec.Counters, err = d.countersOf(m.Ifindex)
	if err != nil {
		err = fmt.Errorf("counters of %s/%s: %w", rec.ContainerID, rec.IfName, err)
	}
	rec.NATPairs = d.natPairs(m.Ifindex)
	return rec, err
}

// DropTotals returns the node's drops by reason, summed over CPUs: those
// of every endpoint, and those on veths that have no endpoint (which no
// endpoint counts).
func (d *Datapath) DropTotals() (Drops, error) {
	var totals Drops
	m, err := d.pinnedMap(program.BpfbridgeMapDropTotals)
	if err != nil {
		return totals, err
	}
	defer m.Close()
	var perCPU []uint64
	for r := range uint32(len(totals)) {
		if err := m.Lookup(r, &perCPU); err != nil {
			return totals, fmt.Errorf("read drop_totals[%d]: %w", r, err)
		}
		totals[r] = program.SumUint64(perCPU)
	}
	return totals, nil
}

// DropStats are the node's drops by reason: the totals, and those of each
// network and endpoint. It is what `bridge inspect stats` prints.
type DropStats struct {
	// Totals are the node's, from drop_totals: they also count drops on
	// veths without an endpoint, and endpoints since deleted.
	Totals    Drops           `json:"totals"`
	Networks  []NetworkDrops  `json:"networks"`
	Endpoints []EndpointDrops `json:"endpoints"`
}

// NetworkDrops are the drops of a network's endpoints.
type NetworkDrops struct {
	Network string `json:"network"`
	Drops   Drops  `json:"drops"`
}

// EndpointDrops are an endpoint's drops.
type EndpointDrops struct {
	ContainerID string `json:"container_id"`
	IfName      string `json:"ifname"`
	Network     string `json:"network"`
	Drops       Drops  `json:"drops"`
}

// DropStats returns the node's drops: totals, by network, by endpoint
// (networks and endpoints in the order of Endpoints).
func (d *Datapath) DropStats() (DropStats, error) {
	totals, err := d.DropTotals()
	if err != nil {
		return DropStats{}, err
	}
	recs, err := d.Endpoints()
	if err != nil {
		return DropStats{}, err
	}
	s := DropStats{Totals: totals, Networks: []NetworkDrops{}, Endpoints: []EndpointDrops{}}
	for _, r := range recs {
		// Endpoints come ordered by network: so do networks.
		if n := len(s.Networks); n == 0 || s.Networks[n-1].Network != r.Network {
			s.Networks = append(s.Networks, NetworkDrops{Network: r.Network})
		}
		s.Networks[len(s.Networks)-1].Drops.Add(&r.Drops)
		s.Endpoints = append(s.Endpoints, EndpointDrops{r.ContainerID, r.IfName, r.Network, r.Drops})
	}
	return s, nil
}

// Program is one program of a build pinned on the node, and where it is
// attached. It is what `bridge inspect prog` prints.
type Program struct {
	ID   ebpf.ProgramID `json:"id"`
	Name string         `json:"name"`
	Tag  string         `json:"tag"` // the kernel's tag, a hash of the instructions (as bpftool shows it)
	// Build is the program set it belongs to (program.Tag of the binary
	// that loaded it); Current is true for this binary's own build.
	Build   string `json:"build"`
	Current bool   `json:"current"`
	Pin     string `json:"pin"`
	// RunCount and RunTime count every run since load; nil while the
	// kernel does not collect program statistics (see BPFStatsEnabled).
	RunCount *uint64        `json:"run_count"`
	RunTime  *time.Duration `json:"run_time_ns"`
	// Attachments are the tc hooks it is attached to in the calling
	// thread's network namespace.
	Attachments []TCAttachment `json:"attachments"`
}

// Programs returns the programs of every build pinned on the node, the
// current build's first, with their attachments in the calling thread's
// network namespace.
func (d *Datapath) Programs() ([]Program, error) {
	builds, err := os.ReadDir(d.state.progsDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	attached, err := TCAttachments()
	if err != nil {
		return nil, err
	}
	current, stats := programSetTag(), BPFStatsEnabled()
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
			p, err := pinnedProgram(filepath.Join(d.state.progDir(b.Name()), pin.Name()), stats)
			if err != nil {
				return nil, err
			}
			p.Build, p.Current = b.Name(), b.Name() == current
			p.Attachments = []TCAttachment{}
			for _, a := range attached {
				if a.ProgramID == p.ID {
					p.Attachments = append(p.Attachments, a)
				}
			}
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

// pinnedProgram describes the program pinned at path, with its run
// statistics when the kernel collects them.
func pinnedProgram(path string, stats bool) (Program, error) {
	prog, err := ebpf.LoadPinnedProgram(path, nil)
	if err != nil {
		return Program{}, fmt.Errorf("open pinned program %s: %w", path, err)
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		return Program{}, fmt.Errorf("program %s: %w", path, err)
	}
	id, _ := info.ID()
	p := Program{ID: id, Name: info.Name, Tag: info.Tag, Pin: path}
	if stats {
		s, err := prog.Stats()
		if err != nil {
			return Program{}, fmt.Errorf("program %s: %w", path, err)
		}
		p.RunCount, p.RunTime = &s.RunCount, &s.Runtime
	}
	return p, nil
}

// BPFStatsEnabled reports whether the kernel counts program runs and run
// time (sysctl kernel.bpf_stats_enabled); while it does not, Program's
// RunCount and RunTime stand still.
func BPFStatsEnabled() bool {
	b, err := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// PinnedLinks counts the endpoints that have tcx links pinned (a directory
// each in the node's state).
func (d *Datapath) PinnedLinks() (int, error) {
	links, err := os.ReadDir(d.state.linksDir())
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	return len(links), err
}
