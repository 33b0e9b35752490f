package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// Port mapping end to end: published ports reached from the outside, from
// other containers (of the network and of another, isolated one), from the
// published container itself (hairpin) and from the node (its uplink
// address, 127.0.0.1 and ::1), TCP and UDP, IPv4 and IPv6; through cnitool
// with CAP_ARGS and through a direct exec carrying Mesos' args.

const (
	pmRanges   = `[[{"subnet": "10.160.0.0/24"}], [{"subnet": "fd00:160::/64"}]]`
	pmGateway4 = "10.160.0.1"
	pmGateway6 = "fd00:160::1"
)

// testCgroup creates a cgroup v2 directory for the test, moves the test
// process into it (so the node-side clients run in it) and returns its path:
// the node-socket programs attach there, never to the machine's root. The
// process goes back to its cgroup at cleanup.
func testCgroup(t *testing.T) string {
	t.Helper()
	root := datapath.DefaultCgroup()
	if root == "" {
		t.Skip("no cgroup v2 mounted")
	}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var back string
	for _, line := range strings.Split(string(own), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			back = filepath.Join(root, rest)
		}
	}
	dir, err := os.MkdirTemp(root, "bpfbridge-test-")
	if err != nil {
		t.Fatal(err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0); err != nil {
		os.Remove(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(back, "cgroup.procs"), pid, 0); err != nil {
			t.Errorf("move the test process back to %s: %v", back, err)
		}
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove test cgroup: %v", err)
		}
	})
	return dir
}

// pmConf is a dual-stack gateway network with the portMappings capability.
func pmConf(name, bridge, dataDir, isolation string, sb *sandbox.Sandbox, cgroup string) string {
	return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "type": "bridge", "bridge": %q,
		"isGateway": true, "isDefaultGateway": true, "isolation": %q,
		"capabilities": {"portMappings": true},
		"datapath": {"bpffs": %q, "cgroup": %q},
		"ipam": {"type": "host-local", "dataDir": %q, "ranges": %s}}`, name, bridge, isolation, sb.BPFFS, cgroup, dataDir, pmRanges)
}

// pmTool runs cnitool on the network conf (one plugin) in a config list.
type pmTool struct {
	t    *testing.T
	sb   *sandbox.Sandbox
	tool sandbox.CNITool
	name string
}

func newPMTool(t *testing.T, sb *sandbox.Sandbox, name, conf string) *pmTool {
	t.Helper()
	dir := t.TempDir()
	list := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [%s]}`, name, conf)
	if err := os.WriteFile(filepath.Join(dir, name+".conflist"), []byte(list), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sb.MountBPFFS(); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	return &pmTool{t: t, sb: sb, name: name,
		tool: sandbox.CNITool{Binary: bins.CNITool, NetConfPath: dir, CNIPath: []string{bins.PluginDir()}, StateDir: t.TempDir()}}
}

// mappings is a CAP_ARGS value with the given portMappings entries.
func mappings(entries ...string) string {
	return `{"portMappings": [` + strings.Join(entries, ",") + `]}`
}

func mapping(host, ctr int, proto, hostIP string) string {
	return fmt.Sprintf(`{"hostPort": %d, "containerPort": %d, "protocol": %q, "hostIP": %q}`, host, ctr, proto, hostIP)
}

