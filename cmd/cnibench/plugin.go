package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/bpfbridge/bpfbridge/datapath/trace"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// plugin is one set of plugins under test: a CNI_PATH directory with a
// bridge and a host-local.
type plugin struct {
	Label string `json:"label"`
	Dir   string `json:"dir"`
}

// chainsPortmap tells whether the set has a portmap plugin: such a set
// (the reference) publishes ports by chaining it after its bridge, as a
// runtime's conflist does; a set without one (bpfbridge) is asked to map
// them itself.
func (p *plugin) chainsPortmap() bool {
	_, err := os.Stat(filepath.Join(p.Dir, "portmap"))
	return err == nil
}

// network is one plugin's network on one sandbox node, driven through libcni
// as a runtime drives it.
type network struct {
	sb      *sandbox.Sandbox
	plugin  *plugin
	list    *libcni.NetworkConfigList
	cache   string // libcni's result cache, a temporary directory
	dataDir string // the IPAM store root
	name    string
	timeout time.Duration
	// caps are the capability arguments (libcni's CAP_ARGS) each
	// container was added with, by id, which its DEL passes again.
	caps map[string]map[string]any
}

// netconf is the network both plugin sets get: the same JSON, since the
// reference ignores the keys it does not know (datapath). Like the DC/OS
// config it names a gateway and a default route. With ports, the network
// publishes ports the standard way: the portMappings capability, declared
// by a chained portmap plugin when chained, by the bridge plugin otherwise.
func netconf(name, subnet, dataDir, bpffs string, masq, ports, chained bool) string {
	var bridgeCaps, portmap string
	switch {
	case ports && chained:
		portmap = `, {"type": "portmap", "capabilities": {"portMappings": true}}`
	case ports:
		bridgeCaps = `"capabilities": {"portMappings": true},`
	}
	return fmt.Sprintf(`{"cniVersion": "1.1.0", "name": %q, "plugins": [{
		"type": "bridge", "bridge": "cb0", "isGateway": true, "ipMasq": %t, "mtu": %d, %s
		"datapath": {"bpffs": %q},
		"ipam": {"type": "host-local", "subnet": %q, "dataDir": %q, "routes": [{"dst": "0.0.0.0/0"}]}}%s]}`,
		name, masq, networkMTU, bridgeCaps, bpffs, subnet, dataDir, portmap)
}

// networkMTU is the MTU of every network under test, and of the bare veth
// pair they are compared with.
const networkMTU = 1500

// newNetwork prepares p's network on sb, with its IPAM store and result
// cache in fresh directories under tmp, never under /var/lib/cni. With
// ports, it can publish containers' ports (see netconf).
func newNetwork(sb *sandbox.Sandbox, p *plugin, tmp, name, subnet string, masq, ports bool, timeout time.Duration) (*network, error) {
	dir, err := os.MkdirTemp(tmp, p.Label+"-")
	if err != nil {
		return nil, err
	}
	n := &network{sb: sb, plugin: p, cache: filepath.Join(dir, "cache"), dataDir: filepath.Join(dir, "ipam"), name: name,
		timeout: timeout, caps: map[string]map[string]any{}}
	n.list, err = libcni.NetworkConfFromBytes([]byte(netconf(name, subnet, n.dataDir, sb.BPFFS, masq, ports, p.chainsPortmap())))
	return n, err
}

// call is what one plugin invocation cost.
type call struct {
	Wall   time.Duration
	CPU    time.Duration // user+system time of the plugin and the children it waited for (IPAM, iptables)
	MaxRSS int64         // peak resident set in KiB of the largest of those processes
	// Phases are the plugin's own phase trace, for a plugin that writes
	// one (bpfbridge: package trace).
	Phases []trace.Phase
}

// add attaches the container netns ctr as id/eth0 and returns the
// container's IPv4 address.
func (n *network) add(ctx context.Context, ctr *sandbox.NetNS, id string) (netip.Addr, call, error) {
	return n.addWith(ctx, ctr, id, nil)
}

