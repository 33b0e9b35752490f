package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// scaleConf is the DC/OS config with a subnet large enough for the largest
// N. It keeps the default store, /var/lib/cni/networks, like DC/OS.
const scaleConf = `{"name": "scale", "type": "bridge", "bridge": "m-scale", "isGateway": true,
  "ipMasq": false, "mtu": 1420,
  "ipam": {"type": "host-local", "subnet": "9.0.0.0/20", "routes": [{"dst": "0.0.0.0/0"}]}}`

// BenchmarkCnitoolScale attaches N containers one after another through
// cnitool, then detaches them, for bpfbridge and for the reference plugins
// in the same run, and reports latency percentiles and how the last 10% of
// ADDs compare with the first 10% (growth with N).
//
// cnitool and the DC/OS config keep state under /var/lib/cni, so the
// benchmark only runs where /var/lib is a private mount: `make bench`.
func BenchmarkCnitoolScale(b *testing.B) {
	if !privateVarLib() {
		b.Skip("needs /var/lib to be a private scratch mount; run `make bench`")
	}
	for _, plugin := range []struct{ name, dir string }{
		{"bpfbridge", bins.PluginDir()},
		{"reference", bins.ReferencePluginDir()},
	} {
		for _, n := range []int{50, 200, 1000} {
			b.Run(fmt.Sprintf("plugin=%s/N=%d", plugin.name, n), func(b *testing.B) {
				for b.Loop() {
					adds, dels := scaleRun(b, plugin.dir, n)
					reportLatencies(b, adds, dels)
				}
			})
		}
	}
}

// scaleRun creates n container namespaces, then times each cnitool ADD and
// each DEL. Namespace creation is not timed.
func scaleRun(b *testing.B, pluginDir string, n int) (adds, dels []time.Duration) {
	b.StopTimer()
	defer b.StartTimer()
	sb := sandbox.ForTest(b)
	confDir := b.TempDir()
	if err := os.WriteFile(filepath.Join(confDir, "scale.conf"), []byte(scaleConf), 0o644); err != nil {
		b.Fatal(err)
	}
	tool := sandbox.CNITool{Binary: bins.CNITool, NetConfPath: confDir, CNIPath: []string{pluginDir},
		Env: []string{"BPFBRIDGE_BPFFS=" + sb.BPFFS}}
	ctrs := make([]*sandbox.NetNS, n)
	for i := range ctrs {
		var err error
		if ctrs[i], err = sb.NewContainer(fmt.Sprintf("s%d", i)); err != nil {
			b.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	timed := func(verb string, ctr *sandbox.NetNS) time.Duration {
		start := time.Now()
		if _, _, err := tool.Run(ctx, sb.Node, verb, "scale", ctr.Path); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	for _, ctr := range ctrs {
		adds = append(adds, timed("add", ctr))
	}
	for _, ctr := range ctrs {
		dels = append(dels, timed("del", ctr))
	}
	if left := storeFiles(b, "/var/lib/cni/networks"); len(left) != 0 {
		b.Fatalf("allocations left after DEL: %d", len(left))
	}
	return adds, dels
}

func reportLatencies(b *testing.B, adds, dels []time.Duration) {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	tenth := max(len(adds)/10, 1)
	first, last := median(adds[:tenth]), median(adds[len(adds)-tenth:])
	b.ReportMetric(ms(percentile(adds, 50)), "add-p50-ms")
	b.ReportMetric(ms(percentile(adds, 99)), "add-p99-ms")
	b.ReportMetric(ms(percentile(dels, 50)), "del-p50-ms")
	b.ReportMetric(ms(percentile(dels, 99)), "del-p99-ms")
	b.ReportMetric(float64(last)/float64(first), "add-last/first-10%")
}

func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)*p/100, len(s)-1)]
}

func median(ds []time.Duration) time.Duration { return percentile(ds, 50) }

// privateVarLib reports whether /var/lib is a mount point of its own in
// this process's mount namespace (so cnitool's state cannot reach the
// machine's).
func privateVarLib() bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && fields[4] == "/var/lib" {
			return true
		}
	}
	return false
}
