package datapath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// Direction is which way a dropped packet was going (drop_event.direction):
// enum direction in bpf/drop.h, values program.BpfbridgeDirectionDIR_*.
type Direction = program.BpfbridgeDirection

// EtherType is an Ethernet frame's EtherType; it prints as "ipv4", "ipv6",
// "arp" or the number in hex.
type EtherType uint16

func (p EtherType) String() string {
	switch p {
	case unix.ETH_P_IP:
		return "ipv4"
	case unix.ETH_P_IPV6:
		return "ipv6"
	case unix.ETH_P_ARP:
		return "arp"
	}
	return fmt.Sprintf("0x%04x", uint16(p))
}

// MarshalText writes the EtherType's name.
func (p EtherType) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// IPProto is the IP protocol of a dropped packet; it prints as "tcp",
// "udp", "icmp", "icmpv6" or the number, and as "" for a packet that is not
// IP.
type IPProto struct {
	Proto uint8 // IPPROTO_*
	IsIP  bool  // the packet is IPv4 or IPv6, so Proto means something
}

func (p IPProto) String() string {
	if !p.IsIP {
		return ""
	}
	if name, ok := protoNames[p.Proto]; ok {
		return name
	}
	return fmt.Sprint(p.Proto)
}

// MarshalText writes the protocol's name.
func (p IPProto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// MAC is an Ethernet address that prints, and marshals, as text.
type MAC net.HardwareAddr

func (m MAC) String() string { return net.HardwareAddr(m).String() }

// MarshalText writes the colon-separated hex form.
func (m MAC) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// macOf is a MAC field as a MAC; b is a copy, which the MAC keeps.
func macOf(b [6]uint8) MAC { return MAC(b[:]) }

// DropEvent is a dropped packet, as a program reported it, with the
// endpoint of the veth. It is what `bridge inspect monitor` prints.
type DropEvent struct {
	Time    time.Time `json:"time"`    // wall clock
	Ifindex int       `json:"ifindex"` // host veth
	// ContainerID, IfName and Network name the endpoint of the veth;
	// empty when it has none (a no-endpoint drop).
	ContainerID string     `json:"container_id"`
	IfName      string     `json:"ifname"`
	Network     string     `json:"network"`
	Reason      DropReason `json:"reason"`
	Direction   Direction  `json:"direction"`
	EthProto    EtherType  `json:"eth_proto"`
	IPProto     IPProto    `json:"ip_proto"`
	SrcMAC      MAC        `json:"src_mac"`
	DstMAC      MAC        `json:"dst_mac"`
	// Src and Dst are the IP addresses (sender and target for ARP), the
	// zero Addr for other EtherTypes.
	Src     netip.Addr `json:"src_ip"`
	Dst     netip.Addr `json:"dst_ip"`
	SrcPort uint16     `json:"src_port"` // TCP and UDP only, else 0
	DstPort uint16     `json:"dst_port"`
}

// EventReader reads drop events from the node's drop_events ring buffer.
//
// A ring buffer has one consumer position, kept in the map: two readers on
// one node share the events rather than each seeing all of them.
type EventReader struct {
	m     *ebpf.Map
	rd    *ringbuf.Reader
	close sync.Once
	// since: events older than this (CLOCK_MONOTONIC, ns) were waiting
	// in the ring before the reader opened, and are skipped.
	since uint64
	// endpoints names the endpoints of veths, by ifindex.
	endpoints endpointsByIfindex
}

// DropEvents opens the drop event ring buffer. The reader sees drops from
// now on: the events that wait in the ring from before (nobody was
// reading) are skipped.
func (d *Datapath) DropEvents() (*EventReader, error) {
	// Read-write: the reader advances the consumer position in the map.
	m, err := ebpf.LoadPinnedMap(filepath.Join(d.state.mapsDir(), program.BpfbridgeMapDropEvents), nil)
	if err != nil {
		return nil, fmt.Errorf("open drop events: %w", err)
	}
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("read drop events: %w", err)
	}
	return &EventReader{m: m, rd: rd, since: monotonicNow(), endpoints: endpointsByIfindex{dp: d}}, nil
}

// Read waits for the next drop event. After Close, or once a deadline set
// with SetDeadline passes, it returns an error wrapping os.ErrClosed or
// os.ErrDeadlineExceeded.
func (r *EventReader) Read() (DropEvent, error) {
	for {
		rec, err := r.rd.Read()
		if err != nil {
			return DropEvent{}, err
		}
		var raw program.BpfbridgeDropEvent
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &raw); err != nil {
			return DropEvent{}, fmt.Errorf("decode drop event: %w", err)
		}
		if raw.TimestampNs < r.since {
			continue
		}
		ev := decodeDropEvent(&raw)
		if ep := r.endpoints.lookup(ev.Ifindex); ep != nil {
			ev.ContainerID, ev.IfName, ev.Network = ep.ContainerID, ep.IfName, ep.Network
		}
		return ev, nil
	}
}

// SetDeadline bounds how long Read waits; the zero time removes the bound.
func (r *EventReader) SetDeadline(t time.Time) { r.rd.SetDeadline(t) }

// Close stops the reader, interrupting a Read. It may be called again, and
// from another goroutine than Read's.
func (r *EventReader) Close() error {
	var err error
	r.close.Do(func() {
		err = r.rd.Close()
		r.m.Close()
	})
	return err
}

func decodeDropEvent(e *program.BpfbridgeDropEvent) DropEvent {
	ev := DropEvent{
		Time:      monotonicToWall(e.TimestampNs),
		Ifindex:   int(e.Ifindex),
		Reason:    DropReason(e.Reason),
		Direction: Direction(e.Direction),
		EthProto:  EtherType(e.EthProto),
		IPProto:   IPProto{Proto: e.IpProto, IsIP: e.EthProto == unix.ETH_P_IP || e.EthProto == unix.ETH_P_IPV6},
		SrcMAC:    macOf(e.SrcMac),
		DstMAC:    macOf(e.DstMac),
		SrcPort:   e.Sport,
		DstPort:   e.Dport,
	}
	switch e.EthProto {
	case unix.ETH_P_IP, unix.ETH_P_ARP:
		ev.Src, ev.Dst = program.AddrOf(4, e.SrcIp), program.AddrOf(4, e.DstIp)
	case unix.ETH_P_IPV6:
		ev.Src, ev.Dst = program.AddrOf(6, e.SrcIp), program.AddrOf(6, e.DstIp)
	}
	return ev
}

// endpointsByIfindex names the endpoints of veths, reading the records
// again when an event comes from a veth it does not know (an endpoint
// attached since, or none: no-endpoint drops are rate limited, so are
// these reads).
type endpointsByIfindex struct {
	dp   *Datapath
	recs map[int]*EndpointRecord
}

func (e *endpointsByIfindex) lookup(ifindex int) *EndpointRecord {
	if r, ok := e.recs[ifindex]; ok {
		return r
	}
	recs, err := e.dp.Endpoints()
	if err != nil {
		return nil // the event still shows, by ifindex
	}
	e.recs = make(map[int]*EndpointRecord, len(recs))
	for i := range recs {
		e.recs[recs[i].HostIfindex] = &recs[i]
	}
	return e.recs[ifindex]
}

// monotonicToWall converts a CLOCK_MONOTONIC time to wall-clock time. The
// offset between the clocks is taken now, not at boot, so that a wall clock
// stepped since (NTP) does not skew it.
func monotonicToWall(ns uint64) time.Time {
	now := time.Now()
	return now.Add(-time.Duration(monotonicNow() - ns))
}