// addWith is add with capability arguments, as a runtime passes them
// (libcni's RuntimeConf.CapabilityArgs, cnitool's CAP_ARGS): libcni hands
// each to the plugins that declare the capability, in runtimeConfig.
func (n *network) addWith(ctx context.Context, ctr *sandbox.NetNS, id string, caps map[string]any) (netip.Addr, call, error) {
	if caps != nil {
		n.caps[id] = caps
	}
	var res types.Result
	c, err := n.invoke(ctx, func(cni *libcni.CNIConfig, ctx context.Context) (err error) {
		res, err = cni.AddNetworkList(ctx, n.list, n.runtimeConf(ctr, id))
		return err
	})
	if err != nil {
		return netip.Addr{}, c, err
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil || len(cur.IPs) == 0 {
		return netip.Addr{}, c, fmt.Errorf("ADD %s: result without an address: %v", id, err)
	}
	ip, _ := netip.AddrFromSlice(cur.IPs[0].Address.IP)
	return ip.Unmap(), c, nil
}

// del detaches id/eth0 from the container netns ctr, with the capability
// arguments it was added with.
func (n *network) del(ctx context.Context, ctr *sandbox.NetNS, id string) (call, error) {
	c, err := n.invoke(ctx, func(cni *libcni.CNIConfig, ctx context.Context) error {
		return cni.DelNetworkList(ctx, n.list, n.runtimeConf(ctr, id))
	})
	if err == nil {
		delete(n.caps, id)
	}
	return c, err
}

func (n *network) runtimeConf(ctr *sandbox.NetNS, id string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: ctr.Path, IfName: "eth0", CapabilityArgs: n.caps[id]}
}

// invoke runs one libcni operation from inside the node, so that the plugin
// process starts there, as under a runtime on that node. Each operation gets
// a libcni client of its own whose Exec meters the processes it starts.
func (n *network) invoke(ctx context.Context, op func(*libcni.CNIConfig, context.Context) error) (call, error) {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	ex := &meteredExec{}
	cni := libcni.NewCNIConfigWithCacheDir([]string{n.plugin.Dir}, n.cache, ex)
	start := time.Now()
	err := n.sb.InNode(func() error { return op(cni, ctx) })
	c := call{Wall: time.Since(start)}
	c.CPU, c.MaxRSS, c.Phases = ex.usage()
	return c, err
}

// meteredExec is libcni's invoke.RawExec with resource accounting: it runs
// the plugin with the environment and stdin libcni gives, returns its stdout
// or its CNI error, and adds up the rusage the kernel reports when the
// process is reaped. That rusage covers the children the plugin waited for
// too (the reference bridge execs host-local, and iptables for masquerade),
// so both plugin sets are charged for the same work.
type meteredExec struct {
	version.PluginDecoder
	mu     sync.Mutex
	cpu    time.Duration
	maxRSS int64
	phases []trace.Phase
}

var _ invoke.Exec = (*meteredExec)(nil)

// ExecPlugin implements invoke.Exec.
func (e *meteredExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, pluginPath)
	// Other plugins ignore the variable.
	environ = append(environ, trace.EnvVar+"=1")
	cmd.Env, cmd.Stdin, cmd.Stdout, cmd.Stderr = environ, bytes.NewReader(stdin), &stdout, &stderr
	err := cmd.Run()
	if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			e.mu.Lock()
			e.cpu += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			e.maxRSS = max(e.maxRSS, ru.Maxrss) // KiB on Linux
			e.mu.Unlock()
		}
	}
	if _, _, phases, ok := trace.Parse(stderr.String()); ok {
		e.mu.Lock()
		e.phases = append(e.phases, phases...)
		e.mu.Unlock()
	}
	if err != nil {
		return nil, pluginError(err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

// FindInPath implements invoke.Exec.
func (e *meteredExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func (e *meteredExec) usage() (time.Duration, int64, []trace.Phase) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cpu, e.maxRSS, e.phases
}

// pluginError turns a failed run into the CNI error the plugin printed, as
// RawExec does, so that callers see its code and message.
func pluginError(err error, stdout, stderr []byte) error {
	var e types.Error
	if len(stdout) > 0 && json.Unmarshal(stdout, &e) == nil && (e.Code != 0 || e.Msg != "") {
		return &e
	}
	return fmt.Errorf("plugin failed: %w: %s%s", err, bytes.TrimSpace(stdout), bytes.TrimSpace(stderr))
}

// cniCode returns the CNI error code within err, or 0.
func cniCode(err error) uint {
	if e, ok := errors.AsType[*types.Error](err); ok {
		return e.Code
	}
	return 0
}
