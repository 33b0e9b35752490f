package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// TestExistingBridgeMACPinned: a gateway network on a bridge created
// beforehand pins the bridge's MAC, as the reference does: it does not
// follow the lowest port MAC as containers come and go, so the containers'
// gateway neighbour entries stay valid.
func TestExistingBridgeMACPinned(t *testing.T) {
	sb := sandbox.ForTest(t)
	const bridge = "br-pin"
	var before string
	err := sb.InNode(func() error {
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridge}}); err != nil {
			return err
		}
		l, err := netlink.LinkByName(bridge)
		if err != nil {
			return err
		}
		before = l.Attrs().HardwareAddr.String()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "pin", "type": "bridge", "bridge": %q, "isGateway": true,
		"ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.151.0.0/24"}]]}}`, bridge, t.TempDir())
	n := newNetwork(t, sb, conf, bins.PluginDir())
	var ctrs []container
	for i := range 4 {
		ctrs = append(ctrs, n.attach(fmt.Sprintf("pin%d", i)))
		if got := linkIn(t, sb.Node, bridge).Attrs().HardwareAddr.String(); got != before {
			t.Fatalf("after ADD %d the bridge MAC is %s, was %s before: it follows its ports", i, got, before)
		}
	}
	for _, c := range ctrs[:2] {
		if err := n.del(c.ns, c.id, "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	if got := linkIn(t, sb.Node, bridge).Attrs().HardwareAddr.String(); got != before {
		t.Errorf("after DELs the bridge MAC is %s, was %s", got, before)
	}
	if !reaches(ctrs[3].ns, ctrs[2].ip) {
		t.Errorf("%s does not reach %s", ctrs[3].id, ctrs[2].ip)
	}
}

// TestGatewayADDKeepsNodeNeighbours: a gateway ADD leaves the node's
// neighbour entries for the containers already on the bridge alone, on a
// bridge bpfbridge created and on one created beforehand (pinned by the
// first ADD, as TestExistingBridgeMACPinned checks). Setting the bridge's
// MAC, even to the one it has, flushes them: the node would then resolve
// every container it routes for again (masqueraded replies included) after
// every ADD, a broadcast each, flooded to every port.
func TestGatewayADDKeepsNodeNeighbours(t *testing.T) {
	for _, existing := range []bool{false, true} {
		t.Run(fmt.Sprintf("existing=%v", existing), func(t *testing.T) {
			sb := sandbox.ForTest(t)
			const bridge = "br-nbr"
			if existing {
				if err := sb.InNode(func() error {
					return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridge}})
				}); err != nil {
					t.Fatal(err)
				}
			}
			n := newNetwork(t, sb, gatewayConf("nbr", bridge, "10.152.0.0/24", t.TempDir()), bins.PluginDir())
			first := n.attach("nbr0")
			if !reaches(sb.Node, first.ip) {
				t.Fatalf("the node does not reach %s", first.ip)
			}
			for i := 1; i <= 2; i++ {
				if state := nodeNeighbour(t, sb, bridge, first.ip); state == 0 {
					t.Fatalf("before ADD %d: no neighbour entry for %s on %s", i, first.ip, bridge)
				}
				n.attach(fmt.Sprintf("nbr%d", i))
				if state := nodeNeighbour(t, sb, bridge, first.ip); state == 0 || state&unix.NUD_FAILED != 0 {
					t.Errorf("after ADD %d: the node's neighbour entry for %s on %s is gone (state %#x)", i, first.ip, bridge, state)
				}
			}
		})
	}
}

// nodeNeighbour is the state of the node's neighbour entry for ip on the
// link name, 0 when there is none.
func nodeNeighbour(t *testing.T, sb *sandbox.Sandbox, name string, ip netip.Addr) int {
	t.Helper()
	return inNode(t, sb, "list neighbours", func() (int, error) {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return 0, err
		}
		neighs, err := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
		if err != nil {
			return 0, err
		}
		for _, nb := range neighs {
			if nb.IP.Equal(ip.AsSlice()) {
				return nb.State, nil
			}
		}
		return 0, nil
	})
}

// TestBridgePortsHaveNoIPv6: the host end of every container's veth is a
// bridge port without IPv6 of its own (no address, no route in the node's
// tables, which the kernel would walk on every change of a port), while the
// container keeps its link-local address and gets arp_notify as the
// reference sets it (bpfbridge sets it through netlink), and the
// containers reach each other.
func TestBridgePortsHaveNoIPv6(t *testing.T) {
	sb, n := newGatewayNetwork(t, "ports", "br-ports", "10.194.0.0/24")
	a, b := n.attach("port0"), n.attach("port1")
	for _, c := range []container{a, b} {
		veth := hostVeth(t, sb, c)
		var disabled string
		var addrs []netlink.Addr
		var routes []netlink.Route
		if err := sb.InNode(func() error {
			v, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + veth + "/disable_ipv6")
			if err != nil {
				return err
			}
			disabled = strings.TrimSpace(string(v))
			l, err := netlink.LinkByName(veth)
			if err != nil {
				return err
			}
			if addrs, err = netlink.AddrList(l, netlink.FAMILY_V6); err != nil {
				return err
			}
			routes, err = netlink.RouteListFiltered(netlink.FAMILY_V6,
				&netlink.Route{Table: unix.RT_TABLE_UNSPEC, LinkIndex: l.Attrs().Index}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if disabled != "1" {
			t.Errorf("%s: host veth %s has disable_ipv6 %q, want 1", c.id, veth, disabled)
		}
		if len(addrs) != 0 || len(routes) != 0 {
			t.Errorf("%s: host veth %s has IPv6 addresses %v and %d IPv6 routes, want none", c.id, veth, addrs, len(routes))
		}

		var notify string
		var linkLocal bool
		if err := c.ns.Do(func() error {
			v, err := os.ReadFile("/proc/sys/net/ipv4/conf/eth0/arp_notify")
			if err != nil {
				return err
			}
			notify = strings.TrimSpace(string(v))
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
			for _, a := range addrs {
				linkLocal = linkLocal || a.IP.IsLinkLocalUnicast()
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if notify != "1" {
			t.Errorf("%s: eth0 has arp_notify %q, want 1", c.id, notify)
		}
		if !linkLocal {
			t.Errorf("%s: eth0 has no IPv6 link-local address", c.id)
		}
	}
	if !reaches(a.ns, b.ip) || !reaches(b.ns, a.ip) {
		t.Error("the containers do not reach each other")
	}
}
