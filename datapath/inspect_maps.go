package datapath

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// PinnedMap describes one map pinned in the node's state.
type PinnedMap struct {
	Name       string
	Path       string
	ID         ebpf.MapID
	Type       ebpf.MapType
	KeySize    uint32
	ValueSize  uint32
	MaxEntries uint32
	Flags      uint32
	// Entries is the number of keys; -1 for a ring buffer, which has none.
	Entries int
}

// Maps describes every map pinned in the node's state directory for this
// build's layout, by name.
func (d *Datapath) Maps() ([]PinnedMap, error) {
	pins, err := os.ReadDir(d.state.mapsDir())
	if err != nil {
		return nil, err
	}
	var out []PinnedMap
	for _, pin := range pins {
		m, err := d.pinnedMap(pin.Name())
		if err != nil {
			return nil, err
		}
		pm, err := describeMap(m, pin.Name(), filepath.Join(d.state.mapsDir(), pin.Name()))
		m.Close()
		if err != nil {
			return nil, err
		}
		out = append(out, pm)
	}
	return out, nil
}

func describeMap(m *ebpf.Map, name, path string) (PinnedMap, error) {
	info, err := m.Info()
	if err != nil {
		return PinnedMap{}, fmt.Errorf("map %s: %w", name, err)
	}
	id, _ := info.ID()
	pm := PinnedMap{Name: name, Path: path, ID: id, Type: m.Type(), KeySize: m.KeySize(),
		ValueSize: m.ValueSize(), MaxEntries: m.MaxEntries(), Flags: m.Flags(), Entries: -1}
	if m.Type() == ebpf.RingBuf {
		return pm, nil
	}
	// Keys only: values of per-CPU maps would cost a copy per CPU.
	key := make([]byte, m.KeySize())
	pm.Entries = 0
	for err = m.NextKey(nil, key); err == nil; err = m.NextKey(key, key) {
		pm.Entries++
	}
	if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return PinnedMap{}, fmt.Errorf("count entries of %s: %w", name, err)
	}
	return pm, nil
}

// MapEntry is one decoded entry of a map. Key and Value are structs whose
// JSON field names are the C field names (snake_case): addresses are
// netip.Addr, MACs are MAC, C strings are strings, enums are their names.
type MapEntry struct {
	Key   any `json:"key"`
	Value any `json:"value"`
	// PerCPU holds each CPU's value of a per-CPU map, whose Value is
	// their sum; nil for other maps.
	PerCPU []any `json:"per_cpu,omitempty"`
}

// DumpMap decodes every entry of the map pinned as name. A ring buffer has
// no entries to dump (read it with DropEvents). A map this build has no
// decoder for (one pinned by a newer build) comes out as hex bytes, in
// RawEntry values. It returns an error wrapping fs.ErrNotExist when there
// is no such map.
func (d *Datapath) DumpMap(name string) ([]MapEntry, error) {
	m, err := d.pinnedMap(name)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	if m.Type() == ebpf.RingBuf {
		return []MapEntry{}, nil
	}
	dump, ok := mapDecoders[name]
	if !ok {
		dump, ok = natDecoders[name]
	}
	if !ok {
		dump = dumpRaw
	}
	entries, err := dump(m)
	if err != nil {
		return nil, fmt.Errorf("dump map %s: %w", name, err)
	}
	return entries, nil
}

// mapDumper reads and decodes all entries of one map.
type mapDumper func(*ebpf.Map) ([]MapEntry, error)

