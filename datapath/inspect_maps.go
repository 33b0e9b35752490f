package datapath

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// MapType is a map's kernel type; it marshals as its name.
type MapType ebpf.MapType

func (t MapType) String() string { return ebpf.MapType(t).String() }

// MarshalText writes the type's name.
func (t MapType) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// Keyed reports whether the map holds only the keys written to it (hash
// maps, LPM tries), unlike an array, which always holds max_entries, or a
// ring buffer, which holds none.
func (t MapType) Keyed() bool {
	switch ebpf.MapType(t) {
	case ebpf.Hash, ebpf.LRUHash, ebpf.PerCPUHash, ebpf.LRUCPUHash, ebpf.LPMTrie:
		return true
	}
	return false
}

// PinnedMap describes one map pinned in the node's state. It is what
// `bridge inspect map list` prints.
type PinnedMap struct {
	Name       string     `json:"name"`
	ID         ebpf.MapID `json:"id"`
	Type       MapType    `json:"type"`
	KeySize    uint32     `json:"key_size"`
	ValueSize  uint32     `json:"value_size"`
	MaxEntries uint32     `json:"max_entries"`
	Flags      uint32     `json:"flags"`
	// Entries is the number of keys; nil for a ring buffer, which has none.
	Entries *int `json:"entries"`
	// Pressure is Entries over MaxEntries: how full the map is, 0 to 1
	// (hash maps; arrays are always full).
	Pressure float64 `json:"pressure"`
	Path     string  `json:"pin"`
	// Layout is the map layout version it belongs to.
	Layout int `json:"-"`
}

// Maps describes every map pinned in the node's state directory for this
// build's layout, by name.
func (d *Datapath) Maps() ([]PinnedMap, error) {
	return mapsIn(d.state.mapsDir(), currentLayout())
}

// PinnedMaps describes the maps of every layout pinned under bpffs: a node
// holds more than one layout while an upgrade moves endpoints over. A node
// without bpfbridge state has none.
func PinnedMaps(bpffs string) ([]PinnedMap, error) {
	s := state{root: filepath.Join(bpffs, stateDirName)}
	var all []PinnedMap
	for _, layout := range s.layouts() {
		maps, err := mapsIn(s.layoutDir(layout), layout)
		if err != nil {
			return nil, err
		}
		all = append(all, maps...)
	}
	return all, nil
}

// mapsIn describes the maps pinned in dir, of layout.
func mapsIn(dir string, layout int) ([]PinnedMap, error) {
	pins, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []PinnedMap
	for _, pin := range pins {
		path := filepath.Join(dir, pin.Name())
		m, err := openPinnedMap(path)
		if err != nil {
			return nil, err
		}
		pm, err := describeMap(m, pin.Name(), path)
		m.Close()
		if err != nil {
			return nil, err
		}
		pm.Layout = layout
		out = append(out, pm)
	}
	return out, nil
}

// openPinnedMap opens the map pinned at path, read-only. It returns an
// error wrapping fs.ErrNotExist when there is no such pin.
func openPinnedMap(path string) (*ebpf.Map, error) {
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w", path, err)
	}
	return m, nil
}

// pinnedMap opens the map of this build's layout pinned as name,
// read-only.
func (d *Datapath) pinnedMap(name string) (*ebpf.Map, error) {
	return openPinnedMap(filepath.Join(d.state.mapsDir(), name))
}

func describeMap(m *ebpf.Map, name, path string) (PinnedMap, error) {
	info, err := m.Info()
	if err != nil {
		return PinnedMap{}, fmt.Errorf("map %s: %w", name, err)
	}
	id, _ := info.ID()
	pm := PinnedMap{Name: name, Path: path, ID: id, Type: MapType(m.Type()), KeySize: m.KeySize(),
		ValueSize: m.ValueSize(), MaxEntries: m.MaxEntries(), Flags: m.Flags()}
	if m.Type() == ebpf.RingBuf {
		return pm, nil
	}
	n, err := countKeys(m)
	if err != nil {
		return PinnedMap{}, fmt.Errorf("count entries of %s: %w", name, err)
	}
	pm.Entries = &n
	if pm.MaxEntries > 0 {
		pm.Pressure = float64(n) / float64(pm.MaxEntries)
	}
	return pm, nil
}

// countKeys walks m's keys with NextKey: keys only, as the values of
// per-CPU maps would cost a copy per CPU.
func countKeys(m *ebpf.Map) (int, error) {
	key := make([]byte, m.KeySize())
	count := 0
	var err error
	for err = m.NextKey(nil, key); err == nil; err = m.NextKey(key, key) {
		count++
		// A map changing under the walk could restart it; no walk can
		// legitimately see more keys than the map holds.
		if count > int(m.MaxEntries()) {
			return 0, fmt.Errorf("more than max_entries (%d) keys", m.MaxEntries())
		}
	}
	if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, err
	}
	return count, nil
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
// decoder for (one pinned by a newer build) comes out as hex bytes. It
// returns an error wrapping fs.ErrNotExist when there is no such map.
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

