package e2e

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/datapath/program"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// collidingNames finds two network names whose ids collided under the
// previous release's scheme (the first 32 bits of the SHA-256 of the name):
// what an attacker who can name a network does in under a second.
func collidingNames(t *testing.T) (string, string) {
	t.Helper()
	seen := map[uint32]string{}
	for i := range 1 << 22 {
		name := fmt.Sprintf("n%d", i)
		sum := sha256.Sum256([]byte(name))
		id := binary.LittleEndian.Uint32(sum[:4])
		if other, ok := seen[id]; ok {
			return other, name
		}
		seen[id] = name
	}
	t.Fatal("no two names collided in 4M tries")
	return "", ""
}

// l2Conf is an L2-only network (no gateway) in 10.180.0.0/24 with the
// address range [start, end] and the isolation mode.
func l2Conf(name, bridge, isolation, start, end, dataDir string) string {
	return fmt.Sprintf(`{"cniVersion": "1.1.0", "name": %q, "type": "bridge", "bridge": %q, "isolation": %q,
		"ipam": {"type": "host-local", "dataDir": %q,
			"ranges": [[{"subnet": "10.180.0.0/24", "rangeStart": %q, "rangeEnd": %q}]]}}`, name, bridge, isolation, dataDir, start, end)
}

// TestCollidingNetworkNamesAreIsolated: two networks on one bridge whose
// names hashed to one id in the previous release are two networks.
func TestCollidingNetworkNamesAreIsolated(t *testing.T) {
	first, second := collidingNames(t)
	sb := sandbox.ForTest(t)
	// One bridge, one L2 segment: only isolation keeps the two apart.
	n1 := newNetwork(t, sb, l2Conf(first, "br-coll", "network", "10.180.0.10", "10.180.0.19", t.TempDir()), bins.PluginDir())
	n2 := newNetwork(t, sb, l2Conf(second, "br-coll", "network", "10.180.0.20", "10.180.0.29", t.TempDir()), bins.PluginDir())
	c1, c2, c3 := n1.attach("col1"), n2.attach("col2"), n1.attach("col3")
	if !reaches(c1.ns, c3.ip) {
		t.Fatalf("%s cannot reach %s of its own network", c1.id, c3.id)
	}
	dp := openDatapath(t, sb)
	before := drops(t, dp, c1, program.BpfbridgeDropReasonDROP_CROSS_NETWORK) + drops(t, dp, c2, program.BpfbridgeDropReasonDROP_CROSS_NETWORK)
	if reaches(c1.ns, c2.ip) || reaches(c2.ns, c1.ip) {
		t.Errorf("networks %q and %q (one id in the previous release) reach each other", first, second)
	}
	if after := drops(t, dp, c1, program.BpfbridgeDropReasonDROP_CROSS_NETWORK) + drops(t, dp, c2, program.BpfbridgeDropReasonDROP_CROSS_NETWORK); after == before {
		t.Error("no cross-network drop counted")
	}
}

