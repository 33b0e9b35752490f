package program

// DropReason is why a program dropped a packet: enum drop_reason in
// bpf/drop.h, whose values bpf2go generates as BpfbridgeDropReasonDROP_*. It
// indexes BpfbridgeEndpointStats.Drops and the drop_totals map, and is
// BpfbridgeDropEvent.Reason.
type DropReason = BpfbridgeDropReason

// NumDropReasons is DROP_REASONS: the number of reasons, DROP_NONE
// included, and so the length of BpfbridgeEndpointStats.Drops and of
// drop_totals.
const NumDropReasons = int(BpfbridgeDropReasonDROP_REASONS)

// dropReasonNames are the reasons' names, as `bridge inspect` prints them.
// Its length must be NumDropReasons (checked at compile time in names.go):
// a reason added in C without a name here does not build.
var dropReasonNames = [...]string{
	BpfbridgeDropReasonDROP_NONE:           "none",
	BpfbridgeDropReasonDROP_SPOOF_MAC:      "spoof-mac",
	BpfbridgeDropReasonDROP_SPOOF_IPV4:     "spoof-ipv4",
	BpfbridgeDropReasonDROP_SPOOF_IPV6:     "spoof-ipv6",
	BpfbridgeDropReasonDROP_SPOOF_ARP:      "spoof-arp",
	BpfbridgeDropReasonDROP_SPOOF_NDP:      "spoof-ndp",
	BpfbridgeDropReasonDROP_ROUTER_NDP:     "router-ndp",
	BpfbridgeDropReasonDROP_CROSS_NETWORK:  "cross-network",
	BpfbridgeDropReasonDROP_SAME_NETWORK:   "same-network",
	BpfbridgeDropReasonDROP_NO_ENDPOINT:    "no-endpoint",
	BpfbridgeDropReasonDROP_MALFORMED:      "malformed",
	BpfbridgeDropReasonDROP_ETHERTYPE:      "ethertype",
	BpfbridgeDropReasonDROP_NAT_EXHAUSTED:  "nat-exhausted",
	BpfbridgeDropReasonDROP_NAT_NO_ADDRESS: "nat-no-address",
	BpfbridgeDropReasonDROP_NAT_QUOTA:      "nat-quota",
	BpfbridgeDropReasonDROP_NAT_UNTRACKED:  "nat-untracked",
}

// String returns the reason's name, as `bridge inspect` prints it, or
// "reason-N" for a value this build does not know (a newer program).
func (r BpfbridgeDropReason) String() string { return enumName(dropReasonNames[:], r, "reason") }

// DropReasons returns every reason but DROP_NONE, in order.
func DropReasons() []DropReason {
	rs := make([]DropReason, 0, NumDropReasons-1)
	for r := BpfbridgeDropReasonDROP_NONE + 1; r < BpfbridgeDropReasonDROP_REASONS; r++ {
		rs = append(rs, r)
	}
	return rs
}
