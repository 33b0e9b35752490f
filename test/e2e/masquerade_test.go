package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/datapath/program"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// masqConf is a masquerading gateway network; extra adds top-level keys.
func masqConf(name, bridge, dataDir, ranges, extra string) string {
	if extra != "" {
		extra = ", " + extra
	}
	return fmt.Sprintf(`{"cniVersion": "1.1.0", "name": %q, "type": "bridge", "bridge": %q,
		"isGateway": true, "isDefaultGateway": true, "ipMasq": true%s,
		"ipam": {"type": "host-local", "dataDir": %q, "ranges": %s}}`, name, bridge, extra, dataDir, ranges)
}

const masqRanges4 = `[[{"subnet": "10.150.0.0/24"}]]`

// serveWhoAmI runs a sandbox.ServeWhoAmI server for the test's duration.
func serveWhoAmI(t *testing.T, n *sandbox.NetNS, addr netip.AddrPort) {
	t.Helper()
	stop, err := sandbox.ServeWhoAmI(n, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
}

// whoAmI asks the server at dst, from inside c, which address it saw.
func whoAmI(t *testing.T, c container, network string, dst netip.AddrPort) (netip.AddrPort, error) {
	t.Helper()
	return sandbox.WhoAmI(c.ns, network, dst, 3*time.Second)
}

// natEntries counts the node's live translations: out, and those of them
// whose reply half is there too. A DEL makes its container's translations
// dead at once (their pairs are reclaimed later, as the datapath meets
// them, or by GC): they do not count.
func natEntries(t *testing.T, sb *sandbox.Sandbox) (out, in int) {
	t.Helper()
	flows, err := openDatapath(t, sb).Flows()
	if err != nil && !errors.Is(err, datapath.ErrNoMasquerade) {
		t.Fatal(err)
	}
	for _, f := range flows {
		out++
		if !f.HalfOnly {
			in++
		}
	}
	return out, in
}

// newMasqNetwork is an IPv4 masquerading network "masq" in a fresh
// sandbox, and a whoami server on the outside at Internet4:port. The
// outside is watched for the container subnet's addresses throughout.
func newMasqNetwork(t *testing.T, port uint16) (*sandbox.Sandbox, *network, netip.AddrPort) {
	t.Helper()
	sb := sandbox.ForTest(t)
	watchLeaks(t, sb, masqSubnet4)
	n := newNetwork(t, sb, masqConf("masq", "br-masq", t.TempDir(), masqRanges4, ""), bins.PluginDir())
	server := netip.AddrPortFrom(sb.Internet4, port)
	serveWhoAmI(t, sb.External, server)
	return sb, n, server
}

// TestMasqueradeToExternal: the external world sees TCP, UDP and ping from
// a container as coming from the node's uplink address, and answers reach
// the container (External has no route back to the container subnet).
func TestMasqueradeToExternal(t *testing.T) {
	sb, n, server := newMasqNetwork(t, 8080)
	c := n.attach("m0")
	for _, proto := range []string{"tcp", "udp"} {
		seen, err := whoAmI(t, c, proto, server)
		if err != nil {
			t.Fatalf("%s from %s to the outside: %v", proto, c.ip, err)
		}
		if seen.Addr() != sb.NodeUplink4.Addr() || seen.Port() < datapath.DefaultNATPortMin {
			t.Errorf("%s: the outside saw %s, want the node's uplink address %s and a port from %d", proto, seen, sb.NodeUplink4.Addr(), datapath.DefaultNATPortMin)
		}
	}
	if got, err := sandbox.Ping(c.ns, sb.Internet4, 3, 2*time.Second); got != 3 {
		t.Errorf("ping to the outside: %d/3 replies (%v)", got, err)
	}
	if out, in := natEntries(t, sb); out < 3 || out != in {
		t.Errorf("translations: %d out, %d in; want at least 3, in pairs", out, in)
	}
	assertNoFirewallRules(t, sb)

	if err := n.del(c.ns, c.id, "eth0"); err != nil {
		t.Fatal(err)
	}
	if out, in := natEntries(t, sb); out+in != 0 {
		t.Errorf("translations after DEL: %d out, %d in; want none", out, in)
	}
	// The network's last endpoint took its flag, exclusions and usage
	// counter along (nat_usage keeps the node-wide total).
	if m := mapEntries(t, sb); m["nat_networks"]+m["nat_exclude"] != 0 || m["nat_usage"] > 1 {
		t.Errorf("after the last DEL: nat_networks %d, nat_exclude %d, nat_usage %d; want 0, 0, at most the total",
			m["nat_networks"], m["nat_exclude"], m["nat_usage"])
	}
}

// TestMasqueradeManyConnections: 10 containers × 20 concurrent TCP
// connections to the outside all complete with the right data.
func TestMasqueradeManyConnections(t *testing.T) {
	sb := sandbox.ForTest(t)
	n := newNetwork(t, sb, masqConf("masq", "br-masq", t.TempDir(), masqRanges4, ""), bins.PluginDir())
	bound, stop, err := sandbox.ServeTCPEcho(sb.External, netip.AddrPortFrom(sb.Internet4, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	var ctrs []container
	for i := range 10 {
		ctrs = append(ctrs, n.attach(fmt.Sprintf("many%d", i)))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i, c := range ctrs {
		for j := range 20 {
			wg.Go(func() {
				payload := []byte(fmt.Sprintf("container %d connection %d %s", i, j, strings.Repeat("x", 4000)))
				if err := sandbox.TCPEcho(c.ns, bound, payload, 10*time.Second); err != nil {
					errs <- fmt.Errorf("%s connection %d: %w", c.id, j, err)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestMasqueradePMTU: behind the outside world lies a host reached over a
// 1280-byte link. The router sends "fragmentation needed" to the node's
// address; only if the uplink program translates it back to the container
// does the container's TCP learn the path MTU and a large transfer finish.
func TestMasqueradePMTU(t *testing.T) {
	sb := sandbox.ForTest(t)
	far, farAddr := addFarHost(t, sb, 1280)
	n := newNetwork(t, sb, masqConf("masq", "br-masq", t.TempDir(), masqRanges4, ""), bins.PluginDir())
	c := n.attach("pmtu")

	var ln net.Listener
	if err := far.Do(func() (err error) { ln, err = net.Listen("tcp", netip.AddrPortFrom(farAddr, 0).String()); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		n, _ := io.Copy(io.Discard, conn)
		got <- n
	}()
	const size = 4 << 20
	var conn net.Conn
	if err := c.ns.Do(func() (err error) { conn, err = net.DialTimeout("tcp", ln.Addr().String(), 3*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	sent, err := io.Copy(conn, io.LimitReader(zeros{}, size))
	conn.Close()
	if err != nil || sent != size {
		t.Fatalf("sent %d of %d bytes over a path with a 1280-byte hop: %v", sent, size, err)
	}
	if n := <-got; n != size {
		t.Errorf("the far host received %d of %d bytes", n, size)
	}
	// The container learned the path MTU: the translated ICMP reached it.
	var mtu int
	err = c.ns.Do(func() error {
		routes, err := netlink.RouteGet(farAddr.AsSlice())
		if err == nil && len(routes) > 0 {
			mtu = routes[0].MTU
		}
		return err
	})
	if err != nil || mtu != 1280 {
		t.Errorf("the container's path MTU to %s is %d (%v), want 1280 learned from the translated ICMP error", farAddr, mtu, err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// addFarHost puts a host behind External and returns it with its address;
// External routes between it and the node. External's end of the link has
// the given MTU, the far host's end 1500: the far host advertises a TCP MSS
// that does not fit the path, so only path-MTU discovery (an ICMP
// "fragmentation needed" from External) saves a large transfer to it.
func addFarHost(t *testing.T, sb *sandbox.Sandbox, mtu int) (*sandbox.NetNS, netip.Addr) {
	t.Helper()
	far, err := sb.NewContainer("far")
	if err != nil {
		t.Fatal(err)
	}
	routerSide, farSide := netip.MustParsePrefix("198.18.0.1/30"), netip.MustParsePrefix("198.18.0.2/30")
	if err := linkNamespaces(sb.External, far, "to-far", "eth0", mtu, routerSide, farSide); err != nil {
		t.Fatal(err)
	}
	if err := sb.External.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	err = far.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: routerSide.Addr().AsSlice()})
	})
	if err != nil {
		t.Fatal(err)
	}
	return far, farSide.Addr()
}

// linkNamespaces connects a and b with a veth pair, a's end with the given
// MTU and b's with 1500, and addresses; both ends up.
func linkNamespaces(a, b *sandbox.NetNS, nameA, nameB string, mtu int, addrA, addrB netip.Prefix) error {
	peerNS, err := os.Open(b.Path)
	if err != nil {
		return err
	}
	defer peerNS.Close()
	return a.Do(func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nameA, MTU: mtu}, PeerName: nameB,
			PeerNamespace: netlink.NsFd(int(peerNS.Fd())), PeerMTU: 1500}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		if err := upWith(nameA, addrA); err != nil {
			return err
		}
		return b.Do(func() error { return upWith(nameB, addrB) })
	})
}

func upWith(name string, p netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	addr, _ := netlink.ParseAddr(p.String())
	if err := netlink.AddrAdd(l, addr); err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

// TestMasqueradePortExhaustion: with a two-port range, a third connection
// to the same remote cannot be translated: it is dropped with the
// exhaustion reason and the existing flows keep working.
func TestMasqueradePortExhaustion(t *testing.T) {
	sb := sandbox.ForTest(t)
	n := newNetwork(t, sb, masqConf("masq", "br-masq", t.TempDir(), masqRanges4, `"masquerade": {"portRange": "61000-61001"}`), bins.PluginDir())
	c := n.attach("ex")
	server := netip.AddrPortFrom(sb.Internet4, 9000)
	var ln net.Listener
	if err := sb.External.Do(func() (err error) { ln, err = net.Listen("tcp", server.String()); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer conn.Close(); io.Copy(conn, conn) }()
		}
	}()
	var open []net.Conn
	defer func() {
		for _, conn := range open {
			conn.Close()
		}
	}()
	dial := func(timeout time.Duration) (net.Conn, error) {
		var conn net.Conn
		err := c.ns.Do(func() (err error) { conn, err = net.DialTimeout("tcp", server.String(), timeout); return err })
		return conn, err
	}
	for i := range 2 {
		conn, err := dial(3 * time.Second)
		if err != nil {
			t.Fatalf("connection %d within the port range: %v", i, err)
		}
		open = append(open, conn)
	}
	before := dropTotal(t, sb, program.BpfbridgeDropReasonDROP_NAT_EXHAUSTED)
	if conn, err := dial(time.Second); err == nil {
		conn.Close()
		t.Fatal("a third connection got through a two-port range")
	}
	if dropTotal(t, sb, program.BpfbridgeDropReasonDROP_NAT_EXHAUSTED) <= before {
		t.Error("no nat-exhausted drop counted")
	}
	for i, conn := range open {
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		msg := []byte("still here " + strconv.Itoa(i))
		buf := make([]byte, len(msg))
		if _, err := conn.Write(msg); err != nil {
			t.Errorf("existing flow %d after exhaustion: %v", i, err)
			continue
		}
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != string(msg) {
			t.Errorf("existing flow %d after exhaustion: read %q, %v", i, buf, err)
		}
	}
}

// TestMasqueradeConnectionChurn: 6000 short connections one after another
// to one remote, more than the 4536 ports of the default range, all get a
// port: closed flows give theirs up after a second (they used to hold it
// for the 10 s closing timeout), and random probing finds free ports
// (probing consecutive ones reported exhaustion at 60% occupancy).
func TestMasqueradeConnectionChurn(t *testing.T) {
	sb, n, server := newMasqNetwork(t, 7100)
	c := n.attach("churn")
	deadline := time.Now().Add(60 * time.Second)
	for i := range 6000 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d connections in 60 s", i)
		}
		var conn net.Conn
		err := c.ns.Do(func() (err error) {
			conn, err = net.DialTimeout("tcp", server.String(), 2*time.Second)
			return err
		})
		if err != nil {
			t.Fatalf("connection %d: %v (nat-exhausted drops: %d)", i, err, dropTotal(t, sb, program.BpfbridgeDropReasonDROP_NAT_EXHAUSTED))
		}
		conn.Close()
	}
}

// TestMasqueradeLocalAndExpiry: traffic between containers of the
// network is not translated, and expired translations disappear.
func TestMasqueradeLocalAndExpiry(t *testing.T) {
	sb := sandbox.ForTest(t)
	n := newNetwork(t, sb, masqConf("masq", "br-masq", t.TempDir(), masqRanges4, `"masquerade": {"timeouts": {"udp": 1, "icmp": 1}}`), bins.PluginDir())
	a, b := n.attach("local-a"), n.attach("local-b")
	serveWhoAmI(t, b.ns, netip.AddrPortFrom(b.ip, 7000))
	seen, err := whoAmI(t, a, "tcp", netip.AddrPortFrom(b.ip, 7000))
	if err != nil || seen.Addr() != a.ip {
		t.Errorf("container to container: the peer saw %v (%v), want %s untranslated", seen, err, a.ip)
	}
	serveWhoAmI(t, sb.External, netip.AddrPortFrom(sb.Internet4, 7001))
	if _, err := whoAmI(t, a, "udp", netip.AddrPortFrom(sb.Internet4, 7001)); err != nil {
		t.Fatal(err)
	}
	if out, _ := natEntries(t, sb); out != 1 {
		t.Fatalf("%d translations after one UDP exchange, want 1", out)
	}
	time.Sleep(2500 * time.Millisecond) // the 1 s UDP timeout, with margin
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	err = sb.InNode(func() error {
		return n.cni.GCNetworkList(ctx, n.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{
			{ContainerID: a.id, IfName: "eth0"}, {ContainerID: b.id, IfName: "eth0"}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	if out, in := natEntries(t, sb); out+in != 0 {
		t.Errorf("expired translations after GC: %d out, %d in; want none", out, in)
	}
}

// TestNoNATStateWithoutIPMasq: a network without ipMasq leaves no trace of
// masquerade: no translation, no uplink program, no network flag.
func TestNoNATStateWithoutIPMasq(t *testing.T) {
	sb := sandbox.ForTest(t)
	n := newNetwork(t, sb, isoConf("plain", "br-plain", "10.151.0.0/24", "network", t.TempDir()), bins.PluginDir())
	if err := sb.AddExternalRoute(netip.MustParsePrefix("10.151.0.0/24")); err != nil {
		t.Fatal(err)
	}
	c := n.attach("plain")
	if !reaches(c.ns, sb.Internet4) {
		t.Fatal("the routed network cannot reach the outside")
	}
	if out, in := natEntries(t, sb); out+in != 0 {
		t.Errorf("translations without ipMasq: %d out, %d in", out, in)
	}
	if n := mapEntries(t, sb)["nat_networks"]; n != 0 {
		t.Errorf("%d masquerading networks recorded without ipMasq", n)
	}
	if in, eg := tcPrograms(t, sb, sandbox.NodeUplinkName, 0); len(in)+len(eg) != 0 {
		t.Errorf("programs on the uplink without ipMasq: %v %v", in, eg)
	}
	assertNoFirewallRules(t, sb)
}

// TestMasqueradeIPv6: the same over IPv6.
func TestMasqueradeIPv6(t *testing.T) {
	sb := sandbox.ForTest(t)
	n := newNetwork(t, sb, masqConf("masq6", "br-masq6", t.TempDir(),
		`[[{"subnet": "10.152.0.0/24"}], [{"subnet": "fd00:152::/64"}]]`, ""), bins.PluginDir())
	c := n.attach("six")
	server := netip.AddrPortFrom(sb.Internet6, 8080)
	serveWhoAmI(t, sb.External, server)
	seen, err := whoAmI(t, c, "tcp", server)
	if err != nil {
		t.Fatalf("TCP over IPv6 to the outside: %v", err)
	}
	if seen.Addr() != sb.NodeUplink6.Addr() {
		t.Errorf("the outside saw %s, want the node's uplink address %s", seen, sb.NodeUplink6.Addr())
	}
	if got, err := sandbox.Ping(c.ns, sb.Internet6, 3, 2*time.Second); got != 3 {
		t.Errorf("ping over IPv6: %d/3 replies (%v)", got, err)
	}
	assertNoFirewallRules(t, sb)
}

// TestMasqueradeGCForgetsGoneContainers: a container that vanished without
// DEL leaves translations that have not expired; GC removes them with the
// container's other state.
func TestMasqueradeGCForgetsGoneContainers(t *testing.T) {
	sb, n, server := newMasqNetwork(t, 7200)
	kept, gone := n.attach("kept"), n.attach("gone")
	for _, c := range []container{kept, gone} {
		if _, err := whoAmI(t, c, "udp", server); err != nil {
			t.Fatal(err)
		}
	}
	if out, _ := natEntries(t, sb); out != 2 {
		t.Fatalf("%d translations, want 2", out)
	}
	if err := gone.ns.Delete(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	err := sb.InNode(func() error {
		return n.cni.GCNetworkList(ctx, n.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: kept.id, IfName: "eth0"}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	if out, in := natEntries(t, sb); out != 1 || in != 1 {
		t.Errorf("translations after GC: %d out, %d in; want only the kept container's pair", out, in)
	}
}
