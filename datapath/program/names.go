package program

import "strconv"

// The names of the enums other than drop_reason (drops.go) that `bridge
// inspect` prints. Each table is indexed by the generated values and checked
// at compile time against the enum's count member, so a value added in C
// without a name here does not build.

// directionNames name enum direction (bpf/drop.h).
var directionNames = [...]string{
	BpfbridgeDirectionDIR_FROM_CONTAINER: "from-container",
	BpfbridgeDirectionDIR_TO_CONTAINER:   "to-container",
	BpfbridgeDirectionDIR_UPLINK_EGRESS:  "uplink-egress",
	BpfbridgeDirectionDIR_UPLINK_INGRESS: "uplink-ingress",
}

// String names the direction of a drop_event, or "direction-N" for a value
// this build does not know.
func (d BpfbridgeDirection) String() string { return enumName(directionNames[:], d, "direction") }

// ctStateNames name enum ct_state (bpf/conntrack.h); 0 is no state.
var ctStateNames = [...]string{
	BpfbridgeCtStateCT_SYN_SENT:    "syn-sent",
	BpfbridgeCtStateCT_ESTABLISHED: "established",
	BpfbridgeCtStateCT_CLOSING:     "closing",
	BpfbridgeCtStateCT_UDP:         "udp",
	BpfbridgeCtStateCT_ICMP:        "icmp",
}

// String names a nat_entry state, or "state-N" for a value this build does
// not know.
func (s BpfbridgeCtState) String() string { return enumName(ctStateNames[:], s, "state") }

// Each pair fails to compile unless its table has one name per member of
// its enum: len(dropReasonNames) == NumDropReasons (DROP_REASONS),
// len(directionNames) == DIRECTIONS, len(ctStateNames) == CT_STATES.
var (
	_ [len(dropReasonNames) - NumDropReasons]struct{}
	_ [NumDropReasons - len(dropReasonNames)]struct{}
	_ [len(directionNames) - int(BpfbridgeDirectionDIRECTIONS)]struct{}
	_ [int(BpfbridgeDirectionDIRECTIONS) - len(directionNames)]struct{}
	_ [len(ctStateNames) - int(BpfbridgeCtStateCT_STATES)]struct{}
	_ [int(BpfbridgeCtStateCT_STATES) - len(ctStateNames)]struct{}
)

// enumName is names[v], or "<unknown>-<v>" for a value without a name.
func enumName[T ~uint8](names []string, v T, unknown string) string {
	if int(v) < len(names) && names[v] != "" {
		return names[v]
	}
	return unknown + "-" + strconv.Itoa(int(v))
}
