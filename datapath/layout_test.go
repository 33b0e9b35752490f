package datapath

import (
	"testing"

	"github.com/cilium/ebpf"
)

// TestEveryPinnedMapMigrates holds carried to the collection this build
// loads: every map pinned by name says how a layout migration carries it,
// and carried names no map the collection does not pin.
func TestEveryPinnedMapMigrates(t *testing.T) {
	spec, err := embeddedSpec()
	if err != nil {
		t.Fatal(err)
	}
	pinned := map[string]bool{}
	for name, m := range spec.Maps {
		if m.Pinning != ebpf.PinByName {
			continue
		}
		pinned[name] = true
		if _, ok := carried[name]; !ok {
			t.Errorf("pinned map %s: carried does not say how a layout migration carries it", name)
		}
	}
	for name := range carried {
		if !pinned[name] {
			t.Errorf("carried names %s, which the object does not pin", name)
		}
	}
}
