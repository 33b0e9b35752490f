package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// TestExhaustionLeavesNothing fills a /29 and expects the extra ADD to fail
// with the exhaustion code, leaving no link, allocation or index entry.
func TestExhaustionLeavesNothing(t *testing.T) {
	sb, n := newGatewayNetwork(t, "small", "br-small", "10.50.0.0/29")
	// 10.50.0.0/29: .1 is the gateway, .7 broadcast, so .2-.6 are free.
	ctrs := newContainers(t, sb, "x", 6)
	for i, ctr := range ctrs[:5] {
		n.mustAdd(ctr, fmt.Sprintf("fill-%d", i), "eth0")
	}
	_, err := n.add(ctrs[5], "one-too-many", "eth0")
	if cniCode(err) != 100 {
		t.Fatalf("ADD into a full /29: %v (code %d), want code 100", err, cniCode(err))
	}
	mustContain(t, "exhaustion error", err.Error(), "10.50.0.0/29")
	if hasLink(t, ctrs[5], "eth0") {
		t.Error("the failed ADD left eth0 in its container")
	}
	if got := len(nodeVeths(t, sb)); got != 5 {
		t.Errorf("%d host veths after the failed ADD, want 5", got)
	}
	if got := len(n.allocations()); got != 5 {
		t.Errorf("%d allocations after the failed ADD, want 5", got)
	}
	for i, ctr := range ctrs[:5] {
		if err := n.del(ctr, fmt.Sprintf("fill-%d", i), "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	n.assertStoreEmpty()
}

// TestFailureAfterAllocationUndoesAll makes ADD fail after IPAM allocated
// (a bridge in use has another MTU) and after the veth exists (a foreign
// address on the bridge): neither leaves an allocation or a veth behind.
func TestFailureAfterAllocationUndoesAll(t *testing.T) {
	sb := sandbox.ForTest(t)
	err := sb.InNode(func() error {
		if err := addBridge("br-mtu", 1500, ""); err != nil {
			return err
		}
		// A port makes br-mtu "in use", so its MTU must not change.
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "busy0", MTU: 1500}, PeerName: "busy1"}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		br, _ := netlink.LinkByName("br-mtu")
		if err := netlink.LinkSetMaster(veth, br); err != nil {
			return err
		}
		return addBridge("br-addr", 1420, "10.61.0.77/24")
	})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		bridge, subnet string
		want           []string
	}{
		{"br-mtu", "10.60.0.0/24", []string{"br-mtu", "1500", `"mtu": 1420`}},
		{"br-addr", "10.61.0.0/24", []string{"br-addr", "10.61.0.77/24", "forceAddress"}},
	}
	for _, c := range cases {
		t.Run(c.bridge, func(t *testing.T) {
			n := newNetwork(t, sb, fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "type": "bridge",
				"bridge": %q, "isGateway": true, "mtu": 1420,
				"ipam": {"type": "host-local", "subnet": %q, "dataDir": %q}}`, c.bridge, c.bridge, c.subnet, t.TempDir()), bins.PluginDir())
			ctr := newContainer(t, sb, c.bridge)
			_, err = n.add(ctr, "doomed", "eth0")
			if cniCode(err) != 110 {
				t.Fatalf("ADD: %v (code %d), want code 110", err, cniCode(err))
			}
			mustContain(t, "conflict error", err.Error(), c.want...)
			n.assertStoreEmpty()
			if hasLink(t, ctr, "eth0") {
				t.Error("eth0 left in the container")
			}
			if v := nodeVeths(t, sb); !slices.Equal(v, []string{"busy1", "busy0"}) && !slices.Equal(v, []string{"busy0", "busy1"}) {
				t.Errorf("node veths %v, want only the test's busy0/busy1", v)
			}
		})
	}
}

// TestBridgeMTUIsKept checks that a bridge keeps the configured MTU when
// its last container leaves (the kernel would fall back to 1500), and that
// an unused bridge with another MTU takes the configured one.
func TestBridgeMTUIsKept(t *testing.T) {
	sb := sandbox.ForTest(t)
	if err := sb.InNode(func() error { return addBridge("br-idle", 1500, "") }); err != nil {
		t.Fatal(err)
	}
	for _, bridge := range []string{"br-new", "br-idle"} {
		n := newNetwork(t, sb, fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "type": "bridge",
			"bridge": %q, "mtu": 1420, "ipam": {"type": "host-local", "subnet": "10.62.0.0/24", "dataDir": %q}}`,
			bridge, bridge, t.TempDir()), bins.PluginDir())
		ctr := newContainer(t, sb, bridge)
		n.mustAdd(ctr, "c", "eth0")
		if err := n.del(ctr, "c", "eth0"); err != nil {
			t.Fatal(err)
		}
		if mtu := linkIn(t, sb.Node, bridge).Attrs().MTU; mtu != 1420 {
			t.Errorf("%s MTU after its last container left = %d, want 1420", bridge, mtu)
		}
	}
}

