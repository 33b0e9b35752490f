package e2e

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/test/netconf"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// TestDCOSConfigThroughCnitool attaches two containers with the DC/OS
// config through cnitool and checks the result shape Mesos expects, the
// MTU of every link, the routes, reachability and the allocation files.
func TestDCOSConfigThroughCnitool(t *testing.T) {
	sb := sandbox.ForTest(t)
	confDir, state := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(confDir, "dcos.conf"), []byte(netconf.DCOS), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sb.MountBPFFS(); err != nil {
		t.Fatal(err)
	}
	tool := sandbox.CNITool{Binary: bins.CNITool, NetConfPath: confDir, CNIPath: []string{bins.PluginDir()}, StateDir: state,
		Env: []string{"BPFBRIDGE_BPFFS=" + sb.BPFFS}}
	store := filepath.Join(state, "cni", "networks", "dcos")
	ctrs := newContainers(t, sb, "c", 2)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var ips []netip.Addr
	for _, ctr := range ctrs {
		out, _, err := tool.Run(ctx, sb.Node, "add", "dcos", ctr.Path)
		if err != nil {
			t.Fatal(err)
		}
		var res struct {
			CNIVersion string                        `json:"cniVersion"`
			IP4        *struct{ IP, Gateway string } `json:"ip4"`
			Interfaces []any                         `json:"interfaces"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("cnitool output is not a result: %v\n%s", err, out)
		}
		if res.IP4 == nil || res.Interfaces != nil {
			t.Fatalf("want a 0.1.0-shaped result with ip4 and no interfaces, got:\n%s", out)
		}
		addr, err := netip.ParsePrefix(res.IP4.IP)
		if err != nil || addr.Bits() != 25 || !netip.MustParsePrefix("9.0.1.0/25").Contains(addr.Addr()) {
			t.Errorf("ip4.ip = %q, want an address in 9.0.1.0/25 with /25", res.IP4.IP)
		}
		if res.IP4.Gateway != "9.0.1.1" {
			t.Errorf("ip4.gateway = %q, want 9.0.1.1", res.IP4.Gateway)
		}
		ips = append(ips, addr.Addr())

		if got := linkIn(t, ctr, "eth0").Attrs().MTU; got != 1420 {
			t.Errorf("container eth0 MTU = %d, want 1420", got)
		}
		assertDefaultRoute(t, ctr, "9.0.1.1")
		data, err := os.ReadFile(filepath.Join(store, addr.Addr().String()))
		if err != nil || !strings.HasSuffix(string(data), "\r\neth0") {
			t.Errorf("allocation file of %s: %q, %v; want <containerID>\\r\\neth0", addr.Addr(), data, err)
		}
	}
	if got := linkIn(t, sb.Node, "m-dcos").Attrs().MTU; got != 1420 {
		t.Errorf("bridge m-dcos MTU = %d, want 1420", got)
	}
	if got := pinnedEntries(t, sb)["endpoint_meta"]; got != 2 {
		t.Errorf("datapath records after two ADDs: %d, want 2", got)
	}
	ports := bridgePorts(t, sb, "m-dcos")
	if len(ports) != 2 {
		t.Fatalf("m-dcos has ports %v, want 2", ports)
	}
	for _, p := range ports {
		if got := linkIn(t, sb.Node, p).Attrs().MTU; got != 1420 {
			t.Errorf("host veth %s MTU = %d, want 1420", p, got)
		}
	}

	for _, dst := range []netip.Addr{netip.MustParseAddr("9.0.1.1"), ips[1]} {
		if got, err := sandbox.Ping(ctrs[0], dst, 3, 5*time.Second); got != 3 {
			t.Errorf("ping %s from %s: %d/3 replies (%v)", dst, ctrs[0].Name, got, err)
		}
	}

	for i, ctr := range ctrs {
		if _, _, err := tool.Run(ctx, sb.Node, "del", "dcos", ctr.Path); err != nil {
			t.Fatal(err)
		}
		if hasLink(t, ctr, "eth0") {
			t.Errorf("eth0 still in %s after DEL", ctr.Name)
		}
		if _, err := os.Stat(filepath.Join(store, ips[i].String())); !os.IsNotExist(err) {
			t.Errorf("allocation file of %s still there after DEL (%v)", ips[i], err)
		}
	}
	if v := nodeVeths(t, sb); len(v) != 0 {
		t.Errorf("host veths left after DEL: %v", v)
	}
	if got := linkIn(t, sb.Node, "m-dcos").Attrs().MTU; got != 1420 {
		t.Errorf("bridge m-dcos MTU after the last DEL = %d, want 1420", got)
	}
	zero := map[string]int{"endpoints": 0, "ip_owners": 0, "endpoint_meta": 0, "endpoint_stats": 0, "links": 0}
	if got := pinnedEntries(t, sb); !mapsEqual(got, zero) {
		t.Errorf("datapath state after DEL = %v, want none", got)
	}
}

// assertDefaultRoute fails unless n has a default route via gw.
func assertDefaultRoute(t *testing.T, n *sandbox.NetNS, gw string) {
	t.Helper()
	found := false
	err := n.Do(func() error {
		family := netlink.FAMILY_V4
		if netip.MustParseAddr(gw).Is6() {
			family = netlink.FAMILY_V6
		}
		routes, err := netlink.RouteList(nil, family)
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw.String() == gw {
				found = true
			}
		}
		return err
	})
	if err != nil || !found {
		t.Errorf("%s has no default route via %s (%v)", n.Name, gw, err)
	}
}
