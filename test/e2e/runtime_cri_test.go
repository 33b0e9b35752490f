package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// criImage is the one image of the CRI suite: the busybox rootfs, imported
// from a local OCI archive (no registry), also used as the pod sandbox
// ("pause") image.
const criImage = "localhost/bpfb-busybox:1"

// containerdCRI is a containerd 1.6 with its CRI plugin running inside the
// sandbox node, with root, state and socket under the test's temporary
// directory, runc, restrict_oom_score_adj (no CAP_SYS_RESOURCE here) and
// its CNI config and plugin directories pointing at the test's own, so the
// machine's /etc/cni and /opt/cni are never read or written.
type containerdCRI struct {
	t      *testing.T
	sb     *sandbox.Sandbox
	dir    string
	socket string
	crictl string
}

func startContainerdCRI(t *testing.T, sb *sandbox.Sandbox, conflist string) *containerdCRI {
	t.Helper()
	requireCommands(t, "containerd", "containerd-shim-runc-v2", "ctr", "runc")
	crictl := filepath.Join(filepath.Dir(bins.CNITool), "crictl")
	if _, err := os.Stat(crictl); err != nil {
		t.Fatalf("crictl is not built (make tools): %v", err)
	}
	// Under /tmp, not t.TempDir(): a unix socket path must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "bpfb-cri-")
	if err != nil {
		t.Fatal(err)
	}
	c := &containerdCRI{t: t, sb: sb, dir: dir, socket: filepath.Join(dir, "c.sock"), crictl: crictl}
	netDir, binDir := filepath.Join(dir, "net.d"), filepath.Join(dir, "cni-bin")
	for _, d := range []string{netDir, binDir, filepath.Join(dir, "logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(netDir, "10-bpfbridge.conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	// containerd 1.6 takes one plugin directory: ours and the reference
	// plugins the conflist chains, side by side as on a node.
	for name, path := range map[string]string{
		"bridge": bins.Bridge, "host-local": bins.HostLocal,
		"portmap":   filepath.Join(bins.ReferencePluginDir(), "portmap"),
		"bandwidth": filepath.Join(bins.ReferencePluginDir(), "bandwidth"),
		"loopback":  filepath.Join(bins.ReferencePluginDir(), "loopback"),
	} {
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("plugin %s is not built (make tools build): %v", name, err)
		}
		if err := os.Symlink(path, filepath.Join(binDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	runc, _ := exec.LookPath("runc")
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = %[3]q
[ttrpc]
  address = "%[3]s.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[4]q
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = %[5]q
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[6]q
    conf_dir = %[7]q
    max_conf_num = 1
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.socket, criImage, runc, binDir, netDir)
	configPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := sb.Node.Command(ctx, "containerd", "--config", configPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 20 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Pods first, so that their shims exit and CNI DEL runs.
		c.crictlRun("rmp", "--all", "--force")
		cancel()
		_ = cmd.Wait()
		logFile.Close()
		unmountUnder(t, dir)
		if t.Failed() {
			log, _ := os.ReadFile(logFile.Name())
			t.Logf("containerd log (last 4000 bytes):\n%s", tail(log, 4000))
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := c.crictlRun("info"); err == nil {
			break
		} else if time.Now().After(deadline) {
			log, _ := os.ReadFile(logFile.Name())
			t.Fatalf("containerd's CRI did not come up in 30s: %v\n%s", err, tail(log, 4000))
		}
	}
	c.importImage()
	return c
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// crictlRun runs crictl against this containerd, inside the node (exec's
// streaming server listens on the node's 127.0.0.1).
func (c *containerdCRI) crictlRun(args ...string) (string, error) {
	base := []string{"--runtime-endpoint", "unix://" + c.socket, "--image-endpoint", "unix://" + c.socket, "--timeout", "60s"}
	out, err := runIn(c.sb, 90*time.Second, nil, c.crictl, append(base, args...)...)
	return strings.TrimSpace(out), err
}

func (c *containerdCRI) mustCrictl(args ...string) string {
	c.t.Helper()
	out, err := c.crictlRun(args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// importImage imports criImage, built from a busybox rootfs as an OCI
// archive, into the CRI's namespace.
func (c *containerdCRI) importImage() {
	c.t.Helper()
	archive := filepath.Join(c.dir, "image.tar")
	if err := os.WriteFile(archive, ociArchive(c.t, busyboxRootfs(c.t, "served by busybox httpd in a CRI pod\n"), criImage), 0o644); err != nil {
		c.t.Fatal(err)
	}
	if _, err := runIn(c.sb, 60*time.Second, nil, "ctr", "--address", c.socket, "--namespace", "k8s.io",
		"images", "import", "--snapshotter", "native", archive); err != nil {
		c.t.Fatal(err)
	}
}

// ociArchive packs rootfs as a one-layer OCI image archive named ref.
func ociArchive(t *testing.T, rootfs, ref string) []byte {
	t.Helper()
	layer := tarOf(t, rootfs)
	layerDigest := fmt.Sprintf("sha256:%x", sha256.Sum256(layer))
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Entrypoint": []string{"/bin/sleep", "86400"}, "WorkingDir": "/"},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	configDigest := fmt.Sprintf("sha256:%x", sha256.Sum256(config))
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": len(config)},
		"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layerDigest, "size": len(layer)}},
	})
	manifestDigest := fmt.Sprintf("sha256:%x", sha256.Sum256(manifest))
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifestDigest, "size": len(manifest),
			"annotations": map[string]string{"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref},
		}},
	})
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion": "1.0.0"}`)},
		{"index.json", index},
		{"blobs/sha256/" + strings.TrimPrefix(layerDigest, "sha256:"), layer},
		{"blobs/sha256/" + strings.TrimPrefix(configDigest, "sha256:"), config},
		{"blobs/sha256/" + strings.TrimPrefix(manifestDigest, "sha256:"), manifest},
	} {
		if err := w.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		w.Write(f.data)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tarOf is a tar of the directory tree at root (files, dirs, symlinks).
func tarOf(t *testing.T, root string) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == root {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if d.Type()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		h.Name, _ = filepath.Rel(root, path)
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		if err := w.WriteHeader(h); err != nil {
			return err
		}
		if d.Type().IsRegular() {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			_, err = w.Write(data)
			return err
		}
		return nil
	})
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// pod runs a pod sandbox and one container in it and returns the pod's
// and the container's ids and the pod's IP.
func (c *containerdCRI) pod(name string, extra map[string]any, command ...string) (podID, ctrID string, ip netip.Addr) {
	c.t.Helper()
	podConfig := map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "default", "uid": "uid-" + name, "attempt": 0},
		"log_directory": filepath.Join(c.dir, "logs", name),
		"linux":         map[string]any{},
	}
	for k, v := range extra {
		podConfig[k] = v
	}
	ctrConfig := map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": criImage},
		"command":  command,
		"log_path": name + ".log",
		"linux":    map[string]any{},
	}
	podPath, ctrPath := filepath.Join(c.dir, name+"-pod.json"), filepath.Join(c.dir, name+"-ctr.json")
	for path, v := range map[string]any{podPath: podConfig, ctrPath: ctrConfig} {
		data, _ := json.Marshal(v)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			c.t.Fatal(err)
		}
	}
	podID = c.mustCrictl("runp", podPath)
	ctrID = c.mustCrictl("create", "--no-pull", podID, ctrPath, podPath)
	c.mustCrictl("start", ctrID)
	var status struct {
		Status struct {
			Network struct {
				IP string `json:"ip"`
			} `json:"network"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(c.mustCrictl("inspectp", "--output", "json", podID)), &status); err != nil {
		c.t.Fatal(err)
	}
	ip, err := netip.ParseAddr(status.Status.Network.IP)
	if err != nil {
		c.t.Fatalf("pod %s has no IP: %v", name, err)
	}
	return podID, ctrID, ip
}

// exec runs a command in a container and returns its output.
func (c *containerdCRI) exec(ctrID string, command ...string) (string, error) {
	return c.crictlRun(append([]string{"exec", ctrID}, command...)...)
}

// kubernetesConflist is the README's Kubernetes example (cniVersion 1.0.0,
// bpfbridge, portmap, bandwidth) with the sandbox's state locations.
func kubernetesConflist(name, bridge, bpffs, dataDir string) string {
	return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
		{"type": "bridge", "bridge": %q, "isGateway": true, "isDefaultGateway": true, "ipMasq": true, "hairpinMode": true,
		 "capabilities": {"bandwidth": true},
		 "datapath": {"bpffs": %q},
		 "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.154.0.0/24"}]]}},
		{"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
		{"type": "bandwidth", "capabilities": {"bandwidth": true}}]}`, name, bridge, bpffs, dataDir)
}

