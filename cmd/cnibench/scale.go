package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

const (
	// scaleSubnet holds every container of the largest N.
	scaleSubnet = "10.200.0.0/20"
	// maxContainers is what scaleSubnet holds, less the gateway and some room.
	maxContainers = 4000
	// minSamples is how many ADDs and DELs a point times at the least.
	minSamples = 21
)

// bench is one cnibench run.
type bench struct {
	opts     options
	ctx      context.Context
	prefix   string // of every namespace of the run
	tmp      string // IPAM stores and result caches
	plugins  []*plugin
	floor    *plugin // the empty plugin, or nil without --floor
	progress *progress
}

// scaleCase is one measurement of the scale phase.
type scaleCase struct {
	n           int
	masq        bool
	concurrency int
}

func (c scaleCase) String() string {
	return fmt.Sprintf("N=%d ipMasq=%t c=%d", c.n, c.masq, c.concurrency)
}

// scale measures each N, for each ipMasq and concurrency, for each plugin
// set in turn and then the floor.
func (b *bench) scale() ([]scalePoint, error) {
	var points []scalePoint
	for _, masq := range b.opts.masquerade {
		for _, conc := range b.opts.concurrency {
			for _, n := range b.opts.ns {
				c := scaleCase{n: n, masq: masq, concurrency: conc}
				pt, err := b.scalePoint(c)
				if err != nil {
					return nil, err
				}
				points = append(points, pt)
			}
		}
	}
	return points, nil
}

func (b *bench) scalePoint(c scaleCase) (scalePoint, error) {
	pt := scalePoint{N: c.n, Masquerade: c.masq, Concurrency: c.concurrency, Plugins: map[string]*scaleResult{}}
	sets := b.plugins
	if b.floor != nil {
		sets = append(slices.Clone(sets), b.floor)
	}
	for i, p := range sets {
		r, err := b.scaleRun(i, p, c)
		if b.ctx.Err() != nil {
			return pt, b.ctx.Err()
		}
		if err != nil {
			// Recorded, not fatal: the other set and the other N still
			// tell something.
			b.progress.logf("%s %s: %v", p.Label, c, err)
			r = &scaleResult{Error: err.Error()}
		}
		if p == b.floor {
			pt.Floor = r
		} else {
			pt.Plugins[p.Label] = r
		}
	}
	pt.Ratios = ratios(scaleMetrics, b.plugins, func(label string) map[string]float64 { return pt.Plugins[label].Metrics })
	return pt, nil
}

// scaleRun attaches c.n containers to a fresh node with plugin set p, records
// the datapath state, and detaches them. The floor's containers get a veth
// pair each after their ADD (not timed), which their DEL deletes (timed).
func (b *bench) scaleRun(index int, p *plugin, c scaleCase) (*scaleResult, error) {
	n, floor := c.n, p == b.floor
	masqTag := map[bool]string{false: "", true: "m"}[c.masq]
	sb, err := sandbox.New(fmt.Sprintf("%sp%dn%d%sc%d-", b.prefix, index, n, masqTag, c.concurrency))
	if err != nil {
		return nil, err
	}
	defer sb.Close()
	if floor {
		if err := addFloorBridge(sb); err != nil {
			return nil, err
		}
	}
	net, err := newNetwork(sb, p, b.tmp, "scale", scaleSubnet, c.masq, false, b.opts.callTimeout)
	if err != nil {
		return nil, err
	}
	add := func(ctr *sandbox.NetNS, i int, id string) (call, error) {
		_, cl, err := net.add(b.ctx, ctr, id)
		if err == nil && floor {
			err = addFloorVeth(sb, ctr, i)
		}
		return cl, err
	}
	del := func(ctr *sandbox.NetNS, id string) (call, error) {
		cl, err := net.del(b.ctx, ctr, id)
		if err == nil && floor {
			var d time.Duration
			d, err = delFloorVeth(ctr)
			cl.Wall += d
		}
		return cl, err
	}
	m := map[string]float64{}
	res := &scaleResult{Metrics: m}
	if b.opts.preload && index == 0 {
		cmd := sb.Node.Command(b.ctx, filepath.Join(p.Dir, "bridge"), "datapath", "load", "--bpffs", sb.BPFFS)
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("bridge datapath load: %v: %s", err, out)
		}
	}

	// The first ADD on a node sets it up (the bridge; for bpfbridge, loading
	// and pinning the programs). It is reported on its own, and the
	// percentiles describe the steady state of a node already in use.
	warm, err := sb.NewContainer("warm")
	if err != nil {
		return nil, err
	}
	cold, err := add(warm, -1, "cnibench-warm")
	if err != nil {
		return nil, fmt.Errorf("first ADD: %w", err)
	}
	if _, err := del(warm, "cnibench-warm"); err != nil {
		return nil, fmt.Errorf("first DEL: %w", err)
	}
	m["cold_add_ms"] = ms(cold.Wall)
	res.ColdAddPhases = phaseMedians([]call{cold})

	ctrs := make([]*sandbox.NetNS, n)
	label := fmt.Sprintf("%s %s", c, p.Label)
	err = b.progress.count(label+": netns", n, func(i int) (err error) {
		ctrs[i], err = sb.NewContainer(fmt.Sprintf("c%d", i))
		return err
	})
	if err != nil {
		return nil, err
	}

	// A small N runs its cycle again, on the same node, until it has
	// minSamples calls of each verb: the node never holds more than N
	// containers, and a percentile at N=1 is one of many calls. The wall
	// time and the node's state are the first cycle's.
	var adds, dels []call
	for round := range (minSamples + n - 1) / n {
		id := func(i int) string { return fmt.Sprintf("cnibench-%d-%d", round, i) }
		start := time.Now()
		cycle, err := b.parallel(label+": ADD", n, c.concurrency, func(i int) (call, error) {
			return add(ctrs[i], i, id(i))
		})
		if err != nil {
			return nil, err
		}
		if round == 0 {
			wall := time.Since(start)
			m["add_rate_per_s"] = float64(n) / wall.Seconds()
			m["add_wall_ms"] = ms(wall)
			if !floor {
				state, err := nodeState(b.ctx, sb)
				if err != nil {
					return nil, err
				}
				for k, v := range state.counts() {
					m[k] = float64(v)
				}
				res.BPFMaps = state.BPFMaps
			}
		}
		adds = append(adds, cycle...)
		cycle, err = b.parallel(label+": DEL", n, c.concurrency, func(i int) (call, error) {
			return del(ctrs[i], id(i))
		})
		if err != nil {
			return nil, err
		}
		dels = append(dels, cycle...)
	}
	left, err := net.allocations()
	if err != nil {
		return nil, err
	}

	latencies(m, "add", adds)
	latencies(m, "del", dels)
	// Growth is within the first cycle, from its first tenth to its last.
	tenth := max(n/10, 1)
	m["add_growth"] = ms(sandbox.Percentile(walls(adds[n-tenth:n]), 50)) / ms(sandbox.Percentile(walls(adds[:tenth]), 50))
	m["leftover_allocations"] = float64(left)
	res.AddPhases, res.DelPhases = phaseMedians(adds), phaseMedians(dels)
	res.AddPhasesFirst, res.AddPhasesLast = phaseMedians(adds[:tenth]), phaseMedians(adds[n-tenth:n])
	return res, nil
}

