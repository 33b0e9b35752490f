package datapath

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// TestConfigNames checks the config names of the attach and isolation
// modes against the enums in the embedded object's BTF (the source of the
// generated values): every C member has the name its C name spells
// (ATTACH_TCX is "tcx"), and parses back to its value.
func TestConfigNames(t *testing.T) {
	spec, err := program.LoadBpfbridge()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		enum, prefix string
		name         func(v uint64) (string, uint64, bool)
	}{
		{"attach_mode", "ATTACH_", func(v uint64) (string, uint64, bool) {
			s := AttachMode(v).String()
			back, ok := ParseAttachMode(s)
			return s, uint64(back), ok
		}},
		{"isolation_mode", "ISOLATION_", func(v uint64) (string, uint64, bool) {
			s := Isolation(v).String()
			back, ok := ParseIsolation(s)
			return s, uint64(back), ok
		}},
	} {
		var e *btf.Enum
		if err := spec.Types.TypeByName(c.enum, &e); err != nil {
			t.Fatalf("enum %s: %v", c.enum, err)
		}
		for _, v := range e.Values {
			want := strings.ToLower(strings.TrimPrefix(v.Name, c.prefix))
			got, back, ok := c.name(v.Value)
			if got != want || !ok || back != v.Value {
				t.Errorf("%s = %d: named %q (parses back to %d, %v), want %q", v.Name, v.Value, got, back, ok, want)
			}
		}
	}
	if m, ok := ParseAttachMode("bogus"); ok {
		t.Errorf("ParseAttachMode(\"bogus\") = %v, true", m)
	}
}
