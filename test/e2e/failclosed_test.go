package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// Fail closed: no code path leaves a veth that carries a container's
// traffic without bpfbridge's programs, and no plugin run starts a second
// datapath beside a live one.

// TestRemovedEndpointLeavesNoVeth: an endpoint removed while its container
// lives — by a GC whose valid list forgot it, by a second ADD of its
// (container id, ifname) into another netns — takes its veth along. Were
// the veth left without programs, the container could spoof its address
// and reach an isolated network.
func TestRemovedEndpointLeavesNoVeth(t *testing.T) {
	sb := sandbox.ForTest(t)
	// No IPAM: nothing but the datapath refuses a duplicate attachment.
	l2 := func(name, bridge string) string {
		return fmt.Sprintf(`{"cniVersion": "1.1.0", "name": %q, "type": "bridge", "bridge": %q, "isolation": "network"}`, name, bridge)
	}
	n := newNetwork(t, sb, l2("fca", "br-fca"), bins.PluginDir())
	isolated := newNetwork(t, sb, isoConf("fcb", "br-fcb", "10.187.0.0/24", "network", t.TempDir()), bins.PluginDir())
	target := isolated.attach("fcb0")

	// GC with an empty valid list, the container still running.
	gcVictim, err := sb.NewContainer("fcgc")
	if err != nil {
		t.Fatal(err)
	}
	n.mustAdd(gcVictim, "fcgc", "eth0")
	if err := sb.InNode(func() error {
		return n.cni.GCNetworkList(context.Background(), n.list, &libcni.GCArgs{})
	}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	assertCut(t, gcVictim, target)

	// The same (container id, ifname) added again, into another netns.
	first, err := sb.NewContainer("fcdup1")
	if err != nil {
		t.Fatal(err)
	}
	second, err := sb.NewContainer("fcdup2")
	if err != nil {
		t.Fatal(err)
	}
	n.mustAdd(first, "fcdup", "eth0")
	n.mustAdd(second, "fcdup", "eth0")
	assertCut(t, first, target)
	if !hasLink(t, second, "eth0") {
		t.Error("the second ADD's container has no eth0")
	}
	if err := n.del(second, "fcdup", "eth0"); err != nil {
		t.Fatal(err)
	}
}

// assertCut fails unless ctr lost its interface, and with it every way to
// send: no spoofed frame can leave it, and it reaches nothing.
func assertCut(t *testing.T, ctr *sandbox.NetNS, isolated container) {
	t.Helper()
	if !hasLink(t, ctr, "eth0") {
		return
	}
	t.Errorf("%s still has eth0 after its endpoint was removed", ctr.Name)
	if reaches(ctr, isolated.ip) {
		t.Errorf("%s reaches the isolated network's %s", ctr.Name, isolated.id)
	}
}

// TestLostStateFailsClosed: the node's bpffs loses its pins (unmounted and
// mounted again empty) while containers run. The next ADD and CHECK do not
// start a second, empty datapath beside the live one, whose containers the
// new ones would not be isolated from: they fail with code 112 saying why,
// create nothing, and leave no container's veth without programs (under
// tcx the links went with the pins: those veths are deleted).
func TestLostStateFailsClosed(t *testing.T) {
	sb := sandbox.ForTest(t)
	na := newNetwork(t, sb, isoConf("lsa", "br-lsa", "10.188.0.0/24", "network", t.TempDir()), bins.PluginDir())
	nb := newNetwork(t, sb, isoConf("lsb", "br-lsb", "10.189.0.0/24", "network", t.TempDir()), bins.PluginDir())
	a1, b1 := na.attach("lsa1"), nb.attach("lsb1")
	if reaches(a1.ns, b1.ip) {
		t.Fatal("isolation does not hold before the state is lost")
	}

	if err := unix.Unmount(sb.BPFFS, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", sb.BPFFS, "bpf", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}

	a2, err := sb.NewContainer("lsa2")
	if err != nil {
		t.Fatal(err)
	}
	allocated := len(na.allocations())
	_, err = na.add(a2, "lsa2", "eth0")
	if cniCode(err) != 112 || !strings.Contains(fmt.Sprint(err), "datapath state lost") {
		t.Fatalf("ADD after the state was lost: %v (code %d), want code 112 saying the state was lost", err, cniCode(err))
	}
	if hasLink(t, a2, "eth0") || len(na.allocations()) != allocated {
		t.Error("the refused ADD left its interface or its address")
	}
	// CHECK fails too: saying the state was lost, or (tcx) that the
	// container's interface is gone.
	want := "datapath state lost"
	if attachMode() == datapath.AttachTCX {
		want = `interface "eth0" not found`
	}
	if err := na.check(a1.ns, a1.id, "eth0"); cniCode(err) == 0 || !strings.Contains(fmt.Sprint(err), want) {
		t.Errorf("CHECK after the state was lost: %v, want an error saying %q", err, want)
	}
	if entries, _ := os.ReadDir(filepath.Join(sb.BPFFS, "bpfbridge")); len(entries) > 0 {
		names := []string{}
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if slices.Contains(names, "maps") {
			t.Errorf("a second datapath was created beside the live one: %v", names)
		}
	}
	// The old containers stay isolated: by their programs and the maps those
	// hold (cls_bpf), or by having no veth left (tcx).
	if reaches(a1.ns, b1.ip) || reaches(b1.ns, a1.ip) {
		t.Error("containers of two networks reach each other after the state was lost")
	}
	if attachMode() == datapath.AttachTCX && (hasLink(t, a1.ns, "eth0") || hasLink(t, b1.ns, "eth0")) {
		t.Error("a veth whose tcx links went with the pins still carries its container's traffic")
	}

	// Once those containers are gone, the node starts afresh.
	for _, d := range []struct {
		n *network
		c container
	}{{na, a1}, {nb, b1}} {
		if err := d.n.del(d.c.ns, d.c.id, "eth0"); err != nil {
			t.Errorf("DEL %s: %v", d.c.id, err)
		}
	}
	na.mustAdd(a2, "lsa2", "eth0")
}

// TestUnderIPNetnsExec: cnitool run under `ip netns exec`, which remounts
// /sys and so hides the node's bpffs, never gets a private datapath per
// plugin run (containers of two networks would not be isolated). Where the
// machine's initial mount namespace has a bpffs at /sys/fs/bpf, the plugin
// uses that one; where it has none (this machine kind), the ADD fails with
// code 112 and creates nothing. The plugins run in a mount namespace of the
// test's own, so the machine's /var/lib and /sys/fs/bpf stay untouched.
func TestUnderIPNetnsExec(t *testing.T) {
	if datapath.IsBPFFS("/proc/2/root/sys/fs/bpf") {
		t.Skip("this machine's initial mount namespace has a bpffs at /sys/fs/bpf: the plugin would use it, and this test does not write the machine's bpffs")
	}
	mnt, err := sandbox.NewMountNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mnt.Close() })
	state := t.TempDir()
	if out, err := mnt.Run("mount", "--bind", state, "/var/lib"); err != nil {
		t.Fatalf("private /var/lib: %v: %s", err, out)
	}
	sb := sandbox.ForTest(t)
	confDir := t.TempDir()
	dataDir := t.TempDir()
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "ipne", "plugins": [{"type": "bridge", "bridge": "br-ipne",
		"isGateway": true, "ipam": {"type": "host-local", "subnet": "10.190.0.0/24", "dataDir": %q}}]}`, dataDir)
	if err := os.WriteFile(filepath.Join(confDir, "ipne.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	ctr, err := sb.NewContainer("ipne0")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", "--target", mnt.Pid(), "--mount", "--",
		"ip", "netns", "exec", sb.Node.Name, bins.CNITool, "add", "ipne", ctr.Path)
	cmd.Env = append(os.Environ(), "NETCONFPATH="+confDir, "CNI_PATH="+bins.PluginDir())
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("ADD under ip netns exec succeeded with no bpffs visible to the plugin:\n%s", out)
	}
	// cnitool prints the plugin's error message; code 112's start with
	// "eBPF datapath".
	if !strings.Contains(string(out), "eBPF datapath: no bpffs") || !strings.Contains(string(out), "ip netns exec") {
		t.Errorf("ADD under ip netns exec: %v\n%s\nwant the datapath's error (code 112) naming ip netns exec", err, out)
	}
	if hasLink(t, ctr, "eth0") || len(nodeVeths(t, sb)) != 0 {
		t.Error("the refused ADD left a veth")
	}
	if allocs, _ := os.ReadDir(filepath.Join(dataDir, "ipne")); len(allocationNames(allocs)) != 0 {
		t.Errorf("the refused ADD left allocations: %v", allocationNames(allocs))
	}
}

// TestDelWithoutTheEnvironment: a runtime that runs DEL with another
// environment than ADD (podman's cleanup passes only a few variables, so
// BPFBRIDGE_BPFFS does not reach it) still removes the endpoint: DEL finds
// its record in the bpffs it was pinned in.
func TestDelWithoutTheEnvironment(t *testing.T) {
	sb := sandbox.ForTest(t)
	conf := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "noenv", "type": "bridge", "bridge": "br-noenv",
		"isGateway": true, "datapath": {}, "ipam": {"type": "host-local", "subnet": "10.191.0.0/24", "dataDir": %q}}`, t.TempDir())
	n := newNetwork(t, sb, conf, bins.PluginDir())
	t.Setenv("BPFBRIDGE_BPFFS", sb.BPFFS)
	c := n.attach("noenv0")
	if got := pinnedEntries(t, sb)["endpoint_meta"]; got != 1 {
		t.Fatalf("%d endpoint records after ADD, want 1", got)
	}
	os.Unsetenv("BPFBRIDGE_BPFFS")
	// The container exited: its namespace is gone before the DEL.
	if err := c.ns.Delete(); err != nil {
		t.Fatal(err)
	}
	if err := n.del(c.ns, c.id, "eth0"); err != nil {
		t.Fatalf("DEL without BPFBRIDGE_BPFFS: %v", err)
	}
	empty := map[string]int{"endpoints": 0, "ip_owners": 0, "endpoint_meta": 0, "endpoint_stats": 0, "links": 0}
	if got := pinnedEntries(t, sb); !mapsEqual(got, empty) {
		t.Errorf("datapath state after DEL without the environment: %v, want none", got)
	}
	n.assertStoreEmpty()
}
