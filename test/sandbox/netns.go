package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NamePrefix starts the name of every namespace this package creates, so that
// [RemoveAll] can never be pointed at namespaces that belong to anyone else.
const NamePrefix = "bpfb-"

// RunDir is where named network namespaces are bind-mounted, the same
// directory `ip netns` uses.
const RunDir = "/run/netns"

// NetNS is a named network namespace bind-mounted at /run/netns/<Name>. The
// bind mount, not a process, keeps the namespace alive until [NetNS.Delete].
type NetNS struct {
	Name string // file name under RunDir; starts with NamePrefix
	Path string // RunDir/Name, for nsenter --net, setns(2) and CNI_NETNS
}

// NewNetNS creates the network namespace name, which must start with
// NamePrefix, and brings its loopback interface up. It fails if a namespace
// of that name already exists.
func NewNetNS(name string) (*NetNS, error) {
	if err := checkPrefix(name); err != nil {
		return nil, err
	}
	if err := prepareRunDir(); err != nil {
		return nil, err
	}
	n := &NetNS{Name: name, Path: filepath.Join(RunDir, name)}
	// O_EXCL turns a name clash into an error instead of a namespace that a
	// later Delete would take away from its owner.
	f, err := os.OpenFile(n.Path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return nil, fmt.Errorf("sandbox: create netns %s: %w", name, err)
	}
	f.Close()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread goes back to its namespace before it is unlocked. If
		// that fails it stays locked: the runtime then ends it with its
		// goroutine, or, on the main thread, which it cannot end, parks it
		// for good. Leaving every thread in the new namespace that way
		// would park the main thread there whenever this goroutine ran on
		// it, and /proc/<pid>/ns/net, which follows the main thread, would
		// report the process inside the sandbox.
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- fmt.Errorf("sandbox: %w", err)
			return
		}
		defer orig.Close()
		err = n.initOnThisThread()
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		return nil, errors.Join(err, n.Delete())
	}
	return n, nil
}

// initOnThisThread moves the calling, locked thread into a new network
// namespace, pins that namespace at n.Path and brings lo up in it.
func (n *NetNS) initOnThisThread() error {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("sandbox: unshare netns %s: %w", n.Name, err)
	}
	if err := unix.Mount("/proc/thread-self/ns/net", n.Path, "none", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("sandbox: bind-mount netns %s: %w", n.Name, err)
	}
	// The netlink package opens a fresh socket per request on the calling
	// thread, so this talks to the new namespace.
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("sandbox: set lo up in %s: %w", n.Name, err)
	}
	return nil
}

// prepareRunDir makes RunDir a shared mount point, exactly as `ip netns add`
// does, so that namespaces mounted there propagate to and from mount
// namespaces cloned from this one (`ip netns exec` makes such a clone).
func prepareRunDir() error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	// Test binaries of several packages run concurrently. Without the lock
	// two of them could both bind-mount RunDir onto itself; a namespace
	// mounted on the lower copy would then be hidden, and leak, for good.
	d, err := os.Open(RunDir)
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	defer d.Close() // releases the lock
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("sandbox: lock %s: %w", RunDir, err)
	}
	err = unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		// Not a mount point yet: bind it onto itself, then retry.
		if err = unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err == nil {
			err = unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		}
	}
	if err != nil {
		return fmt.Errorf("sandbox: make %s a shared mount: %w", RunDir, err)
	}
	return nil
}

// Do runs fn on a locked OS thread that has entered n, then restores the
// thread's namespace. Sockets fn creates belong to n for their whole life
// and may be used from any goroutine afterwards; goroutines that fn starts,
// however, do not run in n.
func (n *NetNS) Do(fn func() error) error {
	return ns.WithNetNSPath(n.Path, func(ns.NetNS) error { return fn() })
}

// Command returns a command that runs name inside n through
// `nsenter --net=<Path> --`. nsenter only joins the network namespace, so
// unlike `ip netns exec` it leaves /sys, and thus /sys/fs/bpf, as it is.
// nsenter execs name in place, so cancelling ctx kills name itself.
func (n *NetNS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.Path, "--", name}, args...)...)
}

// Delete unmounts and removes n. Deleting a namespace that is already gone is
// not an error. The kernel frees the namespace once nothing else (a process,
// an open socket or file descriptor) refers to it any more.
func (n *NetNS) Delete() error {
	// Never unmount anything but one of our own pins, whatever the fields say.
	if err := checkPrefix(n.Name); err != nil {
		return err
	}
	if n.Path != filepath.Join(RunDir, n.Name) {
		return fmt.Errorf("sandbox: netns %s: path %q is not under %s", n.Name, n.Path, RunDir)
	}
	// MNT_DETACH because a namespace that is still in use keeps the mount
	// busy; EINVAL means a failed NewNetNS left the file without the mount.
	err := unix.Unmount(n.Path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("sandbox: unmount netns %s: %w", n.Name, err)
	}
	if err := os.Remove(n.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("sandbox: remove netns %s: %w", n.Name, err)
	}
	return nil
}

