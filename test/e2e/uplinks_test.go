package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// assertMasqueradedVia checks that TCP, UDP and ping from c reach the
// outside world, which sees TCP and UDP come from want.
func assertMasqueradedVia(t *testing.T, sb *sandbox.Sandbox, c container, want netip.Addr) {
	t.Helper()
	server := netip.AddrPortFrom(sb.Internet4, 8080)
	serveWhoAmI(t, sb.External, server)
	for _, proto := range []string{"tcp", "udp"} {
		seen, err := whoAmI(t, c, proto, server)
		if err != nil {
			t.Errorf("%s from %s to the outside: %v", proto, c.ip, err)
			continue
		}
		if seen.Addr() != want {
			t.Errorf("%s: the outside saw %s, want %s", proto, seen, want)
		}
	}
	if got, err := sandbox.Ping(c.ns, sb.Internet4, 3, 2*time.Second); got != 3 {
		t.Errorf("ping to the outside: %d/3 replies (%v)", got, err)
	}
}

// addLabLink adds an up interface with addrs to the sandbox node: one end
// of a veth pair whose other end is up too (this kernel has no dummy).
func addLabLink(t *testing.T, sb *sandbox.Sandbox, name string, addrs ...string) {
	t.Helper()
	err := sb.InNode(func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
			return err
		}
		if err := setUp(name + "p"); err != nil {
			return err
		}
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if err := addNodeAddr(l, a); err != nil {
				return err
			}
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		t.Fatalf("lab link %s: %v", name, err)
	}
}

func setUp(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

func addNodeAddr(l netlink.Link, cidr string) error {
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		return fmt.Errorf("address %s on %s: %w", cidr, l.Attrs().Name, err)
	}
	return nil
}

// TestMasqueradeUplinkIsTheDefaultRoute: nodes where a probe of a
// documentation address (192.0.2.1) would find another interface than the
// default route's still masquerade out of the default route: one with a
// route into 192.0.2.0/24 (a lab network), one owning 192.0.2.1.
func TestMasqueradeUplinkIsTheDefaultRoute(t *testing.T) {
	for name, addr := range map[string]string{
		"route into 192.0.2.0/24": "192.0.2.5/24",
		"owns 192.0.2.1":          "192.0.2.1/32",
	} {
		t.Run(name, func(t *testing.T) {
			sb := sandbox.ForTest(t)
			addLabLink(t, sb, "lab0", addr, "2001:db8::5/64")
			n := newNetwork(t, sb, masqConf("masq", "br-masq", t.TempDir(), masqRanges4, ""), bins.PluginDir())
			c := n.attach("m0")
			assertMasqueradedVia(t, sb, c, sb.NodeUplink4.Addr())
			if err := n.del(c.ns, c.id, "eth0"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestMasqueradeUplinksOverride: masquerade.uplinks alone names the uplink
// and its primary address is used, not a secondary one; masquerade.address
// picks another address of it.
func TestMasqueradeUplinksOverride(t *testing.T) {
	cases := []struct {
		name, extra string
		want        netip.Addr
	}{
		{"primary address", `"masquerade": {"uplinks": ["uplink0"]}`, netip.MustParseAddr("198.51.100.1")},
		{"chosen address", `"masquerade": {"uplinks": ["uplink0"], "address": "198.51.100.7"}`, netip.MustParseAddr("198.51.100.7")},
		{"chosen address without uplinks", `"masquerade": {"address": ["198.51.100.7"]}`, netip.MustParseAddr("198.51.100.7")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sb := sandbox.ForTest(t)
			err := sb.InNode(func() error {
				l, err := netlink.LinkByName(sandbox.NodeUplinkName)
				if err != nil {
					return err
				}
				return addNodeAddr(l, "198.51.100.7/24") // secondary
			})
			if err != nil {
				t.Fatal(err)
			}
			n := newNetwork(t, sb, masqConf("masq", "br-masq", t.TempDir(), masqRanges4, tc.extra), bins.PluginDir())
			c := n.attach("m0")
			assertMasqueradedVia(t, sb, c, tc.want)
			if err := n.del(c.ns, c.id, "eth0"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestMasqueradeAddressNotOnUplink: a masquerade.address no uplink has
// fails the ADD and leaves nothing behind.
func TestMasqueradeAddressNotOnUplink(t *testing.T) {
	sb := sandbox.ForTest(t)
	n := newNetwork(t, sb, masqConf("masq", "br-masq", t.TempDir(), masqRanges4, `"masquerade": {"address": "198.51.100.99"}`), bins.PluginDir())
	ctr := newContainer(t, sb, "m0")
	_, err := n.add(ctr, "m0", "eth0")
	if err == nil {
		t.Fatal("ADD with a masquerade.address that is on no uplink succeeded")
	}
	mustContain(t, "error", err.Error(), "masquerade.address", "198.51.100.99")
	if veths := nodeVeths(t, sb); len(veths) != 0 {
		t.Errorf("veths left after the failed ADD: %v", veths)
	}
	n.assertStoreEmpty()
}

// TestMasqueradePolicyRoutedUplink: an ip rule sends the containers'
// sources to a table whose default route leaves by a second uplink; the
// translations use that uplink's address.
func TestMasqueradePolicyRoutedUplink(t *testing.T) {
	sb := sandbox.ForTest(t)
	nodeSide, extSide := netip.MustParsePrefix("198.18.7.1/30"), netip.MustParsePrefix("198.18.7.2/30")
	if err := linkNamespaces(sb.Node, sb.External, "uplink1", "ext1", 1500, nodeSide, extSide); err != nil {
		t.Fatal(err)
	}
	err := sb.InNode(func() error {
		l, err := netlink.LinkByName("uplink1")
		if err != nil {
			return err
		}
		if err := netlink.RouteAdd(&netlink.Route{Table: 100, LinkIndex: l.Attrs().Index, Gw: extSide.Addr().AsSlice()}); err != nil {
			return fmt.Errorf("default route in table 100: %w", err)
		}
		r := netlink.NewRule()
		r.Priority, r.Table, r.Src = 100, 100, ipNetOf(netip.MustParsePrefix("10.150.0.0/24"))
		return netlink.RuleAdd(r)
	})
	if err != nil {
		t.Fatal(err)
	}
	n := newNetwork(t, sb, masqConf("masq", "br-masq", t.TempDir(), masqRanges4, ""), bins.PluginDir())
	c := n.attach("m0")
	assertMasqueradedVia(t, sb, c, nodeSide.Addr())
	if err := n.del(c.ns, c.id, "eth0"); err != nil {
		t.Fatal(err)
	}
}

func ipNetOf(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
