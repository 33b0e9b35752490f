package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/datapath/program"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// isoConf is a gateway network with the given isolation mode.
func isoConf(name, bridge, subnet, isolation, dataDir string) string {
	return fmt.Sprintf(`{"cniVersion": "1.1.0", "name": %q, "type": "bridge", "bridge": %q,
		"isGateway": true, "isDefaultGateway": true, "isolation": %q,
		"ipam": {"type": "host-local", "subnet": %q, "dataDir": %q}}`, name, bridge, isolation, subnet, dataDir)
}

// container is an attached container: its namespace and what ADD gave it.
type container struct {
	ns  *sandbox.NetNS
	id  string
	ip  netip.Addr
	mac net.HardwareAddr
}

// attach creates the container namespace name and attaches it as eth0,
// with the CNI_ARGS cniArgs.
func (n *network) attach(name string, cniArgs ...[2]string) container {
	n.t.Helper()
	ns, err := n.sb.NewContainer(name)
	if err != nil {
		n.t.Fatal(err)
	}
	rt := runtimeConf(ns, name, "eth0")
	rt.Args = cniArgs
	res := n.mustAddRuntime(rt)
	ip, _ := netip.AddrFromSlice(res.IPs[0].Address.IP)
	mac, err := net.ParseMAC(res.Interfaces[2].Mac)
	if err != nil {
		n.t.Fatalf("result MAC: %v", err)
	}
	return container{ns: ns, id: name, ip: ip.Unmap(), mac: mac}
}

// reaches reports whether from gets an echo reply from to. A negative
// answer costs the timeout, so it is short: replies on these links take
// microseconds.
func reaches(from *sandbox.NetNS, to netip.Addr) bool {
	got, _ := sandbox.Ping(from, to, 2, 300*time.Millisecond)
	return got > 0
}

