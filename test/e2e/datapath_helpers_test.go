package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
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

// attach creates the container namespace name and attaches it as eth0.
func (n *network) attach(name string) container {
	n.t.Helper()
	ns, err := n.sb.NewContainer(name)
	if err != nil {
		n.t.Fatal(err)
	}
	res := n.mustAdd(ns, name, "eth0")
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
func openDatapath(t *testing.T, sb *sandbox.Sandbox) *datapath.Datapath {
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
	if attachMode() == datapath.AttachLegacy {
		return legacyFilters(t, sb, ifname)
	}
	err := sb.InNode(func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		for at, dst := range map[ebpf.AttachType]*[]ebpf.ProgramID{ebpf.AttachTCXIngress: &ingress, ebpf.AttachTCXEgress: &egress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: at})
			if err != nil {
				return err
			}
			for _, p := range res.Programs {
				*dst = append(*dst, p.ID)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("tcx programs on %s: %v", ifname, err)
	}
	return ingress, egress
}

// legacyFilters lists the programs of the cls_bpf filters on the node's
// link ifname, ingress then egress.
func legacyFilters(t *testing.T, sb *sandbox.Sandbox, ifname string) (ingress, egress []ebpf.ProgramID) {
	t.Helper()
	err := sb.InNode(func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		for parent, dst := range map[uint32]*[]ebpf.ProgramID{netlink.HANDLE_MIN_INGRESS: &ingress, netlink.HANDLE_MIN_EGRESS: &egress} {
			filters, err := netlink.FilterList(l, parent)
			if err != nil {
				return err
			}
			for _, f := range filters {
				if bf, ok := f.(*netlink.BpfFilter); ok {
					*dst = append(*dst, ebpf.ProgramID(bf.Id))
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("filters on %s: %v", ifname, err)
	}
	return ingress, egress
}

// mapsDir is the directory of the node's pinned maps (maps/v<layout>).
func mapsDir(t *testing.T, sb *sandbox.Sandbox) string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(sb.BPFFS, "bpfbridge", "maps", "v*"))
	if err != nil || len(dirs) != 1 {
		t.Fatalf("pinned map directories %v (%v), want exactly one", dirs, err)
	}
	return dirs[0]
}

// dropTotal is the node's total of drops for reason, over all CPUs.
func dropTotal(t *testing.T, sb *sandbox.Sandbox, reason program.DropReason) uint64 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(mapsDir(t, sb), "drop_totals"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var perCPU []uint64
	if err := m.Lookup(uint32(reason), &perCPU); err != nil {
		t.Fatal(err)
	}
	var sum uint64
	for _, n := range perCPU {
		sum += n
	}
	return sum
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

// pinnedEntries counts the entries of each control-plane map pinned in the
// node's bpffs and the pinned link directories.
func pinnedEntries(t *testing.T, sb *sandbox.Sandbox) map[string]int {
	t.Helper()
	root := filepath.Join(sb.BPFFS, "bpfbridge")
	counts := map[string]int{}
	maps := mapsDir(t, sb)
	counts["endpoints"] = countKeys[uint32](t, filepath.Join(maps, "endpoints"))
	counts["ip_owners"] = countKeys[program.BpfbridgeIpKey](t, filepath.Join(maps, "ip_owners"))
	counts["endpoint_meta"] = countKeys[program.BpfbridgeEndpointKey](t, filepath.Join(maps, "endpoint_meta"))
	counts["endpoint_stats"] = countKeys[uint32](t, filepath.Join(maps, "endpoint_stats"))
	links, err := os.ReadDir(filepath.Join(root, "links"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	counts["links"] = len(links)
	return counts
}

// countKeys counts the keys of the map pinned at path.
func countKeys[K any](t *testing.T, path string) int {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatalf("open pinned map: %v", err)
	}
	defer m.Close()
	var (
		key   K
		count int
	)
	for err = m.NextKey(nil, &key); err == nil; err = m.NextKey(&key, &key) {
		count++
	}
	if !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("iterate %s: %v", path, err)
	}
	return count
}

// assertNoFirewallRules fails if the node has any iptables or nftables rule.
func assertNoFirewallRules(t *testing.T, sb *sandbox.Sandbox) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	for _, cmd := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "ruleset"}} {
		out, err := sb.Node.Command(ctx, cmd[0], cmd[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(cmd, " "), err, out)
		}
		var rules []string
		for _, line := range strings.Split(string(out), "\n") {
			// iptables-save prints comments even for an empty ruleset.
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				rules = append(rules, line)
			}
		}
		if len(rules) > 0 {
			t.Errorf("%s in the node is not empty:\n%s", strings.Join(cmd, " "), strings.Join(rules, "\n"))
		}
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
