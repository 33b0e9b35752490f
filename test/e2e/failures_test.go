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

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// TestExhaustionLeavesNothing fills a /29 and expects the extra ADD to fail
// with the exhaustion code, leaving no link, allocation or index entry.
func TestExhaustionLeavesNothing(t *testing.T) {
	sb := sandbox.ForTest(t)
	n := newNetwork(t, sb, gatewayConf("small", "br-small", "10.50.0.0/29", t.TempDir()), bins.PluginDir())
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
			ctr, err := sb.NewContainer(c.bridge)
			if err != nil {
				t.Fatal(err)
			}
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
		ctr, err := sb.NewContainer(bridge)
		if err != nil {
			t.Fatal(err)
		}
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
	sb := sandbox.ForTest(t)
	n := newNetwork(t, sb, gatewayConf("idem", "br-idem", "10.90.0.0/24", t.TempDir()), bins.PluginDir())
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
	ctr, err := sb.NewContainer("taken")
	if err != nil {
		t.Fatal(err)
	}
	if err := ctr.Do(func() error {
		return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}})
	}); err != nil {
		t.Fatal(err)
	}
	_, err = n.add(ctr, "taken", "eth0")
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
	ctr, err := sb.NewContainer("bad")
	if err != nil {
		t.Fatal(err)
	}
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
