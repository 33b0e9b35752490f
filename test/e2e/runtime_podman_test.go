package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// podman drives podman 4.3 with its CNI backend inside the sandbox node:
// state, config and CNI directories of the test's own, runc, no ulimit
// changes (this machine kind grants no CAP_SYS_RESOURCE), cgroupfs.
type podman struct {
	t    *testing.T
	sb   *sandbox.Sandbox
	env  []string
	base []string
	// mountNS, when set, is the mount namespace (a /proc/…/ns/mnt path)
	// podman runs in.
	mountNS string
}

func newPodman(t *testing.T, sb *sandbox.Sandbox, conflist string) *podman {
	t.Helper()
	requireCommands(t, "podman", "runc", "conmon")
	// Short: podman refuses a runroot longer than 50 characters.
	dir, err := os.MkdirTemp("", "bpfb-pod-")
	if err != nil {
		t.Fatal(err)
	}
	netDir := filepath.Join(dir, "net.d")
	if err := os.MkdirAll(netDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(netDir, "bpfbridge.conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	runc, _ := exec.LookPath("runc")
	conf := fmt.Sprintf(`[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[engine.runtimes]
runc = [%q]
[network]
network_backend = "cni"
cni_plugin_dirs = [%q, %q]
network_config_dir = %q
`, runc, bins.PluginDir(), bins.ReferencePluginDir(), netDir)
	confPath := filepath.Join(dir, "containers.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &podman{t: t, sb: sb, env: []string{"CONTAINERS_CONF=" + confPath},
		base: []string{"--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "run"),
			"--tmpdir", filepath.Join(dir, "tmp"), "--storage-driver", "vfs"}}
	t.Cleanup(func() {
		p.run("rm", "--all", "--force", "--time", "0")
		unmountUnder(t, dir)
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	return p
}

// run runs podman with args and returns its output.
func (p *podman) run(args ...string) (string, error) {
	args = append(p.base, args...)
	if p.mountNS != "" {
		return runIn(p.sb, 90*time.Second, p.env, "nsenter", append([]string{"--mount=" + p.mountNS, "--", "podman"}, args...)...)
	}
	return runIn(p.sb, 90*time.Second, p.env, "podman", args...)
}

func (p *podman) mustRun(args ...string) string {
	p.t.Helper()
	out, err := p.run(args...)
	if err != nil {
		p.t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// waitGone waits, up to 30 s, until no container named name is left (one
// that exits by itself and was run with --rm).
func (p *podman) waitGone(t *testing.T, name string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if ids := p.mustRun("ps", "--all", "--quiet", "--filter", "name="+name); ids == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s is still there after 30s", name)
		}
	}
}

// podmanConflist is the README's podman example with the sandbox's state
// locations: bpfbridge as a masquerading gateway, then portmap for -p.
func podmanConflist(name, bridge, bpffs, dataDir string) string {
	return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
		{"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": true, "hairpinMode": true,
		 "datapath": {"bpffs": %q},
		 "ipam": {"type": "host-local", "dataDir": %q, "routes": [{"dst": "0.0.0.0/0"}],
		          "ranges": [[{"subnet": "10.153.0.0/24", "gateway": "10.153.0.1"}]]}},
		{"type": "portmap", "capabilities": {"portMappings": true}}]}`, name, bridge, bpffs, dataDir)
}

// TestRuntimePodman: podman 4.3 (CNI backend) runs containers from a
// busybox rootfs on a bpfbridge network inside a node: a masqueraded
// container pings its gateway and the outside world and talks TCP to it;
// a web server is reached from another container and through its -p
// hostPort from outside; removing it, and a container that exits on its
// own (DEL from conmon's cleanup, which gets no BPFBRIDGE_* environment),
// leave no veth, endpoint or address.
func TestRuntimePodman(t *testing.T) {
	sb, dataDir := runtimeNode(t)
	const network = "bpfbpod"
	p := newPodman(t, sb, podmanConflist(network, "bpfbpod0", sb.BPFFS, dataDir))
	rootfs := busyboxRootfs(t, "served by busybox httpd in podman\n")
	echo := internetEcho(t, sb)

	out, err := p.run("run", "--rm", "--network", network, "--rootfs", rootfs, "/bin/sh", "-c",
		fmt.Sprintf("ping -c 2 -W 2 10.153.0.1 && ping -c 2 -W 2 %s && echo through-the-uplink | nc %s %d",
			echo.Addr(), echo.Addr(), echo.Port()))
	if err != nil || !strings.Contains(out, "through-the-uplink") {
		t.Errorf("masqueraded container: ping gateway and outside, TCP to %s: %v\n%s", echo, err, out)
	}

	p.mustRun("run", "-d", "--name", "web", "--network", network, "-p", "18080:8080", "--rootfs", rootfs,
		"/bin/httpd", "-f", "-vv", "-p", "8080", "-h", "/www")
	ip := p.mustRun("inspect", "--format", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAddress}}`, network), "web")
	var got string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if got, err = p.run("run", "--rm", "--network", network, "--rootfs", rootfs, "/bin/wget", "-q", "-O-", "http://"+ip+":8080/"); err == nil {
			break
		}
	}
	if !strings.Contains(got, "served by busybox") {
		t.Errorf("web server %s from another container: %v\n%s", ip, err, got)
	}
	hostPort := netip.AddrPortFrom(sb.NodeUplink4.Addr(), 18080)
	if body, err := httpGet(sb.External, hostPort); err != nil || !strings.Contains(body, "served by busybox") {
		logs, _ := p.run("logs", "web")
		t.Errorf("hostPort %s from outside: %v %q\nweb's log:\n%s", hostPort, err, body, logs)
	}
	p.mustRun("rm", "--force", "--time", "0", "web")

	// A container that exits by itself is torn down by conmon's cleanup.
	p.mustRun("run", "-d", "--rm", "--name", "brief", "--network", network, "--rootfs", rootfs, "/bin/sleep", "1")
	p.waitGone(t, "brief")
	assertTornDown(t, sb, network, dataDir)
}

