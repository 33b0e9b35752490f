package hostlocal

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// TestConcurrentAddDel runs ADDs in parallel as runtimes do, in pairs with
// one container ID and two ifnames as Mesos does, then DELs.
func TestConcurrentAddDel(t *testing.T) {
	dataDir := t.TempDir()
	conf := network(dataDir, `"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]`)
	const n = 64
	attachment := func(i int) (string, string) { return fmt.Sprintf("pod.%d", i/2), fmt.Sprintf("eth%d", i%2) }
	results := make([][]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			id, ifname := attachment(i)
			r, err := Add(cmdArgs(conf, id, ifname))
			if err != nil {
				errs <- err
				return
			}
			results[i] = addrs(r)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i, r := range results {
		if len(r) != 2 {
			t.Fatalf("attachment %d got %v", i, r)
		}
		for _, a := range r {
			if seen[a] {
				t.Fatalf("%s allocated twice", a)
			}
			seen[a] = true
		}
	}
	if files, index := storeFiles(t, dataDir); len(files) != 2*n || len(index) != n {
		t.Fatalf("store holds %d address files and %d index entries, want %d and %d", len(files), len(index), 2*n, n)
	}
	errs = make(chan error, n)
	for i := range n {
		wg.Go(func() {
			id, ifname := attachment(i)
			if err := Del(cmdArgs(conf, id, ifname)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if files, index := storeFiles(t, dataDir); len(files) != 0 || len(index) != 0 {
		t.Errorf("after DEL store holds %v and %d index entries", files, len(index))
	}
}

func TestDelIsIdempotentAndReleasesReferenceAllocations(t *testing.T) {
	dataDir := t.TempDir()
	conf := network(dataDir, v4net29)
	mustDel(t, conf, "never", "eth0")
	dir := filepath.Join(dataDir, "net")
	// As the reference (current and old versions) leaves them.
	os.WriteFile(filepath.Join(dir, "10.0.0.5"), []byte("ref\r\neth0"), 0o600)
	os.WriteFile(filepath.Join(dir, "10.0.0.6"), []byte("old"), 0o600)
	mustDel(t, conf, "ref", "eth0")
	mustDel(t, conf, "old", "eth0")
	mustDel(t, conf, "old", "eth0")
	if files, _ := storeFiles(t, dataDir); len(files) != 0 {
		t.Errorf("store holds %v", files)
	}
}

func TestCheck(t *testing.T) {
	dataDir := t.TempDir()
	prev := func(ips ...string) string {
		var out []string
		for _, ip := range ips {
			out = append(out, fmt.Sprintf(`{"address": %q}`, ip))
		}
		return fmt.Sprintf(`"prevResult": {"cniVersion": "1.0.0", "ips": [%s]}`, strings.Join(out, ", "))
	}
	conf := network(dataDir, v4net29)
	mustAdd(t, conf, "c1", "eth0")
	mustAdd(t, conf, "c2", "eth0")
	if err := Check(cmdArgs(network(dataDir, v4net29, prev("10.0.0.2/29")), "c1", "eth0")); err != nil {
		t.Errorf("Check: %v", err)
	}
	if err := Check(cmdArgs(conf, "c1", "eth0")); err != nil {
		t.Errorf("Check without prevResult: %v", err)
	}
	err := Check(cmdArgs(network(dataDir, v4net29, prev("10.0.0.3/29")), "c1", "eth0"))
	wantCode(t, err, ErrAddressNotReserved, "10.0.0.3 is not reserved for container c1 ifname eth0 on network net")
	mustDel(t, conf, "c1", "eth0")
	err = Check(cmdArgs(conf, "c1", "eth0"))
	wantCode(t, err, ErrAddressNotReserved, "no address in ipam.ranges[0] (10.0.0.0/29) is reserved for container c1 ifname eth0")
}

func TestGC(t *testing.T) {
	dataDir := t.TempDir()
	conf := network(dataDir, v4net29)
	mustAdd(t, conf, "keep", "eth0")                                                // .2
	mustAdd(t, conf, "keep", "eth1")                                                // .3
	mustAdd(t, conf, "stale", "eth0")                                               // .4
	os.WriteFile(filepath.Join(dataDir, "net", "10.0.0.5"), []byte("keep"), 0o600)  // old format, ID still valid
	os.WriteFile(filepath.Join(dataDir, "net", "10.0.0.6"), []byte("ghost"), 0o600) // old format, stale
	gc := network(dataDir, v4net29, `"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]`)
	if err := GC(cmdArgs(gc, "", "")); err != nil {
		t.Fatal(err)
	}
	files, index := storeFiles(t, dataDir)
	if !slices.Equal(files, []string{"10.0.0.2", "10.0.0.5"}) || len(index) != 1 {
		t.Errorf("after GC store holds %v and %d index entries, want [10.0.0.2 10.0.0.5] and 1", files, len(index))
	}
	// The kept attachment is still whole: DEL releases its address.
	mustDel(t, conf, "keep", "eth0")
	if files, _ := storeFiles(t, dataDir); !slices.Equal(files, []string{"10.0.0.5"}) {
		t.Errorf("after DEL store holds %v", files)
	}
}

func TestStatus(t *testing.T) {
	dataDir := t.TempDir()
	conf := network(dataDir, v4net29)
	for _, id := range []string{"c1", "c2", "c3", "c4"} {
		mustAdd(t, conf, id, "eth0")
	}
	if err := Status(cmdArgs(conf, "", "")); err != nil {
		t.Errorf("Status with one address free: %v", err)
	}
	mustAdd(t, conf, "c5", "eth0")
	wantCode(t, Status(cmdArgs(conf, "", "")), ErrNotAvailable, "ipam.ranges[0] (10.0.0.0/29) is full")

	notADir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notADir, nil, 0o600)
	wantCode(t, Status(cmdArgs(network(notADir, v4net29), "", "")), ErrNotAvailable, "is unusable")
}

func TestResultRoutesAndDNS(t *testing.T) {
	dataDir := t.TempDir()
	resolv := filepath.Join(dataDir, "resolv.conf")
	os.WriteFile(resolv, []byte(`# comment
; another
nameserver 10.0.0.53
nameserver fd00::53
domain example.com
search a.example b.example
options ndots:2 timeout:1
bogus
`), 0o644)
	conf := network(dataDir, v4net29+fmt.Sprintf(`, "resolvConf": %q, "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.0.0.254"}]`, resolv))
	r := mustAdd(t, conf, "c1", "eth0")
	want := types.DNS{
		Nameservers: []string{"10.0.0.53", "fd00::53"},
		Domain:      "example.com",
		Search:      []string{"a.example", "b.example"},
		Options:     []string{"ndots:2", "timeout:1"},
	}
	if got, _ := json.Marshal(r.DNS); string(got) != string(must(json.Marshal(want))) {
		t.Errorf("DNS %s, want %s", got, must(json.Marshal(want)))
	}
	routes, _ := json.Marshal(r.Routes)
	if want := `[{"dst":"0.0.0.0/0"},{"dst":"10.9.0.0/16","gw":"10.0.0.254"}]`; string(routes) != want {
		t.Errorf("routes %s, want %s", routes, want)
	}
	if r.IPs[0].Interface != nil {
		t.Error("Interface set; the bridge plugin sets it")
	}

	missing := network(dataDir, v4net29+`, "resolvConf": "/nonexistent/resolv.conf"`)
	_, err := Add(cmdArgs(missing, "c2", "eth0"))
	wantCode(t, err, types.ErrIOFailure, `ipam.resolvConf "/nonexistent/resolv.conf"`)
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// BenchmarkAddDel measures one ADD plus one DEL against a store already
// holding n allocations: the cost must not grow with n.
func BenchmarkAddDel(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("allocations=%d", n), func(b *testing.B) {
			dataDir := b.TempDir()
			conf := network(dataDir, `"ranges": [[{"subnet": "10.0.0.0/16"}]]`)
			for i := range n {
				mustAdd(b, conf, fmt.Sprintf("existing-%d", i), "eth0")
			}
			for b.Loop() {
				mustAdd(b, conf, "bench", "eth0")
				mustDel(b, conf, "bench", "eth0")
			}
		})
	}
}
