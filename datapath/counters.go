package datapath

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// DropReason is why a program dropped a packet (program.DropReason), so
// that callers need not reach into the generated package.
type DropReason = program.DropReason

// DropReasons returns every drop reason but none, in order.
func DropReasons() []DropReason { return program.DropReasons() }

// ParseDropReason returns the reason named name (as DropReason.String
// writes it).
func ParseDropReason(name string) (DropReason, bool) {
	for _, r := range DropReasons() {
		if r.String() == strings.TrimSpace(name) {
			return r, true
		}
	}
	return 0, false
}

// Drops counts drops by reason, indexed by DropReason. It marshals as an
// object with every reason's name as a key, so that JSON consumers find
// the same keys whatever the counts.
type Drops [program.NumDropReasons]uint64

// Total is the number of drops of every reason.
func (d *Drops) Total() uint64 {
	var sum uint64
	for _, n := range d {
		sum += n
	}
	return sum
}

// Add adds o's counts to d's.
func (d *Drops) Add(o *Drops) {
	for r, n := range o {
		d[r] += n
	}
}

// MarshalJSON writes {"<reason>": count, …} for every reason.
func (d Drops) MarshalJSON() ([]byte, error) { return json.Marshal(d.byName()) }

// byName names each reason's count, every reason included.
func (d Drops) byName() map[string]uint64 {
	m := make(map[string]uint64, len(d)-1)
	for _, r := range DropReasons() {
		m[r.String()] = d[r]
	}
	return m
}

// Count is a packet and byte counter.
type Count struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Counters are an endpoint's traffic and drop counters, summed over CPUs.
type Counters struct {
	FromContainer Count `json:"from_container"` // what the container sent
	ToContainer   Count `json:"to_container"`   // what was delivered to it
	Drops         Drops `json:"drops"`
	// DropsTotal is Drops.Total(), for JSON consumers.
	DropsTotal uint64 `json:"drops_total"`
	// FastPath counts what the container sent by the fast path, past
	// the bridge (part of FromContainer).
	FastPathPackets uint64 `json:"fast_path_packets"`
}

// countersOfStats sums an endpoint_stats entry's per-CPU values.
func countersOfStats(perCPU []program.BpfbridgeEndpointStats) Counters {
	s := program.Sum(perCPU)
	c := Counters{
		FromContainer: Count{s.FromPackets, s.FromBytes},
		ToContainer:   Count{s.ToPackets, s.ToBytes},
		Drops:         s.Drops,
	}
	c.DropsTotal = c.Drops.Total()
	return c
}

// Counters returns the counters of the attachment (containerID, ifname).
func (d *Datapath) Counters(containerID, ifname string) (Counters, error) {
	var meta program.BpfbridgeEndpointMeta
	if err := d.maps.meta.Lookup(KeyOf(containerID, ifname), &meta); err != nil {
		return Counters{}, fmt.Errorf("no datapath record for %s/%s: %w", containerID, ifname, err)
	}
	return d.countersOf(meta.Ifindex)
}

// countersOf returns the counters of the endpoint on the veth ifindex.
func (d *Datapath) countersOf(ifindex uint32) (Counters, error) {
	var perCPU []program.BpfbridgeEndpointStats
	err := d.maps.stats.Lookup(ifindex, &perCPU)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return Counters{}, nil // no packet yet
	}
	if err != nil {
		return Counters{}, err
	}
	c := countersOfStats(perCPU)
	var fast []uint64
	if err := d.maps.fastPath.Lookup(ifindex, &fast); err == nil {
		c.FastPathPackets = program.SumUint64(fast)
	} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return c, err
	}
	return c, nil
}
