package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPrintsResultInConfigVersion runs the built plugin: configs without a
// cniVersion (Mesos, DC/OS) or with "" (libcni) get 0.1.0-shaped results.
func TestPrintsResultInConfigVersion(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "host-local")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dataDir := t.TempDir()
	tests := []struct {
		version string // JSON member, may be empty
		wantKey string
	}{
		{"", "ip4"},
		{`"cniVersion": "",`, "ip4"},
		{`"cniVersion": "0.2.0",`, "ip4"},
		{`"cniVersion": "1.1.0",`, "ips"},
	}
	for i, tt := range tests {
		conf := fmt.Sprintf(`{%s "name": "net", "type": "bridge",
			"ipam": {"type": "host-local", "subnet": "10.0.0.0/24", "dataDir": %q}}`, tt.version, dataDir)
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "CNI_COMMAND=ADD", fmt.Sprintf("CNI_CONTAINERID=c%d", i), "CNI_IFNAME=eth0",
			"CNI_NETNS=/var/run/netns/test", "CNI_NETNS_OVERRIDE=1", "CNI_PATH=/nonexistent")
		cmd.Stdin = strings.NewReader(conf)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v: %s", tt.version, err, out)
		}
		var result map[string]any
		if err := json.Unmarshal(out, &result); err != nil {
			t.Fatalf("%s: %v: %s", tt.version, err, out)
		}
		if _, ok := result[tt.wantKey]; !ok {
			t.Errorf("config %q: result has no %q: %s", tt.version, tt.wantKey, out)
		}
	}
}
