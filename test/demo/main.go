// Command demo shows bpfbridge at work on throwaway network namespaces: the
// stock DC/OS "dcos" network config, unchanged, attaches two containers
// through cnitool (a real CNI client); they reach their gateway and each
// other; the eBPF datapath drops a container of another network and a
// container using an address it was not given; DEL leaves nothing behind. It never touches the machine's own
// network namespace or /var/lib/cni. Run it as root with `make demo`.
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/datapath/program"
	"github.com/bpfbridge/bpfbridge/test/netconf"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

func main() {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: creates network namespaces, run it as root (sudo make demo)")
		os.Exit(1)
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func run() error {
	bins, err := sandbox.FindBinaries()
	if err != nil {
		return err
	}
	var suffix [3]byte
	_, _ = rand.Read(suffix[:])
	sb, err := sandbox.New(sandbox.NamePrefix + "demo" + hex.EncodeToString(suffix[:]) + "-")
	if err != nil {
		return err
	}
	defer cleanup(sb)
	// Ctrl-C still removes the namespaces.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { <-sig; cleanup(sb); os.Exit(130) }()

	work, err := os.MkdirTemp("", "bpfbridge-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	confDir, state := filepath.Join(work, "net.d"), filepath.Join(work, "var-lib")
	for _, d := range []string{confDir, state} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(confDir, "dcos.conf"), []byte(netconf.DCOS), 0o644); err != nil {
		return err
	}
	if err := sb.MountBPFFS(); err != nil {
		return err
	}
	tool := sandbox.CNITool{Binary: bins.CNITool, NetConfPath: confDir, CNIPath: []string{bins.PluginDir()}, StateDir: state,
		Env: []string{"BPFBRIDGE_BPFFS=" + sb.BPFFS}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	step("Namespaces: node %s, containers below it", sb.Node.Name)
	step("Network config (DC/OS's dcos.conf, unchanged; no cniVersion, so results are 0.1.0-shaped):")
	fmt.Println(indent(netconf.DCOS))

	var ctrs []*sandbox.NetNS
	var ips []netip.Addr
	for _, name := range []string{"app-1", "app-2"} {
		ctr, err := sb.NewContainer(name)
		if err != nil {
			return err
		}
		start := time.Now()
		out, _, err := tool.Run(ctx, sb.Node, "add", "dcos", ctr.Path)
		if err != nil {
			return err
		}
		step("cnitool add dcos %s  (%v)", ctr.Name, time.Since(start).Round(time.Millisecond))
		fmt.Println(indent(strings.TrimSpace(string(out))))
		var res struct{ IP4 struct{ IP string } }
		if err := json.Unmarshal(out, &res); err != nil {
			return fmt.Errorf("cnitool output: %w", err)
		}
		p, err := netip.ParsePrefix(res.IP4.IP)
		if err != nil {
			return fmt.Errorf("result ip4.ip %q: %w", res.IP4.IP, err)
		}
		ctrs, ips = append(ctrs, ctr), append(ips, p.Addr())
	}

	step("Links in the node:")
	if err := sb.InNode(printLinks); err != nil {
		return err
	}

	gateway := netip.MustParseAddr("9.0.1.1")
	for _, probe := range []struct {
		from *sandbox.NetNS
		to   netip.Addr
		what string
	}{{ctrs[0], gateway, "its gateway"}, {ctrs[0], ips[1], "app-2"}, {ctrs[1], ips[0], "app-1"}} {
		got, err := sandbox.Ping(probe.from, probe.to, 3, 2*time.Second)
		step("ping %s (%s) from %s: %d/3 replies", probe.to, probe.what, probe.from.Name, got)
		if got != 3 {
			return fmt.Errorf("%s cannot reach %s: %v", probe.from.Name, probe.to, err)
		}
	}
	bound, stop, err := sandbox.ServeTCPEcho(ctrs[1], netip.AddrPortFrom(ips[1], 0))
	if err != nil {
		return err
	}
	err = sandbox.TCPEcho(ctrs[0], bound, []byte("hello from app-1"), 5*time.Second)
	stop()
	if err != nil {
		return err
	}
	step("TCP echo app-1 -> %s: ok", bound)

	if err := showIsolation(ctx, sb, tool, confDir, ctrs, ips); err != nil {
		return err
	}
	step("What an operator sees: bridge inspect endpoint list, then stats")
	if err := inspect(ctx, sb, bins.Bridge, "endpoint", "list"); err != nil {
		return err
	}
	if err := inspect(ctx, sb, bins.Bridge, "stats"); err != nil {
		return err
	}
	if err := showMasquerade(ctx, sb, tool, confDir, bins.Bridge); err != nil {
		return err
	}

	for _, ctr := range ctrs {
		if _, _, err := tool.Run(ctx, sb.Node, "del", "dcos", ctr.Path); err != nil {
			return err
		}
		step("cnitool del dcos %s", ctr.Name)
	}
	left, err := os.ReadDir(filepath.Join(state, "cni", "networks", "dcos"))
	if err != nil {
		return err
	}
	var names []string
	for _, e := range left {
		names = append(names, e.Name())
	}
	step("IPAM store after DEL (no address files left): %s", strings.Join(names, " "))
	step("Links in the node after DEL:")
	if err := sb.InNode(printLinks); err != nil {
		return err
	}
	step("Done: cleaning up the namespaces.")
	return nil
}

// otherConf is a second network on the node, with isolation "network"
// (the default, spelled out here).
const otherConf = `{"name": "other", "type": "bridge", "bridge": "m-other", "isGateway": true,
  "isolation": "network",
  "ipam": {"type": "host-local", "subnet": "9.0.2.0/25", "routes": [{"dst": "0.0.0.0/0"}]}}`

// addContainer writes the network's conf into confDir, creates the
// container name and adds it to the network with cnitool; del deletes it
// again.
func addContainer(ctx context.Context, sb *sandbox.Sandbox, tool sandbox.CNITool, confDir, network, conf, name string) (c *sandbox.NetNS, del func(), err error) {
	if err := os.WriteFile(filepath.Join(confDir, network+".conf"), []byte(conf), 0o644); err != nil {
		return nil, nil, err
	}
	if c, err = sb.NewContainer(name); err != nil {
		return nil, nil, err
	}
	if _, _, err := tool.Run(ctx, sb.Node, "add", network, c.Path); err != nil {
		return nil, nil, err
	}
	return c, func() { tool.Run(ctx, sb.Node, "del", network, c.Path) }, nil
}

// showIsolation shows the eBPF datapath at work: a container of another
// network cannot reach the dcos containers, and a container that takes an
// address it was not given gets nothing through; both drops are counted.
func showIsolation(ctx context.Context, sb *sandbox.Sandbox, tool sandbox.CNITool, confDir string, ctrs []*sandbox.NetNS, ips []netip.Addr) error {
	intruder, del, err := addContainer(ctx, sb, tool, confDir, "other", otherConf, "intruder")
	if err != nil {
		return err
	}
	defer del()
	dp, err := datapath.OpenExisting(datapath.Options{BPFFS: sb.BPFFS})
	if err != nil {
		return err
	}
	defer dp.Close()

	got, _ := sandbox.Ping(intruder, ips[0], 2, 300*time.Millisecond)
	step("ping %s (app-1, network dcos) from %s (network other): %d/2 replies", ips[0], intruder.Name, got)
	if err := printDrops(dp, intruder, program.BpfbridgeDropReasonDROP_CROSS_NETWORK); err != nil {
		return err
	}

	// app-2 swaps its address for one it was not given.
	stolen := netip.MustParseAddr("9.0.1.99")
	if err := takeAddress(ctrs[1], ips[1], stolen, ips[0]); err != nil {
		return err
	}
	got, _ = sandbox.Ping(ctrs[1], ips[0], 2, 300*time.Millisecond)
	step("app-2 replaces its %s with %s; ping app-1 from it: %d/2 replies", ips[1], stolen, got)
	return printDrops(dp, ctrs[1], program.BpfbridgeDropReasonDROP_SPOOF_IPV4)
}

// egressConf is a masquerading network: its containers reach the outside
// world with the node's address, translated by the uplink's eBPF programs.
const egressConf = `{"name": "egress", "type": "bridge", "bridge": "m-egress", "isGateway": true, "ipMasq": true,
  "ipam": {"type": "host-local", "subnet": "9.0.3.0/25", "routes": [{"dst": "0.0.0.0/0"}]}}`

// showMasquerade shows a container of a masquerading network reaching the
// external namespace, which sees the node's uplink address.
func showMasquerade(ctx context.Context, sb *sandbox.Sandbox, tool sandbox.CNITool, confDir, bridge string) error {
	client, del, err := addContainer(ctx, sb, tool, confDir, "egress", egressConf, "client")
	if err != nil {
		return err
	}
	defer del()
	server := netip.AddrPortFrom(sb.Internet4, 80)
	stop, err := sandbox.ServeWhoAmI(sb.External, server)
	if err != nil {
		return err
	}
	defer stop()
	seen, err := sandbox.WhoAmI(client, "tcp", server, 5*time.Second)
	if err != nil {
		return fmt.Errorf("masqueraded TCP to %s: %w", server, err)
	}
	step("TCP from %s (network egress, ipMasq) to %s in the external namespace:", client.Name, server)
	fmt.Printf("    the server saw the connection come from %s (the node's uplink address is %s)\n", seen, sb.NodeUplink4.Addr())
	step("bridge inspect nat list")
	return inspect(ctx, sb, bridge, "nat", "list")
}

// inspect runs `bridge inspect args…` on the sandbox node and prints its
// output indented.
func inspect(ctx context.Context, sb *sandbox.Sandbox, bridge string, args ...string) error {
	args = append([]string{"inspect"}, append(args, "--bpffs", sb.BPFFS)...)
	out, err := sb.Node.Command(ctx, bridge, args...).CombinedOutput()
	fmt.Println(indent(strings.TrimRight(string(out), "\n")))
	if err != nil {
		return fmt.Errorf("bridge %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// takeAddress replaces own with stolen on eth0 inside ctr, with a static
// neighbour entry for peer (losing its last address flushed the ARP cache).
func takeAddress(ctr *sandbox.NetNS, own, stolen, peer netip.Addr) error {
	return ctr.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		neighs, err := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		var peerMAC net.HardwareAddr
		for _, n := range neighs {
			if n.IP.Equal(peer.AsSlice()) {
				peerMAC = n.HardwareAddr
			}
		}
		ownAddr, _ := netlink.ParseAddr(own.String() + "/25")
		stolenAddr, _ := netlink.ParseAddr(stolen.String() + "/25")
		if err := netlink.AddrDel(l, ownAddr); err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, stolenAddr); err != nil {
			return err
		}
		return netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4,
			State: netlink.NUD_PERMANENT, IP: peer.AsSlice(), HardwareAddr: peerMAC})
	})
}

