package program

import "testing"

// TestVariant: a build variant changes the tag and reaches the programs'
// bpfbridge_variant at load; a variant that is no number fails the load.
func TestVariant(t *testing.T) {
	defer func(v string) { variant = v }(variant)
	variant = ""
	release := Tag()
	variant = "1"
	if Tag() == release {
		t.Errorf("variant 1 has the release's tag %s", release)
	}
	spec, err := LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	var got uint32
	if err := spec.Variables[BpfbridgeVarBpfbridgeVariant].Get(&got); err != nil || got != 1 {
		t.Errorf("bpfbridge_variant = %d (%v), want 1", got, err)
	}
	variant = "x"
	if _, err := LoadSpec(); err == nil {
		t.Error("variant \"x\" loads")
	}
}