// addBridge creates a bridge in the calling thread's namespace, optionally
// with an address, as another tool or an older plugin would have left it.
func addBridge(name string, mtu int, addr string) error {
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = name, mtu
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		return err
	}
	if addr == "" {
		return nil
	}
	a, err := netlink.ParseAddr(addr)
	if err != nil {
		return err
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.AddrAdd(link, a)
}

// TestDelIsIdempotent deletes twice, without a netns, after the netns is
// gone, and for an attachment that never existed: every DEL succeeds and
// the address is always released.
func TestDelIsIdempotent(t *testing.T) {
	sb, n := newGatewayNetwork(t, "idem", "br-idem", "10.90.0.0/24")
	ctrs := newContainers(t, sb, "d", 3)
	for i, ctr := range ctrs {
		n.mustAdd(ctr, fmt.Sprintf("d%d", i), "eth0")
	}
	// d0: twice with its netns.
	for range 2 {
		if err := n.del(ctrs[0], "d0", "eth0"); err != nil {
			t.Fatalf("DEL d0: %v", err)
		}
	}
	// d1: without CNI_NETNS, as after a reboot; then twice more.
	for range 2 {
		if err := n.del(nil, "d1", "eth0"); err != nil {
			t.Fatalf("DEL d1 without netns: %v", err)
		}
	}
	// d2: its netns is already gone.
	if err := ctrs[2].Delete(); err != nil {
		t.Fatal(err)
	}
	if err := n.del(ctrs[2], "d2", "eth0"); err != nil {
		t.Fatalf("DEL d2 after its netns is gone: %v", err)
	}
	if err := n.del(nil, "never-added", "eth0"); err != nil {
		t.Fatalf("DEL of an unknown attachment: %v", err)
	}
	n.assertStoreEmpty()
}

