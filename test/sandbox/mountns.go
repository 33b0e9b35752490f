package sandbox

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// MountNS is a mount namespace, kept alive by a process of its own (a slave
// of the machine's, so that network namespaces mounted later appear in it),
// with a bpffs of its own at /sys/fs/bpf: plugins run inside it see that
// bpffs as the machine's default one, so tests of the default location
// never touch the machine's /sys/fs/bpf.
type MountNS struct {
	holder *exec.Cmd
}

// NewMountNS starts the namespace and mounts its bpffs.
func NewMountNS() (*MountNS, error) {
	holder := exec.Command("unshare", "--mount", "--propagation", "slave", "sleep", "infinity")
	if err := holder.Start(); err != nil {
		return nil, fmt.Errorf("sandbox: start a mount namespace: %w", err)
	}
	m := &MountNS{holder: holder}
	// unshare execs sleep once the namespace exists: wait for that.
	self, _ := os.Readlink("/proc/self/ns/mnt")
	deadline := time.Now().Add(5 * time.Second)
	for {
		ns, err := os.Readlink(m.path("ns/mnt"))
		if err == nil && ns != self {
			break
		}
		if time.Now().After(deadline) {
			m.Close()
			return nil, fmt.Errorf("sandbox: the mount namespace of pid %d did not appear", holder.Process.Pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if out, err := m.Run("mount", "-t", "bpf", "bpf", "/sys/fs/bpf"); err != nil {
		m.Close()
		return nil, fmt.Errorf("sandbox: mount a bpffs in the mount namespace: %v: %s", err, out)
	}
	return m, nil
}

// Pid is the process holding the namespace, for nsenter --target.
func (m *MountNS) Pid() string { return strconv.Itoa(m.holder.Process.Pid) }

// Run runs a command inside the namespace and returns its output.
func (m *MountNS) Run(name string, args ...string) ([]byte, error) {
	return exec.Command("nsenter", append([]string{"--target", m.Pid(), "--mount", "--", name}, args...)...).CombinedOutput()
}

func (m *MountNS) path(rel string) string { return filepath.Join("/proc", m.Pid(), rel) }

// Path is path as seen inside the namespace.
func (m *MountNS) Path(path string) string { return m.path(filepath.Join("root", path)) }

// WrapPlugins writes into dir, for each program, a script of the same name
// that runs the program inside the namespace (with the caller's network
// namespace, environment and standard input), and returns dir.
func (m *MountNS) WrapPlugins(dir string, programs ...string) (string, error) {
	for _, p := range programs {
		script := fmt.Sprintf("#!/bin/sh\nexec nsenter --target %s --mount -- %q \"$@\"\n", m.Pid(), p)
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), []byte(script), 0o755); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// Close ends the namespace, and with it its bpffs.
func (m *MountNS) Close() error {
	_ = m.holder.Process.Signal(syscall.SIGKILL)
	_ = m.holder.Wait()
	return nil
}

// NetnsCookie is the calling thread's network namespace cookie, which the
// plugin names a node's state after in the default bpffs.
func NetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
}
