package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// The real-runtime suites (runtime_podman_test.go, runtime_cri_test.go)
// drive podman and containerd as installed by test/runtimes/install.sh
// (`make runtimes`). A runtime that is missing fails the suite, naming what to
// run: a skipped suite would pass without testing anything.

// requireCommands fails t unless every program is on PATH.
func requireCommands(t *testing.T, programs ...string) {
	t.Helper()
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is not installed: run test/runtimes/install.sh (make runtimes): %v", p, err)
		}
	}
}

// busyboxRootfs makes a container root filesystem of a static busybox and
// its applets: enough for ping, nc, wget and httpd, with no image to pull.
func busyboxRootfs(t *testing.T, www string) string {
	t.Helper()
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox (busybox-static) is not installed: run test/runtimes/install.sh: %v", err)
	}
	root := filepath.Join(t.TempDir(), "rootfs")
	for _, d := range []string{"bin", "etc", "proc", "sys", "dev", "tmp", "www", "run"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "ping", "nc", "wget", "httpd", "ip", "cat", "echo", "sleep", "hostname"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "www", "index.html"), []byte(www), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// unmountUnder lazily unmounts whatever a runtime left mounted under dir
// (shm, rootfs binds) so that the test's temporary directories can go.
func unmountUnder(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	var targets []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) > 1 && strings.HasPrefix(fields[1], dir+"/") {
			targets = append(targets, fields[1])
		}
	}
	for i := len(targets) - 1; i >= 0; i-- {
		if err := unix.Unmount(targets[i], unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
			t.Errorf("unmount %s: %v", targets[i], err)
		}
	}
}

// httpGet sends an HTTP/1.0 GET for / to addr from inside n and returns
// the response, status line included. The socket is made on n's thread
// (net/http would dial from another goroutine, outside n).
func httpGet(n *sandbox.NetNS, addr netip.AddrPort) (string, error) {
	var conn net.Conn
	if err := n.Do(func() (err error) { conn, err = net.DialTimeout("tcp", addr.String(), 3*time.Second); return err }); err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(conn)
	return string(b), err
}

// assertTornDown fails unless the node has no container veth, bpfbridge
// no endpoint and the IPAM store no address of networkName.
func assertTornDown(t *testing.T, sb *sandbox.Sandbox, networkName, dataDir string) {
	t.Helper()
	if v := nodeVeths(t, sb); len(v) != 0 {
		t.Errorf("veths left in the node: %v", v)
	}
	if eps := endpointsByID(t, sb); len(eps) != 0 {
		t.Errorf("endpoints left in the datapath: %v", eps)
	}
	(&network{t: t, name: networkName, dataDir: dataDir}).assertStoreEmpty()
}

// runIn runs a program in the node with env added, bounded by timeout, and
// returns its standard output; its standard error goes into the error.
func runIn(sb *sandbox.Sandbox, timeout time.Duration, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := sb.Node.Command(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\n%s%s", name, strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.String(), nil
}

// internetEcho serves TCP echo on the sandbox's Internet4 for the test.
func internetEcho(t *testing.T, sb *sandbox.Sandbox) netip.AddrPort {
	t.Helper()
	bound, stop, err := sandbox.ServeTCPEcho(sb.External, netip.AddrPortFrom(sb.Internet4, 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return bound
}

// runtimeNode is the node a real runtime runs on: a sandbox with its bpffs
// mounted, which the runtime's conflists name, and a directory for the
// IPAM's store.
func runtimeNode(t *testing.T) (sb *sandbox.Sandbox, dataDir string) {
	sb = sandbox.ForTest(t)
	if err := sb.MountBPFFS(); err != nil {
		t.Fatal(err)
	}
	return sb, t.TempDir()
}
