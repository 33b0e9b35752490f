package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// Counters are an endpoint's traffic and drop counters, summed over CPUs.
// "From" is what the container sent, "To" what was delivered to it.
type Counters struct {
	FromPackets, FromBytes uint64
	ToPackets, ToBytes     uint64
	Drops                  [program.NumDropReasons]uint64 // by program.DropReason
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
	var c Counters
	for _, s := range perCPU {
		c.FromPackets += s.FromPackets
		c.FromBytes += s.FromBytes
		c.ToPackets += s.ToPackets
		c.ToBytes += s.ToBytes
		for r, n := range s.Drops {
			c.Drops[r] += n
		}
	}
	return c, nil
}
