// Package e2e tests bpfbridge end to end: real plugin binaries driven by
// real CNI clients (libcni, cnitool) in throwaway network namespaces built by
// test/sandbox. Run as root: `make test`.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// bins are the plugin binaries and tools under test, found once.
var bins sandbox.Binaries

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: these tests create network namespaces and must run as root (sudo make test)")
		os.Exit(1)
	}
	var err error
	if bins, err = sandbox.FindBinaries(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// opTimeout bounds every plugin invocation.
const opTimeout = 30 * time.Second

// network is one CNI network on a sandbox node, driven through libcni as a
// container runtime drives it.
type network struct {
	t    testing.TB
	sb   *sandbox.Sandbox
	list *libcni.NetworkConfigList
	cni  *libcni.CNIConfig
	// cacheDir is libcni's result cache: the runtime's memory.
	cacheDir string
	name     string
	dataDir  string // the IPAM store root (ipam.dataDir)
}

// newNetwork serves conf, a single plugin config, as a one-plugin config
// list with the plugins in pluginDir. libcni's result cache goes to a
// temporary directory, never /var/lib/cni.
func newNetwork(t testing.TB, sb *sandbox.Sandbox, conf string, pluginDir string) *network {
	t.Helper()
	var plugin struct {
		Name       string `json:"name"`
		CNIVersion string `json:"cniVersion"`
		IPAM       struct {
			DataDir string `json:"dataDir"`
		} `json:"ipam"`
	}
	if err := json.Unmarshal([]byte(conf), &plugin); err != nil {
		t.Fatalf("parse config: %v\n%s", err, conf)
	}
	listJSON := fmt.Sprintf(`{"cniVersion": %q, "name": %q, "plugins": [%s]}`, plugin.CNIVersion, plugin.Name, withBPFFS(t, sb, conf))
	list, err := libcni.NetworkConfFromBytes([]byte(listJSON))
	if err != nil {
		t.Fatalf("config list: %v\n%s", err, listJSON)
	}
	cacheDir := t.TempDir()
	return &network{
		t:        t,
		sb:       sb,
		list:     list,
		cni:      libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, cacheDir, nil),
		cacheDir: cacheDir,
		name:     plugin.Name,
		dataDir:  plugin.IPAM.DataDir,
	}
}

// servedBy is the same network and runtime (the same result cache) with the
// plugins of another directory, as after a plugin upgrade.
func (n *network) servedBy(pluginDir string) *network {
	next := *n
	next.cni = libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, n.cacheDir, nil)
	return &next
}

// withBPFFS points a bridge config's datapath at the sandbox node's bpffs,
// so that tests never pin state in the machine's /sys/fs/bpf.
func withBPFFS(t testing.TB, sb *sandbox.Sandbox, conf string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(conf), &m); err != nil {
		t.Fatalf("parse config: %v", err)
	}
	if m["type"] != "bridge" {
		return conf
	}
	if _, ok := m["datapath"]; !ok {
		m["datapath"] = map[string]any{"bpffs": sb.BPFFS}
	}
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func runtimeConf(ctr *sandbox.NetNS, id, ifname string) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: id, IfName: ifname}
	if ctr != nil {
		rt.NetNS = ctr.Path
	}
	return rt
}

// newGatewayNetwork is a sandbox with one network of gatewayConf on it,
// served by the plugins under test.
func newGatewayNetwork(t *testing.T, name, bridge, subnet string) (*sandbox.Sandbox, *network) {
	sb := sandbox.ForTest(t)
	return sb, newNetwork(t, sb, gatewayConf(name, bridge, subnet, t.TempDir()), bins.PluginDir())
}

// add attaches ctr (as container id, interface ifname) from inside the node.
func (n *network) add(ctr *sandbox.NetNS, id, ifname string) (types.Result, error) {
	return n.addRuntime(runtimeConf(ctr, id, ifname))
}

// addRuntime attaches with rt from inside the node, as a runtime does.
func (n *network) addRuntime(rt *libcni.RuntimeConf) (types.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	var res types.Result
	err := n.sb.InNode(func() error {
		var err error
		res, err = n.cni.AddNetworkList(ctx, n.list, rt)
		return err
	})
	return res, err
}

