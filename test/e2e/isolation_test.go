package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/datapath/program"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// TestIsolationModes attaches containers to networks of each isolation mode
// and checks who reaches whom, and that drops are counted under the right
// reason on the right endpoint.
func TestIsolationModes(t *testing.T) {
	sb := sandbox.ForTest(t)
	nets := map[string]*network{}
	for _, n := range []struct{ name, subnet, mode string }{
		{"iso-a", "10.100.0.0/24", "network"},
		{"iso-b", "10.101.0.0/24", "network"},
		{"iso-x", "10.102.0.0/24", "none"},
		{"iso-y", "10.103.0.0/24", "none"},
		{"iso-c", "10.104.0.0/24", "container"},
	} {
		nets[n.name] = newNetwork(t, sb, isoConf(n.name, "br-"+n.name, n.subnet, n.mode, t.TempDir()), bins.PluginDir())
		if err := sb.AddExternalRoute(netip.MustParsePrefix(n.subnet)); err != nil {
			t.Fatal(err)
		}
	}
	a0, a1 := nets["iso-a"].attach("a0"), nets["iso-a"].attach("a1")
	b0 := nets["iso-b"].attach("b0")
	x0, y0 := nets["iso-x"].attach("x0"), nets["iso-y"].attach("y0")
	c0, c1 := nets["iso-c"].attach("c0"), nets["iso-c"].attach("c1")
	gw := func(c container) netip.Addr {
		return netip.AddrFrom4([4]byte{c.ip.As4()[0], c.ip.As4()[1], c.ip.As4()[2], 1})
	}

	cases := []struct {
		what      string
		from      container
		to        netip.Addr
		want      bool
		droppedAt *container         // endpoint expected to count the drop
		reason    program.DropReason // and its reason
	}{
		{"same network", a0, a1.ip, true, nil, 0},
		{"own gateway", a0, gw(a0), true, nil, 0},
		{"outside world", a0, sb.Internet4, true, nil, 0},
		{"into another network (network mode)", b0, a0.ip, false, &b0, program.BpfbridgeDropReasonDROP_CROSS_NETWORK},
		{"out to another network (network mode)", a0, b0.ip, false, &a0, program.BpfbridgeDropReasonDROP_CROSS_NETWORK},
		{"between two networks in none mode", x0, y0.ip, true, nil, 0},
		{"from a none network into a network-isolated one", x0, a1.ip, false, &a1, program.BpfbridgeDropReasonDROP_CROSS_NETWORK},
		{"neighbour in container mode", c0, c1.ip, false, &c0, program.BpfbridgeDropReasonDROP_SAME_NETWORK},
		{"gateway in container mode", c0, gw(c0), true, nil, 0},
		{"outside world in container mode", c0, sb.Internet4, true, nil, 0},
	}
	dp := openDatapath(t, sb)
	for _, c := range cases {
		var before uint64
		if c.droppedAt != nil {
			before = drops(t, dp, *c.droppedAt, c.reason)
		}
		if got := reaches(c.from.ns, c.to); got != c.want {
			t.Errorf("%s: %s reaches %s = %v, want %v", c.what, c.from.id, c.to, got, c.want)
		}
		if c.droppedAt != nil {
			if after := drops(t, dp, *c.droppedAt, c.reason); after <= before {
				t.Errorf("%s: %s counted no %s drop", c.what, c.droppedAt.id, c.reason)
			}
		}
	}

	// A packet dropped on its way to a container is never counted as
	// delivered: x0's datagrams to a1 (1200 bytes of payload each, across
	// networks) grow a1's drops, and its delivered bytes by less than one
	// of them (what else reaches a1 meanwhile, ARP, is far smaller).
	before, err := dp.Counters(a1.id, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := sandbox.UDPEcho(x0.ns, netip.AddrPortFrom(a1.ip, 9), make([]byte, 1200), 500*time.Millisecond); err == nil {
		t.Error("UDP from a none network into a network-isolated one got an answer")
	}
	after, err := dp.Counters(a1.id, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	cross := program.BpfbridgeDropReasonDROP_CROSS_NETWORK
	if after.Drops[cross] <= before.Drops[cross] {
		t.Errorf("%s counted no %s drop of the datagrams from %s", a1.id, cross, x0.id)
	}
	if d := after.ToContainer.Bytes - before.ToContainer.Bytes; d >= 1200 {
		t.Errorf("%s counted %d bytes delivered while only dropped datagrams of 1200 bytes came its way", a1.id, d)
	}

	// TCP too, not only ICMP.
	bound, stop, err := sandbox.ServeTCPEcho(a1.ns, netip.AddrPortFrom(a1.ip, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if err := sandbox.TCPEcho(a0.ns, bound, []byte("same network"), 5*time.Second); err != nil {
		t.Errorf("TCP within a network: %v", err)
	}
	if err := sandbox.TCPEcho(b0.ns, bound, []byte("other network"), 500*time.Millisecond); err == nil {
		t.Error("TCP from another network got through")
	}
	assertNoFirewallRules(t, sb)
}

// TestAntiSpoofing: a container that takes another address or another MAC
// gets nothing through with it, and a spoofed ARP does not poison the node's
// neighbour table.
func TestAntiSpoofing(t *testing.T) {
	sb := sandbox.ForTest(t)
	n := newNetwork(t, sb, isoConf("spoof", "br-spoof", "10.110.0.0/24", "network", t.TempDir()), bins.PluginDir())
	victim, addrThief, macThief, arpLiar := n.attach("victim"), n.attach("thief-ip"), n.attach("thief-mac"), n.attach("liar")
	dp := openDatapath(t, sb)
	for _, c := range []container{addrThief, macThief, arpLiar} {
		if !reaches(c.ns, victim.ip) {
			t.Fatalf("%s cannot reach %s before spoofing", c.id, victim.ip)
		}
	}

	// Another address: swap the assigned one for 10.110.0.77.
	err := addrThief.ns.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		own, _ := netlink.ParseAddr(addrThief.ip.String() + "/24")
		stolen, _ := netlink.ParseAddr("10.110.0.77/24")
		if err := netlink.AddrDel(l, own); err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, stolen); err != nil {
			return err
		}
		// Losing its last address flushed the ARP cache; a static entry
		// makes the ICMP itself (not an ARP request) carry the stolen source.
		return netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4,
			State: netlink.NUD_PERMANENT, IP: victim.ip.AsSlice(), HardwareAddr: victim.mac})
	})
	if err != nil {
		t.Fatal(err)
	}
	assertSpoofDropped(t, dp, addrThief, victim, program.BpfbridgeDropReasonDROP_SPOOF_IPV4, "an address the container was not given")

	// Another MAC.
	err = macThief.ns.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.LinkSetHardwareAddr(l, net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99})
	})
	if err != nil {
		t.Fatal(err)
	}
	assertSpoofDropped(t, dp, macThief, victim, program.BpfbridgeDropReasonDROP_SPOOF_MAC, "a MAC the container was not given")

	// A spoofed ARP reply claiming the victim's address. The node knows the
	// victim; locktime 0 lets an ARP override that entry at once, as it
	// would a second after the last update.
	if err := sb.Node.SetSysctl("net/ipv4/neigh/br-spoof/locktime", "0"); err != nil {
		t.Fatal(err)
	}
	if !reaches(sb.Node, victim.ip) {
		t.Fatal("the node cannot reach the victim")
	}
	if mac := neighbourMAC(t, sb, victim.ip); mac.String() != victim.mac.String() {
		t.Fatalf("node's neighbour entry for %s is %v before the spoof, want %s", victim.ip, mac, victim.mac)
	}
	before := drops(t, dp, arpLiar, program.BpfbridgeDropReasonDROP_SPOOF_ARP)
	sendFrame(t, arpLiar.ns, "eth0", arpReply(arpLiar.mac, victim.ip, netip.MustParseAddr("10.110.0.1")))
	if drops(t, dp, arpLiar, program.BpfbridgeDropReasonDROP_SPOOF_ARP) != before+1 {
		t.Error("the spoofed ARP reply was not dropped as spoof-arp")
	}
	if mac := neighbourMAC(t, sb, victim.ip); mac.String() != victim.mac.String() {
		t.Errorf("node's neighbour entry for %s is %v after the spoof, want %s", victim.ip, mac, victim.mac)
	}
	assertNoFirewallRules(t, sb)
}

