package program_test

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// TestDropReasonsMatchC parses enum drop_reason from bpf/drop.h: every
// DROP_FOO_BAR = n must be DropReason(n) named "foo-bar", DROP_REASONS must
// be NumDropReasons, and no Go reason may be missing from C.
func TestDropReasonsMatchC(t *testing.T) {
	src, err := os.ReadFile("../../bpf/drop.h")
	if err != nil {
		t.Fatal(err)
	}
	body := regexp.MustCompile(`(?s)enum drop_reason \{(.*?)\};`).FindSubmatch(src)
	if body == nil {
		t.Fatal("no enum drop_reason in bpf/drop.h")
	}
	entries := regexp.MustCompile(`(?m)^\s*DROP_([A-Z0-9_]+)\s*=\s*(\d+)\s*,`).FindAllSubmatch(body[1], -1)
	if len(entries) == 0 {
		t.Fatal("enum drop_reason has no entries (or they lost their explicit values)")
	}
	seen := map[program.DropReason]bool{}
	count := -1
	for _, m := range entries {
		name := string(m[1])
		v, err := strconv.Atoi(string(m[2]))
		if err != nil {
			t.Fatal(err)
		}
		if name == "REASONS" {
			count = v
			continue
		}
		r := program.DropReason(v)
		want := strings.ReplaceAll(strings.ToLower(name), "_", "-")
		if got := r.String(); got != want {
			t.Errorf("DROP_%s = %d: Go calls %d %q, want %q", name, v, v, got, want)
		}
		if seen[r] {
			t.Errorf("value %d used twice", v)
		}
		seen[r] = true
	}
	if count != program.NumDropReasons {
		t.Errorf("DROP_REASONS = %d, NumDropReasons = %d", count, program.NumDropReasons)
	}
	for r := range program.DropReason(program.NumDropReasons) {
		if !seen[r] {
			t.Errorf("DropReason %d (%v) is not in enum drop_reason", r, r)
		}
	}
	if got := program.DropReason(200).String(); got != "reason-200" {
		t.Errorf("unknown reason prints as %q", got)
	}
	if rs := program.DropReasons(); len(rs) != program.NumDropReasons-1 || rs[0] != program.DropSpoofMAC {
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
		{"endpoint_stats", sizeof[program.BpfbridgeEndpointStats](), 32 + 8*program.NumDropReasons},
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
