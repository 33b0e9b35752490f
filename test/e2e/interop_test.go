package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// TestHostLocalInteropWithReference shares one IPAM store between the
// reference host-local (built from containernetworking/plugins) and ours,
// both in-process in the bridge plugin and as the standalone binary: no
// address is handed out twice, and each releases the other's allocations.
func TestHostLocalInteropWithReference(t *testing.T) {
	sb := sandbox.ForTest(t)
	dataDir := t.TempDir()
	ipam := fmt.Sprintf(`"ipam": {"type": "host-local", "subnet": "10.30.0.0/24", "dataDir": %q}`, dataDir)
	bridge := newNetwork(t, sb, `{"cniVersion": "1.0.0", "name": "shared", "type": "bridge", "bridge": "br-shared", `+ipam+`}`, bins.PluginDir())
	ipamOnly := `{"cniVersion": "1.0.0", "name": "shared", "type": "host-local", ` + ipam + `}`
	ref := newNetwork(t, sb, ipamOnly, bins.ReferencePluginDir())
	ours := newNetwork(t, sb, ipamOnly, bins.PluginDir())
	ctrs := newContainers(t, sb, "i", 5)

	// Alternate the implementations so each must see the other's files.
	steps := []struct {
		by *network
		id string
	}{{ref, "ref-a"}, {bridge, "bridge-b"}, {ref, "ref-c"}, {ours, "ours-d"}}
	owner := map[string]string{}
	for i, s := range steps {
		ip := s.by.mustAdd(ctrs[i], s.id, "eth0").IPs[0].Address.IP.String()
		if prev, dup := owner[ip]; dup {
			t.Fatalf("%s got %s, already held by %s", s.id, ip, prev)
		}
		owner[ip] = s.id
	}
	allocs := bridge.allocations()
	for ip, id := range owner {
		if allocs[ip] != id+"\r\neth0" {
			t.Errorf("allocation file %s = %q, want %q", ip, allocs[ip], id+"\r\neth0")
		}
	}

	// Each releases the other's: ours without a netns, like after a reboot.
	releases := []struct {
		by *network
		id string
	}{{bridge, "ref-a"}, {ref, "bridge-b"}, {ours, "ref-c"}, {ref, "ours-d"}}
	for _, r := range releases {
		if err := r.by.del(nil, r.id, "eth0"); err != nil {
			t.Fatalf("DEL %s: %v", r.id, err)
		}
	}
	if a := bridge.allocations(); len(a) != 0 {
		t.Fatalf("allocations left after cross releases: %v", a)
	}

	// The reference released our allocations without touching our index:
	// the stale hints must not block a new ADD of the same attachment.
	// (IPAM-only DELs leave links alone, so attach a fresh container.)
	again := bridge.mustAdd(ctrs[4], "bridge-b", "eth0").IPs[0].Address.IP.String()
	if got := ref.mustAdd(ctrs[0], "ref-a", "eth0").IPs[0].Address.IP.String(); got == again {
		t.Errorf("reference handed out %s, which our plugin holds", got)
	}

	// Files written by old host-local versions hold only the container ID.
	old := filepath.Join(bridge.storeDir(), "10.30.0.200")
	if err := os.WriteFile(old, []byte("old-ctr"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := bridge.del(nil, "old-ctr", "eth0"); err != nil {
		t.Fatalf("DEL old-format allocation: %v", err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("old-format allocation survived DEL (%v)", err)
	}
}