// mapDecoders decode the maps of this build's layout, by pinned name.
var mapDecoders = map[string]mapDumper{
	program.BpfbridgeMapEndpoints: dumpEach(func(k *uint32, v *program.BpfbridgeEndpoint) MapEntry {
		return MapEntry{Key: IfindexKey{*k}, Value: decodeEndpoint(v)}
	}),
	program.BpfbridgeMapIpOwners: dumpEach(func(k *program.BpfbridgeIpKey, v *program.BpfbridgeIpOwner) MapEntry {
		return MapEntry{
			Key:   IPKey{Family: k.Family, Addr: tupleAddr(k.Family, k.Addr)},
			Value: IPOwner{Ifindex: v.Ifindex, Network: v.Network},
		}
	}),
	program.BpfbridgeMapEndpointMeta: dumpEach(func(k *program.BpfbridgeEndpointKey, v *program.BpfbridgeEndpointMeta) MapEntry {
		return MapEntry{Key: MetaKey{SHA256: hex.EncodeToString(k.Sha256[:])}, Value: decodeMeta(v)}
	}),
	program.BpfbridgeMapEndpointStats: dumpEachPerCPU(
		func(k *uint32) any { return IfindexKey{*k} },
		decodeStats,
		func(sum *program.BpfbridgeEndpointStats, v *program.BpfbridgeEndpointStats) {
			sum.FromPackets += v.FromPackets
			sum.FromBytes += v.FromBytes
			sum.ToPackets += v.ToPackets
			sum.ToBytes += v.ToBytes
			for r, n := range v.Drops {
				sum.Drops[r] += n
			}
		}),
	program.BpfbridgeMapDropTotals: dumpEachPerCPU(
		func(k *uint32) any { return ReasonKey{Index: *k, Reason: program.DropReason(*k).String()} },
		func(v *uint64) any { return DropCount{Drops: *v} },
		func(sum *uint64, v *uint64) { *sum += *v }),
	program.BpfbridgeMapEventBudget: dumpEachPerCPU(
		func(k *uint32) any { return IndexKey{*k} },
		func(v *program.BpfbridgeEventBudget) any {
			return EventBudget{WindowStartNs: v.WindowStartNs, Used: v.Used, Suppressed: v.Suppressed}
		},
		func(sum *program.BpfbridgeEventBudget, v *program.BpfbridgeEventBudget) {
			// Windows are per CPU: the sum keeps the latest start.
			sum.WindowStartNs = max(sum.WindowStartNs, v.WindowStartNs)
			sum.Used += v.Used
			sum.Suppressed += v.Suppressed
		}),
}

// dumpEach dumps a map whose entries decode one by one.
func dumpEach[K, V any](decode func(*K, *V) MapEntry) mapDumper {
	return func(m *ebpf.Map) ([]MapEntry, error) {
		var (
			k   K
			v   V
			out = []MapEntry{}
		)
		it := m.Iterate()
		for it.Next(&k, &v) {
			out = append(out, decode(&k, &v))
		}
		return out, it.Err()
	}
}

// dumpEachPerCPU dumps a per-CPU map: each entry's value is the sum of the
// CPUs' values (add accumulates one into the sum), and PerCPU lists them.
func dumpEachPerCPU[K, V any](key func(*K) any, value func(*V) any, add func(sum, v *V)) mapDumper {
	return func(m *ebpf.Map) ([]MapEntry, error) {
		var (
			k   K
			vs  []V
			out = []MapEntry{}
		)
		it := m.Iterate()
		for it.Next(&k, &vs) {
			var sum V
			perCPU := make([]any, len(vs))
			for cpu := range vs {
				add(&sum, &vs[cpu])
				perCPU[cpu] = value(&vs[cpu])
			}
			out = append(out, MapEntry{Key: key(&k), Value: value(&sum), PerCPU: perCPU})
		}
		return out, it.Err()
	}
}

// RawEntry is a key or value this build cannot decode, as hex bytes.
type RawEntry struct {
	Hex string `json:"hex"`
}

// dumpRaw dumps a map without a decoder as hex. Bytes cannot be summed: a
// per-CPU map's values come in PerCPU, and Value is CPU 0's.
func dumpRaw(m *ebpf.Map) ([]MapEntry, error) {
	k := make([]byte, m.KeySize())
	out := []MapEntry{}
	var err error
	for err = m.NextKey(nil, k); err == nil; err = m.NextKey(k, k) {
		raw, err := m.LookupBytes(k)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			continue // deleted since NextKey
		}
		if err != nil {
			return nil, err
		}
		e := MapEntry{Key: RawEntry{hex.EncodeToString(k)}, Value: RawEntry{hex.EncodeToString(raw)}}
		if perCPU(m.Type()) {
			// LookupBytes returns every CPU's value, each padded to 8 bytes.
			size := (int(m.ValueSize()) + 7) &^ 7
			for off := 0; off+size <= len(raw); off += size {
				e.PerCPU = append(e.PerCPU, RawEntry{hex.EncodeToString(raw[off : off+int(m.ValueSize())])})
			}
			e.Value = e.PerCPU[0]
		}
		out = append(out, e)
	}
	if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, err
	}
	return out, nil
}

// perCPU reports whether a map type keeps one value per CPU.
func perCPU(t ebpf.MapType) bool {
	switch t {
	case ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUCPUHash, ebpf.PerCPUCGroupStorage:
		return true
	}
	return false
}

// MAC is an Ethernet address that prints, and marshals, as text.
type MAC [6]byte

