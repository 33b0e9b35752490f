package datapath

import (
	"errors"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

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

var (
	protoNames = map[uint8]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp", unix.IPPROTO_ICMP: "icmp", unix.IPPROTO_ICMPV6: "icmpv6"}
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
	genOf, closeGens, err := d.generations()
	if err != nil {
		return nil, err
	}
	defer closeGens()
	it := d.maps.natOut.Iterate()
	for it.Next(&out, &entry) {
		if entry.Generation() != genOf(out.Source().Addr()) {
			continue // dead: its container is gone, the pair awaits reclaim
		}
		f := Flow{
			Proto:      protoNames[out.Proto],
			Container:  out.Source(),
			Remote:     out.Dest(),
			Translated: entry.AddrPort(out.Family),
			State:      program.BpfbridgeCtState(entry.State).String(),
			Uplink:     int(entry.Uplink),
			Age:        time.Duration(now - entry.CreatedNs),
			Orig:       Count{entry.Packets, entry.Bytes},
		}
		timeout := ctTimeout(&cfg, program.BpfbridgeCtState(entry.State))
		f.ExpiresIn = time.Duration(int64(entry.LastSeenNs) + int64(timeout) - int64(now))
		var reply program.BpfbridgeNatEntry
		if d.maps.natIn.Lookup(out.Reply(&entry), &reply) == nil {
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
		if v.Flags&uint32(program.BpfbridgeNatNetworkFlagsNAT_F_MASQUERADE) != 0 {
			return ErrNoFlows
		}
	}
	return ErrNoMasquerade
}

// natTuple is a key of nat_out or nat_in.
type natTuple struct {
	Proto string         `json:"proto"`
	Src   netip.AddrPort `json:"src"`
	Dst   netip.AddrPort `json:"dst"`
}

// natEntry is a value of nat_out (Addr: the translated source) or nat_in
// (Addr: the container's address).
type natEntry struct {
	Addr       netip.AddrPort `json:"addr"`
	State      string         `json:"state"`
	Uplink     uint32         `json:"uplink_ifindex"`
	CreatedNs  uint64         `json:"created_ns"`
	LastSeenNs uint64         `json:"last_seen_ns"`
	Packets    uint64         `json:"packets"`
	Bytes      uint64         `json:"bytes"`
}

// natTupleOf decodes a nat_tuple.
func natTupleOf(t *program.BpfbridgeNatTuple) natTuple {
	return natTuple{Proto: protoNames[t.Proto], Src: t.Source(), Dst: t.Dest()}
}

// decodeFrag decodes an entry of nat_frags for `map dump`.
func decodeFrag(k *program.BpfbridgeNatFragKey, v *program.BpfbridgeNatFrag) MapEntry {
	return MapEntry{
		Key: struct {
			Src   netip.Addr `json:"src"`
			Dst   netip.Addr `json:"dst"`
			ID    uint32     `json:"id"`
			Proto uint8      `json:"proto"`
			Dir   uint8      `json:"dir"`
		}{program.AddrOf(k.Family, k.Src), program.AddrOf(k.Family, k.Dst), k.Id, k.Proto, k.Dir},
		Value: struct {
			Addr netip.Addr `json:"addr"`
		}{program.AddrOf(k.Family, v.Addr)},
	}
}

// decodeNAT decodes an entry of nat_out or nat_in for `map dump`.
func decodeNAT(t *program.BpfbridgeNatTuple, e *program.BpfbridgeNatEntry) MapEntry {
	return MapEntry{
		Key: natTupleOf(t),
		Value: natEntry{
			Addr: e.AddrPort(t.Family), State: program.BpfbridgeCtState(e.State).String(), Uplink: e.Uplink,
			CreatedNs: e.CreatedNs, LastSeenNs: e.LastSeenNs, Packets: e.Packets, Bytes: e.Bytes,
		},
	}
}

// natPairs is how many translations the endpoint at ifindex holds, as the
// programs count them in nat_usage; 0 without masquerade state.
func (d *Datapath) natPairs(ifindex uint32) int32 {
	m, err := d.pinnedMap(program.BpfbridgeMapNatUsage)
	if err != nil {
		return 0
	}
	defer m.Close()
	var u program.BpfbridgeNatUsage
	if m.Lookup(ifindex, &u) != nil {
		return 0
	}
	return max(u.Pairs, 0)
}
