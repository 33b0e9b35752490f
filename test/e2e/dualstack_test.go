package e2e

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// dualStackConf is a gateway network with one IPv4 and one IPv6 range set.
func dualStackConf(version, name, bridge, dataDir string) string {
	return fmt.Sprintf(`{"cniVersion": %q, "name": %q, "type": "bridge", "bridge": %q,
		"isGateway": true, "isDefaultGateway": true,
		"ipam": {"type": "host-local", "dataDir": %q,
			"ranges": [[{"subnet": "10.80.0.0/24"}], [{"subnet": "fd00:80::/64"}]]}}`, version, name, bridge, dataDir)
}

// TestDualStack attaches two containers to a dual-stack network and checks
// addresses, default routes of both families, and reachability over both.
func TestDualStack(t *testing.T) {
	sb := sandbox.ForTest(t)
	n := newNetwork(t, sb, dualStackConf("1.0.0", "dual", "br-dual", t.TempDir()), bins.PluginDir())
	ctrs := newContainers(t, sb, "ds", 2)
	var v6 []netip.Addr
	for i, ctr := range ctrs {
		res := n.mustAdd(ctr, fmt.Sprintf("ds%d", i), "eth0")
		var got []string
		for _, ipc := range res.IPs {
			got = append(got, ipc.Address.String())
			if a, _ := netip.AddrFromSlice(ipc.Address.IP); a.Is6() && !a.Is4In6() {
				v6 = append(v6, a)
			}
		}
		want := []string{fmt.Sprintf("10.80.0.%d/24", i+2), fmt.Sprintf("fd00:80::%d/64", i+2)}
		if !slices.Equal(got, want) {
			t.Errorf("result addresses %v, want %v", got, want)
		}
		if have := addrsOf(t, ctr, "eth0"); !slices.Equal(have, want) {
			t.Errorf("eth0 in %s has %v, want %v", ctr.Name, have, want)
		}
		assertDefaultRoute(t, ctr, "10.80.0.1")
		assertDefaultRoute(t, ctr, "fd00:80::1")
	}
	for _, dst := range []netip.Addr{netip.MustParseAddr("10.80.0.1"), netip.MustParseAddr("fd00:80::1"), v6[1]} {
		if got, err := sandbox.Ping(ctrs[0], dst, 3, 5*time.Second); got != 3 {
			t.Errorf("ping %s: %d/3 replies (%v)", dst, got, err)
		}
	}
	for i, ctr := range ctrs {
		if err := n.del(ctr, fmt.Sprintf("ds%d", i), "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	n.assertStoreEmpty()
}

// TestDualStackOldResult checks the down-conversion to a 0.2.0 result: the
// first address of each family as ip4 and ip6.
func TestDualStackOldResult(t *testing.T) {
	sb := sandbox.ForTest(t)
	n := newNetwork(t, sb, dualStackConf("0.2.0", "dual-old", "br-old", t.TempDir()), bins.PluginDir())
	ctr := newContainer(t, sb, "old")
	res, err := n.add(ctr, "old", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	m := resultJSON(t, res)
	ip4, _ := m["ip4"].(map[string]any)
	ip6, _ := m["ip6"].(map[string]any)
	if ip4 == nil || ip4["ip"] != "10.80.0.2/24" || ip4["gateway"] != "10.80.0.1" {
		t.Errorf("ip4 = %v", m["ip4"])
	}
	if ip6 == nil || ip6["ip"] != "fd00:80::2/64" || ip6["gateway"] != "fd00:80::1" {
		t.Errorf("ip6 = %v", m["ip6"])
	}
	if err := n.del(ctr, "old", "eth0"); err != nil {
		t.Fatal(err)
	}
	n.assertStoreEmpty()
}
