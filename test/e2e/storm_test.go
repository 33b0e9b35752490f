package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// An agent on a busy node, as the storm plays it: attachments ADDed and
// DELed in parallel through the plugin binary, some of those processes
// SIGKILLed at a random point, namespaces deleted before or during the DEL,
// and GCs in between. Sizes are counts, never durations.
const (
	stormWorkers = 8  // containers in flight at once
	stormRounds  = 20 // containers per worker, each on both networks
	stormGCs     = 20 // GCs during the storm
	// Percentages of ADD and DEL processes killed.
	stormKillADD = 20
	stormKillDEL = 15
)

// stormNet is a network driven by executing the plugin as a runtime does.
type stormNet struct {
	name     string
	ifname   string // the storm's containers join it as this interface
	conf     map[string]any
	storeDir string
}

// newStormNet serves a gateway network; a masquerading one is also the
// containers' default route.
func newStormNet(t *testing.T, sb *sandbox.Sandbox, name, bridge, subnet, ifname, dataDir string, masquerade bool) *stormNet {
	t.Helper()
	conf := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": %q, "type": "bridge", "bridge": %q,
		"isGateway": true, "isDefaultGateway": %t, "ipMasq": %t,
		"ipam": {"type": "host-local", "subnet": %q, "dataDir": %q}}`, name, bridge, masquerade, masquerade, subnet, dataDir)
	n := &stormNet{name: name, ifname: ifname, storeDir: filepath.Join(dataDir, name)}
	if err := json.Unmarshal([]byte(withBPFFS(t, sb, conf)), &n.conf); err != nil {
		t.Fatal(err)
	}
	return n
}

// attachment is one container interface on one network.
type attachment struct {
	net *stormNet
	id  string
}

func (a attachment) String() string { return a.id + "/" + a.net.ifname }

// pluginRun is what one execution of the plugin did.
type pluginRun struct {
	killed bool
	cniErr *types.Error // nil when it exited 0 (or was killed)
	stdout []byte
}

// runPlugin executes the bridge plugin in the node for command on a, with
// netns as CNI_NETNS ("" for none) and stdin conf, and SIGKILLs it after
// killAfter unless that is negative.
func runPlugin(sb *sandbox.Sandbox, command string, a attachment, netns string, conf map[string]any, killAfter time.Duration) (pluginRun, error) {
	stdin, err := json.Marshal(conf)
	if err != nil {
		return pluginRun{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	cmd := sb.Node.Command(ctx, bins.Bridge)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "BPFBRIDGE_ATTACH=" + os.Getenv("BPFBRIDGE_ATTACH"),
		"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + a.id, "CNI_IFNAME=" + a.net.ifname, "CNI_PATH=" + bins.PluginDir()}
	if netns != "" {
		cmd.Env = append(cmd.Env, "CNI_NETNS="+netns)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(stdin), &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return pluginRun{}, err
	}
	if killAfter >= 0 {
		timer := time.AfterFunc(killAfter, func() { cmd.Process.Kill() })
		defer timer.Stop()
	}
	err = cmd.Wait()
	run := pluginRun{stdout: stdout.Bytes()}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		run.killed = true
		return run, nil
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		run.cniErr = &types.Error{}
		if json.Unmarshal(stdout.Bytes(), run.cniErr) != nil || run.cniErr.Msg == "" {
			return run, fmt.Errorf("%s %s exited %v without CNI error JSON: %q (stderr %q)", command, a, err, stdout.String(), stderr.String())
		}
		return run, nil
	}
	return run, err
}

// storm is the shared state of one storm: what the "runtime" knows.
type storm struct {
	t    *testing.T
	sb   *sandbox.Sandbox
	nets []*stormNet

	// gate keeps attachments from being registered while a GC collects:
	// an ADD under way is always in the GC's valid list.
	gate sync.RWMutex

	mu     sync.Mutex
	known  map[attachment]bool       // ADD started, last DEL not yet returned 0
	live   map[netip.Addr]attachment // addresses of attachments between ADD's success and DEL
	all    []attachment              // every attachment ever started
	adds   int                       // ADDs that returned a result
	killed int                       // processes the storm killed
	flows  int                       // containers that made a masqueraded flow
}

// killDelay returns, for percent of the runs, how long (up to upTo) a
// process may run before the storm kills it, and -1 (never) for the others.
func killDelay(percent int, upTo time.Duration) time.Duration {
	if rand.IntN(100) >= percent {
		return -1
	}
	return rand.N(upTo)
}

func (s *storm) register(atts []attachment) {
	s.gate.RLock()
	defer s.gate.RUnlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range atts {
		s.known[a] = true
		s.all = append(s.all, a)
	}
}

func (s *storm) unregister(a attachment) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.known, a)
}

// claim records the addresses ADD gave a, failing the test if a live
// attachment already holds one of them.
func (s *storm) claim(a attachment, ips []netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.adds++
	for _, ip := range ips {
		if other, taken := s.live[ip]; taken {
			s.t.Errorf("%s given to %s while %s holds it", ip, a, other)
		}
		s.live[ip] = a
	}
}

func (s *storm) unclaim(ips []netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ip := range ips {
		delete(s.live, ip)
	}
}

func (s *storm) count(n *int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	*n++
}

// add runs ADD for a, maybe killed; it returns the addresses of a result.
func (s *storm) add(a attachment, netns string) []netip.Addr {
	run, err := runPlugin(s.sb, "ADD", a, netns, a.net.conf, killDelay(stormKillADD, 40*time.Millisecond))
	switch {
	case err != nil:
		s.t.Error(err)
	case run.killed:
		s.count(&s.killed)
	case run.cniErr != nil:
		s.t.Errorf("ADD %s: code %d: %s %s", a, run.cniErr.Code, run.cniErr.Msg, run.cniErr.Details)
	default:
		res, err := current.NewResult(run.stdout)
		if err != nil {
			s.t.Errorf("ADD %s: result %q: %v", a, run.stdout, err)
			return nil
		}
		var ips []netip.Addr
		for _, ipc := range res.(*current.Result).IPs {
			ip, _ := netip.AddrFromSlice(ipc.Address.IP)
			ips = append(ips, ip.Unmap())
		}
		s.claim(a, ips)
		return ips
	}
	return nil
}

// del runs DEL for a, maybe killed, until one run is not killed; that run
// must return 0.
func (s *storm) del(a attachment, netns string, kill bool) {
	for {
		delay := time.Duration(-1)
		if kill {
			delay = killDelay(stormKillDEL, 20*time.Millisecond)
		}
		run, err := runPlugin(s.sb, "DEL", a, netns, a.net.conf, delay)
		switch {
		case err != nil:
			s.t.Error(err)
		case run.killed:
			s.count(&s.killed)
			continue // the runtime retries
		case run.cniErr != nil:
			s.t.Errorf("DEL %s (netns %q): code %d: %s %s", a, netns, run.cniErr.Code, run.cniErr.Msg, run.cniErr.Details)
		default:
			s.unregister(a)
		}
		return
	}
}

// gc runs GC on every network with the attachments the runtime knows of
// (valid false: none) and requires it to succeed.
func (s *storm) gc(valid bool) {
	s.gate.Lock()
	defer s.gate.Unlock()
	for _, n := range s.nets {
		list := []types.GCAttachment{}
		if valid {
			s.mu.Lock()
			for a := range s.known {
				if a.net == n {
					list = append(list, types.GCAttachment{ContainerID: a.id, IfName: n.ifname})
				}
			}
			s.mu.Unlock()
		}
		conf := map[string]any{"cni.dev/valid-attachments": list}
		for k, v := range n.conf {
			conf[k] = v
		}
		run, err := runPlugin(s.sb, "GC", attachment{net: n, id: "gc"}, "", conf, -1)
		if err == nil && run.cniErr != nil {
			err = fmt.Errorf("code %d: %s %s", run.cniErr.Code, run.cniErr.Msg, run.cniErr.Details)
		}
		if err != nil {
			s.t.Errorf("GC of %s: %v", n.name, err)
		}
	}
}

// round is one container's life: its namespace, ADD on every network in
// parallel under one container ID (maybe killed, then DELed as a runtime
// must), maybe a masqueraded flow, and teardown with the namespace deleted
// before, during or after the DELs.
func (s *storm) round(worker, round int) {
	id := fmt.Sprintf("storm.%d.%d", worker, round)
	ctr, err := s.sb.NewContainer(fmt.Sprintf("s%d-%d", worker, round))
	if err != nil {
		s.t.Error(err)
		return
	}
	atts := make([]attachment, len(s.nets))
	for i, n := range s.nets {
		atts[i] = attachment{net: n, id: id}
	}
	s.register(atts)
	ips := make([][]netip.Addr, len(atts))
	parallel(len(atts), func(i int) { ips[i] = s.add(atts[i], ctr.Path) })
	if len(ips[0]) > 0 && rand.IntN(3) == 0 {
		// A UDP exchange with the outside leaves a translation pair that
		// DEL must forget.
		if _, err := sandbox.WhoAmI(ctr, "udp", netip.AddrPortFrom(s.sb.Internet4, stormServerPort), 3*time.Second); err != nil {
			s.t.Errorf("%s: masqueraded flow: %v", atts[0], err)
		} else {
			s.count(&s.flows)
		}
	}
	for i := range atts {
		s.unclaim(ips[i])
	}
	netns := ctr.Path
	deleteNetns := func() {
		if err := ctr.Delete(); err != nil {
			s.t.Error(err)
		}
	}
	delAll := func() { parallel(len(atts), func(i int) { s.del(atts[i], netns, true) }) }
	switch how := rand.IntN(4); how {
	case 0: // deleted before, DEL still names it
		deleteNetns()
		delAll()
	case 1: // deleted before, DEL without CNI_NETNS (the runtime lost it)
		deleteNetns()
		netns = ""
		delAll()
	case 2: // deleted while the DELs run
		parallel(2, func(i int) {
			if i == 0 {
				deleteNetns()
			} else {
				delAll()
			}
		})
	default:
		delAll()
		deleteNetns()
	}
}

// stormServerPort is where the outside answers the storm's flows.
const stormServerPort = 7300

// TestStorm drives parallel ADD, DEL and GC through the plugin binary with
// random SIGKILLs of ADD and DEL, containers on two networks as eth0 and
// eth1 under one ID, and namespaces deleted before and during DELs. No two
// live attachments may ever hold one address and every DEL that ran to its
// end must return 0; after DEL of everything and a GC with an empty list,
// nothing may be left: allocations, index entries, host veths, map entries,
// translations, link pins.
func TestStorm(t *testing.T) {
	sb := sandbox.ForTest(t)
	dataDir := t.TempDir()
	s := &storm{t: t, sb: sb, known: map[attachment]bool{}, live: map[netip.Addr]attachment{}}
	s.nets = []*stormNet{
		newStormNet(t, sb, "storm-a", "br-sa", "10.61.0.0/24", "eth0", dataDir, true),
		newStormNet(t, sb, "storm-b", "br-sb", "10.62.0.0/24", "eth1", dataDir, false),
	}
	serveWhoAmI(t, sb.External, netip.AddrPortFrom(sb.Internet4, stormServerPort))

	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range stormGCs {
			select {
			case <-done:
				return
			case <-time.After(rand.N(300 * time.Millisecond)):
			}
			s.gc(true)
		}
	}()
	parallel(stormWorkers, func(w int) {
		for r := range stormRounds {
			s.round(w, r)
		}
	})
	close(done)
	wg.Wait()

	// What is left: DEL of every attachment ever made must remove it all,
	// since some runtimes never GC; a GC that keeps nothing then must find
	// nothing to break.
	parallel(len(s.all), func(i int) { s.del(s.all[i], "", false) })
	assertNothingLeft(t, sb, s.nets, "after DEL")
	s.gc(false)
	assertNothingLeft(t, sb, s.nets, "after GC")
	t.Logf("%d ADDs returned a result, %d processes killed, %d masqueraded flows", s.adds, s.killed, s.flows)
	if s.adds == 0 || s.killed == 0 || s.flows == 0 {
		t.Errorf("the storm did not exercise every path: %d results, %d kills, %d flows", s.adds, s.killed, s.flows)
	}
}

// assertNothingLeft fails unless no trace of any attachment remains on the
// node: allocations and index entries of nets' stores, temporary files,
// host veths, datapath map entries, translations and link pins (counted by
// pinnedEntries). when says at which point, in failures.
func assertNothingLeft(t *testing.T, sb *sandbox.Sandbox, nets []*stormNet, when string) {
	t.Helper()
	for _, n := range nets {
		var left []string
		entries, _ := os.ReadDir(n.storeDir)
		for _, e := range entries {
			if name := e.Name(); name != "lock" && name != ".attachments" && !strings.HasPrefix(name, "last_reserved_ip.") {
				left = append(left, name)
			}
		}
		index, _ := os.ReadDir(filepath.Join(n.storeDir, ".attachments"))
		for _, e := range index {
			left = append(left, ".attachments/"+e.Name())
		}
		if len(left) != 0 {
			t.Errorf("%s: left in the store of %s: %v", when, n.name, left)
		}
	}
	// A deleted namespace takes its veths with it, asynchronously.
	var veths []string
	for range 100 {
		if veths = nodeVeths(t, sb); len(veths) == 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(veths) != 0 {
		t.Errorf("%s: host veths left: %v", when, veths)
	}
	zero := map[string]int{"endpoints": 0, "ip_owners": 0, "endpoint_meta": 0, "endpoint_stats": 0, "links": 0}
	if got := pinnedEntries(t, sb); !mapsEqual(got, zero) {
		t.Errorf("%s: datapath state left: %v", when, got)
	}
	if out, in := natEntries(t, sb); out+in != 0 {
		t.Errorf("%s: translations left: %d out, %d in", when, out, in)
	}
}

// raceIterations is how often TestDelRacesNetnsDeletion races a DEL with
// the deletion of the container's namespace.
const raceIterations = 200

// TestDelRacesNetnsDeletion deletes a container's namespace and DELs it at
// once, raceIterations times: alternately a DEL without CNI_NETNS right
// after the deletion (the kernel removes the veth pair while the DEL runs)
// and a DEL naming the namespace while it is being deleted. Every DEL must
// return 0 and release the address, and nothing may be left at the end.
func TestDelRacesNetnsDeletion(t *testing.T) {
	sb := sandbox.ForTest(t)
	n := newStormNet(t, sb, "race", "br-race", "10.63.0.0/24", "eth0", t.TempDir(), true)
	for i := range raceIterations {
		ctr, err := sb.NewContainer(fmt.Sprintf("r%d", i))
		if err != nil {
			t.Fatal(err)
		}
		a := attachment{net: n, id: fmt.Sprintf("race.%d", i)}
		run, err := runPlugin(sb, "ADD", a, ctr.Path, n.conf, -1)
		if err == nil && run.cniErr != nil {
			err = fmt.Errorf("code %d: %s", run.cniErr.Code, run.cniErr.Msg)
		}
		if err != nil {
			t.Fatalf("ADD %s: %v", a, err)
		}
		netns := ctr.Path
		if i%2 == 0 {
			if err := ctr.Delete(); err != nil {
				t.Fatal(err)
			}
			netns = ""
		} else {
			go ctr.Delete() // the sandbox's Close catches a failure
		}
		run, err = runPlugin(sb, "DEL", a, netns, n.conf, -1)
		if err == nil && run.cniErr != nil {
			err = fmt.Errorf("code %d: %s", run.cniErr.Code, run.cniErr.Msg)
		}
		if err != nil {
			t.Errorf("iteration %d: DEL %s (netns %q): %v", i, a, netns, err)
		}
		if ips, _ := filepath.Glob(filepath.Join(n.storeDir, "10.*")); len(ips) != 0 {
			t.Fatalf("iteration %d: allocations left after DEL: %v", i, ips)
		}
	}
	assertNothingLeft(t, sb, []*stormNet{n}, "after the races")
}

// TestConcurrentAddDel runs 64 ADDs at once, as a busy runtime does (pairs
// share a container id with different ifnames, as Mesos attaches a
// container to several networks), then 64 DELs, and checks that every
// address is distinct and that nothing is left afterwards.
func TestConcurrentAddDel(t *testing.T) {
	sb, n := newGatewayNetwork(t, "busy", "br-busy", "10.40.0.0/24")
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
