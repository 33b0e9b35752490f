package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// previousRelease is the commit of the release a node upgrades from: its
// plugin is built from this repository's history.
const previousRelease = "cd67e7e"

// layoutBumpFlag builds the plugin as a build with a new map layout would
// be (datapath.testLayoutBump): same records, another maps/v<N> directory.
const layoutBumpFlag = "-X github.com/bpfbridge/bpfbridge/datapath.testLayoutBump=1"

// TestUpgradeLiveNode: a node set up by one build — two isolated networks,
// one masquerading, a container-to-container stream and a masqueraded
// connection open, another from an address a DEL gave back — is taken over
// by the next build at its first ADD. The stream and the connections keep
// flowing, isolation holds between old and new endpoints, CHECK passes,
// and DEL with and without netns leaves nothing, the old layout's pins
// included. Twice: from the previous release, and to a build whose map
// layout is new (the migration path).
func TestUpgradeLiveNode(t *testing.T) {
	cases := []struct {
		name     string
		from, to func(t *testing.T) string
		bump     int // the layout bump of the "to" build
	}{
		{"from-" + previousRelease, previousReleasePlugin, func(*testing.T) string { return bins.PluginDir() }, 0},
		{"new-layout", func(*testing.T) string { return bins.PluginDir() }, func(t *testing.T) string { return buildPlugin(t, repoRoot(t), layoutBumpFlag) }, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { testUpgradeLiveNode(t, tc.from(t), tc.to(t), tc.bump) })
	}
}

func testUpgradeLiveNode(t *testing.T, fromDir, toDir string, bump int) {
	sb := sandbox.ForTest(t)
	confA := masqConf("upa", "br-upa", t.TempDir(), `[[{"subnet": "10.170.0.0/24"}]]`, `"isolation": "network"`)
	confB := isoConf("upb", "br-upb", "10.171.0.0/24", "network", t.TempDir())
	oldA, oldB := newNetwork(t, sb, confA, fromDir), newNetwork(t, sb, confB, fromDir)
	a1, a2, b1 := oldA.attach("ua1"), oldA.attach("ua2"), oldB.attach("ub1")

	var received atomic.Int64
	streamErr := make(chan error, 1)
	stop := make(chan struct{})
	startStream(t, a1, a2, &received, streamErr, stop)
	waitForBytes(t, &received, 1, 5*time.Second)
	masq := dialEcho(t, a1, sb)
	masq.roundTrip(t, "before the upgrade")
	// An address held twice: its first holder's DEL ended that holder's
	// flows (a new generation of the address), and the second holder's
	// connection lives in the new one, which the migration must carry.
	gone := oldA.attach("ua4")
	if err := oldA.del(gone.ns, gone.id, "eth0"); err != nil {
		t.Fatalf("DEL %s: %v", gone.id, err)
	}
	a5 := oldA.attach("ua5", [2]string{"IP", gone.ip.String()})
	if a5.ip != gone.ip {
		t.Fatalf("%s got %s, want %s's %s", a5.id, a5.ip, gone.id, gone.ip)
	}
	reused := dialEcho(t, a5, sb)
	reused.roundTrip(t, "before the upgrade, from a reused address")
	// The old build is this one in a layout bump, so its translations
	// read as this build's (the previous release has no generations).
	var reusedFlow datapath.Flow
	if bump > 0 {
		reusedFlow = flowOf(t, sb, a5.ip)
	}

	newA, newB := oldA.servedBy(toDir), oldB.servedBy(toDir)
	a3, b2 := newA.attach("ua3"), newB.attach("ub2") // the upgrade happens in the first
	// From here on this test reads the node as the new build does.
	datapath.SetTestLayoutBump(bump)
	t.Cleanup(func() { datapath.SetTestLayoutBump(0) })
	atUpgrade := received.Load()
	waitForBytes(t, &received, atUpgrade+1<<20, 5*time.Second)
	close(stop)
	if err := <-streamErr; err != nil {
		t.Errorf("the stream broke across the upgrade: %v", err)
	}
	masq.roundTrip(t, "after the upgrade")
	masq.close()
	reused.roundTrip(t, "after the upgrade, from a reused address")
	// The translation moved over, rather than being made anew by the
	// round trip above as for a flow of a dead generation.
	if bump > 0 {
		if f := flowOf(t, sb, a5.ip); f.Age <= reusedFlow.Age || f.Orig.Packets <= reusedFlow.Orig.Packets {
			t.Errorf("%s's connection: translation before the upgrade %+v, after %+v: it did not move over", a5.id, reusedFlow, f)
		}
	}
	reused.close()

	if layouts := pinnedLayouts(t, sb); len(layouts) != 1 {
		t.Errorf("map layouts pinned after the upgrade: %v, want only the new build's", layouts)
	}
	if builds := pinnedBuilds(t, sb); len(builds) != 1 {
		t.Errorf("program sets pinned after the upgrade: %v, want only the new build's", builds)
	}
	for _, p := range []struct {
		from, to container
		want     bool
	}{
		{a3, a1, true}, {a1, a3, true}, {a3, b1, false}, {b1, a3, false}, {b2, a1, false}, {a1, b2, false}, {b2, b1, true},
	} {
		if got := reaches(p.from.ns, p.to.ip); got != p.want {
			t.Errorf("%s reaches %s: %v, want %v", p.from.id, p.to.id, got, p.want)
		}
	}
	for _, c := range []struct {
		n *network
		c container
	}{{newA, a1}, {newA, a2}, {newB, b1}} {
		if err := c.n.check(c.c.ns, c.c.id, "eth0"); err != nil {
			t.Errorf("CHECK by the new build of %s: %v", c.c.id, err)
		}
	}

	// DEL with the netns, and without (as after a reboot), then the rest.
	for _, d := range []struct {
		n  *network
		c  container
		ns *sandbox.NetNS
	}{{newA, a1, a1.ns}, {newB, b1, nil}, {newA, a2, a2.ns}, {newA, a3, nil}, {newB, b2, b2.ns}, {newA, a5, a5.ns}} {
		if err := d.n.del(d.ns, d.c.id, "eth0"); err != nil {
			t.Errorf("DEL %s: %v", d.c.id, err)
		}
	}
	empty := map[string]int{"endpoints": 0, "ip_owners": 0, "endpoint_meta": 0, "endpoint_stats": 0, "links": 0}
	if got := pinnedEntries(t, sb); !mapsEqual(got, empty) {
		t.Errorf("datapath state after DEL of every container: %v, want none", got)
	}
	if out, in := natEntries(t, sb); out+in != 0 {
		t.Errorf("translations after DEL: %d out, %d in; want none", out, in)
	}
	newA.assertStoreEmpty()
	newB.assertStoreEmpty()
	if veths := nodeVeths(t, sb); len(veths) != 0 {
		t.Errorf("host veths left: %v", veths)
	}
	assertNoFirewallRules(t, sb)
}