// phaseMedians is the median time of each traced phase over the calls, in
// ms, nil when no call was traced. A phase a call did not run counts as 0.
func phaseMedians(calls []call) map[string]float64 {
	byPhase := map[string][]time.Duration{}
	traced := 0
	for _, c := range calls {
		if len(c.Phases) > 0 {
			traced++
		}
		for _, p := range c.Phases {
			byPhase[p.Name] = append(byPhase[p.Name], p.Duration)
		}
	}
	if traced == 0 {
		return nil
	}
	out := map[string]float64{}
	for name, ds := range byPhase {
		for len(ds) < traced {
			ds = append(ds, 0)
		}
		out[name] = ms(sandbox.Percentile(ds, 50))
	}
	return out
}

// latencies records the percentiles of the calls' wall time and their mean
// CPU time and largest peak memory under the given verb.
func latencies(m map[string]float64, verb string, calls []call) {
	w := walls(calls)
	for _, p := range []float64{50, 90, 99} {
		m[fmt.Sprintf("%s_p%.0f_ms", verb, p)] = ms(sandbox.Percentile(w, p))
	}
	m[verb+"_max_ms"] = ms(sandbox.Percentile(w, 100))
	var cpu time.Duration
	var rss int64
	for _, c := range calls {
		cpu += c.CPU
		rss = max(rss, c.MaxRSS)
	}
	m[verb+"_cpu_ms"] = ms(cpu) / float64(len(calls))
	m[verb+"_maxrss_kib"] = float64(rss)
}

func walls(calls []call) []time.Duration {
	w := make([]time.Duration, len(calls))
	for i, c := range calls {
		w[i] = c.Wall
	}
	return w
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// parallel runs fn for 0…n-1 on concurrency workers, as a runtime
// starting that many pods at once would, and returns the calls in index
// order. It stops at the first error.
func (b *bench) parallel(label string, n, concurrency int, fn func(i int) (call, error)) ([]call, error) {
	calls := make([]call, n)
	ctx, cancel := context.WithCancelCause(b.ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	var done atomic.Int64
	stop := b.progress.start(label, func() float64 { return float64(done.Load()) / float64(n) })
	for range min(concurrency, n) {
		wg.Go(func() {
			for i := range next {
				c, err := fn(i)
				if err != nil {
					cancel(fmt.Errorf("%s #%d: %w", label, i, err))
					return
				}
				calls[i] = c
				done.Add(1)
			}
		})
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	stop()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	return calls, nil
}

// allocations counts the addresses still allocated in the IPAM store.
func (n *network) allocations() (int, error) {
	entries, err := os.ReadDir(filepath.Join(n.dataDir, n.name))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	count := 0
	for _, e := range entries {
		if _, perr := netip.ParseAddr(e.Name()); perr == nil {
			count++
		}
	}
	return count, err
}
