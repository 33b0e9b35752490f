package ipam

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
)

// fakePlugin installs an executable "fake" IPAM plugin in CNI_PATH that
// logs each CNI_COMMAND and answers ADD with a fixed result.
func fakePlugin(t *testing.T) (log string) {
	dir := t.TempDir()
	log = filepath.Join(dir, "log")
	script := fmt.Sprintf(`#!/bin/sh
cat >/dev/null
echo "$CNI_COMMAND $CNI_CONTAINERID" >>%q
if [ "$CNI_COMMAND" = ADD ]; then
	echo '{"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.5/24", "gateway": "10.9.0.1"}]}'
fi
`, log)
	if err := os.WriteFile(filepath.Join(dir, "fake"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CNI_PATH", dir)
	t.Setenv("CNI_CONTAINERID", "c1")
	t.Setenv("CNI_IFNAME", "eth0")
	t.Setenv("CNI_NETNS", "/var/run/netns/x")
	return log
}

func TestDelegatesOtherTypes(t *testing.T) {
	log := fakePlugin(t)
	args := &skel.CmdArgs{ContainerID: "c1", IfName: "eth0",
		StdinData: []byte(`{"cniVersion": "1.1.0", "name": "net", "type": "bridge", "ipam": {"type": "fake"}}`)}
	r, err := Add("fake", args)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.9.0.5/24" {
		t.Errorf("result %+v", r)
	}
	for _, verb := range []func(string, *skel.CmdArgs) error{Check, Del, GC, Status} {
		if err := verb("fake", args); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := os.ReadFile(log)
	if want := "ADD c1\nCHECK c1\nDEL c1\nGC c1\nSTATUS c1\n"; string(got) != want {
		t.Errorf("plugin saw %q, want %q", got, want)
	}
}

func TestHostLocalRunsInProcess(t *testing.T) {
	fakePlugin(t) // a host-local in CNI_PATH must not be used
	dataDir := t.TempDir()
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "net", "type": "bridge",
		"ipam": {"type": "host-local", "subnet": "10.0.0.0/24", "dataDir": %q}}`, dataDir)
	args := &skel.CmdArgs{ContainerID: "c1", IfName: "eth0", StdinData: []byte(conf)}
	r, err := Add("host-local", args)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.0.0.2/24" {
		t.Errorf("result %+v", r)
	}
	if err := Del("host-local", args); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Join(dataDir, "net"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "10.") {
			t.Errorf("%s left after DEL", e.Name())
		}
	}
}
