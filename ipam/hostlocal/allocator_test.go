package hostlocal

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// v4net29 has allocatable addresses 10.0.0.2-10.0.0.6 (.1 is the gateway).
const v4net29 = `"ranges": [[{"subnet": "10.0.0.0/29"}]]`

func TestCandidatesOrder(t *testing.T) {
	c, err := loadConfig(network("/unused", `"ranges": [[
		{"subnet": "10.0.0.0/29"},
		{"subnet": "10.0.1.0/24", "rangeStart": "10.0.1.10", "rangeEnd": "10.0.1.12", "gateway": "10.0.1.11"}]]`), "")
	if err != nil {
		t.Fatal(err)
	}
	set := &c.sets[0]
	collect := func(last string) []string {
		var out []string
		var lastAddr netip.Addr
		if last != "" {
			lastAddr = netip.MustParseAddr(last)
		}
		for ip := range set.candidates(lastAddr) {
			out = append(out, ip.String())
		}
		return out
	}
	tests := []struct {
		last string
		want []string
	}{
		// No last address: from the first range's start, gateways skipped.
		{"", []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.1.10", "10.0.1.12"}},
		// After the last address, wrapping through the next range and around.
		{"10.0.0.4", []string{"10.0.0.5", "10.0.0.6", "10.0.1.10", "10.0.1.12", "10.0.0.2", "10.0.0.3", "10.0.0.4"}},
		// The end of the last range wraps to the first range's start.
		{"10.0.1.12", []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.1.10", "10.0.1.12"}},
		// A last address outside the set (ranges changed) restarts.
		{"192.168.0.1", []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.1.10", "10.0.1.12"}},
	}
	for _, tt := range tests {
		if got := collect(tt.last); !slices.Equal(got, tt.want) {
			t.Errorf("after %q: %v, want %v", tt.last, got, tt.want)
		}
	}
}

func TestRoundRobin(t *testing.T) {
	dataDir := t.TempDir()
	conf := network(dataDir, v4net29)
	first := addrs(mustAdd(t, conf, "c1", "eth0"))
	second := addrs(mustAdd(t, conf, "c2", "eth0"))
	mustDel(t, conf, "c1", "eth0")
	// .2 is free again, but round-robin continues after .3.
	third := addrs(mustAdd(t, conf, "c3", "eth0"))
	if got, want := [][]string{first, second, third}, [][]string{{"10.0.0.2/29"}, {"10.0.0.3/29"}, {"10.0.0.4/29"}}; !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("allocated %v, want %v", got, want)
	}
	if got, _ := os.ReadFile(filepath.Join(dataDir, "net", "last_reserved_ip.0")); string(got) != "10.0.0.4" {
		t.Errorf("last_reserved_ip.0 = %q", got)
	}
}

func TestWrapAroundAndSkipTaken(t *testing.T) {
	dataDir := t.TempDir()
	dir := filepath.Join(dataDir, "net")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "last_reserved_ip.0"), []byte("10.0.0.6"), 0o600)
	// Taken by the reference for another container.
	os.WriteFile(filepath.Join(dir, "10.0.0.2"), []byte("other\r\neth0"), 0o600)
	conf := network(dataDir, v4net29)
	r := mustAdd(t, conf, "c1", "eth0")
	// .6 is the end: wrap to .1, the gateway, skip it, .2 is taken: .3.
	if got := addrs(r); !slices.Equal(got, []string{"10.0.0.3/29"}) {
		t.Errorf("allocated %v, want [10.0.0.3/29]", got)
	}
	if gw := r.IPs[0].Gateway.String(); gw != "10.0.0.1" {
		t.Errorf("gateway %s", gw)
	}
}

func TestExhaustionLeavesNothing(t *testing.T) {
	dataDir := t.TempDir()
	conf := network(dataDir, v4net29)
	for _, id := range []string{"c1", "c2", "c3", "c4", "c5"} {
		mustAdd(t, conf, id, "eth0")
	}
	before, beforeIdx := storeFiles(t, dataDir)
	_, err := Add(cmdArgs(conf, "c6", "eth0"))
	wantCode(t, err, ErrAddressExhausted, "no free address in ipam.ranges[0] (10.0.0.0/29)")
	after, afterIdx := storeFiles(t, dataDir)
	if !slices.Equal(before, after) || len(beforeIdx) != len(afterIdx) {
		t.Errorf("store changed: %v %v -> %v %v", before, beforeIdx, after, afterIdx)
	}
	if len(after) != 5 {
		t.Errorf("%d address files, want 5", len(after))
	}
}

func TestDualStackPartialFailureLeavesNothing(t *testing.T) {
	dataDir := t.TempDir()
	conf := network(dataDir, `"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64", "rangeStart": "fd00::2", "rangeEnd": "fd00::2"}]]`)
	r := mustAdd(t, conf, "c1", "eth0")
	if got := addrs(r); !slices.Equal(got, []string{"10.0.0.2/24", "fd00::2/64"}) {
		t.Fatalf("allocated %v", got)
	}
	if gw := r.IPs[1].Gateway.String(); gw != "fd00::1" {
		t.Errorf("IPv6 gateway %s", gw)
	}
	_, err := Add(cmdArgs(conf, "c2", "eth0"))
	wantCode(t, err, ErrAddressExhausted, "ipam.ranges[1] (fd00::/64)")
	files, index := storeFiles(t, dataDir)
	if !slices.Equal(files, []string{"10.0.0.2", "fd00::2"}) || len(index) != 1 {
		t.Errorf("store holds %v and %d index entries, want only c1's", files, len(index))
	}
}

func TestStaticRequest(t *testing.T) {
	dataDir := t.TempDir()
	conf := network(dataDir, `"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]`,
		`"runtimeConfig": {"ips": ["fd00::99/64"]}`)
	args := cmdArgs(conf, "c1", "eth0")
	args.Args = "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.0.0.77"
	r, err := Add(args)
	if err != nil {
		t.Fatal(err)
	}
	if got := addrs(r); !slices.Equal(got, []string{"10.0.0.77/24", "fd00::99/64"}) {
		t.Errorf("allocated %v", got)
	}
	args.ContainerID = "c2"
	_, err = Add(args)
	wantCode(t, err, ErrAddressInUse, "requested address 10.0.0.77 in ipam.ranges[0] (10.0.0.0/24) is already allocated")
	if files, _ := storeFiles(t, dataDir); len(files) != 2 {
		t.Errorf("store holds %v after the rejected request", files)
	}
}

func TestDuplicateAdd(t *testing.T) {
	dataDir := t.TempDir()
	conf := network(dataDir, v4net29)
	mustAdd(t, conf, "c1", "eth0")
	_, err := Add(cmdArgs(conf, "c1", "eth0"))
	wantCode(t, err, ErrDuplicateAllocation, "container c1 ifname eth0 already holds 10.0.0.2 on network net")
	// Mesos: the same container on another interface is a new attachment.
	if got := addrs(mustAdd(t, conf, "c1", "eth1")); !slices.Equal(got, []string{"10.0.0.3/29"}) {
		t.Errorf("c1/eth1 got %v", got)
	}
	mustDel(t, conf, "c1", "eth0")
	if files, _ := storeFiles(t, dataDir); !slices.Equal(files, []string{"10.0.0.3"}) {
		t.Errorf("after DEL c1/eth0 store holds %v", files)
	}
}