func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// MarshalText writes the colon-separated hex form.
func (m MAC) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// IfindexKey keys the maps indexed by the host veth's ifindex.
type IfindexKey struct {
	Ifindex uint32 `json:"ifindex"`
}

// IndexKey keys an array map.
type IndexKey struct {
	Index uint32 `json:"index"`
}

// ReasonKey keys drop_totals: a drop reason.
type ReasonKey struct {
	Index  uint32 `json:"index"`
	Reason string `json:"reason"`
}

// MetaKey keys endpoint_meta: the SHA-256 of "<containerID>\0<ifname>".
type MetaKey struct {
	SHA256 string `json:"sha256"`
}

// EndpointEntry is struct endpoint: what a container may send as.
type EndpointEntry struct {
	MAC       MAC          `json:"mac"`
	Isolation string       `json:"isolation"`
	Flags     []string     `json:"flags"`
	Network   uint32       `json:"network"`
	IPv4      []netip.Addr `json:"ipv4"`
	IPv6      []netip.Addr `json:"ipv6"`
	IPv6LL    netip.Addr   `json:"ipv6_ll"`
}

func decodeEndpoint(e *program.BpfbridgeEndpoint) EndpointEntry {
	out := EndpointEntry{MAC: e.Mac, Isolation: Isolation(e.Isolation).String(), Flags: []string{},
		Network: e.Network, IPv4: []netip.Addr{}, IPv6: []netip.Addr{}, IPv6LL: netip.AddrFrom16(e.Ipv6Ll)}
	if e.Flags&uint8(program.BpfbridgeEndpointFlagsEP_F_TAGGED_OK) != 0 {
		out.Flags = append(out.Flags, "tagged-ok")
	}
	for _, ip := range endpointIPs(e) {
		if ip.Is4() {
			out.IPv4 = append(out.IPv4, ip)
		} else {
			out.IPv6 = append(out.IPv6, ip)
		}
	}
	return out
}

// IPKey is struct ip_key.
type IPKey struct {
	Family uint8      `json:"family"`
	Addr   netip.Addr `json:"addr"`
}

// IPOwner is struct ip_owner.
type IPOwner struct {
	Ifindex uint32 `json:"ifindex"`
	Network uint32 `json:"network"`
}

// EndpointMeta is struct endpoint_meta, the control plane's record.
type EndpointMeta struct {
	Ifindex     uint32        `json:"ifindex"`
	Attach      string        `json:"attach"`
	CreatedNs   uint64        `json:"created_ns"`
	ContainerID string        `json:"container_id"`
	Ifname      string        `json:"ifname"`
	HostIfname  string        `json:"host_ifname"`
	Network     string        `json:"network"`
	Netns       string        `json:"netns"`
	ProgTag     string        `json:"prog_tag"`
	Ep          EndpointEntry `json:"ep"`
}

func decodeMeta(m *program.BpfbridgeEndpointMeta) EndpointMeta {
	return EndpointMeta{
		Ifindex:     m.Ifindex,
		Attach:      AttachMode(m.Attach).String(),
		CreatedNs:   m.CreatedNs,
		ContainerID: cString(m.ContainerId[:]),
		Ifname:      cString(m.Ifname[:]),
		HostIfname:  cString(m.HostIfname[:]),
		Network:     cString(m.Network[:]),
		Netns:       cString(m.Netns[:]),
		ProgTag:     cString(m.ProgTag[:]),
		Ep:          decodeEndpoint(&m.Ep),
	}
}

// EndpointStats is struct endpoint_stats; Drops is keyed by reason name.
type EndpointStats struct {
	FromPackets uint64            `json:"from_packets"`
	FromBytes   uint64            `json:"from_bytes"`
	ToPackets   uint64            `json:"to_packets"`
	ToBytes     uint64            `json:"to_bytes"`
	Drops       map[string]uint64 `json:"drops"`
}

func decodeStats(s *program.BpfbridgeEndpointStats) any {
	out := EndpointStats{FromPackets: s.FromPackets, FromBytes: s.FromBytes,
		ToPackets: s.ToPackets, ToBytes: s.ToBytes, Drops: map[string]uint64{}}
	for _, r := range program.DropReasons() {
		out.Drops[r.String()] = s.Drops[r]
	}
	return out
}

// DropCount is a drop_totals value.
type DropCount struct {
	Drops uint64 `json:"drops"`
}

// EventBudget is struct event_budget, the drop-event rate limiter.
type EventBudget struct {
	WindowStartNs uint64 `json:"window_start_ns"`
	Used          uint32 `json:"used"`
	Suppressed    uint32 `json:"suppressed"`
}
