package datapath

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"time"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// ErrNoMasquerade reports that the node has no masquerade state to show.
var ErrNoMasquerade = errors.New("no masquerade state on this node (no network with ipMasq)")

// Flow is one masquerade translation, both halves together: the container's
// connection to a remote as the container sees it, the address and port the
// remote sees, state, age and counters.
type Flow struct {
	Proto      string         `json:"proto"` // tcp, udp, icmp, icmpv6
	Container  netip.AddrPort `json:"container"`
	Remote     netip.AddrPort `json:"remote"`
	Translated netip.AddrPort `json:"translated"` // the uplink's address and NAT port (ICMP: identifier)
	State      string         `json:"state"`      // syn-sent, established, closing, udp, icmp
	Uplink     int            `json:"uplink_ifindex"`
	Age        time.Duration  `json:"age_ns"`
	ExpiresIn  time.Duration  `json:"expires_in_ns"` // negative: expired, awaiting reclaim
	// Orig counts the container → remote direction, Reply the other.
	Orig  Count `json:"orig"`
	Reply Count `json:"reply"`
	// HalfOnly is true when the reply half is missing (it should never be).
	HalfOnly bool `json:"half_only,omitempty"`
}

// Count is a packet and byte counter.
type Count struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

var (
	protoNames = map[uint8]string{6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}
	stateNames = map[uint8]string{ctSynSent: "syn-sent", ctEstablished: "established", ctClosing: "closing", ctUDP: "udp", ctICMP: "icmp"}
)

// Flows returns the node's masquerade translations, or ErrNoMasquerade when
// there are none.
func (d *Datapath) Flows() ([]Flow, error) {
	var cfg program.BpfbridgeNatConfig
	if err := d.maps.natConfig.Lookup(uint32(0), &cfg); err != nil {
		return nil, err
	}
	now := monotonicNow()
	var (
		out   program.BpfbridgeNatTuple
		entry program.BpfbridgeNatEntry
		flows []Flow
	)
	it := d.maps.natOut.Iterate()
	for it.Next(&out, &entry) {
		port := func(p uint16) uint16 { return binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, p)) }
		f := Flow{
			Proto:      protoNames[out.Proto],
			Container:  netip.AddrPortFrom(tupleAddr(out.Family, out.Src), port(out.Sport)),
			Remote:     netip.AddrPortFrom(tupleAddr(out.Family, out.Dst), port(out.Dport)),
			Translated: netip.AddrPortFrom(tupleAddr(out.Family, entry.Addr), port(entry.Port)),
			State:      stateNames[entry.State],
			Uplink:     int(entry.Uplink),
			Age:        time.Duration(now - entry.CreatedNs),
			Orig:       Count{entry.Packets, entry.Bytes},
		}
		timeout := time.Duration(timeouts(&cfg)[entry.State]) * time.Second
		f.ExpiresIn = time.Duration(int64(entry.LastSeenNs) + int64(timeout) - int64(now))
		var reply program.BpfbridgeNatEntry
		if d.maps.natIn.Lookup(replyTuple(&out, &entry), &reply) == nil {
			f.Reply = Count{reply.Packets, reply.Bytes}
		} else {
			f.HalfOnly = true
		}
		flows = append(flows, f)
	}
	if err := it.Err(); err != nil {
		return nil, err
	}
	if len(flows) == 0 {
		return nil, ErrNoMasquerade
	}
	return flows, nil
}

// replyTuple is the nat_in key of a translation: the reply as it arrives on
// the uplink (see bpf/nat.h; ICMP echo carries the identifier as sport).
func replyTuple(out *program.BpfbridgeNatTuple, e *program.BpfbridgeNatEntry) program.BpfbridgeNatTuple {
	in := program.BpfbridgeNatTuple{Src: out.Dst, Dst: e.Addr, Proto: out.Proto, Family: out.Family}
	if out.Proto == 1 || out.Proto == 58 {
		in.Sport = e.Port
	} else {
		in.Sport, in.Dport = out.Dport, e.Port
	}
	return in
}
