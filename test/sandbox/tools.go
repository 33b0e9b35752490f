package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

const (
	// cniToolTimeout bounds every cnitool run, whatever ctx allows, so that a
	// hung plugin fails its test instead of stalling the whole test binary.
	cniToolTimeout = time.Minute
	// cniToolWaitDelay bounds the wait for plugins that outlive a killed
	// cnitool: they inherit its stderr and so hold our pipe open.
	cniToolWaitDelay = 5 * time.Second
)

// modulePath identifies the repository's go.mod among any others above it.
const modulePath = "github.com/bpfbridge/bpfbridge"

// Binaries holds the absolute paths of the programs `make tools build`
// leaves under the repository's bin directory.
type Binaries struct {
	Bridge, HostLocal                   string // ours: bin/bridge, bin/host-local
	CNITool                             string // bin/tools/cnitool
	ReferenceBridge, ReferenceHostLocal string // upstream v1.9.0: bin/reference/{bridge,host-local}
}

// PluginDir is the CNI_PATH directory of our plugins.
func (b Binaries) PluginDir() string { return filepath.Dir(b.Bridge) }

// ReferencePluginDir is the CNI_PATH directory of the upstream plugins.
func (b Binaries) ReferencePluginDir() string { return filepath.Dir(b.ReferenceBridge) }

// FindBinaries locates the repository with [RepoRoot] and returns the paths
// of its built programs. It builds nothing: if a program is missing, the
// error names it and says to run `make tools build`.
func FindBinaries() (Binaries, error) {
	root, err := RepoRoot()
	if err != nil {
		return Binaries{}, err
	}
	bin := filepath.Join(root, "bin")
	b := Binaries{
		Bridge:             filepath.Join(bin, "bridge"),
		HostLocal:          filepath.Join(bin, "host-local"),
		CNITool:            filepath.Join(bin, "tools", "cnitool"),
		ReferenceBridge:    filepath.Join(bin, "reference", "bridge"),
		ReferenceHostLocal: filepath.Join(bin, "reference", "host-local"),
	}
	for _, p := range []string{b.Bridge, b.HostLocal, b.CNITool, b.ReferenceBridge, b.ReferenceHostLocal} {
		if _, err := os.Stat(p); err != nil {
			return Binaries{}, fmt.Errorf("sandbox: %s is missing, run `make tools build`: %w", p, err)
		}
	}
	return b, nil
}

// RepoRoot returns the directory holding bpfbridge's go.mod. It searches
// upwards from the working directory, which is the package directory under
// `go test` and usually the checkout under `make`, and then from this source
// file's compile-time location, which serves programs started elsewhere
// (unless they were built with -trimpath).
func RepoRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for {
			if isRepoRoot(dir) {
				return dir, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", fmt.Errorf("sandbox: no go.mod of module %s above %q", modulePath, starts)
}

func isRepoRoot(dir string) bool {
	data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "module" && strings.Trim(f[1], `"`) == modulePath {
			return true
		}
	}
	return false
}

// CNITool runs cnitool, which drives a network configuration list through
// libcni the way a container runtime does. The fields become cnitool's
// environment; empty optional ones are left unset.
type CNITool struct {
	Binary      string   // path of cnitool, e.g. Binaries.CNITool
	NetConfPath string   // NETCONFPATH: directory holding the *.conflist files
	CNIPath     []string // CNI_PATH: directories searched for plugins
	IfName      string   // CNI_IFNAME; cnitool's default is eth0
	Args        string   // CNI_ARGS, as "KEY=VALUE;KEY2=VALUE2"
	CapArgs     string   // CAP_ARGS, capability arguments as JSON
	Env         []string // more KEY=VALUE variables, e.g. BPFBRIDGE_BPFFS
	// StateDir, when set, stands in for /var/lib during the run. cnitool
	// keeps libcni's result cache in /var/lib/cni, and a config without
	// ipam.dataDir (such as DC/OS's) keeps its IPAM store in
	// /var/lib/cni/networks: with StateDir, both land in
	// StateDir/cni/… instead of on the machine. The run gets a private mount
	// namespace for that, so mounts it makes die with it: mount the node's
	// bpffs beforehand (Sandbox.MountBPFFS).
	StateDir string
}

// Run runs `cnitool verb network netnsPath` inside in, normally
// Sandbox.Node, so that cnitool and the plugins it execs start in that
// namespace; it is forked from a thread in that namespace, with no nsenter
// in between, so timings are cnitool's own. netnsPath is the container namespace, normally a [NetNS] Path;
// it need not exist, since DEL must cope with a vanished namespace. The
// error of a failed run includes cnitool's stderr. A run is killed when ctx
// ends or after a minute, whichever comes first.
func (t CNITool) Run(ctx context.Context, in *NetNS, verb, network, netnsPath string) (stdout, stderr []byte, err error) {
	ctx, cancel := context.WithTimeout(ctx, cniToolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, t.Binary, verb, network, netnsPath)
	if t.StateDir != "" {
		// A private mount namespace for this run only, where /var/lib is
		// StateDir; the machine's mount table is untouched.
		cmd = exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "--",
			"sh", "-c", `mount --bind "$0" /var/lib && exec "$@"`, t.StateDir, t.Binary, verb, network, netnsPath)
	}
	cmd.Env = t.env()
	cmd.WaitDelay = cniToolWaitDelay
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	// Forked from a thread inside in, cnitool starts in that namespace
	// without an nsenter process in front of it, as under a runtime.
	if err := in.Do(cmd.Run); err != nil {
		return o.Bytes(), e.Bytes(), fmt.Errorf("sandbox: cnitool %s %s %s: %w: %s", verb, network, netnsPath, err, bytes.TrimSpace(e.Bytes()))
	}
	return o.Bytes(), e.Bytes(), nil
}

func (t CNITool) env() []string {
	// Drop CNI settings inherited from the caller; cnitool and the plugins
	// would otherwise act on them.
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return strings.HasPrefix(k, "CNI_") || k == "NETCONFPATH" || k == "CAP_ARGS"
	})
	env = append(env,
		"NETCONFPATH="+t.NetConfPath,
		"CNI_PATH="+strings.Join(t.CNIPath, string(os.PathListSeparator)))
	for k, v := range map[string]string{"CNI_IFNAME": t.IfName, "CNI_ARGS": t.Args, "CAP_ARGS": t.CapArgs} {
		if v != "" {
			env = append(env, k+"="+v)
		}
	}
	return append(env, t.Env...)
}
