package e2e

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// dadConf is a dual-stack network with duplicate address detection on and
// no isolation, so that two networks with the same subnets on one bridge
// can hand out the same addresses.
func dadConf(name, bridge, dataDir string) string {
	return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "type": "bridge", "bridge": %q,
		"isGateway": true, "enabledad": true, "isolation": "none",
		"ipam": {"type": "host-local", "dataDir": %q,
			"ranges": [[{"subnet": "10.81.0.0/24"}], [{"subnet": "fd00:81::/64"}]]}}`, name, bridge, dataDir)
}

// TestNeighbourSemanticsOnTheBridge pins what the bridge's multicast
// settings must keep (bpfbridge creates its bridge with multicast snooping
// off; with no querier the reference's bridge forwards the same way): a
// container's duplicate address detection still finds a duplicate, global
// or link-local, on another port, and fails the ADD with enabledad; a new
// container announces itself (arp_notify) and is resolved by broadcast ARP;
// and containers reach each other over IPv4 and IPv6 link-local.
func TestNeighbourSemanticsOnTheBridge(t *testing.T) {
	sb := sandbox.ForTest(t)
	na := newNetwork(t, sb, dadConf("dada", "br-dad", t.TempDir()), bins.PluginDir())
	a := na.attach("dada0")

	err := sb.InNode(func() error {
		l, err := netlink.LinkByName("br-dad")
		if err != nil {
			return err
		}
		br, ok := l.(*netlink.Bridge)
		if !ok || br.MulticastSnooping == nil || *br.MulticastSnooping {
			return fmt.Errorf("bridge br-dad: multicast snooping %v, want off", br.MulticastSnooping)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}

	// A second network with the same subnets and its own store hands out
	// a's addresses again: DAD must fail the ADD.
	nb := newNetwork(t, sb, dadConf("dadb", "br-dad", t.TempDir()), bins.PluginDir())
	dup, err := sb.NewContainer("dadb0")
	if err != nil {
		t.Fatal(err)
	}
	_, err = nb.add(dup, "dadb0", "eth0")
	if err == nil || !strings.Contains(err.Error(), "duplicate address detection") {
		t.Errorf("ADD of a container given %s's addresses: %v, want a duplicate address detection failure", a.id, err)
	}

	// c announces itself as the reference's containers do (arp_notify: a
	// gratuitous ARP when its link comes up), and its peers resolve it by
	// broadcast ARP.
	p, c := na.attach("dada1"), na.attach("dada2")
	var notify []byte
	if err := c.ns.Do(func() (err error) {
		notify, err = os.ReadFile("/proc/sys/net/ipv4/conf/eth0/arp_notify")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(notify)) != "1" {
		t.Errorf("%s: arp_notify %q, want 1", c.id, notify)
	}
	if !reaches(p.ns, c.ip) {
		t.Errorf("%s does not reach %s over IPv4", p.id, c.id)
	}

	// A copy of a's link-local address on c fails DAD.
	aLL := linkLocalOf(t, a)
	if got := dadOutcome(t, c, aLL); got != "dadfailed" {
		t.Errorf("%s given %s's link-local address %s: %s, want dadfailed", c.id, a.id, aLL, got)
	}
	if !reaches(c.ns, a.ip) {
		t.Errorf("%s does not reach %s over IPv4", c.id, a.id)
	}
	if cLL := linkLocalOf(t, c); !reaches(a.ns, cLL.WithZone("eth0")) {
		t.Errorf("%s does not reach %s over link-local (%s)", a.id, c.id, cLL)
	}
}

// dadOutcome adds ip/64 to c's eth0, waits for duplicate address detection
// to end, and removes it again: "dadfailed", "ok", or "tentative" when DAD
// was still running after a few seconds.
func dadOutcome(t *testing.T, c container, ip netip.Addr) string {
	t.Helper()
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(64, 128)}}
	outcome := "tentative"
	err := c.ns.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("add %s: %w", ip, err)
		}
		defer netlink.AddrDel(l, addr)
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
			if err != nil {
				return err
			}
			for _, a := range addrs {
				if !a.IP.Equal(addr.IP) {
					continue
				}
				switch {
				case a.Flags&unix.IFA_F_DADFAILED != 0:
					outcome = "dadfailed"
					return nil
				case a.Flags&unix.IFA_F_TENTATIVE == 0:
					outcome = "ok"
					return nil
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return outcome
}

// TestNewContainerMulticastStaysOffPeers: a new container's router
// solicitations and MLD reports concern the node alone, and with the fast
// path the bridge no longer floods them to every other container (they
// reach the node on the bridge); its duplicate address detection still
// reaches every port. With `datapath.fastPath: false` the bridge floods all
// of them, as the reference's does (control).
func TestNewContainerMulticastStaysOffPeers(t *testing.T) {
	for _, fast := range []bool{true, false} {
		t.Run(fmt.Sprintf("fastPath=%v", fast), func(t *testing.T) {
			sb := sandbox.ForTest(t)
			conf := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "mcast", "type": "bridge", "bridge": "br-mcast",
				"isGateway": true, "enabledad": true, "datapath": {"bpffs": %q, "fastPath": %v},
				"ipam": {"type": "host-local", "dataDir": %q,
					"ranges": [[{"subnet": "10.82.0.0/24"}], [{"subnet": "fd00:82::/64"}]]}}`, sb.BPFFS, fast, t.TempDir())
			n := newNetwork(t, sb, conf, bins.PluginDir())
			peer := n.attach("mcast0")

			// ICMPv6 types by sender, as the peer and the node see them.
			var mu sync.Mutex
			atPeer, atNode := map[string]map[uint8]int{}, map[string]map[uint8]int{}
			count := func(seen map[string]map[uint8]int) func([]byte) {
				return func(f []byte) {
					typ, ok := icmp6Type(f)
					if !ok {
						return
					}
					mu.Lock()
					defer mu.Unlock()
					from := net.HardwareAddr(f[6:12]).String()
					if seen[from] == nil {
						seen[from] = map[uint8]int{}
					}
					seen[from][typ]++
				}
			}
			startCapture(t, peer.ns, "eth0", count(atPeer))
			startCapture(t, sb.Node, "br-mcast", count(atNode))
			c := n.attach("mcast1")
			byNewcomer := func(seen map[string]map[uint8]int, typ uint8) int { return seen[c.mac.String()][typ] }

			// Its MLD reports leave at once; router solicitations follow
			// duplicate address detection of its link-local address.
			for deadline := time.Now().Add(8 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
				mu.Lock()
				done := byNewcomer(atNode, icmp6RS) > 0 && byNewcomer(atNode, icmp6MLD2Report) > 0
				mu.Unlock()
				if done {
					break
				}
			}
			time.Sleep(200 * time.Millisecond) // the peer's copies, if any, trail the node's
			mu.Lock()
			defer mu.Unlock()
			if byNewcomer(atNode, icmp6RS) == 0 || byNewcomer(atNode, icmp6MLD2Report) == 0 {
				t.Fatalf("the node saw %d router solicitations and %d MLD reports from %s, want some of each",
					byNewcomer(atNode, icmp6RS), byNewcomer(atNode, icmp6MLD2Report), c.id)
			}
			flooded := byNewcomer(atPeer, icmp6RS) + byNewcomer(atPeer, icmp6MLD2Report)
			if fast && flooded != 0 {
				t.Errorf("%s saw %d router solicitations and MLD reports of %s, want none", peer.id, flooded, c.id)
			}
			if !fast && flooded == 0 {
				t.Errorf("without the fast path %s saw none of %s's router solicitations and MLD reports: the control failed", peer.id, c.id)
			}
			if byNewcomer(atPeer, icmp6NS) == 0 {
				t.Errorf("%s saw none of %s's neighbour solicitations (duplicate address detection)", peer.id, c.id)
			}
		})
	}
}

// ICMPv6 types the test above tells apart.
const (
	icmp6RS         = 133
	icmp6NS         = 135
	icmp6MLD2Report = 143
)

// icmp6Type is the ICMPv6 type of an Ethernet frame, past a hop-by-hop
// header (MLD's router alert), if it is one.
func icmp6Type(f []byte) (uint8, bool) {
	if len(f) < 14+40 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_IPV6 {
		return 0, false
	}
	next, off := f[14+6], 14+40
	if next == 0 && len(f) >= off+8 {
		next, off = f[off], off+(int(f[off+1])+1)*8
	}
	if next != unix.IPPROTO_ICMPV6 || len(f) <= off {
		return 0, false
	}
	return f[off], true
}