// mustAdd is add for attachments the test expects to succeed; it returns
// the result in the current CNI version.
func (n *network) mustAdd(ctr *sandbox.NetNS, id, ifname string) *current.Result {
	n.t.Helper()
	return n.mustAddRuntime(runtimeConf(ctr, id, ifname))
}

// mustAddRuntime is mustAdd with the runtime's whole configuration.
func (n *network) mustAddRuntime(rt *libcni.RuntimeConf) *current.Result {
	n.t.Helper()
	res, err := n.addRuntime(rt)
	if err != nil {
		n.t.Fatalf("ADD %s/%s: %v", rt.ContainerID, rt.IfName, err)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		n.t.Fatalf("ADD %s/%s: convert result: %v", rt.ContainerID, rt.IfName, err)
	}
	return cur
}

// del detaches; ctr nil means no CNI_NETNS, as after a node reboot.
func (n *network) del(ctr *sandbox.NetNS, id, ifname string) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	return n.sb.InNode(func() error {
		return n.cni.DelNetworkList(ctx, n.list, runtimeConf(ctr, id, ifname))
	})
}

func (n *network) check(ctr *sandbox.NetNS, id, ifname string) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	return n.sb.InNode(func() error {
		return n.cni.CheckNetworkList(ctx, n.list, runtimeConf(ctr, id, ifname))
	})
}

// storeDir is the network's directory in the IPAM store.
func (n *network) storeDir() string { return filepath.Join(n.dataDir, n.name) }

// allocations maps each allocated address in the store to the file's
// content, skipping the store's bookkeeping files.
func (n *network) allocations() map[string]string {
	n.t.Helper()
	got := map[string]string{}
	entries, err := os.ReadDir(n.storeDir())
	if os.IsNotExist(err) {
		return got
	}
	if err != nil {
		n.t.Fatalf("read store: %v", err)
	}
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(n.storeDir(), e.Name()))
		if err != nil {
			n.t.Fatalf("read allocation: %v", err)
		}
		got[e.Name()] = string(data)
	}
	return got
}

// assertStoreEmpty fails unless no address is allocated and no attachment
// is indexed.
func (n *network) assertStoreEmpty() {
	n.t.Helper()
	if a := n.allocations(); len(a) != 0 {
		n.t.Errorf("allocations left in the store: %v", a)
	}
	idx, err := os.ReadDir(filepath.Join(n.storeDir(), ".attachments"))
	if err != nil && !os.IsNotExist(err) {
		n.t.Fatal(err)
	}
	if len(idx) != 0 {
		n.t.Errorf("%d attachment index entries left in the store", len(idx))
	}
}

