package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

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

// TestMasqueradeUpgradeAttachesBareUplink: an ADD killed after recording a
// masquerading uplink and before attaching to it leaves the uplink bare (no
// clsact, no programs) while the node's state names it. The next upgrade
// (`bridge datapath upgrade` here; an ADD, CHECK, DEL or GC of a build
// with other programs likewise) attaches it rather than failing on the
// missing qdisc, and the masquerade works again.
func TestMasqueradeUpgradeAttachesBareUplink(t *testing.T) {
	sb, n, server := newMasqNetwork(t, 8080)
	c := n.attach("bare0")
	if err := sb.InNode(func() error {
		l, err := netlink.LinkByName(sandbox.NodeUplinkName)
		if err != nil {
			return err
		}
		return netlink.QdiscDel(&netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index,
			Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"})
	}); err != nil {
		t.Fatalf("strip the uplink: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	out, err := sb.Node.Command(ctx, filepath.Join(bins.PluginDir(), "bridge"), "datapath", "upgrade", "--bpffs", sb.BPFFS).CombinedOutput()
	if err != nil {
		t.Fatalf("bridge datapath upgrade with a bare uplink: %v\n%s", err, out)
	}
	if in, eg := tcPrograms(t, sb, sandbox.NodeUplinkName, datapath.AttachLegacy); len(in) != 1 || len(eg) != 1 {
		t.Errorf("uplink programs after the upgrade: ingress %v, egress %v; want one each", in, eg)
	}
	if seen, err := whoAmI(t, c, "udp", server); err != nil || seen.Addr() != sb.NodeUplink4.Addr() {
		t.Errorf("UDP from %s after the upgrade: the outside saw %v (%v), want the uplink address %s", c.ip, seen, err, sb.NodeUplink4.Addr())
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

	ln := listenTCP(t, far, netip.AddrPortFrom(farAddr, 0))
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
	far := newContainer(t, sb, "far")
	routerSide, farSide := netip.MustParsePrefix("198.18.0.1/30"), netip.MustParsePrefix("198.18.0.2/30")
	if err := linkNamespaces(sb.External, far, "to-far", "eth0", mtu, routerSide, farSide); err != nil {
		t.Fatal(err)
	}
	if err := sb.External.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	err := far.Do(func() error {
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
	ln := listenTCP(t, sb.External, server)
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

// Masquerade's guarantees, end to end: nothing leaves with a container's
// address, one container cannot starve the others or the node, off-path
// packets cannot close a flow, and a config that would hurt the node is
// refused before it touches anything.

// capture is an AF_PACKET socket in a namespace, reading every frame that
// passes there (both directions) until stopped.
type capture struct {
	fd   int
	done chan struct{}
	mu   sync.Mutex
	seen func(frame []byte)
}

// startCapture opens the capture in ns, on the link ifname ("": every
// link), and calls seen (serialized) for every frame until the test ends.
func startCapture(t *testing.T, ns *sandbox.NetNS, ifname string, seen func(frame []byte)) *capture {
	t.Helper()
	c := &capture{done: make(chan struct{}), seen: seen}
	err := ns.Do(func() (err error) {
		c.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil || ifname == "" {
			return err
		}
		ifc, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		return unix.Bind(c.fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index})
	})
	if err != nil {
		t.Fatalf("capture socket: %v", err)
	}
	// Reads wake up every 100 ms to notice the stop.
	tv := unix.Timeval{Usec: 100000}
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		buf := make([]byte, 65536)
		for {
			select {
			case <-c.done:
				return
			default:
			}
			n, _, err := unix.Recvfrom(c.fd, buf, 0)
			if err != nil {
				continue // timeout, EINTR
			}
			c.mu.Lock()
			c.seen(buf[:n])
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		close(c.done)
		<-stopped
		unix.Close(c.fd)
	})
	return c
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// frameSource is the IP source address of an Ethernet frame, if it is IP.
func frameSource(f []byte) (netip.Addr, bool) {
	if len(f) < 14 {
		return netip.Addr{}, false
	}
	switch binary.BigEndian.Uint16(f[12:]) {
	case unix.ETH_P_IP:
		if len(f) >= 14+20 {
			return netip.AddrFrom4([4]byte(f[26:30])), true
		}
	case unix.ETH_P_IPV6:
		if len(f) >= 14+40 {
			return netip.AddrFrom16([16]byte(f[22:38])), true
		}
	}
	return netip.Addr{}, false
}

// watchLeaks fails t if, while it runs, any frame in the external world
// carries a source address from one of the container subnets.
func watchLeaks(t *testing.T, sb *sandbox.Sandbox, subnets ...netip.Prefix) {
	t.Helper()
	var leaks int
	var first string
	c := startCapture(t, sb.External, "", func(f []byte) {
		src, ok := frameSource(f)
		if !ok {
			return
		}
		for _, p := range subnets {
			if p.Contains(src) {
				if leaks == 0 {
					first = fmt.Sprintf("%x", f[:min(len(f), 64)])
				}
				leaks++
			}
		}
	})
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if leaks > 0 {
			t.Errorf("the outside saw %d packets with a container source (%v); the first: %s", leaks, subnets, first)
		}
	})
}

var masqSubnet4 = netip.MustParsePrefix("10.150.0.0/24")

// TestMasqueradeLargeUDP: a 3000-byte datagram leaves in fragments; every
// one is translated, so it arrives whole, from the uplink address, and the
// fragmented answer reaches the container whole too.
func TestMasqueradeLargeUDP(t *testing.T) {
	sb, n, _ := newMasqNetwork(t, 8080)
	c := n.attach("big")
	server := netip.AddrPortFrom(sb.Internet4, 9100)
	conn, err := sb.External.ListenUDP(server)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	type got struct {
		n    int
		from netip.AddrPort
	}
	received := make(chan got, 1)
	go func() {
		buf := make([]byte, 10000)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		k, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			close(received)
			return
		}
		received <- got{k, from}
		conn.WriteToUDPAddrPort(buf[:k], from) // the answer, as large
	}()
	payload := []byte(strings.Repeat("0123456789", 300))
	var answer []byte
	err = c.ns.Do(func() error {
		cc, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(server))
		if err != nil {
			return err
		}
		defer cc.Close()
		if _, err := cc.Write(payload); err != nil {
			return err
		}
		cc.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 10000)
		k, err := cc.Read(buf)
		answer = buf[:k]
		return err
	})
	g, ok := <-received
	if !ok {
		t.Fatal("the outside received nothing")
	}
	if g.n != len(payload) || g.from.Addr() != sb.NodeUplink4.Addr() {
		t.Errorf("the outside received %d bytes from %v, want %d from %v", g.n, g.from, len(payload), sb.NodeUplink4.Addr())
	}
	if err != nil || string(answer) != string(payload) {
		t.Errorf("the container got %d bytes of the answer back (%v), want %d", len(answer), err, len(payload))
	}
}

// TestMasqueradeFloodThenConnect: one container sends to 270,000 distinct
// destinations, more than the table holds; it is held to its budget
// (nat-quota), and another container connects at once, with no GC.
func TestMasqueradeFloodThenConnect(t *testing.T) {
	sb, n, server := newMasqNetwork(t, 8081)
	flooder, other := n.attach("flood"), n.attach("calm")
	const flows = 270000
	err := flooder.ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		deadline := time.Now().Add(90 * time.Second)
		for i := range flows {
			// 203.0.113.10-14 (the outside's "internet"), 54,000 ports each.
			to := &unix.SockaddrInet4{Port: 1024 + i%54000, Addr: [4]byte{203, 0, 113, byte(10 + i/54000)}}
			for unix.Sendto(fd, []byte("x"), 0, to) == unix.EAGAIN {
				time.Sleep(time.Millisecond)
			}
			if i%10000 == 0 && time.Now().After(deadline) {
				return fmt.Errorf("only %d datagrams in 90 s", i)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if q := dropTotal(t, sb, program.BpfbridgeDropReasonDROP_NAT_QUOTA); q == 0 {
		t.Error("the flood was never held to its budget (no nat-quota drop)")
	}
	out, in := natEntries(t, sb)
	t.Logf("after the flood: %d/%d translations", out, in)
	if out >= 262144 {
		t.Errorf("the flood filled the table: %d translations", out)
	}
	start := time.Now()
	seen, err := sandbox.WhoAmI(other.ns, "tcp", server, time.Second)
	if err != nil {
		t.Fatalf("another container after the flood: %v (nat-exhausted %d, nat-quota %d)", err,
			dropTotal(t, sb, program.BpfbridgeDropReasonDROP_NAT_EXHAUSTED), dropTotal(t, sb, program.BpfbridgeDropReasonDROP_NAT_QUOTA))
	}
	t.Logf("connected in %v, seen as %v", time.Since(start), seen)
	// DEL of the calm one beside the flood's translations (timing is only
	// reported: the machine's load decides it).
	start = time.Now()
	if err := n.del(other.ns, other.id, "eth0"); err != nil {
		t.Fatal(err)
	}
	t.Logf("DEL beside %d translations took %v", out, time.Since(start))
}

// tcpSegment is what the capture learnt of a TCP segment.
type tcpSegment struct {
	src, dst netip.AddrPort
	seq, ack uint32
	payload  int
	flags    uint8
}

func parseTCP4(f []byte) (tcpSegment, bool) {
	if len(f) < 14+20+20 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_IP || f[14+9] != unix.IPPROTO_TCP {
		return tcpSegment{}, false
	}
	ip := f[14:]
	ihl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if len(ip) < ihl+20 || total > len(ip) {
		return tcpSegment{}, false
	}
	tcp := ip[ihl:total]
	doff := int(tcp[12]>>4) * 4
	return tcpSegment{
		src:     netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), binary.BigEndian.Uint16(tcp[0:])),
		dst:     netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), binary.BigEndian.Uint16(tcp[2:])),
		seq:     binary.BigEndian.Uint32(tcp[4:]),
		ack:     binary.BigEndian.Uint32(tcp[8:]),
		payload: len(tcp) - doff,
		flags:   tcp[13],
	}, true
}