// TestRuntimePodmanCleanupWithoutEnv: the node's state is named only by
// BPFBRIDGE_BPFFS in podman's environment, not in the conflist. The DEL that
// conmon's cleanup runs when a container exits by itself gets no such
// variable, and looks at the default bpffs; it must still find the
// endpoint (from the kernel) and remove it. podman runs in a mount
// namespace of the test's own whose /sys/fs/bpf is an empty bpffs, so the
// machine's is never touched.
func TestRuntimePodmanCleanupWithoutEnv(t *testing.T) {
	sb := sandbox.ForTest(t)
	if err := sb.MountBPFFS(); err != nil {
		t.Fatal(err)
	}
	mnt, err := sandbox.NewMountNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mnt.Close() })
	const network = "bpfbpodenv"
	dataDir := t.TempDir()
	conflist := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
		{"type": "bridge", "bridge": "bpfbpodenv0", "isGateway": true,
		 "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.155.0.0/24"}]]}}]}`, network, dataDir)
	p := newPodman(t, sb, conflist)
	p.mountNS = filepath.Join(filepath.Dir(mnt.Path("/")), "ns", "mnt")
	p.env = append(p.env, "BPFBRIDGE_BPFFS="+sb.BPFFS)
	rootfs := busyboxRootfs(t, "")

	p.mustRun("run", "-d", "--rm", "--name", "brief", "--network", network, "--rootfs", rootfs, "/bin/sleep", "2")
	if eps := endpointsByID(t, sb); len(eps) != 1 {
		t.Fatalf("endpoints after podman run: %d, want 1 in the state BPFBRIDGE_BPFFS names", len(eps))
	}
	p.waitGone(t, "brief")
	assertTornDown(t, sb, network, dataDir)
}
