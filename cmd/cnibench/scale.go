package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
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
)

// bench is one cnibench run.
type bench struct {
	opts     options
	ctx      context.Context
	prefix   string // of every namespace of the run
	tmp      string // IPAM stores and result caches
	plugins  []*plugin
	progress *progress
}

// scale measures each N for each plugin set in turn.
func (b *bench) scale() ([]scalePoint, error) {
	var points []scalePoint
	for _, n := range b.opts.ns {
		pt := scalePoint{N: n, Plugins: map[string]*scaleResult{}}
		for i, p := range b.plugins {
			r, err := b.scaleRun(i, p, n)
			if b.ctx.Err() != nil {
				return nil, b.ctx.Err()
			}
			if err != nil {
				// Recorded, not fatal: the other set and the other N still
				// tell something.
				b.progress.logf("%s N=%d: %v", p.Label, n, err)
				r = &scaleResult{Error: err.Error()}
			}
			pt.Plugins[p.Label] = r
		}
		pt.Ratios = ratios(scaleMetrics, b.plugins, func(label string) map[string]float64 { return pt.Plugins[label].Metrics })
		points = append(points, pt)
	}
	return points, nil
}

// scaleRun attaches n containers to a fresh node with plugin set p, records
// the datapath state, and detaches them.
func (b *bench) scaleRun(index int, p *plugin, n int) (*scaleResult, error) {
	sb, err := sandbox.New(fmt.Sprintf("%sp%dn%d-", b.prefix, index, n))
	if err != nil {
		return nil, err
	}
	defer sb.Close()
	net, err := newNetwork(sb, p, b.tmp, "scale", scaleSubnet, false, b.opts.callTimeout)
	if err != nil {
		return nil, err
	}
	m := map[string]float64{}

	// The first ADD on a node sets it up (the bridge; for bpfbridge, loading
	// and pinning the programs). It is reported on its own, and the
	// percentiles describe the steady state of a node already in use.
	warm, err := sb.NewContainer("warm")
	if err != nil {
		return nil, err
	}
	_, cold, err := net.add(b.ctx, warm, "cnibench-warm")
	if err != nil {
		return nil, fmt.Errorf("first ADD: %w", err)
	}
	if _, err := net.del(b.ctx, warm, "cnibench-warm"); err != nil {
		return nil, fmt.Errorf("first DEL: %w", err)
	}
	m["cold_add_ms"] = ms(cold.Wall)

	ctrs := make([]*sandbox.NetNS, n)
	label := fmt.Sprintf("N=%d %s", n, p.Label)
	err = b.progress.count(label+": netns", n, func(i int) (err error) {
		ctrs[i], err = sb.NewContainer(fmt.Sprintf("c%d", i))
		return err
	})
	if err != nil {
		return nil, err
	}

	id := func(i int) string { return fmt.Sprintf("cnibench-%d", i) }
	start := time.Now()
	adds, err := b.parallel(label+": ADD", n, func(i int) (call, error) {
		_, c, err := net.add(b.ctx, ctrs[i], id(i))
		return c, err
	})
	if err != nil {
		return nil, err
	}
	m["add_rate_per_s"] = float64(n) / time.Since(start).Seconds()
	state, err := nodeState(b.ctx, sb)
	if err != nil {
		return nil, err
	}
	dels, err := b.parallel(label+": DEL", n, func(i int) (call, error) {
		return net.del(b.ctx, ctrs[i], id(i))
	})
	if err != nil {
		return nil, err
	}
	left, err := net.allocations()
	if err != nil {
		return nil, err
	}

	latencies(m, "add", adds)
	latencies(m, "del", dels)
	tenth := max(n/10, 1)
	m["add_growth"] = ms(sandbox.Percentile(walls(adds[n-tenth:]), 50)) / ms(sandbox.Percentile(walls(adds[:tenth]), 50))
	for k, v := range state.counts() {
		m[k] = float64(v)
	}
	m["leftover_allocations"] = float64(left)
	return &scaleResult{Metrics: m, BPFMaps: state.BPFMaps}, nil
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

// parallel runs fn for 0…n-1 on opts.concurrency workers, as a runtime
// starting that many pods at once would, and returns the calls in index
// order. It stops at the first error.
func (b *bench) parallel(label string, n int, fn func(i int) (call, error)) ([]call, error) {
	calls := make([]call, n)
	ctx, cancel := context.WithCancelCause(b.ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	var done atomic.Int64
	stop := b.progress.start(label, func() float64 { return float64(done.Load()) / float64(n) })
	for range min(b.opts.concurrency, n) {
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