// flowOf is the one masquerade translation of the container address ip.
func flowOf(t *testing.T, sb *sandbox.Sandbox, ip netip.Addr) datapath.Flow {
	t.Helper()
	flows, err := openDatapath(t, sb).Flows()
	if err != nil {
		t.Fatal(err)
	}
	var mine []datapath.Flow
	for _, f := range flows {
		if f.Container.Addr() == ip {
			mine = append(mine, f)
		}
	}
	if len(mine) != 1 {
		t.Fatalf("translations of %s: %+v, want one", ip, mine)
	}
	return mine[0]
}

// echoConn is a masqueraded TCP connection from a container to an echo
// server in the external namespace, kept open across an upgrade.
type echoConn struct {
	conn net.Conn
	r    *bufio.Reader
	stop func()
}

func dialEcho(t *testing.T, from container, sb *sandbox.Sandbox) *echoConn {
	t.Helper()
	bound, stop, err := sandbox.ServeTCPEcho(sb.External, netip.AddrPortFrom(sb.Internet4, 0))
	if err != nil {
		t.Fatal(err)
	}
	var conn net.Conn
	err = from.ns.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", bound.String(), 5*time.Second)
		return err
	})
	if err != nil {
		stop()
		t.Fatalf("connect %s to %s through masquerade: %v", from.id, bound, err)
	}
	e := &echoConn{conn: conn, r: bufio.NewReader(conn), stop: stop}
	t.Cleanup(e.close)
	return e
}

// roundTrip sends a line and expects it back.
func (e *echoConn) roundTrip(t *testing.T, when string) {
	t.Helper()
	line := fmt.Sprintf("masqueraded %s\n", when)
	e.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := e.conn.Write([]byte(line)); err != nil {
		t.Fatalf("masqueraded connection %s: write: %v", when, err)
	}
	got, err := e.r.ReadString('\n')
	if err != nil || got != line {
		t.Fatalf("masqueraded connection %s: read %q, %v; want %q", when, got, err, line)
	}
}

func (e *echoConn) close() {
	e.conn.Close()
	e.stop()
}

// repoRoot is the top of this repository's checkout.
func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("find the repository: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// previousReleasePlugin builds the bridge plugin of previousRelease from
// the repository's history into a temporary directory.
func previousReleasePlugin(t *testing.T) string {
	t.Helper()
	root := repoRoot(t)
	if err := exec.Command("git", "-C", root, "cat-file", "-e", previousRelease+"^{commit}").Run(); err != nil {
		t.Skipf("commit %s is not in this clone's history (a shallow clone?): cannot build the previous release", previousRelease)
	}
	src := t.TempDir()
	archive := exec.Command("sh", "-c", fmt.Sprintf("git -C %q archive %s | tar -x -C %q", root, previousRelease, src))
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("extract %s: %v\n%s", previousRelease, err, out)
	}
	return buildPlugin(t, src, "")
}

// buildPlugin builds the bridge plugin of the module at src, with extra
// linker flags, into a temporary directory, and returns that directory.
func buildPlugin(t *testing.T, src, ldflags string) string {
	t.Helper()
	dir := t.TempDir()
	build := exec.Command("go", "build", "-ldflags", ldflags, "-o", filepath.Join(dir, "bridge"), "./cmd/bridge")
	build.Dir = src
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the plugin in %s: %v\n%s", src, err, out)
	}
	return dir
}

// pinnedLayouts lists the map layout versions pinned on the node.
func pinnedLayouts(t *testing.T, sb *sandbox.Sandbox) []int {
	t.Helper()
	maps, err := datapath.PinnedMaps(sb.BPFFS)
	if err != nil {
		t.Fatal(err)
	}
	var layouts []int
	for _, m := range maps {
		if !slices.Contains(layouts, m.Layout) {
			layouts = append(layouts, m.Layout)
		}
	}
	return layouts
}
