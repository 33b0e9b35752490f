package hostlocal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// network builds the config of network "net" with the given ipam keys (JSON
// members without braces) and extra top-level members.
func network(dataDir, ipam string, top ...string) []byte {
	members := append([]string{`"cniVersion": "1.0.0"`, `"name": "net"`, `"type": "bridge"`,
		fmt.Sprintf(`"ipam": {"type": "host-local", "dataDir": %q, %s}`, dataDir, ipam)}, top...)
	return []byte("{" + strings.Join(members, ", ") + "}")
}

func cmdArgs(conf []byte, id, ifname string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: id, IfName: ifname, StdinData: conf}
}

func mustAdd(t testing.TB, conf []byte, id, ifname string) *current.Result {
	t.Helper()
	r, err := Add(cmdArgs(conf, id, ifname))
	if err != nil {
		t.Fatalf("Add(%s, %s): %v", id, ifname, err)
	}
	return r
}

func mustDel(t testing.TB, conf []byte, id, ifname string) {
	t.Helper()
	if err := Del(cmdArgs(conf, id, ifname)); err != nil {
		t.Fatalf("Del(%s, %s): %v", id, ifname, err)
	}
}

// addrs lists the result's addresses as strings.
func addrs(r *current.Result) []string {
	var out []string
	for _, ip := range r.IPs {
		out = append(out, ip.Address.String())
	}
	return out
}

// wantCode fails unless err is a *types.Error with code whose message
// contains every fragment.
func wantCode(t *testing.T, err error, code uint, fragments ...string) {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T), want *types.Error code %d", err, err, code)
	}
	if e.Code != code {
		t.Errorf("code %d (%s), want %d", e.Code, e.Msg, code)
	}
	for _, f := range fragments {
		if !strings.Contains(e.Msg, f) {
			t.Errorf("message %q does not contain %q", e.Msg, f)
		}
	}
}

// storeFiles lists the network dir's address files and index entries.
func storeFiles(t testing.TB, dataDir string) (ipFiles, index []string) {
	t.Helper()
	dir := filepath.Join(dataDir, "net")
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Type().IsRegular() && e.Name() != "lock" && !strings.HasPrefix(e.Name(), "last_reserved_ip.") {
			ipFiles = append(ipFiles, e.Name())
		}
	}
	idx, _ := os.ReadDir(filepath.Join(dir, ".attachments"))
	for _, e := range idx {
		index = append(index, e.Name())
	}
	slices.Sort(ipFiles)
	return ipFiles, index
}