// mapDecoders decode the maps of this build's layout, by pinned name. The
// key and value types are the dump's JSON: C field names.
var mapDecoders = map[string]mapDumper{
	program.BpfbridgeMapEndpoints: dumpEach(func(k *uint32, v *program.BpfbridgeEndpoint) MapEntry {
		return MapEntry{Key: ifindexKey{*k}, Value: decodeEndpoint(v)}
	}),
	program.BpfbridgeMapIpOwners: dumpEach(func(k *program.BpfbridgeIpKey, v *program.BpfbridgeIpOwner) MapEntry {
		return MapEntry{
			Key: struct {
				Family uint8      `json:"family"`
				Addr   netip.Addr `json:"addr"`
			}{k.Family, k.IP()},
			Value: struct {
				Ifindex uint32 `json:"ifindex"`
				Network uint32 `json:"network"`
			}{v.Ifindex, v.Network},
		}
	}),
	program.BpfbridgeMapMacOwners: dumpEach(func(k *program.BpfbridgeMacKey, v *program.BpfbridgeMacOwner) MapEntry {
		return MapEntry{
			Key: struct {
				MAC MAC `json:"mac"`
			}{macOf(k.Mac)},
			Value: struct {
				Ifindex   uint32    `json:"ifindex"`
				Network   uint32    `json:"network"`
				Isolation Isolation `json:"isolation"`
			}{v.Ifindex, v.Network, Isolation(v.Isolation)},
		}
	}),
	program.BpfbridgeMapEndpointMeta: dumpEach(func(k *program.BpfbridgeEndpointKey, v *program.BpfbridgeEndpointMeta) MapEntry {
		return MapEntry{Key: struct {
			SHA256 string `json:"sha256"`
		}{hex.EncodeToString(k.Sha256[:])}, Value: decodeMeta(v)}
	}),
	program.BpfbridgeMapEndpointStats: dumpEachPerCPU(
		func(k *uint32) any { return ifindexKey{*k} },
		func(v *program.BpfbridgeEndpointStats) any {
			return endpointStats{FromPackets: v.FromPackets, FromBytes: v.FromBytes,
				ToPackets: v.ToPackets, ToBytes: v.ToBytes, Drops: Drops(v.Drops).byName()}
		},
		(*program.BpfbridgeEndpointStats).Add),
	program.BpfbridgeMapDropTotals: dumpEachPerCPU(
		func(k *uint32) any {
			return struct {
				Index  uint32 `json:"index"`
				Reason string `json:"reason"`
			}{*k, DropReason(*k).String()}
		},
		func(v *uint64) any {
			return struct {
				Drops uint64 `json:"drops"`
			}{*v}
		},
		func(sum *uint64, v *uint64) { *sum += *v }),
	program.BpfbridgeMapFastPathStats: dumpEachPerCPU(
		func(k *uint32) any { return ifindexKey{*k} },
		func(v *uint64) any {
			return struct {
				Packets uint64 `json:"packets"`
			}{*v}
		},
		func(sum *uint64, v *uint64) { *sum += *v }),
	program.BpfbridgeMapGatewayMacs: dumpEach(func(k *uint32, v *program.BpfbridgeGatewayMac) MapEntry {
		return MapEntry{Key: ifindexKey{*k}, Value: struct {
			MAC MAC `json:"mac"`
		}{macOf(v.Mac)}}
	}),
	program.BpfbridgeMapEventBudget: dumpEachPerCPU(
		func(k *uint32) any { return indexKey{*k} },
		func(v *program.BpfbridgeEventBudget) any {
			return struct {
				WindowStartNs uint64 `json:"window_start_ns"`
				Used          uint32 `json:"used"`
				Suppressed    uint32 `json:"suppressed"`
			}{v.WindowStartNs, v.Used, v.Suppressed}
		},
		(*program.BpfbridgeEventBudget).Add),
	program.BpfbridgeMapNatRing: dumpEach(func(k *uint32, v *program.BpfbridgeNatTuple) MapEntry {
		return MapEntry{Key: indexKey{*k}, Value: natTupleOf(v)}
	}),
	program.BpfbridgeMapNatRingPos: dumpEach(func(k *uint32, v *program.BpfbridgeNatRingPos) MapEntry {
		return MapEntry{Key: indexKey{*k}, Value: struct {
			Head uint64 `json:"head"`
			Tail uint64 `json:"tail"`
		}{v.Head, v.Tail}}
	}),
	program.BpfbridgeMapNatQuota: dumpEach(func(k *uint32, v *program.BpfbridgeNatQuota) MapEntry {
		return MapEntry{Key: indexKey{*k}, Value: struct {
			Guaranteed uint32 `json:"guaranteed"`
			Shared     uint32 `json:"shared"`
		}{v.Guaranteed, v.Shared}}
	}),
	program.BpfbridgeMapNatUsage: dumpEach(func(k *uint32, v *program.BpfbridgeNatUsage) MapEntry {
		return MapEntry{Key: ifindexKey{*k}, Value: struct {
			Pairs int32 `json:"pairs"`
		}{v.Pairs}}
	}),
	program.BpfbridgeMapNatGen: dumpEach(func(k *program.BpfbridgeNatGenKey, v *uint32) MapEntry {
		return MapEntry{Key: addrKey{k.Family, program.AddrOf(k.Family, k.Addr)}, Value: struct {
			Generation uint32 `json:"generation"`
		}{*v}}
	}),
	program.BpfbridgeMapNatFrags: dumpEach(decodeFrag),
	program.BpfbridgeMapNatOut:   dumpEach(decodeNAT),
	program.BpfbridgeMapNatIn:    dumpEach(decodeNAT),
	program.BpfbridgeMapNatUplinks: dumpEach(func(k *uint32, v *program.BpfbridgeNatUplink) MapEntry {
		// An address the uplink lacks is null.
		orNull := func(a netip.Addr) *netip.Addr {
			if !a.IsValid() {
				return nil
			}
			return &a
		}
		v4, v6 := v.Addrs()
		return MapEntry{Key: ifindexKey{*k}, Value: struct {
			IPv4 *netip.Addr `json:"ipv4"`
			IPv6 *netip.Addr `json:"ipv6"`
		}{orNull(v4), orNull(v6)}}
	}),
	program.BpfbridgeMapNatNetworks: dumpEach(func(k *uint32, v *program.BpfbridgeNatNetwork) MapEntry {
		return MapEntry{Key: struct {
			Network uint32 `json:"network"`
		}{*k}, Value: struct {
			Masquerade bool `json:"masquerade"`
		}{v.Flags&uint32(program.BpfbridgeNatNetworkFlagsNAT_F_MASQUERADE) != 0}}
	}),
	program.BpfbridgeMapNatExclude: dumpSet(func(k *program.BpfbridgeNatExcludeKey, member bool) MapEntry {
		return MapEntry{Key: struct {
			Network uint32       `json:"network"`
			Prefix  netip.Prefix `json:"prefix"`
		}{k.Network, k.Prefix()}, Value: struct {
			Excluded bool `json:"excluded"`
		}{member}}
	}),
	program.BpfbridgeMapPortMaps: dumpEach(func(k *program.BpfbridgePortmapKey, v *program.BpfbridgePortmapValue) MapEntry {
		return MapEntry{Key: struct {
			Host     string `json:"host"`
			Protocol string `json:"protocol"`
		}{hostPort(k.HostIP(), program.FromBe16(k.Port)), protoName(k.Proto)}, Value: struct {
			Container  netip.AddrPort `json:"container"`
			Ifindex    uint32         `json:"ifindex"`
			HairpinSrc netip.Addr     `json:"hairpin_src"`
			Owner      string         `json:"owner"`
			Packets    uint64         `json:"packets"`
		}{v.Container(k.Family), v.Ifindex, program.AddrOf(k.Family, v.HairpinSrc), EndpointKey(v.Owner).String(), v.Packets}}
	}),
	program.BpfbridgeMapPortmapNodeAddrs: dumpSet(func(k *program.BpfbridgeIpKey, member bool) MapEntry {
		return MapEntry{Key: addrKey{k.Family, k.IP()}, Value: struct {
			NodeAddress bool `json:"node_address"`
		}{member}}
	}),
	program.BpfbridgeMapPortmapConfig: dumpEach(func(k *uint32, v *program.BpfbridgePortmapConfig) MapEntry {
		return MapEntry{Key: indexKey{*k}, Value: struct {
			NetnsCookie uint64 `json:"netns_cookie"`
			Enabled     bool   `json:"enabled"`
		}{v.NetnsCookie, v.Enabled != 0}}
	}),
	program.BpfbridgeMapPortmapSockRev: dumpEach(func(k *program.BpfbridgePortmapSockKey, v *program.BpfbridgePortmapSockOrig) MapEntry {
		return MapEntry{Key: struct {
			Cookie    uint64         `json:"socket_cookie"`
			Container netip.AddrPort `json:"container"`
		}{k.Cookie, netip.AddrPortFrom(program.AddrOf(k.Family, k.Addr), program.FromBe16(k.Port))}, Value: struct {
			Orig netip.AddrPort `json:"orig"`
		}{netip.AddrPortFrom(program.AddrOf(k.Family, v.Addr), program.FromBe16(v.Port))}}
	}),
	program.BpfbridgeMapNatConfig: dumpEach(func(k *uint32, v *program.BpfbridgeNatConfig) MapEntry {
		return MapEntry{Key: indexKey{*k}, Value: struct {
			PortMin    uint16 `json:"port_min"`
			PortMax    uint16 `json:"port_max"`
			TCP        uint32 `json:"timeout_tcp_s"`
			TCPSyn     uint32 `json:"timeout_tcp_syn_s"`
			TCPClosing uint32 `json:"timeout_tcp_closing_s"`
			UDP        uint32 `json:"timeout_udp_s"`
			ICMP       uint32 `json:"timeout_icmp_s"`
		}{v.PortMin, v.PortMax, v.TimeoutTcpS, v.TimeoutTcpSynS, v.TimeoutTcpClosingS, v.TimeoutUdpS, v.TimeoutIcmpS}}
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

// dumpSet dumps a map that holds a set: a key's byte is 1 for a member.
func dumpSet[K any](decode func(k *K, member bool) MapEntry) mapDumper {
	return dumpEach(func(k *K, v *uint8) MapEntry { return decode(k, *v != 0) })
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

// rawEntry is a key or value this build cannot decode, as hex bytes.
type rawEntry struct {
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
		e := MapEntry{Key: rawEntry{hex.EncodeToString(k)}, Value: rawEntry{hex.EncodeToString(raw)}}
		if perCPU(m.Type()) {
			// LookupBytes returns every CPU's value, each padded to 8 bytes.
			size := (int(m.ValueSize()) + 7) &^ 7
			for off := 0; off+size <= len(raw); off += size {
				e.PerCPU = append(e.PerCPU, rawEntry{hex.EncodeToString(raw[off : off+int(m.ValueSize())])})
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

// ifindexKey keys the maps indexed by the host veth's ifindex.
type ifindexKey struct {
	Ifindex uint32 `json:"ifindex"`
}

// addrKey keys the maps indexed by an address of either family.
type addrKey struct {
	Family uint8      `json:"family"`
	Addr   netip.Addr `json:"addr"`
}

// indexKey keys an array map.
type indexKey struct {
	Index uint32 `json:"index"`
}

// endpointEntry is struct endpoint: what a container may send as.
type endpointEntry struct {
	MAC       MAC          `json:"mac"`
	Isolation Isolation    `json:"isolation"`
	Flags     []string     `json:"flags"`
	Network   uint32       `json:"network"`
	IPv4      []netip.Addr `json:"ipv4"`
	IPv6      []netip.Addr `json:"ipv6"`
	IPv6LL    netip.Addr   `json:"ipv6_ll"`
}

func decodeEndpoint(e *program.BpfbridgeEndpoint) endpointEntry {
	ips := e.IPs()
	split := slices.IndexFunc(ips, netip.Addr.Is6)
	if split < 0 {
		split = len(ips)
	}
	out := endpointEntry{MAC: macOf(e.Mac), Isolation: Isolation(e.Isolation), Flags: []string{},
		Network: e.Network, IPv4: ips[:split:split], IPv6: ips[split:], IPv6LL: netip.AddrFrom16(e.Ipv6Ll)}
	if e.Flags&epFlagTaggedOK != 0 {
		out.Flags = append(out.Flags, "tagged-ok")
	}
	return out
}

// endpointMeta is struct endpoint_meta, the control plane's record.
type endpointMeta struct {
	Ifindex     uint32        `json:"ifindex"`
	Attach      AttachMode    `json:"attach"`
	CreatedNs   uint64        `json:"created_ns"`
	ContainerID string        `json:"container_id"`
	Ifname      string        `json:"ifname"`
	HostIfname  string        `json:"host_ifname"`
	Network     string        `json:"network"`
	Netns       string        `json:"netns"`
	ProgTag     string        `json:"prog_tag"`
	Ep          endpointEntry `json:"ep"`
}

func decodeMeta(m *program.BpfbridgeEndpointMeta) endpointMeta {
	n := m.Names()
	return endpointMeta{
		Ifindex: m.Ifindex, Attach: AttachMode(m.Attach), CreatedNs: m.CreatedNs,
		ContainerID: n.ContainerID, Ifname: n.IfName, HostIfname: n.HostIfName,
		Network: n.Network, Netns: n.Netns, ProgTag: n.ProgTag,
		Ep: decodeEndpoint(&m.Ep),
	}
}

// endpointStats is struct endpoint_stats; Drops is keyed by reason name.
type endpointStats struct {
	FromPackets uint64            `json:"from_packets"`
	FromBytes   uint64            `json:"from_bytes"`
	ToPackets   uint64            `json:"to_packets"`
	ToBytes     uint64            `json:"to_bytes"`
	Drops       map[string]uint64 `json:"drops"`
}