// TestIfnameAlreadyExists expects ADD to refuse a CNI_IFNAME the container
// already has, without allocating or touching that interface.
func TestIfnameAlreadyExists(t *testing.T) {
	sb := sandbox.ForTest(t)
	n := newNetwork(t, sb, fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "taken", "type": "bridge",
		"bridge": "br-taken", "ipam": {"type": "host-local", "subnet": "10.91.0.0/24", "dataDir": %q}}`, t.TempDir()), bins.PluginDir())
	ctr := newContainer(t, sb, "taken")
	if err := ctr.Do(func() error {
		return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}})
	}); err != nil {
		t.Fatal(err)
	}
	_, err := n.add(ctr, "taken", "eth0")
	if cniCode(err) != types.ErrInvalidEnvironmentVariables {
		t.Fatalf("ADD over an existing eth0: %v (code %d), want code 4", err, cniCode(err))
	}
	mustContain(t, "error", err.Error(), "CNI_IFNAME", "eth0")
	n.assertStoreEmpty()
	if linkIn(t, ctr, "eth0").Type() != "bridge" {
		t.Error("the container's own eth0 was replaced")
	}
}

// TestInvalidInputs feeds the plugin binary bad configs and environments
// directly, as a runtime would, and expects the right CNI error code, a
// message naming the offending key and value, and nothing left behind.
func TestInvalidInputs(t *testing.T) {
	sb := sandbox.ForTest(t)
	ctr := newContainer(t, sb, "bad")
	const ipam = `"type": "host-local", "subnet": "10.70.0.0/24"`
	cases := []badInput{
		{"bad JSON", `{"name": "bad", "type": "bridge",`, nil, 6, []string{"JSON"}},
		{"missing name", `{"cniVersion": "1.0.0", "type": "bridge"}`, nil, 7, []string{"name"}},
		{"unknown version", conf(`"cniVersion": "9.9.9"`, ipam), nil, 1, []string{"9.9.9"}},
		{"subnet not a CIDR", conf(``, `"type": "host-local", "subnet": "10.70.0.0/33"`), nil, 7, []string{"subnet", "10.70.0.0/33"}},
		{"subnet host bits", conf(``, `"type": "host-local", "subnet": "10.70.0.5/24"`), nil, 7, []string{"subnet", "10.70.0.5/24"}},
		{"rangeStart outside subnet", conf(``, ipam+`, "rangeStart": "10.71.0.5"`), nil, 7, []string{"rangeStart", "10.71.0.5"}},
		{"rangeEnd before rangeStart", conf(``, ipam+`, "rangeStart": "10.70.0.50", "rangeEnd": "10.70.0.10"`), nil, 7, []string{"rangeEnd", "10.70.0.10"}},
		{"gateway outside subnet", conf(``, ipam+`, "gateway": "10.99.0.1"`), nil, 7, []string{"gateway", "10.99.0.1"}},
		{"bad route", conf(``, ipam+`, "routes": [{"dst": "nonsense"}]`), nil, 7, []string{"routes", "nonsense"}},
		{"gateway as static IP", conf(``, ipam), map[string]string{"CNI_ARGS": "IP=10.70.0.1"}, 7, []string{"10.70.0.1", "gateway"}},
		{"static IP outside range", conf(``, ipam), map[string]string{"CNI_ARGS": "IP=10.99.0.9"}, 7, []string{"10.99.0.9"}},
		{"unknown CNI_ARGS key", conf(``, ipam), map[string]string{"CNI_ARGS": "FOO=bar"}, 4, []string{"CNI_ARGS", "FOO"}},
		{"bad CNI_ARGS MAC", conf(``, ipam), map[string]string{"CNI_ARGS": "MAC=zz"}, 4, []string{"MAC", "zz"}},
		{"bad runtimeConfig.mac", conf(`"runtimeConfig": {"mac": "zz:zz"}`, ipam), nil, 7, []string{"runtimeConfig.mac", "zz:zz"}},
		{"vlan out of range", conf(`"vlan": 5000`, ipam), nil, 7, []string{"vlan", "5000"}},
		{"vlanTrunk minID above maxID", conf(`"vlanTrunk": [{"minID": 20, "maxID": 10}]`, ipam), nil, 7, []string{"vlanTrunk[0]", "10"}},
		{"negative mtu", conf(`"mtu": -1`, ipam), nil, 7, []string{"mtu", "-1"}},
		{"mtu of the wrong type", conf(`"mtu": "big"`, ipam), nil, 7, []string{"mtu", "string"}},
		{"bridge name too long", conf(`"bridge": "a-very-long-bridge-name"`, ipam), nil, 7, []string{"bridge", "a-very-long-bridge-name"}},
		{"masquerade exclude not a CIDR", conf(`"ipMasq": true, "masquerade": {"exclude": ["10.0.0.0/40"]}`, ipam), nil, 7, []string{"masquerade.exclude[0]", "10.0.0.0/40"}},
		{"masquerade port range", conf(`"ipMasq": true, "masquerade": {"portRange": "65000-1000"}`, ipam), nil, 7, []string{"masquerade.portRange", "65000-1000"}},
		{"unknown isolation", conf(`"isolation": "strict"`, ipam), nil, 7, []string{"isolation", "strict"}},
		{"unknown attach mode", conf(`"datapath": {"attach": "xdp"}`, ipam), nil, 7, []string{"datapath.attach", "xdp"}},
		{"hairpin with promisc", conf(`"hairpinMode": true, "promiscMode": true`, ipam), nil, 7, []string{"hairpinMode", "promiscMode"}},
		{"L2-only with a 0.2.0 result", `{"cniVersion": "0.2.0", "name": "bad", "type": "bridge", "bridge": "br-bad"}`, nil, 7, []string{"ipam", "0.2.0"}},
		{"disabled interface with ipam", conf(`"disableContainerInterface": true`, ipam), nil, 7, []string{"disableContainerInterface"}},
		{"missing CNI_CONTAINERID", conf(``, ipam), map[string]string{"CNI_CONTAINERID": ""}, 4, []string{"CNI_CONTAINERID"}},
		{"invalid CNI_CONTAINERID", conf(``, ipam), map[string]string{"CNI_CONTAINERID": "a/b"}, 4, []string{"CNI_CONTAINERID", "a/b"}},
		{"missing CNI_NETNS", conf(``, ipam), map[string]string{"CNI_NETNS": ""}, 4, []string{"CNI_NETNS"}},
		{"CNI_NETNS not a namespace", conf(``, ipam), map[string]string{"CNI_NETNS": "/nonexistent/netns"}, 8, []string{"/nonexistent/netns"}},
		{"CNI_IFNAME too long", conf(``, ipam), map[string]string{"CNI_IFNAME": "eth0123456789abc"}, 4, []string{"CNI_IFNAME", "eth0123456789abc"}},
	}
	runBadInputs(t, sb, ctr, cases)
}

// conf builds a bridge config for TestInvalidInputs: extra top-level keys
// follow the defaults (a repeated key overrides, as the later JSON key wins)
// and the store is at DATADIR.
func conf(extra, ipam string) string {
	if extra != "" {
		extra = ", " + extra
	}
	return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "bad", "type": "bridge", "bridge": "br-bad",
		"isGateway": true%s, "ipam": {%s, "dataDir": "DATADIR"}}`, extra, ipam)
}

