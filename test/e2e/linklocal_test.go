package e2e

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"

	"github.com/bpfbridge/bpfbridge/datapath/program"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// TestLinkLocalIsolation: IPv6 link-local, which every interface has even
// on IPv4-only networks, is isolated like any address. Unicast to a
// neighbour and echo requests to ff02::1 (all nodes) between containers of
// a "container" network, and between two "network" networks that share a
// bridge, get nothing through, each drop counted; in "none" mode they pass.
func TestLinkLocalIsolation(t *testing.T) {
	cases := []struct {
		mode string
		// within: a0 reaches a1 over link-local; across: a0 reaches b0.
		within, across bool
		// The reason a drop counts under, on a0 (unicast) and on the
		// receiver (multicast).
		withinReason, acrossReason program.DropReason
	}{
		{"container", false, false, program.BpfbridgeDropReasonDROP_SAME_NETWORK, program.BpfbridgeDropReasonDROP_CROSS_NETWORK},
		{"network", true, false, program.BpfbridgeDropReasonDROP_NONE, program.BpfbridgeDropReasonDROP_CROSS_NETWORK},
		{"none", true, true, program.BpfbridgeDropReasonDROP_NONE, program.BpfbridgeDropReasonDROP_NONE},
	}
	for _, tc := range cases {
		t.Run(tc.mode, func(t *testing.T) {
			sb := sandbox.ForTest(t)
			na := newNetwork(t, sb, l2Conf("lla", "br-ll", tc.mode, "10.180.0.10", "10.180.0.19", t.TempDir()), bins.PluginDir())
			nb := newNetwork(t, sb, l2Conf("llb", "br-ll", tc.mode, "10.180.0.20", "10.180.0.29", t.TempDir()), bins.PluginDir())
			a0, a1, b0 := na.attach("lla0"), na.attach("lla1"), nb.attach("llb0")
			ll := map[string]netip.Addr{}
			for _, c := range []container{a0, a1, b0} {
				ll[c.id] = linkLocalOf(t, c)
			}
			dp := openDatapath(t, sb)
			for _, p := range []struct {
				to     container
				want   bool
				reason program.DropReason
			}{{a1, tc.within, tc.withinReason}, {b0, tc.across, tc.acrossReason}} {
				before := drops(t, dp, a0, p.reason)
				if got := reaches(a0.ns, ll[p.to.id].WithZone("eth0")); got != p.want {
					t.Errorf("%s mode: %s reaches %s over link-local: %v, want %v", tc.mode, a0.id, p.to.id, got, p.want)
				}
				if !p.want && drops(t, dp, a0, p.reason) == before {
					t.Errorf("%s mode: no %v drop counted on %s for link-local to %s", tc.mode, p.reason, a0.id, p.to.id)
				}
			}
			before := drops(t, dp, b0, tc.acrossReason)
			answered := allNodesAnswer(t, a0)
			if got := slices.Contains(answered, ll[b0.id]); got != tc.across {
				t.Errorf("%s mode: %s answered %s's echo to ff02::1: %v, want %v (answers from %v)", tc.mode, b0.id, a0.id, got, tc.across, answered)
			}
			if got := slices.Contains(answered, ll[a1.id]); got != tc.within {
				t.Errorf("%s mode: %s answered %s's echo to ff02::1: %v, want %v (answers from %v)", tc.mode, a1.id, a0.id, got, tc.within, answered)
			}
			if !tc.across && drops(t, dp, b0, tc.acrossReason) == before {
				t.Errorf("%s mode: no %v drop counted on %s for %s's multicast", tc.mode, tc.acrossReason, b0.id, a0.id)
			}
		})
	}
}

// linkLocalOf is the link-local address of c's eth0, once usable (DAD
// done): the kernel configures one even on an IPv4-only network.
func linkLocalOf(t *testing.T, c container) netip.Addr {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var found netip.Addr
		err := c.ns.Do(func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
			for _, a := range addrs {
				if a.IP.IsLinkLocalUnicast() && a.Flags&(0x40|0x08) == 0 { // not IFA_F_TENTATIVE, IFA_F_DADFAILED
					found, _ = netip.AddrFromSlice(a.IP)
				}
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if found.IsValid() {
			return found
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has no usable link-local address", c.id)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// allNodesAnswer sends echo requests from c to ff02::1 on its eth0 and
// returns the addresses that answered within a short wait.
func allNodesAnswer(t *testing.T, c container) []netip.Addr {
	t.Helper()
	var (
		conn *icmp.PacketConn
		zone string
	)
	if err := c.ns.Do(func() (err error) {
		if zone, err = sandbox.ZoneIndex("eth0"); err != nil {
			return err
		}
		conn, err = icmp.ListenPacket("ip6:ipv6-icmp", "::")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg := icmp.Message{Type: ipv6.ICMPTypeEchoRequest, Body: &icmp.Echo{ID: 0x6c6c, Seq: 1, Data: []byte("all nodes")}}
	wb, err := msg.Marshal(nil)
	if err != nil {
		t.Fatal(err)
	}
	var answered []netip.Addr
	for range 3 { // a lost request only lowers the answers
		if _, err := conn.WriteTo(wb, &net.IPAddr{IP: net.ParseIP("ff02::1"), Zone: zone}); err != nil {
			t.Fatalf("echo to ff02::1 from %s: %v", c.id, err)
		}
		buf := make([]byte, 1500)
		conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				break // the wait is over
			}
			m, err := icmp.ParseMessage(58, buf[:n])
			if err != nil || m.Type != ipv6.ICMPTypeEchoReply {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && e.ID == 0x6c6c {
				a, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
				if !slices.Contains(answered, a) {
					answered = append(answered, a)
				}
			}
		}
	}
	return answered
}