// printDrops prints the drops the datapath counted for the container ctr
// under reason.
func printDrops(dp *datapath.Datapath, ctr *sandbox.NetNS, reason program.DropReason) error {
	id := cnitoolContainerID(ctr.Path)
	c, err := dp.Counters(id, "eth0")
	if err != nil {
		return err
	}
	fmt.Printf("    datapath: %s dropped %d packet(s) as %s (sent %d, received %d)\n",
		ctr.Name, c.Drops[reason], reason, c.FromContainer.Packets, c.ToContainer.Packets)
	return nil
}

// cnitoolContainerID is the container ID cnitool derives from a netns path.
func cnitoolContainerID(netnsPath string) string {
	sum := sha512.Sum512([]byte(netnsPath))
	return fmt.Sprintf("cnitool-%x", sum[:10])
}

// printLinks prints the links of the calling thread's namespace, with
// their MTU and master, like a short `ip link`.
func printLinks() error {
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	byIndex := map[int]string{}
	for _, l := range links {
		byIndex[l.Attrs().Index] = l.Attrs().Name
	}
	for _, l := range links {
		a := l.Attrs()
		master := ""
		if a.MasterIndex != 0 {
			master = "master " + byIndex[a.MasterIndex]
		}
		fmt.Printf("    %-14s %-7s mtu %-5d %-5s %s\n", a.Name, l.Type(), a.MTU, a.OperState, master)
	}
	return nil
}

func cleanup(sb *sandbox.Sandbox) {
	if err := sb.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "demo: cleanup:", err)
	}
}

func step(format string, args ...any) {
	fmt.Printf("\n==> "+format+"\n", args...)
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}