// TestDatapathStateLifecycle checks the attach mode, and that DEL (with and
// without a netns) and GC leave no pin, link or map entry.
func TestDatapathStateLifecycle(t *testing.T) {
	sb := sandbox.ForTest(t)
	conf := isoConf("life", "br-life", "10.120.0.0/24", "network", t.TempDir())
	n := newNetwork(t, sb, conf, bins.PluginDir())
	assertNoFirewallRules(t, sb)

	withNetns, withoutNetns := n.attach("l0"), n.attach("l1")
	for _, c := range []container{withNetns, withoutNetns} {
		in, eg := attachedPrograms(t, sb, hostVeth(t, sb, c))
		if len(in) != 1 || len(eg) != 1 {
			t.Fatalf("%s: %s programs ingress %v egress %v, want one each", c.id, attachMode(), in, eg)
		}
	}
	want := map[string]int{"endpoints": 2, "ip_owners": 2, "endpoint_meta": 2, "endpoint_stats": 2, "links": 2}
	if attachMode() == datapath.AttachLegacy {
		want["links"] = 0 // cls_bpf filters live on the veth, not in the bpffs
	}
	if got := pinnedEntries(t, sb); !mapsEqual(got, want) {
		t.Fatalf("datapath state after two ADDs = %v, want %v", got, want)
	}

	if err := n.del(withNetns.ns, withNetns.id, "eth0"); err != nil {
		t.Fatal(err)
	}
	// Without a netns the veth would outlive its endpoint, and carry the
	// container's traffic unfiltered once the programs leave: DEL deletes
	// it (fail closed).
	survivor := hostVeth(t, sb, withoutNetns)
	if err := n.del(nil, withoutNetns.id, "eth0"); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(nodeVeths(t, sb), survivor) || hasLink(t, withoutNetns.ns, "eth0") {
		t.Errorf("veth %s (eth0 of %s) survived DEL without netns", survivor, withoutNetns.id)
	}
	zero := map[string]int{"endpoints": 0, "ip_owners": 0, "endpoint_meta": 0, "endpoint_stats": 0, "links": 0}
	if got := pinnedEntries(t, sb); !mapsEqual(got, zero) {
		t.Errorf("datapath state after DEL = %v, want none", got)
	}

	// GC: a container its runtime forgot (another libcni cache) is
	// collected, the valid one stays.
	valid := n.attach("l2")
	ghostRuntime := newNetwork(t, sb, conf, bins.PluginDir())
	ghost := newContainer(t, sb, "ghost")
	ghostRuntime.mustAdd(ghost, "ghost", "eth0")
	if err := ghost.Delete(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	err := sb.InNode(func() error {
		return n.cni.GCNetworkList(ctx, n.list, &libcni.GCArgs{
			ValidAttachments: []types.GCAttachment{{ContainerID: valid.id, IfName: "eth0"}},
		})
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	one := map[string]int{"endpoints": 1, "ip_owners": 1, "endpoint_meta": 1, "endpoint_stats": 1, "links": want["links"] / 2}
	if got := pinnedEntries(t, sb); !mapsEqual(got, one) {
		t.Errorf("datapath state after GC = %v, want only the valid endpoint's: %v", got, one)
	}
	if !reaches(valid.ns, netip.MustParseAddr("10.120.0.1")) {
		t.Error("the valid endpoint lost connectivity in GC")
	}
	if err := n.check(valid.ns, valid.id, "eth0"); err != nil {
		t.Errorf("CHECK of the valid endpoint after GC: %v", err)
	}
	assertNoFirewallRules(t, sb)
}

func mapsEqual(a, b map[string]int) bool {
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return len(a) == len(b)
}

// TestUpgradeKeepsStreamAlive streams TCP between two containers while an
// ADD by a build with other programs (build variant 1, set with the linker:
// see datapath/program/variant.go) runs: the new build moves every endpoint
// onto its programs, atomically, and the stream goes on.
func TestUpgradeKeepsStreamAlive(t *testing.T) {
	variantDir := t.TempDir()
	build := exec.Command("go", "build", "-ldflags", "-X github.com/bpfbridge/bpfbridge/datapath/program.variant=1", "-o", filepath.Join(variantDir, "bridge"), "github.com/bpfbridge/bpfbridge/cmd/bridge")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the variant plugin: %v\n%s", err, out)
	}
	sb := sandbox.ForTest(t)
	conf := isoConf("up", "br-up", "10.130.0.0/24", "network", t.TempDir())
	current := newNetwork(t, sb, conf, bins.PluginDir())
	next := current.servedBy(variantDir)
	sender, receiver := current.attach("u0"), current.attach("u1")
	oldIn, oldEg := attachedPrograms(t, sb, hostVeth(t, sb, sender))

	var received atomic.Int64
	streamErr := make(chan error, 1)
	stop := make(chan struct{})
	startStream(t, sender, receiver, &received, streamErr, stop)
	waitForBytes(t, &received, 1, 5*time.Second)

	next.attach("u2") // the upgrade happens inside this ADD
	atUpgrade := received.Load()
	waitForBytes(t, &received, atUpgrade+1<<20, 5*time.Second)
	close(stop)
	if err := <-streamErr; err != nil {
		t.Errorf("the stream broke across the upgrade: %v", err)
	}

	for _, c := range []container{sender, receiver} {
		in, eg := attachedPrograms(t, sb, hostVeth(t, sb, c))
		if len(in) != 1 || len(eg) != 1 || slices.Equal(in, oldIn) || slices.Equal(eg, oldEg) {
			t.Errorf("%s: programs ingress %v egress %v after the upgrade, before %v %v: want one new program each", c.id, in, eg, oldIn, oldEg)
		}
	}
	if builds := pinnedBuilds(t, sb); len(builds) != 1 {
		t.Errorf("program sets pinned after the upgrade: %v, want only the new build's", builds)
	}
	if err := next.check(sender.ns, sender.id, "eth0"); err != nil {
		t.Errorf("CHECK by the new build: %v", err)
	}
}

// startStream sends bytes from one container to the other over one TCP
// connection until stop closes; streamErr gets the first error, or nil.
func startStream(t *testing.T, from, to container, received *atomic.Int64, streamErr chan<- error, stop <-chan struct{}) {
	t.Helper()
	ln, err := to.ns.ListenTCP(netip.AddrPortFrom(to.ip, 0))
	if err != nil {
		t.Fatal(err)
	}
	var conn net.Conn
	if err := from.ns.Do(func() (err error) { conn, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	peer, err := ln.Accept()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); peer.Close() })
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := peer.Read(buf)
			received.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	go func() {
		chunk := make([]byte, 16<<10)
		for {
			select {
			case <-stop:
				streamErr <- nil
				return
			default:
			}
			conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := conn.Write(chunk); err != nil {
				streamErr <- fmt.Errorf("write: %w", err)
				return
			}
		}
	}()
}

// waitForBytes waits until at least n bytes arrived, failing after timeout.
func waitForBytes(t *testing.T, received *atomic.Int64, n int64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for received.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d bytes arrived within %v", received.Load(), n, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// assertSpoofDropped fails unless thief, which sends as what, cannot reach
// victim and its endpoint counts a drop for reason.
func assertSpoofDropped(t *testing.T, dp *datapath.Datapath, thief, victim container, reason program.DropReason, what string) {
	t.Helper()
	if reaches(thief.ns, victim.ip) {
		t.Errorf("a packet from %s got through", what)
	}
	if drops(t, dp, thief, reason) == 0 {
		t.Errorf("no %s drop counted", reason)
	}
}
