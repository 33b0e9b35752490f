package e2e

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// addSteps are the steps of ADD after which a faultinject build of the
// plugin can fail (cmd/bridge/add.go, failAfter), in their order.
var addSteps = []string{"veth", "ipam", "attach", "masquerade", "container", "gateway", "wait"}

// faultInjectPlugins builds the plugin with the faultinject tag into a
// directory of its own: BPFBRIDGE_FAIL_AFTER=<step> makes its ADD fail right
// after that step. Release builds have no such hook.
func faultInjectPlugins(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*opTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-tags", "faultinject", "-o", filepath.Join(dir, "bridge"),
		"github.com/bpfbridge/bpfbridge/cmd/bridge")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the faultinject plugin: %v\n%s", err, out)
	}
	return dir
}

// nodeState is everything an attachment leaves on the node that a failed
// ADD must take back.
type nodeState struct {
	veths       []string
	allocations map[string]string
	pinned      map[string]int // pinnedEntries
	natNetworks int
}

func stateOf(t *testing.T, sb *sandbox.Sandbox, n *network) nodeState {
	t.Helper()
	veths := nodeVeths(t, sb)
	slices.Sort(veths)
	return nodeState{
		veths:       veths,
		allocations: n.allocations(),
		pinned:      pinnedEntries(t, sb),
		natNetworks: mapEntries(t, sb)["nat_networks"],
	}
}

// assertSameState fails where after differs from before.
func assertSameState(t *testing.T, before, after nodeState) {
	t.Helper()
	if !slices.Equal(before.veths, after.veths) {
		t.Errorf("node veths %v, want %v", after.veths, before.veths)
	}
	if !maps.Equal(before.allocations, after.allocations) {
		t.Errorf("allocations %v, want %v", after.allocations, before.allocations)
	}
	if !maps.Equal(before.pinned, after.pinned) {
		t.Errorf("pinned entries %v, want %v", after.pinned, before.pinned)
	}
	if before.natNetworks != after.natNetworks {
		t.Errorf("%d masqueraded networks, want %d", after.natNetworks, before.natNetworks)
	}
}

// TestAddFailureAfterEveryStep makes ADD fail right after each of its steps
// and expects the node exactly as before: no veth, allocation or store
// index entry, no endpoint, owner, meta or stats entry and no tcx link pin,
// no masqueraded network more, and a message saying the steps were undone.
// A container attached before keeps its state (the rollback takes back only
// its own ADD) and its NAT flag, which DEL too leaves to the network.
func TestAddFailureAfterEveryStep(t *testing.T) {
	sb := sandbox.ForTest(t)
	dir := faultInjectPlugins(t)
	n := newNetwork(t, sb, masqConf("undo", "br-undo", t.TempDir(),
		`[[{"subnet": "10.151.0.0/24"}], [{"subnet": "fd51::/64"}]]`, ""), dir)
	keeper := newContainer(t, sb, "keeper")
	n.mustAdd(keeper, "keeper", "eth0")
	before := stateOf(t, sb, n)
	if before.pinned["endpoints"] != 1 || before.pinned["ip_owners"] != 2 || before.natNetworks != 1 {
		t.Fatalf("state with one dual-stack container %+v: the counts below would prove nothing", before)
	}
	for _, step := range addSteps {
		t.Run(step, func(t *testing.T) {
			t.Setenv("BPFBRIDGE_FAIL_AFTER", step)
			ctr := newContainer(t, sb, "f-"+step)
			_, err := n.add(ctr, "doomed-"+step, "eth0")
			if err == nil {
				t.Fatal("ADD succeeded")
			}
			mustContain(t, "error", err.Error(), fmt.Sprintf("injected failure after step %q", step), "undid")
			if hasLink(t, ctr, "eth0") {
				t.Error("eth0 left in the container")
			}
			assertSameState(t, before, stateOf(t, sb, n))
			n.assertIndexHolds("keeper")
		})
	}
	if err := n.del(keeper, "keeper", "eth0"); err != nil {
		t.Fatal(err)
	}
	n.assertStoreEmpty()
}

// assertIndexHolds fails unless the store's attachment index holds exactly
// the attachments of the given container ids.
func (n *network) assertIndexHolds(ids ...string) {
	n.t.Helper()
	idx, err := os.ReadDir(filepath.Join(n.storeDir(), ".attachments"))
	if err != nil && !os.IsNotExist(err) {
		n.t.Fatal(err)
	}
	if len(idx) != len(ids) {
		n.t.Errorf("%d attachment index entries, want %d (%v)", len(idx), len(ids), ids)
	}
}

// TestMasqueradeFailureUndoesAll is the real failure of defect 3: an uplink
// that does not exist fails the masquerade step with code 112, and the
// endpoint record, its owners, stats and (tcx) link pins go with the veth
// and the addresses.
func TestMasqueradeFailureUndoesAll(t *testing.T) {
	sb := sandbox.ForTest(t)
	n := newNetwork(t, sb, masqConf("nouplink", "br-nouplink", t.TempDir(), masqRanges4,
		`"masquerade": {"uplinks": ["nonexistent0"]}`), bins.PluginDir())
	ctr := newContainer(t, sb, "nouplink")
	_, err := n.add(ctr, "nouplink", "eth0")
	if cniCode(err) != 112 {
		t.Fatalf("ADD: %v (code %d), want code 112", err, cniCode(err))
	}
	mustContain(t, "error", err.Error(), "nonexistent0", "undid")
	if hasLink(t, ctr, "eth0") {
		t.Error("eth0 left in the container")
	}
	var nothing nodeState
	nothing.allocations = map[string]string{}
	nothing.pinned = map[string]int{"endpoints": 0, "ip_owners": 0, "endpoint_meta": 0, "endpoint_stats": 0, "links": 0}
	assertSameState(t, nothing, stateOf(t, sb, n))
	n.assertStoreEmpty()
}
