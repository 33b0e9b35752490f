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

// ErrNoFlows reports that a network masquerades but has no translations
// yet; errors.Is(ErrNoFlows, ErrNoMasquerade) holds: nothing to show.
var ErrNoFlows error = noFlows{}

type noFlows struct{}

func (noFlows) Error() string {
	return "no masquerade translations yet (a network has ipMasq, but none of its traffic has left the node)"
}
func (noFlows) Is(target error) bool { return target == ErrNoMasquerade }

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
		f := Flow{
			Proto:      protoNames[out.Proto],
			Container:  netip.AddrPortFrom(tupleAddr(out.Family, out.Src), be16(out.Sport)),
			Remote:     netip.AddrPortFrom(tupleAddr(out.Family, out.Dst), be16(out.Dport)),
			Translated: netip.AddrPortFrom(tupleAddr(out.Family, entry.Addr), be16(entry.Port)),
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
		return nil, d.noFlowsError()
	}
	return flows, nil
}

// noFlowsError tells a node without a masquerading network from one whose
// masquerading networks have no translations yet.
func (d *Datapath) noFlowsError() error {
	var (
		network uint32
		v       program.BpfbridgeNatNetwork
	)
	it := d.maps.natNetworks.Iterate()
	for it.Next(&network, &v) {
		if v.Flags&natNetworkMasquerade != 0 {
			return ErrNoFlows
		}
	}
	return ErrNoMasquerade
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

// be16 reads a __be16 field: cilium/ebpf decodes it in native order.
func be16(p uint16) uint16 {
	return binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, p))
}

// NATTuple is a key of nat_out or nat_in.
type NATTuple struct {
	Proto string         `json:"proto"`
	Src   netip.AddrPort `json:"src"`
	Dst   netip.AddrPort `json:"dst"`
}

// NATEntry is a value of nat_out (Addr: the translated source) or nat_in
// (Addr: the container's address).
type NATEntry struct {
	Addr       netip.AddrPort `json:"addr"`
	State      string         `json:"state"`
	Uplink     uint32         `json:"uplink_ifindex"`
	CreatedNs  uint64         `json:"created_ns"`
	LastSeenNs uint64         `json:"last_seen_ns"`
	Packets    uint64         `json:"packets"`
	Bytes      uint64         `json:"bytes"`
}

func decodeNATTuple(t *program.BpfbridgeNatTuple) NATTuple {
	return NATTuple{
		Proto: protoNames[t.Proto],
		Src:   netip.AddrPortFrom(tupleAddr(t.Family, t.Src), be16(t.Sport)),
		Dst:   netip.AddrPortFrom(tupleAddr(t.Family, t.Dst), be16(t.Dport)),
	}
}

func decodeNATEntry(family uint8, e *program.BpfbridgeNatEntry) NATEntry {
	return NATEntry{
		Addr:  netip.AddrPortFrom(tupleAddr(family, e.Addr), be16(e.Port)),
		State: stateNames[e.State], Uplink: e.Uplink,
		CreatedNs: e.CreatedNs, LastSeenNs: e.LastSeenNs, Packets: e.Packets, Bytes: e.Bytes,
	}
}

// natDecoders decode the masquerade's maps for `map dump`.
var natDecoders = map[string]mapDumper{
	program.BpfbridgeMapNatOut: dumpEach(func(k *program.BpfbridgeNatTuple, v *program.BpfbridgeNatEntry) MapEntry {
		return MapEntry{Key: decodeNATTuple(k), Value: decodeNATEntry(k.Family, v)}
	}),
	program.BpfbridgeMapNatIn: dumpEach(func(k *program.BpfbridgeNatTuple, v *program.BpfbridgeNatEntry) MapEntry {
		return MapEntry{Key: decodeNATTuple(k), Value: decodeNATEntry(k.Family, v)}
	}),
	program.BpfbridgeMapNatUplinks: dumpEach(func(k *uint32, v *program.BpfbridgeNatUplink) MapEntry {
		u := struct {
			IPv4 *netip.Addr `json:"ipv4"`
			IPv6 *netip.Addr `json:"ipv6"`
		}{}
		if v.HasIpv4 != 0 {
			a := fromBe32(v.Ipv4)
			u.IPv4 = &a
		}
		if v.HasIpv6 != 0 {
			a := netip.AddrFrom16(v.Ipv6)
			u.IPv6 = &a
		}
		return MapEntry{Key: IfindexKey{*k}, Value: u}
	}),
	program.BpfbridgeMapNatNetworks: dumpEach(func(k *uint32, v *program.BpfbridgeNatNetwork) MapEntry {
		return MapEntry{Key: struct {
			Network uint32 `json:"network"`
		}{*k}, Value: struct {
			Masquerade bool `json:"masquerade"`
		}{v.Flags&natNetworkMasquerade != 0}}
	}),
	program.BpfbridgeMapNatExclude: dumpEach(func(k *program.BpfbridgeNatExcludeKey, v *uint8) MapEntry {
		p := netip.PrefixFrom(tupleAddr(k.Family, k.Addr), int(k.Prefixlen)-64)
		return MapEntry{Key: struct {
			Network uint32       `json:"network"`
			Prefix  netip.Prefix `json:"prefix"`
		}{k.Network, p}, Value: struct {
			Excluded bool `json:"excluded"`
		}{*v != 0}}
	}),
	program.BpfbridgeMapNatConfig: dumpEach(func(k *uint32, v *program.BpfbridgeNatConfig) MapEntry {
		return MapEntry{Key: IndexKey{*k}, Value: struct {
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
