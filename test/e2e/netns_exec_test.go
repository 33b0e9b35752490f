package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// TestCNIToolUnderIPNetnsExec: cnitool run as many CNI guides run it,
// `ip netns exec <node> cnitool add …`, with the default bpffs. ip netns
// exec remounts /sys, so the plugin sees no bpffs at /sys/fs/bpf: it must
// find the node's live datapath from the kernel, or refuse with code 112,
// never build a private datapath beside it. Isolation between two networks
// holds (or an ADD fails with 112), and `bridge inspect` run the same way
// shows the endpoints. Everything runs in a mount namespace of the test's
// own with a bpffs at /sys/fs/bpf and /var/lib bound to a temporary
// directory, so the machine's bpffs and libcni cache are never touched.
func TestCNIToolUnderIPNetnsExec(t *testing.T) {
	sb := sandbox.ForTest(t)
	mnt, err := sandbox.NewMountNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mnt.Close() })
	// mnt.Path("/") is /proc/<holder>/root.
	mntFile := filepath.Join(filepath.Dir(mnt.Path("/")), "ns", "mnt")
	inMountNS := func(ctx context.Context, args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--mount=" + mntFile, "--"}, args...)...)
		cmd.Env = cleanCNIEnv()
		return cmd
	}
	if out, err := inMountNS(context.Background(), "mount", "--bind", t.TempDir(), "/var/lib").CombinedOutput(); err != nil {
		t.Fatalf("bind a state directory over /var/lib: %v: %s", err, out)
	}
	confDir := t.TempDir()
	for i, name := range []string{"exec-a", "exec-b"} {
		conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [{"type": "bridge", "bridge": "br-%s",
			"isGateway": true, "ipam": {"type": "host-local", "subnet": "10.%d.0.0/24", "dataDir": %q}}]}`,
			name, name, 186+i, t.TempDir())
		if err := os.WriteFile(filepath.Join(confDir, name+".conflist"), []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	nodeName := filepath.Base(sb.Node.Path)
	// run runs args under `ip netns exec <node>` in the mount namespace.
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		out, err := inMountNS(ctx, append([]string{"ip", "netns", "exec", nodeName, "env",
			"NETCONFPATH=" + confDir, "CNI_PATH=" + bins.PluginDir()}, args...)...).CombinedOutput()
		return string(out), err
	}
	type attachment struct {
		network string
		ns      *sandbox.NetNS
		ip      string
	}
	var atts []attachment
	refused := false
	for _, a := range []struct{ network, name string }{{"exec-a", "xa1"}, {"exec-a", "xa2"}, {"exec-b", "xb1"}} {
		ns, err := sb.NewContainer(a.name)
		if err != nil {
			t.Fatal(err)
		}
		out, err := run(bins.CNITool, "add", a.network, ns.Path)
		if err != nil {
			if strings.Contains(out, `"code": 112`) || strings.Contains(out, `"code":112`) {
				refused = true
				t.Logf("ADD %s under ip netns exec refused with 112: %s", a.name, out)
				break
			}
			t.Fatalf("ADD %s under ip netns exec: %v\n%s", a.name, err, out)
		}
		var res struct {
			IPs []struct {
				Address string `json:"address"`
			} `json:"ips"`
		}
		if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &res); err != nil || len(res.IPs) == 0 {
			t.Fatalf("ADD %s result: %v\n%s", a.name, err, out)
		}
		atts = append(atts, attachment{a.network, ns, strings.Split(res.IPs[0].Address, "/")[0]})
	}
	t.Cleanup(func() {
		for _, a := range atts {
			if out, err := run(bins.CNITool, "del", a.network, a.ns.Path); err != nil {
				t.Errorf("DEL under ip netns exec: %v\n%s", err, out)
			}
		}
	})
	if refused {
		return
	}
	a1, a2, b1 := atts[0], atts[1], atts[2]
	if !reaches(a1.ns, netip.MustParseAddr(a2.ip)) {
		t.Errorf("%s does not reach %s on the same network", a1.ip, a2.ip)
	}
	if reaches(a1.ns, netip.MustParseAddr(b1.ip)) {
		t.Errorf("isolation is off under ip netns exec: %s (exec-a) reaches %s (exec-b)", a1.ip, b1.ip)
	}
	out, err := run(bins.Bridge, "inspect", "endpoint", "list", "-j")
	if err != nil {
		t.Fatalf("bridge inspect under ip netns exec: %v\n%s", err, out)
	}
	for _, a := range atts {
		if !strings.Contains(out, a.ip) {
			t.Errorf("bridge inspect under ip netns exec does not show %s:\n%s", a.ip, out)
		}
	}
}

// cleanCNIEnv is the environment without CNI or bpfbridge settings.
func cleanCNIEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CNI_") && !strings.HasPrefix(kv, "BPFBRIDGE_") && !strings.HasPrefix(kv, "NETCONFPATH=") {
			env = append(env, kv)
		}
	}
	return env
}