// TestLongNamesRoundTrip: a 1000-byte container id and a 200-byte network
// name, longer than the datapath record's fields, go through ADD, CHECK,
// GC and DEL without being confused with another attachment or network.
// The plugin is run directly: libcni's cache cannot name a file after
// such an attachment.
func TestLongNamesRoundTrip(t *testing.T) {
	sb := sandbox.ForTest(t)
	long := strings.Repeat("n", 200)
	// A network whose name shares the long one's first 127 bytes, the
	// part a datapath record holds.
	twin := long[:150] + "-twin"
	longConf := withBPFFS(t, sb, isoConf(long, "br-long", "10.182.0.0/24", "network", t.TempDir()))
	twinConf := withBPFFS(t, sb, isoConf(twin, "br-twin", "10.183.0.0/24", "network", t.TempDir()))
	longID, twinID := strings.Repeat("c", 1000), "twin0"
	ctr := newContainer(t, sb, "longc")
	bystander := newContainer(t, sb, "twinc")
	added := map[string]types.Result{}
	run := func(command, conf, id string, ctr *sandbox.NetNS, valid ...string) {
		t.Helper()
		switch command {
		case "GC":
			conf = withKey(t, conf, "cni.dev/valid-attachments", validAttachments(ids(valid)))
		case "CHECK":
			conf = withKey(t, conf, "prevResult", added[id])
		}
		netns := ""
		if ctr != nil {
			netns = ctr.Path
		}
		args := &invoke.Args{Command: command, ContainerID: id, NetNS: netns, IfName: "eth0", Path: bins.PluginDir()}
		err := sb.InNode(func() (err error) {
			if command == "ADD" {
				added[id], err = invoke.ExecPluginWithResult(t.Context(), bins.Bridge, []byte(conf), args, nil)
				return err
			}
			return invoke.ExecPluginWithoutResult(t.Context(), bins.Bridge, []byte(conf), args, nil)
		})
		if err != nil {
			t.Fatalf("%s %.20s…: %v", command, id, err)
		}
	}
	run("ADD", longConf, longID, ctr)
	run("ADD", twinConf, twinID, bystander)
	run("CHECK", longConf, longID, ctr)
	state := func() map[string]int { return pinnedEntries(t, sb) }
	// GC of the long network, keeping the long id: nothing goes, and the
	// twin network's container is not the long network's to collect.
	run("GC", longConf, "", nil, longID)
	if want := map[string]int{"endpoints": 2, "endpoint_meta": 2, "ip_owners": 2}; !subsetEqual(state(), want) {
		t.Errorf("datapath state after a GC that keeps both: %v, want %v", state(), want)
	}
	// GC with nothing valid collects the long id's attachment, whole.
	run("GC", longConf, "", nil)
	if want := map[string]int{"endpoints": 1, "endpoint_meta": 1, "ip_owners": 1}; !subsetEqual(state(), want) {
		t.Errorf("datapath state after GC of the long id: %v, want only the twin's: %v", state(), want)
	}
	if !hasLink(t, bystander, "eth0") {
		t.Error("the twin network's container lost its interface in the long network's GC")
	}
	run("DEL", longConf, longID, ctr)
	run("DEL", twinConf, twinID, bystander)
	empty := map[string]int{"endpoints": 0, "ip_owners": 0, "endpoint_meta": 0, "endpoint_stats": 0, "links": 0}
	if got := state(); !mapsEqual(got, empty) {
		t.Errorf("datapath state after DEL: %v, want none", got)
	}
	for _, conf := range []string{longConf, twinConf} {
		var c struct {
			Name string
			IPAM struct{ DataDir string }
		}
		if err := json.Unmarshal([]byte(conf), &c); err != nil {
			t.Fatal(err)
		}
		if left, _ := os.ReadDir(filepath.Join(c.IPAM.DataDir, c.Name)); len(allocationNames(left)) != 0 {
			t.Errorf("network %.20s…: allocations left: %v", c.Name, allocationNames(left))
		}
	}
}

// allocationNames are the entries of a host-local store directory that are
// allocations (named by an address).
func allocationNames(entries []os.DirEntry) []string {
	var names []string
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			names = append(names, e.Name())
		}
	}
	return names
}

// ids is a list of container ids.
type ids []string

// validAttachments is GC's list of valid attachments: eth0 of each id.
func validAttachments(ids ids) []map[string]string {
	valid := []map[string]string{}
	for _, id := range ids {
		valid = append(valid, map[string]string{"containerID": id, "ifname": "eth0"})
	}
	return valid
}

// withKey sets a top-level key of a plugin config.
func withKey(t *testing.T, conf, key string, value any) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(conf), &m); err != nil {
		t.Fatal(err)
	}
	m[key] = value
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// subsetEqual reports whether a has b's values for b's keys.
func subsetEqual(a, b map[string]int) bool {
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return true
}