// openDatapath opens the sandbox node's datapath state read-only.
func openDatapath(t testing.TB, sb *sandbox.Sandbox) *datapath.Datapath {
	t.Helper()
	dp, err := datapath.OpenExisting(datapath.Options{BPFFS: sb.BPFFS})
	if err != nil {
		t.Fatalf("open datapath state: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}

// drops returns how many packets of c were dropped for reason.
func drops(t *testing.T, dp *datapath.Datapath, c container, reason program.DropReason) uint64 {
	t.Helper()
	cnt, err := dp.Counters(c.id, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	return cnt.Drops[reason]
}

// attachMode is the attach mode this run of the suite uses (make test runs
// it with BPFBRIDGE_ATTACH=tcx too).
func attachMode() datapath.AttachMode {
	if os.Getenv("BPFBRIDGE_ATTACH") == datapath.AttachTCX.String() {
		return datapath.AttachTCX
	}
	return datapath.AttachLegacy
}

// attachedPrograms lists the IDs of the programs attached to the node's link
// ifname in the suite's attach mode, ingress then egress.
func attachedPrograms(t *testing.T, sb *sandbox.Sandbox, ifname string) (ingress, egress []ebpf.ProgramID) {
	t.Helper()
	return tcPrograms(t, sb, ifname, attachMode())
}

// tcPrograms lists the IDs of the programs attached to the node's link
// ifname in mode (any mode when 0), ingress then egress.
func tcPrograms(t *testing.T, sb *sandbox.Sandbox, ifname string, mode datapath.AttachMode) (ingress, egress []ebpf.ProgramID) {
	t.Helper()
	for _, a := range inNode(t, sb, "list tc programs", datapath.TCAttachments) {
		if a.IfName != ifname || mode != 0 && a.Mode != mode {
			continue
		}
		if a.Direction == "ingress" {
			ingress = append(ingress, a.ProgramID)
		} else {
			egress = append(egress, a.ProgramID)
		}
	}
	return ingress, egress
}

// pinnedBuilds lists the builds whose program sets are pinned on the node.
func pinnedBuilds(t *testing.T, sb *sandbox.Sandbox) []string {
	t.Helper()
	var builds []string
	for _, p := range inNode(t, sb, "list programs", openDatapath(t, sb).Programs) {
		if !slices.Contains(builds, p.Build) {
			builds = append(builds, p.Build)
		}
	}
	return builds
}

// dropTotal is the node's total of drops for reason, over all CPUs.
func dropTotal(t *testing.T, sb *sandbox.Sandbox, reason program.DropReason) uint64 {
	t.Helper()
	totals, err := openDatapath(t, sb).DropTotals()
	if err != nil {
		t.Fatal(err)
	}
	return totals[reason]
}

// hostVeth returns the name of the bridge port whose peer is c's eth0.
func hostVeth(t testing.TB, sb *sandbox.Sandbox, c container) string {
	t.Helper()
	var peer int
	if err := c.ns.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		peer, err = netlink.VethPeerIndex(l.(*netlink.Veth))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var name string
	if err := sb.InNode(func() error {
		l, err := netlink.LinkByIndex(peer)
		if err == nil {
			name = l.Attrs().Name
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return name
}

// mapEntries counts the entries of each map of the node's layout, by
// pinned name.
func mapEntries(t *testing.T, sb *sandbox.Sandbox) map[string]int {
	t.Helper()
	maps, err := openDatapath(t, sb).Maps()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, m := range maps {
		if m.Entries != nil {
			counts[m.Name] = *m.Entries
		}
	}
	return counts
}

// pinnedEntries counts the entries of each control-plane map pinned in the
// node's bpffs and the pinned link directories.
func pinnedEntries(t *testing.T, sb *sandbox.Sandbox) map[string]int {
	t.Helper()
	all := mapEntries(t, sb)
	counts := map[string]int{}
	for _, name := range []string{"endpoints", "ip_owners", "endpoint_meta", "endpoint_stats"} {
		counts[name] = all[name]
	}
	links, err := openDatapath(t, sb).PinnedLinks()
	if err != nil {
		t.Fatal(err)
	}
	counts["links"] = links
	return counts
}

// assertNoFirewallRules fails if the node has any iptables or nftables rule.
func assertNoFirewallRules(t *testing.T, sb *sandbox.Sandbox) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	rules, err := sb.Node.FirewallRules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if all := rules.All(); len(all) > 0 {
		t.Errorf("the node has firewall rules:\n%s", strings.Join(all, "\n"))
	}
}

// sendFrame sends a raw Ethernet frame out of ifname inside n.
func sendFrame(t *testing.T, n *sandbox.NetNS, ifname string, frame []byte) {
	t.Helper()
	err := n.Do(func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Halen: 6})
	})
	if err != nil {
		t.Fatalf("send frame in %s: %v", n.Name, err)
	}
}

// arpReply builds an ARP reply from senderMAC claiming senderIP, broadcast.
func arpReply(senderMAC net.HardwareAddr, senderIP, targetIP netip.Addr) []byte {
	f := make([]byte, 0, 42)
	f = append(f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	f = append(f, senderMAC...)
	f = append(f, 0x08, 0x06)                // ARP
	f = append(f, 0, 1, 0x08, 0, 6, 4, 0, 2) // Ethernet/IPv4, reply
	f = append(f, senderMAC...)
	f = append(f, senderIP.AsSlice()...)
	f = append(f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	return append(f, targetIP.AsSlice()...)
}

// neighbourMAC returns the MAC the node's neighbour table holds for ip, or
// nil.
func neighbourMAC(t *testing.T, sb *sandbox.Sandbox, ip netip.Addr) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	err := sb.InNode(func() error {
		neighs, err := netlink.NeighList(0, netlink.FAMILY_V4)
		for _, n := range neighs {
			if n.IP.Equal(ip.AsSlice()) {
				mac = n.HardwareAddr
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return mac
}