// rst4 is an IPv4 TCP RST from src to dst with sequence number seq.
func rst4(src, dst netip.AddrPort, seq uint32) []byte {
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12], tcp[13] = 5<<4, 0x04
	s, d := src.Addr().As4(), dst.Addr().As4()
	pseudo := append(append(append([]byte{}, s[:]...), d[:]...), 0, unix.IPPROTO_TCP, 0, 20)
	binary.BigEndian.PutUint16(tcp[16:], inetChecksum(append(pseudo, tcp...)))
	ip := []byte{0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, unix.IPPROTO_TCP, 0, 0}
	ip = append(append(ip, s[:]...), d[:]...)
	binary.BigEndian.PutUint16(ip[10:], inetChecksum(ip))
	return append(ip, tcp...)
}

func inetChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// TestMasqueradeBlindRST: an idle established connection survives 5,000
// RSTs from an off-path attacker who knows the 4-tuple but not the
// sequence numbers: they change nothing in the flow's state, and the
// connection still carries data afterwards.
func TestMasqueradeBlindRST(t *testing.T) {
	sb, n, _ := newMasqNetwork(t, 8082)
	c := n.attach("idle")
	server := netip.AddrPortFrom(sb.Internet4, 9200)
	ln := listenTCP(t, sb.External, server)
	accepted := make(chan net.Conn, 1)
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			accepted <- conn
		}
	}()
	// The server's segments to the container, seen on the outside.
	var mu sync.Mutex
	var last tcpSegment
	startCapture(t, sb.External, "", func(f []byte) {
		if s, ok := parseTCP4(f); ok && s.src == server {
			mu.Lock()
			last = s
			mu.Unlock()
		}
	})
	var conn net.Conn
	if err := c.ns.Do(func() (err error) { conn, err = net.DialTimeout("tcp4", server.String(), 3*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	srv := <-accepted
	defer srv.Close()
	go io.Copy(srv, srv)
	// One echoed byte each way: the server's next sequence number is known.
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	seg := last
	mu.Unlock()
	if !seg.dst.IsValid() {
		t.Fatal("no segment of the server captured")
	}
	next := seg.seq + uint32(seg.payload)
	raw, err := rawSocket(sb.External)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(raw)
	to := &unix.SockaddrInet4{Addr: seg.dst.Addr().As4()}
	for i := range uint32(5000) {
		// Half the sequence space away from the window, and on.
		if err := unix.Sendto(raw, rst4(server, seg.dst, next+1<<31+i*1000), 0, to); err != nil {
			t.Fatalf("RST %d: %v", i, err)
		}
	}
	// Past the second after which a closing flow gives up its port.
	time.Sleep(1500 * time.Millisecond)
	flows, err := openDatapath(t, sb).Flows()
	if err != nil {
		t.Fatal(err)
	}
	state := ""
	for _, f := range flows {
		if f.Container.Addr() == c.ip && f.Remote == server {
			state = f.State
		}
	}
	if state != "established" {
		t.Errorf("after 5000 blind RSTs the flow is %q, want established", state)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "still here" {
		t.Errorf("the connection after the RSTs: %q, %v", buf, err)
	}
}

// rawSocket is an IPv4 raw socket in ns that sends whole IP packets.
func rawSocket(ns *sandbox.NetNS) (fd int, err error) {
	err = ns.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		return err
	})
	return fd, err
}

// synRetrans is TcpExt's TCPSynRetrans of the namespace ns.
func synRetrans(t *testing.T, ns *sandbox.NetNS) uint64 {
	t.Helper()
	var v uint64
	err := ns.Do(func() error {
		// thread-self: /proc/self/net is the thread group leader's namespace.
		f, err := os.Open("/proc/thread-self/net/netstat")
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			names := strings.Fields(sc.Text())
			if !sc.Scan() {
				break
			}
			values := strings.Fields(sc.Text())
			for i, name := range names {
				if name == "TCPSynRetrans" && i < len(values) {
					v, err = strconv.ParseUint(values[i], 10, 64)
					return err
				}
			}
		}
		return errors.New("no TCPSynRetrans in /proc/net/netstat")
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestMasqueradeNodeBesideContainer: while a container opens connections to
// a server as fast as it can, the node opens 500 from its uplink address to
// the same server and port. They share the node's address and the
// ephemeral port range: every one of the node's succeeds, and the container
// never retransmits a SYN (no SYN of it was dropped).
func TestMasqueradeNodeBesideContainer(t *testing.T) {
	sb, n, _ := newMasqNetwork(t, 8083)
	c := n.attach("busy")
	server, stop, err := sandbox.ServeTCPEcho(sb.External, netip.AddrPortFrom(sb.Internet4, 9300))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	retransBefore := synRetrans(t, c.ns)
	var (
		wg       sync.WaitGroup
		made     atomic.Int64
		floodErr atomic.Value
	)
	for range 2 {
		wg.Go(func() {
			_ = c.ns.Do(func() error {
				for end := time.Now().Add(5 * time.Second); time.Now().Before(end); {
					conn, err := net.DialTimeout("tcp4", server.String(), 3*time.Second)
					if err != nil {
						floodErr.Store(err)
						return nil
					}
					conn.Close()
					made.Add(1)
				}
				return nil
			})
		})
	}
	local := &net.TCPAddr{IP: sb.NodeUplink4.Addr().AsSlice()}
	var failed []string
	err = sb.InNode(func() error {
		d := net.Dialer{LocalAddr: local, Timeout: 3 * time.Second}
		for i := range 500 {
			conn, err := d.Dial("tcp4", server.String())
			if err != nil {
				failed = append(failed, fmt.Sprintf("%d: %v", i, err))
				continue
			}
			conn.Close()
		}
		return nil
	})
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if len(failed) > 0 {
		t.Errorf("%d of the node's 500 connections failed: %v", len(failed), failed[:min(len(failed), 5)])
	}
	if e := floodErr.Load(); e != nil {
		t.Errorf("the container's connections: %v", e)
	}
	if r := synRetrans(t, c.ns) - retransBefore; r != 0 {
		t.Errorf("the container retransmitted %d SYNs", r)
	}
	t.Logf("the container opened %d connections meanwhile", made.Load())
}

// TestMasqueradeConfigRefused: a port range reaching into the privileged
// ports, more exclusions than the node's map holds, and a budget beyond the
// table's shared half are refused with code 7 before anything changes: not
// the node's sysctls, not its maps.
func TestMasqueradeConfigRefused(t *testing.T) {
	sb, n, _ := newMasqNetwork(t, 8084)
	n.attach("first")
	sysctls := func() []string {
		var vs []string
		for _, k := range []string{"net.ipv4.ip_local_reserved_ports", "net.ipv4.ip_local_port_range"} {
			v, err := sb.Node.Sysctl(k)
			if err != nil {
				t.Fatal(err)
			}
			vs = append(vs, v)
		}
		return vs
	}
	sysBefore, mapsBefore := sysctls(), mapEntries(t, sb)
	excludes := make([]string, 5000)
	for i := range excludes {
		excludes[i] = fmt.Sprintf("%q", netip.AddrFrom4([4]byte{100, 64 + byte(i>>8), byte(i), 0}).String()+"/24")
	}
	for _, tc := range []struct{ name, extra, key string }{
		{"portRange 1-65535", `"masquerade": {"portRange": "1-65535"}`, "masquerade.portRange"},
		{"5000 excludes", `"masquerade": {"exclude": [` + strings.Join(excludes, ",") + `]}`, "masquerade.exclude"},
		{"a share above the shared pool", `"masquerade": {"flowsPerContainer": 200000}`, "masquerade.flowsPerContainer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := newNetwork(t, sb, masqConf("masq", "br-masq", t.TempDir(), masqRanges4, tc.extra), bins.PluginDir())
			ns, err := sb.NewContainer("bad" + strconv.Itoa(len(tc.name)))
			if err != nil {
				t.Fatal(err)
			}
			_, err = bad.add(ns, "bad", "eth0")
			if code := cniCode(err); code != 7 || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("ADD: code %d (%v), want 7 naming %s", code, err, tc.key)
			}
		})
	}
	if got := sysctls(); strings.Join(got, " ") != strings.Join(sysBefore, " ") {
		t.Errorf("sysctls changed: %v -> %v", sysBefore, got)
	}
	if got := mapEntries(t, sb); fmt.Sprint(got) != fmt.Sprint(mapsBefore) {
		t.Errorf("maps changed: %v -> %v", mapsBefore, got)
	}
}
