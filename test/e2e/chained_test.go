package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// newChainedNetwork serves listJSON, a config list of bpfbridge followed by
// reference plugins (portmap, bandwidth), from our bin/ first, then
// bin/reference, as a node that installed bpfbridge next to the reference
// plugins does. The bridge entry gets the sandbox's bpffs; the reference
// plugins it chains must be built.
func newChainedNetwork(t *testing.T, sb *sandbox.Sandbox, listJSON, dataDir string) *network {
	t.Helper()
	var raw map[string]any
	if err := json.Unmarshal([]byte(listJSON), &raw); err != nil {
		t.Fatalf("config list: %v\n%s", err, listJSON)
	}
	plugins, _ := raw["plugins"].([]any)
	for i, p := range plugins {
		entry, _ := json.Marshal(p)
		var withState map[string]any
		if err := json.Unmarshal([]byte(withBPFFS(t, sb, string(entry))), &withState); err != nil {
			t.Fatal(err)
		}
		plugins[i] = withState
		if kind := withState["type"]; kind != "bridge" {
			if _, err := os.Stat(filepath.Join(bins.ReferencePluginDir(), fmt.Sprint(kind))); err != nil {
				t.Fatalf("reference plugin %v is not built (make tools): %v", kind, err)
			}
		}
	}
	listBytes, _ := json.Marshal(raw)
	list, err := libcni.NetworkConfFromBytes(listBytes)
	if err != nil {
		t.Fatalf("config list: %v\n%s", err, listBytes)
	}
	cacheDir := t.TempDir()
	return &network{
		t: t, sb: sb, list: list, cacheDir: cacheDir, name: list.Name, dataDir: dataDir,
		cni: libcni.NewCNIConfigWithCacheDir([]string{bins.PluginDir(), bins.ReferencePluginDir()}, cacheDir, nil),
	}
}

// addWith is ADD with capability arguments (runtimeConfig), as kubelet or
// podman pass port mappings and bandwidth annotations.
func (n *network) addWith(ctr *sandbox.NetNS, id string, capArgs map[string]any) (types.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	rt := runtimeConf(ctr, id, "eth0")
	rt.CapabilityArgs = capArgs
	var res types.Result
	err := n.sb.InNode(func() (err error) {
		res, err = n.cni.AddNetworkList(ctx, n.list, rt)
		return err
	})
	return res, err
}

// delWith is DEL with the same capability arguments.
func (n *network) delWith(ctr *sandbox.NetNS, id string, capArgs map[string]any) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	rt := runtimeConf(ctr, id, "eth0")
	rt.CapabilityArgs = capArgs
	return n.sb.InNode(func() error { return n.cni.DelNetworkList(ctx, n.list, rt) })
}

// nodeLinksOfType lists the node's links of a kind (ifb: bandwidth's).
func nodeLinksOfType(t *testing.T, sb *sandbox.Sandbox, kind string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	out, err := sb.Node.Command(ctx, "ip", "-o", "link", "show", "type", kind).CombinedOutput()
	if err != nil {
		t.Fatalf("ip link show type %s: %v: %s", kind, err, out)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			names = append(names, strings.TrimSuffix(f[1], ":"))
		}
	}
	return names
}

// assertOnlyPortmapRules fails if the node has a firewall rule that is not
// portmap's: bpfbridge adds none, the chained reference portmap adds its
// own (CNI-HOSTPORT-*, CNI-DN-*).
func assertOnlyPortmapRules(t *testing.T, sb *sandbox.Sandbox) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		out, err := sb.Node.Command(ctx, cmd).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", cmd, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			line = strings.TrimSpace(line)
			if !strings.HasPrefix(line, "-A ") {
				continue
			}
			if !strings.Contains(line, "CNI-") {
				t.Errorf("%s: a rule that is not portmap's: %s", cmd, line)
			}
		}
	}
}

// chainedConf is a 1.0.0 conflist of bpfbridge (masquerading gateway),
// portmap and bandwidth, as in the README's Kubernetes example.
func chainedConf(name, bridge, dataDir, subnet string) string {
	return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
		{"type": "bridge", "bridge": %q, "isGateway": true, "isDefaultGateway": true, "ipMasq": true, "hairpinMode": true,
		 "capabilities": {"bandwidth": true},
		 "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q}]]}},
		{"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
		{"type": "bandwidth", "capabilities": {"bandwidth": true}}]}`, name, bridge, dataDir, subnet)
}
