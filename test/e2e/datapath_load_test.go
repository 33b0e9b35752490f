package e2e

import (
	"context"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// pinnedPrograms lists the node's pinned programs of this build: pin name
// to program id.
func pinnedPrograms(t *testing.T, sb *sandbox.Sandbox) map[string]ebpf.ProgramID {
	t.Helper()
	out := map[string]ebpf.ProgramID{}
	for _, p := range inNode(t, sb, "list programs", openDatapath(t, sb).Programs) {
		if p.Current {
			out[filepath.Base(p.Pin)] = p.ID
		}
	}
	return out
}

// hostVethOf attaches a new container name to n and returns its
// namespace and host veth.
func hostVethOf(n *network, name string) (*sandbox.NetNS, string) {
	n.t.Helper()
	ns, err := n.sb.NewContainer(name)
	if err != nil {
		n.t.Fatal(err)
	}
	res := n.mustAdd(ns, name, "eth0")
	return ns, res.Interfaces[1].Name
}

// TestFirstADDLoadsOnlyEndpointPrograms: a node without masquerade gets the
// endpoint programs only; its first masquerading network adds the uplink
// programs to the same build, and the containers keep theirs.
func TestFirstADDLoadsOnlyEndpointPrograms(t *testing.T) {
	sb := sandbox.ForTest(t)
	plain := newNetwork(t, sb, gatewayConf("plain", "br-plain", "10.96.0.0/24", t.TempDir()), bins.PluginDir())
	c0, veth := hostVethOf(plain, "c0")
	before := pinnedPrograms(t, sb)
	if got := slices.Sorted(maps.Keys(before)); !slices.Equal(got, []string{"from_container", "to_container"}) {
		t.Fatalf("after a plain ADD the build pins %v, want the endpoint programs only", got)
	}
	ingress, _ := attachedPrograms(t, sb, veth)
	if !slices.Contains(ingress, before["from_container"]) {
		t.Errorf("veth of c0 runs %v, not the pinned from_container %d", ingress, before["from_container"])
	}

	masq := newNetwork(t, sb, `{"cniVersion": "1.1.0", "name": "masq", "type": "bridge", "bridge": "br-masq",
		"isGateway": true, "ipMasq": true, "ipam": {"type": "host-local", "subnet": "10.97.0.0/24", "dataDir": "`+t.TempDir()+`"}}`,
		bins.PluginDir())
	masq.attach("m0")
	after := pinnedPrograms(t, sb)
	if got := slices.Sorted(maps.Keys(after)); !slices.Equal(got, []string{"from_container", "to_container", "uplink_egress", "uplink_ingress"}) {
		t.Fatalf("after a masquerading ADD the build pins %v, want all four programs", got)
	}
	if after["from_container"] != before["from_container"] || len(pinnedBuilds(t, sb)) != 1 {
		t.Errorf("the masquerading ADD replaced the endpoint programs (%v → %v) or added a build (%v)", before, after, pinnedBuilds(t, sb))
	}
	ingress, egress := tcPrograms(t, sb, sandbox.NodeUplinkName, datapath.AttachLegacy) // uplinks use cls_bpf in every mode
	if !slices.Contains(egress, after["uplink_egress"]) || !slices.Contains(ingress, after["uplink_ingress"]) {
		t.Errorf("uplink runs %v/%v, want the pinned uplink programs %v", ingress, egress, after)
	}
	if !reaches(c0, netip.MustParseAddr("10.96.0.1")) {
		t.Error("c0 lost its gateway")
	}
}

// TestDatapathLoad: `bridge datapath load` pins every program of the build
// before any ADD, again is a no-op, and the first ADD then uses those
// programs instead of loading its own.
func TestDatapathLoad(t *testing.T) {
	sb := sandbox.ForTest(t)
	load := func() {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := sb.Node.Command(ctx, filepath.Join(bins.PluginDir(), "bridge"), "datapath", "load", "--bpffs", sb.BPFFS).CombinedOutput()
		if err != nil {
			t.Fatalf("bridge datapath load: %v\n%s", err, out)
		}
	}
	load()
	first := pinnedPrograms(t, sb)
	want := []string{"from_container", "portmap_connect4", "portmap_connect6", "portmap_getpeername4", "portmap_getpeername6",
		"portmap_recvmsg4", "portmap_recvmsg6", "portmap_sendmsg4", "portmap_sendmsg6", "to_container", "uplink_egress", "uplink_ingress"}
	if got := slices.Sorted(maps.Keys(first)); !slices.Equal(got, want) {
		t.Fatalf("datapath load pinned %v, want all of them: %v", got, want)
	}
	load()
	if again := pinnedPrograms(t, sb); !maps.Equal(again, first) {
		t.Errorf("a second datapath load changed the programs: %v → %v", first, again)
	}
	n := newNetwork(t, sb, gatewayConf("loaded", "br-loaded", "10.98.0.0/24", t.TempDir()), bins.PluginDir())
	_, veth := hostVethOf(n, "c0")
	ingress, egress := attachedPrograms(t, sb, veth)
	if !slices.Contains(ingress, first["from_container"]) || !slices.Contains(egress, first["to_container"]) {
		t.Errorf("veth runs %v/%v, not the programs datapath load pinned (%v)", ingress, egress, first)
	}
	if after := pinnedPrograms(t, sb); !maps.Equal(after, first) || len(pinnedBuilds(t, sb)) != 1 {
		t.Errorf("the ADD after datapath load changed the pinned programs: %v → %v", first, after)
	}
}