// RemoveAll deletes every namespace in RunDir whose name starts with prefix,
// and every sandbox bpffs (see BPFFSDir) of the same name, for example the
// leftovers of a crashed run. The prefix must start with
// NamePrefix; RemoveAll(NamePrefix) clears the namespaces of every sandbox,
// including those of runs still in progress.
func RemoveAll(prefix string) error {
	if err := checkPrefix(prefix); err != nil {
		return err
	}
	entries, err := os.ReadDir(RunDir)
	if errors.Is(err, fs.ErrNotExist) {
		return removeBPFFS(prefix)
	}
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			n := &NetNS{Name: e.Name(), Path: filepath.Join(RunDir, e.Name())}
			errs = append(errs, n.Delete())
		}
	}
	return errors.Join(append(errs, removeBPFFS(prefix))...)
}

// checkPrefix accepts names and name prefixes that start with NamePrefix and
// stay inside RunDir.
func checkPrefix(s string) error {
	if !strings.HasPrefix(s, NamePrefix) || strings.ContainsRune(s, '/') {
		return fmt.Errorf("sandbox: netns name or prefix %q must start with %q and contain no '/'", s, NamePrefix)
	}
	return nil
}

// SetSysctl writes value to the sysctl name inside n. name is dotted
// ("net.ipv4.ip_forward") or, for interface names with dots, slash-separated
// ("net/ipv4/conf/eth0.10/rp_filter"), and must lie under net.
//
// The write lands in n because procfs resolves /proc/sys/net against the
// network namespace of the thread that looks the path up (and will not reuse
// a dentry cached for another namespace), and the open file stays bound to
// that namespace's table; SetSysctl opens the file from inside n.Do. Only
// net.* is accepted because every other sysctl is machine-wide; the few
// machine-wide net.* entries are absent or read-only outside the initial
// namespace (net.core.rmem_max, for one), so writing them fails.
func (n *NetNS) SetSysctl(name, value string) error {
	path, err := sysctlPath(name)
	if err != nil {
		return err
	}
	return n.Do(func() error {
		if err := os.WriteFile(path, []byte(value), 0); err != nil {
			return fmt.Errorf("sandbox: sysctl %s=%s in %s: %w", name, value, n.Name, err)
		}
		return nil
	})
}

// Sysctl reads the sysctl name, spelled as for [NetNS.SetSysctl], inside n
// and returns its value without the trailing newline.
func (n *NetNS) Sysctl(name string) (string, error) {
	path, err := sysctlPath(name)
	if err != nil {
		return "", err
	}
	var b []byte
	err = n.Do(func() error {
		b, err = os.ReadFile(path)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("sandbox: sysctl %s in %s: %w", name, n.Name, err)
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

func sysctlPath(name string) (string, error) {
	if !strings.ContainsRune(name, '/') {
		name = strings.ReplaceAll(name, ".", "/")
	}
	// Join cleans the path, so "net/../kernel/x" cannot sneak out of net.
	path := filepath.Join("/proc/sys", name)
	if !strings.HasPrefix(path, "/proc/sys/net/") {
		return "", fmt.Errorf("sandbox: sysctl %q is not a per-namespace net.* sysctl", name)
	}
	return path, nil
}

// BPFFSRoot holds the bpffs mount points of sandboxes: each sandbox node
// gets its own bpffs, as each real node has one, so that nodes on one
// machine never share pinned state, and the machine's /sys/fs/bpf is never
// touched.
const BPFFSRoot = "/run/bpfbridge-sandbox"

// removeBPFFS unmounts and removes the sandbox bpffs directories whose names
// start with prefix.
func removeBPFFS(prefix string) error {
	entries, err := os.ReadDir(BPFFSRoot)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		dir := filepath.Join(BPFFSRoot, e.Name())
		// Detach lazily (a plugin run may still hold pins open), and
		// again while mounts are stacked there, as racing mounts of a
		// crashed or buggy run leave them; a bounded number of times.
		var err error
		for range 16 {
			if err = unix.Unmount(dir, unix.MNT_DETACH); err != nil {
				break
			}
		}
		if !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("sandbox: unmount %s: %w", dir, err))
			continue
		}
		if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("sandbox: %w", err))
		}
	}
	return errors.Join(errs...)
}
