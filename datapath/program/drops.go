package program

import "strconv"

// DropReason is why a program dropped a packet: enum drop_reason in
// bpf/drop.h. It indexes BpfbridgeEndpointStats.Drops and the drop_totals
// map, and is BpfbridgeDropEvent.Reason. A test parses drop.h to keep the
// two in step.
type DropReason uint8

// The reasons, with the values of enum drop_reason.
const (
	DropNone         DropReason = 0  // not a drop
	DropSpoofMAC     DropReason = 1  // Ethernet source is not the endpoint's MAC
	DropSpoofIPv4    DropReason = 2  // IPv4 source is not the endpoint's
	DropSpoofIPv6    DropReason = 3  // IPv6 source is not the endpoint's (nor its link-local)
	DropSpoofARP     DropReason = 4  // ARP sender MAC or IP is not the endpoint's
	DropSpoofNDP     DropReason = 5  // NS/NA/RS link-layer option or NA target not the endpoint's
	DropRouterNDP    DropReason = 6  // router advertisement or redirect from a container
	DropCrossNetwork DropReason = 7  // to or from a container of another network
	DropSameNetwork  DropReason = 8  // between containers of a network in container isolation
	DropNoEndpoint   DropReason = 9  // the veth has no endpoint entry
	DropMalformed    DropReason = 10 // headers truncated or inconsistent
	DropEtherType    DropReason = 11 // neither IPv4, IPv6 nor ARP (nor VLAN on a trunk)
	DropNATExhausted DropReason = 12 // masquerade: no free NAT port among the tries, or NAT table full
	DropNATNoAddress DropReason = 13 // masquerade: the uplink has no address of the packet's family
)

// NumDropReasons is DROP_REASONS: the number of reasons, DropNone included,
// and so the length of BpfbridgeEndpointStats.Drops and of drop_totals.
const NumDropReasons = 14

var dropReasonNames = [NumDropReasons]string{
	DropNone:         "none",
	DropSpoofMAC:     "spoof-mac",
	DropSpoofIPv4:    "spoof-ipv4",
	DropSpoofIPv6:    "spoof-ipv6",
	DropSpoofARP:     "spoof-arp",
	DropSpoofNDP:     "spoof-ndp",
	DropRouterNDP:    "router-ndp",
	DropCrossNetwork: "cross-network",
	DropSameNetwork:  "same-network",
	DropNoEndpoint:   "no-endpoint",
	DropMalformed:    "malformed",
	DropEtherType:    "ethertype",
	DropNATExhausted: "nat-exhausted",
	DropNATNoAddress: "nat-no-address",
}

// String returns the reason's name, as `bridge inspect` prints it, or
// "reason-N" for a value this build does not know (a newer program).
func (r DropReason) String() string {
	if int(r) < len(dropReasonNames) {
		return dropReasonNames[r]
	}
	return "reason-" + strconv.Itoa(int(r))
}

// DropReasons returns every reason but DropNone, in order.
func DropReasons() []DropReason {
	rs := make([]DropReason, 0, NumDropReasons-1)
	for r := DropReason(1); r < NumDropReasons; r++ {
		rs = append(rs, r)
	}
	return rs
}
