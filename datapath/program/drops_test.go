package program_test

import (
	"fmt"
	"strings"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf/btf"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// TestEnumNames checks the Go names of the enums `bridge inspect` prints
// against the enums in the embedded object's BTF, the same source bpf2go
// generates the values from: every C member (but the count) has the Go name
// its C name spells (DROP_SPOOF_MAC is "spoof-mac"), and values past the
// last print as unknown. The compile-time length checks in drops.go and
// names.go catch a missing name; this catches a wrong one.
func TestEnumNames(t *testing.T) {
	spec, err := program.LoadBpfbridge()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		enum, prefix, count string
		name                func(v uint64) string
	}{
		{"drop_reason", "DROP_", "DROP_REASONS", func(v uint64) string { return program.DropReason(v).String() }},
		{"direction", "DIR_", "DIRECTIONS", func(v uint64) string { return program.BpfbridgeDirection(v).String() }},
		{"ct_state", "CT_", "CT_STATES", func(v uint64) string { return program.BpfbridgeCtState(v).String() }},
	} {
		var e *btf.Enum
		if err := spec.Types.TypeByName(c.enum, &e); err != nil {
			t.Fatalf("enum %s: %v", c.enum, err)
		}
		var count uint64
		for _, v := range e.Values {
			if v.Name == c.count {
				count = v.Value
				continue
			}
			want := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(v.Name, c.prefix)), "_", "-")
			if got := c.name(v.Value); got != want {
				t.Errorf("%s = %d: Go calls it %q, want %q", v.Name, v.Value, got, want)
			}
		}
		if count == 0 {
			t.Errorf("enum %s has no %s", c.enum, c.count)
		}
		if got, unknown := c.name(count), fmt.Sprint(count); !strings.HasSuffix(got, "-"+unknown) {
			t.Errorf("%s value %d (past the last) prints as %q", c.enum, count, got)
		}
	}
	if rs := program.DropReasons(); len(rs) != program.NumDropReasons-1 || rs[0] != program.BpfbridgeDropReasonDROP_SPOOF_MAC {
		t.Errorf("DropReasons() = %v", rs)
	}
}

// The generated Go structs must match the C layouts the control plane
// writes; bpf2go derives them from BTF, this guards against a -type or
// header change going unnoticed.
func TestLayoutSizes(t *testing.T) {
	for _, c := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"endpoint", sizeof[program.BpfbridgeEndpoint](), 112},
		{"ip_key", sizeof[program.BpfbridgeIpKey](), 20},
		{"ip_owner", sizeof[program.BpfbridgeIpOwner](), 8},
		{"endpoint_stats", sizeof[program.BpfbridgeEndpointStats](), 32 + 8*uintptr(program.NumDropReasons)},
		{"drop_event", sizeof[program.BpfbridgeDropEvent](), 72},
		{"event_budget", sizeof[program.BpfbridgeEventBudget](), 16},
	} {
		if c.got != c.want {
			t.Errorf("sizeof(struct %s) = %d, want %d", c.name, c.got, c.want)
		}
	}
	if tag := program.Tag(); len(tag) == 0 || len(tag) > 15 || strings.ContainsAny(tag, "./") {
		t.Errorf("Tag() = %q: must fit endpoint_meta.prog_tag and be a bpffs name", tag)
	}
}

func sizeof[T any]() uintptr {
	var v T
	return unsafe.Sizeof(v)
}