// gatewayConf is a network whose bridge is the containers' gateway, with
// host-local IPAM on subnet, stored in dataDir.
func gatewayConf(name, bridge, subnet, dataDir string) string {
	return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "type": "bridge", "bridge": %q, "isGateway": true,
		"ipam": {"type": "host-local", "subnet": %q, "dataDir": %q}}`, name, bridge, subnet, dataDir)
}

// inNode returns what f returns in the node's network namespace, failing
// the test (doing what) on an error.
func inNode[T any](t testing.TB, sb *sandbox.Sandbox, what string, f func() (T, error)) T {
	t.Helper()
	var v T
	if err := sb.InNode(func() (err error) {
		v, err = f()
		return err
	}); err != nil {
		t.Fatalf("%s in the node: %v", what, err)
	}
	return v
}

// nodeLinks returns the node's links.
func nodeLinks(t *testing.T, sb *sandbox.Sandbox) []netlink.Link {
	t.Helper()
	// netlinksafe retries a dump that links changing meanwhile interrupted.
	return inNode(t, sb, "list links", netlinksafe.LinkList)
}

// bridgePorts returns the names of the ports of bridge in the node.
func bridgePorts(t *testing.T, sb *sandbox.Sandbox, bridge string) []string {
	t.Helper()
	links := nodeLinks(t, sb)
	i := slices.IndexFunc(links, func(l netlink.Link) bool { return l.Attrs().Name == bridge })
	if i < 0 {
		t.Fatalf("no bridge %s in the node", bridge)
	}
	var ports []string
	for _, l := range links {
		if l.Attrs().MasterIndex == links[i].Attrs().Index {
			ports = append(ports, l.Attrs().Name)
		}
	}
	return ports
}

// nodeVeths returns the names of the veths in the node other than the
// sandbox's uplink: the host ends of container attachments.
func nodeVeths(t *testing.T, sb *sandbox.Sandbox) []string {
	t.Helper()
	var names []string
	for _, l := range nodeLinks(t, sb) {
		if l.Type() == "veth" && l.Attrs().Name != sandbox.NodeUplinkName {
			names = append(names, l.Attrs().Name)
		}
	}
	return names
}

// linkIn returns the link named name inside n, failing the test if absent.
func linkIn(t testing.TB, n *sandbox.NetNS, name string) netlink.Link {
	t.Helper()
	var link netlink.Link
	if err := n.Do(func() (err error) { link, err = netlink.LinkByName(name); return err }); err != nil {
		t.Fatalf("%s in %s: %v", name, n.Name, err)
	}
	return link
}

// hasLink reports whether n has a link named name.
func hasLink(t *testing.T, n *sandbox.NetNS, name string) bool {
	t.Helper()
	found := false
	_ = n.Do(func() error {
		_, err := netlink.LinkByName(name)
		found = err == nil
		return nil
	})
	return found
}

// resultJSON renders res in its own CNI version as a generic JSON object.
func resultJSON(t *testing.T, res types.Result) map[string]any {
	t.Helper()
	var buf bytes.Buffer
	if err := res.PrintTo(&buf); err != nil {
		t.Fatalf("print result: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("result is not JSON: %v\n%s", err, buf.String())
	}
	return m
}

// cniCode returns the CNI error code of err, or 0 when err is not a CNI error.
func cniCode(err error) uint {
	var e *types.Error
	for err != nil {
		if te, ok := err.(*types.Error); ok {
			e = te
			break
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			break
		}
		err = u.Unwrap()
	}
	if e == nil {
		return 0
	}
	return e.Code
}

// newContainer creates the container netns name in sb, or fails t.
func newContainer(t testing.TB, sb *sandbox.Sandbox, name string) *sandbox.NetNS {
	t.Helper()
	c, err := sb.NewContainer(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// listenTCP listens on addr inside n for the rest of the test, or fails t.
func listenTCP(t testing.TB, n *sandbox.NetNS, addr netip.AddrPort) *net.TCPListener {
	t.Helper()
	ln, err := n.ListenTCP(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// newContainers creates count container namespaces named <base><i>.
func newContainers(t *testing.T, sb *sandbox.Sandbox, base string, count int) []*sandbox.NetNS {
	t.Helper()
	var ctrs []*sandbox.NetNS
	for i := range count {
		ctrs = append(ctrs, newContainer(t, sb, fmt.Sprintf("%s%d", base, i)))
	}
	return ctrs
}

// addrsOf returns the addresses of ifname inside n, as prefixes, excluding
// link-local ones.
func addrsOf(t *testing.T, n *sandbox.NetNS, ifname string) []string {
	t.Helper()
	var got []string
	err := n.Do(func() error {
		link, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
		for _, a := range addrs {
			if !a.IP.IsLinkLocalUnicast() {
				got = append(got, a.IPNet.String())
			}
		}
		return err
	})
	if err != nil {
		t.Fatalf("addresses of %s in %s: %v", ifname, n.Name, err)
	}
	slices.Sort(got)
	return got
}

// mustContain fails unless s contains every one of subs.
func mustContain(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s %q does not mention %q", what, s, sub)
		}
	}
}

// resultIP returns the first address of res without its prefix length. It
// is safe to call from any goroutine.
func resultIP(t *testing.T, res types.Result) string {
	cur, err := current.NewResultFromResult(res)
	if err != nil || len(cur.IPs) == 0 {
		t.Errorf("result without addresses: %v (%v)", res, err)
		return ""
	}
	return cur.IPs[0].Address.IP.String()
}