// add attaches ctr with capArgs and returns its first IPv4 and IPv6.
func (p *pmTool) add(ctr *sandbox.NetNS, capArgs string) (v4, v6 netip.Addr, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tool := p.tool
	tool.CapArgs = capArgs
	out, _, err := tool.Run(ctx, p.sb.Node, "add", p.name, ctr.Path)
	if err != nil {
		return v4, v6, err
	}
	var res struct {
		IPs []struct{ Address string } `json:"ips"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return v4, v6, fmt.Errorf("result: %v\n%s", err, out)
	}
	for _, ip := range res.IPs {
		a := netip.MustParsePrefix(ip.Address).Addr()
		if a.Is4() && !v4.IsValid() {
			v4 = a
		} else if a.Is6() && !v6.IsValid() {
			v6 = a
		}
	}
	return v4, v6, nil
}

func (p *pmTool) run(verb string, ctr *sandbox.NetNS, capArgs string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tool := p.tool
	tool.CapArgs = capArgs
	_, _, err := tool.Run(ctx, p.sb.Node, verb, p.name, ctr.Path)
	return err
}

// serveTag answers TCP and UDP to port, on every address of n, with tag:
// which container got the traffic.
func serveTag(t testing.TB, n *sandbox.NetNS, port int, tag string) {
	t.Helper()
	stop, err := sandbox.ServeTagged(n, netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(port)), tag)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
}

// mustPublish attaches ctr as container id through libcni, publishing
// hostPort to the container's port 80 over TCP and UDP as a runtime passes
// portMappings, and serves tag there.
func (n *network) mustPublish(ctr *sandbox.NetNS, id string, hostPort int, tag string) {
	n.t.Helper()
	rt := runtimeConf(ctr, id, "eth0")
	rt.CapabilityArgs = map[string]any{"portMappings": []map[string]any{
		{"hostPort": hostPort, "containerPort": 80, "protocol": "tcp"}, {"hostPort": hostPort, "containerPort": 80, "protocol": "udp"}}}
	if _, err := n.addRuntime(rt); err != nil {
		n.t.Fatalf("ADD %s publishing %d: %v", id, hostPort, err)
	}
	serveTag(n.t, ctr, 80, tag)
}

// ask sends to dst over proto from inside n (from local port lport when
// not 0) and returns the server's tag and the source it saw, waiting at
// most timeout.
func ask(n *sandbox.NetNS, proto string, lport int, dst netip.AddrPort, timeout time.Duration) (tag string, seen netip.AddrPort, err error) {
	var conn net.Conn
	err = n.Do(func() (err error) {
		d := net.Dialer{Timeout: timeout}
		if lport != 0 {
			d.LocalAddr = &net.UDPAddr{Port: lport}
		}
		conn, err = d.Dial(proto, dst.String())
		return err
	})
	if err != nil {
		return "", seen, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if proto == "udp" {
		if _, err := conn.Write([]byte("?")); err != nil {
			return "", seen, err
		}
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", seen, err
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		return "", seen, fmt.Errorf("reply %q", line)
	}
	if proto == "udp" && conn.RemoteAddr().String() != dst.String() {
		return "", seen, fmt.Errorf("reply from %s, not from %s", conn.RemoteAddr(), dst)
	}
	seen, err = netip.ParseAddrPort(f[1])
	return f[0], netip.AddrPortFrom(seen.Addr().Unmap(), seen.Port()), err
}

// expectServed asks dst from n and wants tag to answer, having seen want
// (the source address; invalid: any).
func expectServed(t *testing.T, what string, n *sandbox.NetNS, dst netip.AddrPort, tag string, want netip.Addr) {
	t.Helper()
	for _, proto := range []string{"tcp", "udp"} {
		got, seen, err := ask(n, proto, 0, dst, answerTimeout)
		if err != nil {
			t.Errorf("%s: %s to %s: %v", what, proto, dst, err)
			continue
		}
		if got != tag || (want.IsValid() && seen.Addr() != want) {
			t.Errorf("%s: %s to %s answered by %s, which saw %s; want %s seeing %v", what, proto, dst, got, seen, tag, want)
		}
	}
}

func expectUnserved(t *testing.T, what string, n *sandbox.NetNS, dst netip.AddrPort) {
	t.Helper()
	// A negative answer costs the timeout: short, as a port that answers
	// does so in microseconds here.
	if tag, _, err := ask(n, "tcp", 0, dst, time.Second); err == nil {
		t.Errorf("%s: tcp to %s answered by %s, want no answer", what, dst, tag)
	}
}

// answerTimeout bounds the wait for an answer that should come (a SYN or
// datagram lost to neighbour resolution is retried within it).
const answerTimeout = 5 * time.Second

func ap(a netip.Addr, port int) netip.AddrPort { return netip.AddrPortFrom(a, uint16(port)) }

// TestPortMapping: the CNI convention through cnitool's CAP_ARGS.
func TestPortMapping(t *testing.T) {
	sb := sandbox.ForTest(t)
	cg := testCgroup(t)
	p := newPMTool(t, sb, "pm", pmConf("pm", "br-pm", t.TempDir(), "network", sb, cg))
	up4, up6 := sb.NodeUplink4.Addr(), sb.NodeUplink6.Addr()
	gw4, gw6 := netip.MustParseAddr(pmGateway4), netip.MustParseAddr(pmGateway6)

	ctrs := newContainers(t, sb, "pm", 4)
	srv, cli, bound, late := ctrs[0], ctrs[1], ctrs[2], ctrs[3]
	srv4, _, err := p.add(srv, mappings(mapping(8080, 80, "tcp", ""), mapping(8080, 80, "udp", "")))
	if err != nil {
		t.Fatal(err)
	}
	serveTag(t, srv, 80, "srv")
	cli4, cli6, err := p.add(cli, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.add(bound, mappings(mapping(9090, 90, "tcp", up4.String()), mapping(9090, 90, "udp", up4.String()))); err != nil {
		t.Fatal(err)
	}
	serveTag(t, bound, 90, "bound")
	assertNoFirewallRules(t, sb)

	expectServed(t, "from outside", sb.External, ap(up4, 8080), "srv", sb.External4.Addr())
	expectServed(t, "from outside, IPv6", sb.External, ap(up6, 8080), "srv", sb.External6.Addr())
	expectServed(t, "from another container", cli, ap(up4, 8080), "srv", cli4)
	expectServed(t, "from another container, IPv6", cli, ap(up6, 8080), "srv", cli6)
	expectServed(t, "from another container to the gateway", cli, ap(gw4, 8080), "srv", cli4)
	expectServed(t, "hairpin", srv, ap(up4, 8080), "srv", gw4)
	expectServed(t, "hairpin, IPv6", srv, ap(up6, 8080), "srv", gw6)
	expectServed(t, "from the node", sb.Node, ap(up4, 8080), "srv", netip.Addr{})
	expectServed(t, "from the node, IPv6", sb.Node, ap(up6, 8080), "srv", netip.Addr{})
	expectServed(t, "from the node to 127.0.0.1", sb.Node, ap(netip.MustParseAddr("127.0.0.1"), 8080), "srv", netip.Addr{})
	expectServed(t, "from the node to ::1", sb.Node, ap(netip.IPv6Loopback(), 8080), "srv", netip.Addr{})
	// The container's own address is not published: it is not a node address.
	expectUnserved(t, "to the container's address and the host port", cli, ap(srv4, 8080))

	// hostIP: only on that address.
	expectServed(t, "hostIP-bound, from outside", sb.External, ap(up4, 9090), "bound", sb.External4.Addr())
	expectServed(t, "hostIP-bound, from the node", sb.Node, ap(up4, 9090), "bound", netip.Addr{})
	expectUnserved(t, "hostIP-bound, on the gateway", cli, ap(gw4, 9090))
	expectUnserved(t, "hostIP-bound, on IPv6", sb.External, ap(up6, 9090))
	expectUnserved(t, "hostIP-bound, on 127.0.0.1", sb.Node, ap(netip.MustParseAddr("127.0.0.1"), 9090))

	// A network-isolated container of another network reaches the
	// published port (it is public), and still not the container itself.
	other := newPMTool(t, sb, "pmo", strings.ReplaceAll(strings.ReplaceAll(pmConf("pmo", "br-pmo", t.TempDir(), "network", sb, cg),
		"10.160.", "10.161."), "fd00:160:", "fd00:161:"))
	xs := newContainers(t, sb, "pmx", 1)
	x4, _, err := other.add(xs[0], "")
	if err != nil {
		t.Fatal(err)
	}
	expectServed(t, "from another network", xs[0], ap(up4, 8080), "srv", x4)
	if reaches(xs[0], srv4) {
		t.Errorf("a container of another network reaches %s directly", srv4)
	}

	// CHECK sees the mapping.
	if err := p.run("check", srv, mappings(mapping(8080, 80, "tcp", ""), mapping(8080, 80, "udp", ""))); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	// `bridge inspect portmap list`, JSON and table.
	var ports []datapath.PublishedPort
	inspectJSON(t, sb, &ports, "portmap", "list")
	if len(ports) != 6 { // 8080 tcp+udp on both families, 9090 tcp+udp on IPv4
		t.Errorf("published ports: %+v, want 6", ports)
	}
	want := datapath.PublishedPort{Host: "*:8080", Container: ap(srv4, 80), Protocol: "tcp"}
	found := false
	for _, pp := range ports {
		if pp.Host == want.Host && pp.Container == want.Container && pp.Protocol == want.Protocol {
			found = pp.Packets > 0 && strings.HasPrefix(pp.Owner, "cnitool-") && strings.HasSuffix(pp.Owner, "/eth0")
		}
	}
	if !found {
		t.Errorf("published ports %+v lack %+v with packets and its owner", ports, want)
	}
	table, _, code := runInspect(t, sb, "portmap", "list")
	if code != 0 || !strings.Contains(table, "*:8080") || !strings.Contains(table, up4.String()+":9090") || !strings.Contains(table, ap(srv4, 80).String()) {
		t.Errorf("portmap list (exit %d):\n%s", code, table)
	}

	// A conflicting mapping is refused, naming the holder; nothing stays.
	before := nodeVeths(t, sb)
	err = p.run("add", late, mappings(mapping(8080, 81, "tcp", "")))
	if err == nil || !strings.Contains(err.Error(), "8080") || !strings.Contains(err.Error(), "already mapped by container cnitool-") {
		t.Errorf("conflicting ADD: %v, want an error naming port 8080 and its holder", err)
	}
	if after := nodeVeths(t, sb); len(after) != len(before) {
		t.Errorf("veths after the refused ADD: %v, before %v", after, before)
	}
	err = p.run("add", late, mappings(mapping(9090, 81, "tcp", "")))
	if err == nil || !strings.Contains(err.Error(), "9090") {
		t.Errorf("ADD of 9090 on every address while %s holds it: %v, want a conflict", up4, err)
	}

	// UDP from a fixed source port, so that a stale translation would
	// catch the next packets of the same 5-tuple.
	if tag, _, err := ask(sb.External, "udp", 40000, ap(up4, 8080), answerTimeout); err != nil || tag != "srv" {
		t.Fatalf("UDP from port 40000: %q, %v", tag, err)
	}
	// After DEL the port answers no more; a new container mapping it gets
	// the traffic, the same UDP 5-tuple included.
	if err := p.run("del", srv, mappings(mapping(8080, 80, "tcp", ""), mapping(8080, 80, "udp", ""))); err != nil {
		t.Fatal(err)
	}
	expectUnserved(t, "after DEL", sb.External, ap(up4, 8080))
	if _, _, err := p.add(late, mappings(mapping(8080, 80, "tcp", ""), mapping(8080, 80, "udp", ""))); err != nil {
		t.Fatal(err)
	}
	serveTag(t, late, 80, "late")
	if tag, _, err := ask(sb.External, "udp", 40000, ap(up4, 8080), answerTimeout); err != nil || tag != "late" {
		t.Errorf("UDP from port 40000 after the new mapping: %q, %v; want the new container", tag, err)
	}
	expectServed(t, "the new mapping from outside", sb.External, ap(up4, 8080), "late", sb.External4.Addr())
	expectServed(t, "the new mapping from the node", sb.Node, ap(up4, 8080), "late", netip.Addr{})

	assertNoFirewallRules(t, sb)
}

// TestPortMappingMesos: the Mesos form, executed directly as the Mesos CNI
// isolator does (a config without cniVersion, the mappings in
// args["org.apache.mesos"].network_info.port_mappings), then a DEL without
// CNI_NETNS.
func TestPortMappingMesos(t *testing.T) {
	sb := sandbox.ForTest(t)
	cg := testCgroup(t)
	if err := sb.MountBPFFS(); err != nil {
		t.Fatal(err)
	}
	ctr := newContainers(t, sb, "mesos", 1)[0]
	conf := func() string {
		return fmt.Sprintf(`{"name": "dcos", "type": "bridge", "bridge": "m-dcos", "isGateway": true, "ipMasq": false,
			"hairpinMode": true, "datapath": {"bpffs": %q, "cgroup": %q},
			"ipam": {"type": "host-local", "subnet": "9.0.1.0/25", "dataDir": %q, "routes": [{"dst": "0.0.0.0/0"}]},
			"args": {"org.apache.mesos": {"network_info": {"name": "dcos",
				"port_mappings": [{"host_port": 8181, "container_port": 80, "protocol": "tcp"},
				                  {"host_port": 8181, "container_port": 80, "protocol": "udp"}]}}}}`, sb.BPFFS, cg, t.TempDir())
	}()
	run := func(verb, netns string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := sb.Node.Command(ctx, bins.Bridge)
		cmd.Env = append(os.Environ(), "CNI_COMMAND="+verb, "CNI_CONTAINERID=mesos.task-1", "CNI_IFNAME=eth0",
			"CNI_NETNS="+netns, "CNI_PATH="+bins.PluginDir())
		cmd.Stdin = strings.NewReader(conf)
		return cmd.Output()
	}
	out, err := run("ADD", ctr.Path)
	if err != nil {
		t.Fatalf("ADD: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), `"ip4"`) {
		t.Errorf("ADD result is not 0.1.0-shaped:\n%s", out)
	}
	serveTag(t, ctr, 80, "mesos")
	expectServed(t, "Mesos mapping from outside", sb.External, ap(sb.NodeUplink4.Addr(), 8181), "mesos", sb.External4.Addr())
	expectServed(t, "Mesos mapping from the node", sb.Node, ap(sb.NodeUplink4.Addr(), 8181), "mesos", netip.Addr{})
	expectServed(t, "Mesos mapping, hairpin", ctr, ap(sb.NodeUplink4.Addr(), 8181), "mesos", netip.MustParseAddr("9.0.1.1"))
	assertNoFirewallRules(t, sb)

	if out, err := run("DEL", ""); err != nil {
		t.Fatalf("DEL without netns: %v\n%s", err, out)
	}
	expectUnserved(t, "after DEL without netns", sb.External, ap(sb.NodeUplink4.Addr(), 8181))
	if ports, err := openDatapath(t, sb).PublishedPorts(); err != nil || len(ports) != 0 {
		t.Errorf("published ports after DEL: %+v, %v", ports, err)
	}
	assertNoFirewallRules(t, sb)
}

// TestPortMappingGC: GC removes the published ports of attachments not in
// its valid list (libcni's capability args, as a runtime passes them).
func TestPortMappingGC(t *testing.T) {
	sb := sandbox.ForTest(t)
	cg := testCgroup(t)
	conf := strings.Replace(pmConf("pmgc", "br-pmgc", t.TempDir(), "network", sb, cg), `"cniVersion": "1.0.0"`, `"cniVersion": "1.1.0"`, 1)
	n := newNetwork(t, sb, conf, bins.PluginDir())
	ctr := newContainers(t, sb, "pmgc", 1)[0]
	n.mustPublish(ctr, "gc-1", 8282, "gc")
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	expectServed(t, "before GC", sb.External, ap(sb.NodeUplink4.Addr(), 8282), "gc", sb.External4.Addr())
	if err := sb.InNode(func() error { return n.cni.GCNetworkList(ctx, n.list, &libcni.GCArgs{}) }); err != nil {
		t.Fatal(err)
	}
	expectUnserved(t, "after GC", sb.External, ap(sb.NodeUplink4.Addr(), 8282))
	if ports, err := openDatapath(t, sb).PublishedPorts(); err != nil || len(ports) != 0 {
		t.Errorf("published ports after GC: %+v, %v", ports, err)
	}
}

// TestPortMappingUpgrade: a published port keeps answering (from outside
// and from the node) when a build with a new map layout takes the node
// over, and a node set up by the previous release, which has no port
// mapping maps, takes its first mapping after the upgrade.
func TestPortMappingUpgrade(t *testing.T) {
	t.Run("new-layout", func(t *testing.T) {
		sb := sandbox.ForTest(t)
		cg := testCgroup(t)
		p := newPMTool(t, sb, "pmup", pmConf("pmup", "br-pmup", t.TempDir(), "network", sb, cg))
		ctrs := newContainers(t, sb, "pmup", 2)
		caps := mappings(mapping(8383, 80, "tcp", ""), mapping(8383, 80, "udp", ""))
		if _, _, err := p.add(ctrs[0], caps); err != nil {
			t.Fatal(err)
		}
		serveTag(t, ctrs[0], 80, "old")
		up := ap(sb.NodeUplink4.Addr(), 8383)
		expectServed(t, "before the upgrade", sb.External, up, "old", sb.External4.Addr())

		p.tool.CNIPath = []string{buildPlugin(t, repoRoot(t), layoutBumpFlag)}
		if _, _, err := p.add(ctrs[1], ""); err != nil {
			t.Fatal(err)
		}
		if got := pinnedLayouts(t, sb); len(got) != 1 {
			t.Errorf("layouts pinned after the upgrade: %v, want only the new one", got)
		}
		expectServed(t, "after the upgrade, from outside", sb.External, up, "old", sb.External4.Addr())
		expectServed(t, "after the upgrade, from the node", sb.Node, up, "old", netip.Addr{})
		if err := p.run("check", ctrs[0], caps); err != nil {
			t.Errorf("CHECK after the upgrade: %v", err)
		}
		if err := p.run("del", ctrs[0], caps); err != nil {
			t.Fatal(err)
		}
		expectUnserved(t, "after DEL", sb.External, up)
	})
	t.Run("from-"+previousRelease, func(t *testing.T) {
		sb := sandbox.ForTest(t)
		cg := testCgroup(t)
		p := newPMTool(t, sb, "pmold", pmConf("pmold", "br-pmold", t.TempDir(), "network", sb, cg))
		p.tool.CNIPath = []string{previousReleasePlugin(t)}
		ctrs := newContainers(t, sb, "pmold", 2)
		if _, _, err := p.add(ctrs[0], ""); err != nil {
			t.Fatal(err)
		}
		p.tool.CNIPath = []string{bins.PluginDir()}
		if _, _, err := p.add(ctrs[1], mappings(mapping(8484, 80, "tcp", ""), mapping(8484, 80, "udp", ""))); err != nil {
			t.Fatal(err)
		}
		serveTag(t, ctrs[1], 80, "new")
		expectServed(t, "first mapping after the upgrade", sb.External, ap(sb.NodeUplink4.Addr(), 8484), "new", sb.External4.Addr())
		assertNoFirewallRules(t, sb)
	})
}

// TestPortMappingWithMasquerade: on a masquerading network a published
// port answers from outside and the container's own connections out are
// still masqueraded; the two kinds of flows share the NAT table.
func TestPortMappingWithMasquerade(t *testing.T) {
	sb := sandbox.ForTest(t)
	cg := testCgroup(t)
	extra := fmt.Sprintf(`"capabilities": {"portMappings": true}, "datapath": {"bpffs": %q, "cgroup": %q}`, sb.BPFFS, cg)
	n := newNetwork(t, sb, masqConf("pmmasq", "br-pmmasq", t.TempDir(), masqRanges4, extra), bins.PluginDir())
	ctr := newContainers(t, sb, "pmmasq", 1)[0]
	n.mustPublish(ctr, "masq-1", 8585, "masq")
	server := netip.AddrPortFrom(sb.Internet4, 8080)
	serveWhoAmI(t, sb.External, server)
	expectServed(t, "published port", sb.External, ap(sb.NodeUplink4.Addr(), 8585), "masq", sb.External4.Addr())
	for _, proto := range []string{"tcp", "udp"} {
		seen, err := sandbox.WhoAmI(ctr, proto, server, 3*time.Second)
		if err != nil || seen.Addr() != sb.NodeUplink4.Addr() {
			t.Errorf("%s from the container to the outside: seen as %v (%v), want the uplink address", proto, seen, err)
		}
	}
	expectServed(t, "published port, again", sb.External, ap(sb.NodeUplink4.Addr(), 8585), "masq", sb.External4.Addr())
	assertNoFirewallRules(t, sb)
}

// TestPortMappingNestedNodeDefaultCgroup: a node in a network namespace of
// its own, with no cgroup configured, attaches nothing to the machine's
// cgroup hierarchy; its published ports still answer from outside.
func TestPortMappingNestedNodeDefaultCgroup(t *testing.T) {
	sb := sandbox.ForTest(t)
	p := newPMTool(t, sb, "pmnc", pmConf("pmnc", "br-pmnc", t.TempDir(), "network", sb, ""))
	ctr := newContainers(t, sb, "pmnc", 1)[0]
	if _, _, err := p.add(ctr, mappings(mapping(8686, 80, "tcp", ""), mapping(8686, 80, "udp", ""))); err != nil {
		t.Fatal(err)
	}
	serveTag(t, ctr, 80, "nc")
	expectServed(t, "from outside", sb.External, ap(sb.NodeUplink4.Addr(), 8686), "nc", sb.External4.Addr())
	links, err := filepath.Glob(filepath.Join(openDatapath(t, sb).Dir(), "portmap-links", "*", "*"))
	if err != nil || len(links) != 0 {
		t.Errorf("cgroup links pinned without a cgroup configured: %v (%v)", links, err)
	}
}