// execPlugin runs our bridge binary inside the node with exactly env (and
// PATH) and stdin, returning the CNI error it printed, or nil when it exited 0.
func execPlugin(t *testing.T, sb *sandbox.Sandbox, env map[string]string, stdin string) *types.Error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	cmd := sb.Node.Command(ctx, bins.Bridge)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		if v != "" {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err == nil {
		return nil
	}
	if _, ok := err.(*exec.ExitError); !ok {
		t.Fatalf("run plugin: %v", err)
	}
	var cniErr types.Error
	if err := json.Unmarshal(stdout.Bytes(), &cniErr); err != nil || cniErr.Msg == "" {
		t.Fatalf("plugin failed without CNI error JSON on stdout: %q (stderr %q)", stdout.String(), stderr.String())
	}
	return &cniErr
}

// storeFiles lists allocation files under every network of dataDir.
func storeFiles(t testing.TB, dataDir string) []string {
	t.Helper()
	var found []string
	nets, _ := os.ReadDir(dataDir)
	for _, nw := range nets {
		entries, _ := os.ReadDir(filepath.Join(dataDir, nw.Name()))
		for _, e := range entries {
			if net.ParseIP(e.Name()) != nil {
				found = append(found, filepath.Join(nw.Name(), e.Name()))
			}
		}
	}
	slices.Sort(found)
	return found
}

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
	gcVictim := newContainer(t, sb, "fcgc")
	n.mustAdd(gcVictim, "fcgc", "eth0")
	if err := sb.InNode(func() error {
		return n.cni.GCNetworkList(context.Background(), n.list, &libcni.GCArgs{})
	}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	assertCut(t, gcVictim, target)

	// The same (container id, ifname) added again, into another netns.
	first := newContainer(t, sb, "fcdup1")
	second := newContainer(t, sb, "fcdup2")
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

	a2 := newContainer(t, sb, "lsa2")
	allocated := len(na.allocations())
	_, err := na.add(a2, "lsa2", "eth0")
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
	ctr := newContainer(t, sb, "ipne0")
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
