package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

var cniVersions = []string{"0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// TestEveryCNIVersion runs ADD, CHECK, STATUS, GC and DEL for each CNI
// version the plugin supports and checks each result's shape.
func TestEveryCNIVersion(t *testing.T) {
	sb := sandbox.ForTest(t)
	for i, v := range cniVersions {
		t.Run(v, func(t *testing.T) {
			conf := fmt.Sprintf(`{"cniVersion": %q, "name": "ver%d", "type": "bridge", "bridge": "br-ver%d",
				"isGateway": true, "isDefaultGateway": true,
				"ipam": {"type": "host-local", "subnet": "10.%d.0.0/24", "dataDir": %q}}`,
				v, i, i, 10+i, t.TempDir())
			n := newNetwork(t, sb, conf, bins.PluginDir())
			ctr, err := sb.NewContainer(fmt.Sprintf("ver%d", i))
			if err != nil {
				t.Fatal(err)
			}
			id := "ctr-" + v
			res, err := n.add(ctr, id, "eth0")
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			assertResultShape(t, v, resultJSON(t, res), fmt.Sprintf("10.%d.0.2/24", 10+i), fmt.Sprintf("10.%d.0.1", 10+i))

			if v >= "0.4.0" {
				checkDetectsDrift(t, n, ctr, id, fmt.Sprintf("10.%d.0.1", 10+i))
			} else if err := n.check(ctr, id, "eth0"); err == nil {
				t.Errorf("CHECK succeeded for cniVersion %s, which has no CHECK", v)
			}
			if v == "1.1.0" {
				statusAndGC(t, sb, n, conf, id)
			}

			if err := n.del(ctr, id, "eth0"); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			n.assertStoreEmpty()
			if hasLink(t, ctr, "eth0") {
				t.Error("eth0 still in the container after DEL")
			}
		})
	}
}

// assertResultShape checks the fields that tell the result versions apart.
func assertResultShape(t *testing.T, v string, m map[string]any, wantIP, wantGW string) {
	t.Helper()
	if m["cniVersion"] != v {
		t.Errorf("cniVersion = %v, want %s", m["cniVersion"], v)
	}
	if v < "0.3.0" {
		ip4, _ := m["ip4"].(map[string]any)
		if ip4 == nil || ip4["ip"] != wantIP || ip4["gateway"] != wantGW {
			t.Errorf("ip4 = %v, want ip %s gateway %s", m["ip4"], wantIP, wantGW)
		}
		if _, ok := m["interfaces"]; ok {
			t.Errorf("a %s result has interfaces: %v", v, m)
		}
		return
	}
	if _, ok := m["ip4"]; ok {
		t.Errorf("a %s result has ip4: %v", v, m)
	}
	ifs, _ := m["interfaces"].([]any)
	if len(ifs) != 3 {
		t.Fatalf("interfaces = %v, want bridge, host veth, container", m["interfaces"])
	}
	ctrIf, _ := ifs[2].(map[string]any)
	if ctrIf["name"] != "eth0" || ctrIf["sandbox"] == "" || ctrIf["mac"] == "" {
		t.Errorf("interfaces[2] = %v, want eth0 with sandbox and mac", ctrIf)
	}
	ips, _ := m["ips"].([]any)
	if len(ips) != 1 {
		t.Fatalf("ips = %v, want one", m["ips"])
	}
	ip, _ := ips[0].(map[string]any)
	if ip["address"] != wantIP || ip["gateway"] != wantGW || ip["interface"] != float64(2) {
		t.Errorf("ips[0] = %v, want address %s gateway %s interface 2", ip, wantIP, wantGW)
	}
	_, hasVersion := ip["version"]
	if wantVersion := v < "1.0.0"; hasVersion != wantVersion {
		t.Errorf("ips[0] has version field: %v, want %v (cniVersion %s)", hasVersion, wantVersion, v)
	}
	routes, _ := m["routes"].([]any)
	if len(routes) != 1 || routes[0].(map[string]any)["dst"] != "0.0.0.0/0" {
		t.Errorf("routes = %v, want the default route of isDefaultGateway", m["routes"])
	}
}

// checkDetectsDrift expects CHECK to pass on the healthy attachment and to
// fail once its default route, and then its address, is removed.
func checkDetectsDrift(t *testing.T, n *network, ctr *sandbox.NetNS, id, gw string) {
	t.Helper()
	if err := n.check(ctr, id, "eth0"); err != nil {
		t.Fatalf("CHECK on a healthy attachment: %v", err)
	}
	var route netlink.Route
	err := ctr.Do(func() error {
		routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
		for _, r := range routes {
			if r.Gw.String() == gw {
				route = r
			}
		}
		if err != nil {
			return err
		}
		return netlink.RouteDel(&route)
	})
	if err != nil {
		t.Fatalf("remove default route: %v", err)
	}
	if err := n.check(ctr, id, "eth0"); err == nil {
		t.Error("CHECK passed after the default route was removed")
	}
	if err := ctr.Do(func() error { return netlink.RouteAdd(&route) }); err != nil {
		t.Fatalf("restore default route: %v", err)
	}
	if err := n.check(ctr, id, "eth0"); err != nil {
		t.Fatalf("CHECK after restoring the route: %v", err)
	}
	err = ctr.Do(func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil || len(addrs) == 0 {
			return fmt.Errorf("no address on eth0: %v", err)
		}
		return netlink.AddrDel(link, &addrs[0])
	})
	if err != nil {
		t.Fatalf("remove address: %v", err)
	}
	if err := n.check(ctr, id, "eth0"); err == nil {
		t.Error("CHECK passed after the container's address was removed")
	}
}

// statusAndGC checks STATUS, then makes a stale allocation (a container
// whose runtime forgot it without DEL) and expects GC to release it while
// keeping the valid attachment id.
func statusAndGC(t *testing.T, sb *sandbox.Sandbox, n *network, conf, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := sb.InNode(func() error { return n.cni.GetStatusNetworkList(ctx, n.list) }); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	// A second runtime (its own result cache) attaches a container, which
	// then vanishes without DEL: its allocation is stale.
	other := newNetwork(t, sb, conf, bins.PluginDir())
	ghost := newContainer(t, sb, "ghost")
	stale := other.mustAdd(ghost, "ghost", "eth0").IPs[0].Address.IP.String()
	if err := ghost.Delete(); err != nil {
		t.Fatal(err)
	}
	before := n.allocations()
	if _, ok := before[stale]; !ok || len(before) != 2 {
		t.Fatalf("allocations before GC = %v, want the valid one and %s", before, stale)
	}
	err := sb.InNode(func() error {
		return n.cni.GCNetworkList(ctx, n.list, &libcni.GCArgs{
			ValidAttachments: []types.GCAttachment{{ContainerID: id, IfName: "eth0"}},
		})
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	after := n.allocations()
	if _, ok := after[stale]; ok || len(after) != 1 {
		t.Errorf("allocations after GC = %v, want only the valid attachment's", after)
	}
	if _, err := os.Stat(filepath.Join(n.storeDir(), stale)); !os.IsNotExist(err) {
		t.Errorf("stale allocation %s survived GC", stale)
	}
}
