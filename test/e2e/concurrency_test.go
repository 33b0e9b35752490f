package e2e

import (
	"fmt"
	"sync"
	"testing"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// TestConcurrentAddDel runs 64 ADDs at once, as a busy runtime does (pairs
// share a container id with different ifnames, as Mesos attaches a
// container to several networks), then 64 DELs, and checks that every
// address is distinct and that nothing is left afterwards.
func TestConcurrentAddDel(t *testing.T) {
	sb := sandbox.ForTest(t)
	n := newNetwork(t, sb, gatewayConf("busy", "br-busy", "10.40.0.0/24", t.TempDir()), bins.PluginDir())
	ctrs := newContainers(t, sb, "k", 32)
	type attachment struct {
		ctr        *sandbox.NetNS
		id, ifname string
	}
	var atts []attachment
	for i, ctr := range ctrs {
		id := fmt.Sprintf("task.%d", i) // Mesos ids may contain dots
		atts = append(atts, attachment{ctr, id, "eth0"}, attachment{ctr, id, "eth1"})
	}

	ips := make([]string, len(atts))
	errs := make([]error, len(atts))
	parallel(len(atts), func(i int) {
		a := atts[i]
		res, err := n.add(a.ctr, a.id, a.ifname)
		if errs[i] = err; err == nil {
			ips[i] = resultIP(t, res)
		}
	})
	seen := map[string]int{}
	for i, a := range atts {
		if errs[i] != nil {
			t.Errorf("ADD %s/%s: %v", a.id, a.ifname, errs[i])
			continue
		}
		if j, dup := seen[ips[i]]; dup {
			t.Errorf("%s given to both %s/%s and %s/%s", ips[i], a.id, a.ifname, atts[j].id, atts[j].ifname)
		}
		seen[ips[i]] = i
		if !hasLink(t, a.ctr, a.ifname) {
			t.Errorf("%s missing in %s", a.ifname, a.ctr.Name)
		}
	}
	if got := len(n.allocations()); got != len(atts) {
		t.Errorf("%d allocation files, want %d", got, len(atts))
	}
	if got := len(bridgePorts(t, sb, "br-busy")); got != len(atts) {
		t.Errorf("bridge has %d ports, want %d", got, len(atts))
	}

	parallel(len(atts), func(i int) {
		a := atts[i]
		errs[i] = n.del(a.ctr, a.id, a.ifname)
	})
	for i, a := range atts {
		if errs[i] != nil {
			t.Errorf("DEL %s/%s: %v", a.id, a.ifname, errs[i])
		}
		if hasLink(t, a.ctr, a.ifname) {
			t.Errorf("%s still in %s after DEL", a.ifname, a.ctr.Name)
		}
	}
	n.assertStoreEmpty()
	if v := nodeVeths(t, sb); len(v) != 0 {
		t.Errorf("host veths left after DEL: %v", v)
	}
}

// parallel runs fn(0) … fn(count-1) concurrently and waits for all.
func parallel(count int, fn func(i int)) {
	var wg sync.WaitGroup
	for i := range count {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(i)
		}()
	}
	wg.Wait()
}
