// Command demo shows bpfbridge at work on throwaway network namespaces: the
// stock DC/OS "dcos" network config, unchanged, attaches two containers
// through cnitool (a real CNI client); they reach their gateway and each
// other; DEL leaves nothing behind. It never touches the machine's own
// network namespace or /var/lib/cni. Run it as root with `make demo`.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

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