// TestNodesShareDefaultBPFFS: two node namespaces on one machine, neither
// naming a bpffs, each get their own state in the default one, with the
// same ifindexes, and both keep working and isolated. The plugins run in a
// mount namespace with a bpffs of its own at the default place, so the
// machine's is never touched.
func TestNodesShareDefaultBPFFS(t *testing.T) {
	mnt, err := sandbox.NewMountNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mnt.Close() })
	plugins, err := mnt.WrapPlugins(t.TempDir(), bins.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	var (
		nets  []*network
		roots []string
	)
	for _, subnet := range []string{"10.184.0.0/24", "10.185.0.0/24"} {
		sb := sandbox.ForTest(t)
		// "datapath" without "bpffs": the default bpffs, as on a real node.
		conf := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "shared", "type": "bridge", "bridge": "br-shared",
			"isGateway": true, "isDefaultGateway": true, "isolation": "container", "datapath": {},
			"ipam": {"type": "host-local", "subnet": %q, "dataDir": %q}}`, subnet, t.TempDir())
		nets = append(nets, newNetwork(t, sb, conf, plugins))
		var cookie uint64
		if err := sb.InNode(func() (err error) { cookie, err = sandbox.NetnsCookie(); return err }); err != nil {
			t.Fatal(err)
		}
		roots = append(roots, mnt.Path(filepath.Join(datapath.DefaultBPFFS, fmt.Sprintf("bpfbridge-netns%d", cookie))))
	}
	var ctrs [2][2]container
	for i, n := range nets {
		for j := range 2 {
			ctrs[i][j] = n.attach(fmt.Sprintf("sh%d%d", i, j))
		}
	}
	for i, root := range roots {
		if _, err := os.Stat(filepath.Join(root, "maps")); err != nil {
			t.Errorf("node %d: no state of its own in the default bpffs: %v", i, err)
		}
	}
	for i, n := range nets {
		for j, c := range ctrs[i] {
			if err := n.check(c.ns, c.id, "eth0"); err != nil {
				t.Errorf("node %d: CHECK of %s: %v", i, c.id, err)
			}
			gw := c.ip.As4()
			gw[3] = 1
			if !reaches(c.ns, netip.AddrFrom4(gw)) {
				t.Errorf("node %d: %s cannot reach its gateway", i, c.id)
			}
			// Container isolation: the neighbour is unreachable. Had the
			// second node's endpoints overwritten the first's (same
			// ifindexes), the first's containers would reach nothing.
			if reaches(c.ns, ctrs[i][1-j].ip) {
				t.Errorf("node %d: %s reaches its neighbour despite container isolation", i, c.id)
			}
		}
	}
	for i, n := range nets {
		for _, c := range ctrs[i] {
			if err := n.del(c.ns, c.id, "eth0"); err != nil {
				t.Errorf("node %d: DEL %s: %v", i, c.id, err)
			}
		}
		n.assertStoreEmpty()
	}
}

// TestOverlappingL2Networks: two L2-only networks with the same subnet on
// different bridges hand out the same addresses; traffic inside each is
// decided by who its endpoints are, not by which of the two holders of an
// address was recorded last, before and after one holder's DEL.
func TestOverlappingL2Networks(t *testing.T) {
	sb := sandbox.ForTest(t)
	conf := func(name string) string {
		return fmt.Sprintf(`{"cniVersion": "1.1.0", "name": %q, "type": "bridge", "bridge": "br-%s", "isolation": "network",
			"ipam": {"type": "host-local", "subnet": "10.192.0.0/24", "dataDir": %q}}`, name, name, t.TempDir())
	}
	na, nb := newNetwork(t, sb, conf("ova"), bins.PluginDir()), newNetwork(t, sb, conf("ovb"), bins.PluginDir())
	a0, a1 := na.attach("ova0"), na.attach("ova1")
	b0, b1 := nb.attach("ovb0"), nb.attach("ovb1")
	if a0.ip != b0.ip || a1.ip != b1.ip {
		t.Fatalf("the networks' addresses differ (%s %s, %s %s): the test needs them equal", a0.ip, a1.ip, b0.ip, b1.ip)
	}
	for _, p := range [][2]container{{a0, a1}, {a1, a0}, {b0, b1}, {b1, b0}} {
		if !reaches(p[0].ns, p[1].ip) {
			t.Errorf("%s cannot reach %s of its own network", p[0].id, p[1].id)
		}
	}
	if err := nb.del(b1.ns, b1.id, "eth0"); err != nil {
		t.Fatal(err)
	}
	if !reaches(a0.ns, a1.ip) || !reaches(a1.ns, a0.ip) {
		t.Errorf("%s and %s lost each other when the other network's holder of %s left", a0.id, a1.id, a1.ip)
	}
	if err := na.check(a1.ns, a1.id, "eth0"); err != nil {
		t.Errorf("CHECK of %s after the other network's holder of its address left: %v", a1.id, err)
	}
}