// TestRuntimeCRI: containerd's CRI, driven by crictl, runs pod sandboxes
// on the README's Kubernetes conflist inside a node: a web pod with a
// hostPort and bandwidth annotations (so bandwidth and portmap are chained
// for real), reached from another pod directly and through the hostPort,
// and from outside through the hostPort; the client pod is masqueraded to
// the outside world. Removing the pods leaves no veth, endpoint or address.
func TestRuntimeCRI(t *testing.T) {
	sb, dataDir := runtimeNode(t)
	const network = "bpfbk8s"
	c := startContainerdCRI(t, sb, kubernetesConflist(network, "bpfbk8s0", sb.BPFFS, dataDir))
	echo := internetEcho(t, sb)

	const hostPort = 18081
	webPod, _, webIP := c.pod("web", map[string]any{
		"port_mappings": []any{map[string]any{"protocol": 0, "container_port": 8080, "host_port": hostPort}},
		"annotations":   map[string]string{"kubernetes.io/ingress-bandwidth": "50M", "kubernetes.io/egress-bandwidth": "50M"},
	}, "/bin/httpd", "-f", "-p", "8080", "-h", "/www")
	clientPod, client, _ := c.pod("client", nil, "/bin/sleep", "86400")

	if eps := endpointsByID(t, sb); eps[webPod].AttachMode != "tcx" || eps[clientPod].AttachMode != defaultAttachMode() {
		t.Errorf("attach modes: web (egress limit) %q, client %q; want tcx and %s", eps[webPod].AttachMode, eps[clientPod].AttachMode, defaultAttachMode())
	}
	out, err := c.exec(client, "/bin/sh", "-c", fmt.Sprintf("ping -c 2 -W 2 %s && echo masqueraded | nc %s %d", echo.Addr(), echo.Addr(), echo.Port()))
	if err != nil || !strings.Contains(out, "masqueraded") {
		t.Errorf("client pod to the outside (ping, TCP): %v\n%s", err, out)
	}
	hostPortAddr := netip.AddrPortFrom(sb.NodeUplink4.Addr(), hostPort)
	for what, url := range map[string]string{
		"web pod from another pod":            fmt.Sprintf("http://%s:8080/", webIP),
		"hostPort from another pod (hairpin)": fmt.Sprintf("http://%s/", hostPortAddr),
	} {
		var out string
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if out, err = c.exec(client, "/bin/wget", "-q", "-O-", url); err == nil {
				break
			}
		}
		if !strings.Contains(out, "served by busybox") {
			t.Errorf("%s (%s): %v\n%s", what, url, err, out)
		}
	}
	if body, err := httpGet(sb.External, hostPortAddr); err != nil || !strings.Contains(body, "served by busybox") {
		t.Errorf("hostPort %s from outside: %v %q", hostPortAddr, err, body)
	}
	assertOnlyPortmapRules(t, sb)

	for _, p := range []string{webPod, clientPod} {
		c.mustCrictl("stopp", p)
		c.mustCrictl("rmp", p)
	}
	assertTornDown(t, sb, network, dataDir)
	if ifb := nodeLinksOfType(t, sb, "ifb"); len(ifb) != 0 {
		t.Errorf("ifb devices left after the pods are gone: %v", ifb)
	}
}
