// Command cnibench is bpfbridge's load tool: it drives a CNI bridge plugin
// the way a container runtime does, on throwaway network namespaces, and
// measures what the plugin costs, alongside a second plugin directory (the
// reference plugins) in the same run.
//
// For each N it attaches N containers to a fresh sandbox node through
// libcni, with a configurable concurrency, and detaches them again,
// recording ADD and DEL latency percentiles, the plugin's CPU time and peak
// memory per call, and the size of the node's datapath state (iptables and
// nftables rules, BPF map entries). It then measures traffic between
// containers and to the outside world (TCP stream throughput, TCP
// request/response latency, TCP connection rate, small-packet UDP rate),
// without and with masquerade, and from the outside to a container's
// published port (with ADD's cost for 10 port mappings). Beside the plugins
// every traffic phase also runs on a bare veth pair between two namespaces,
// the physical limit, and each figure is divided by the pair's too. The
// plugin sets and the pair take turns at every N and every traffic phase,
// so that drift on the machine hits all alike.
//
// Results go to <out>/cnibench.md, cnibench.json and cnibench.svg. It needs
// root; everything it creates lives in namespaces named bpfb-cb…, a sandbox
// bpffs and temporary directories, all removed on exit and on SIGINT or
// SIGTERM.
//
// Usage:
//
//	cnibench --plugins bin --compare bin/reference [-n 1,50,200,500] [--ipmasq false,true] [--concurrency 1,16] [-o test/results]
//
// Every plugin call runs with BPFBRIDGE_TRACE=1: bpfbridge's phase trace
// (package trace) tells where its time goes, reported per N. The floor
// (--floor) is measured in the same run and printed beside the figures.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// options are the command-line settings.
type options struct {
	plugins, compare     string // plugin directories (CNI_PATH)
	label, compareLabel  string // their names in the output
	ns                   []int  // container counts, ascending
	concurrency          []int  // concurrent ADDs (and DELs), one scale run each
	masquerade           []bool // ipMasq of the scale config, one scale run each
	floor                bool   // measure the floor beside the plugins
	traffic              bool   // run the traffic phases
	preload              bool   // run `bridge datapath load` before the first ADD of the --plugins set
	phase                time.Duration
	rounds               int // turns each traffic phase is cut into
	outDir               string
	iperf3               bool
	publishedAdds        int // ADDs with port mappings and without, each, in the published-ports run
	callTimeout, maxTime time.Duration
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("cnibench", flag.ContinueOnError)
	fs.StringVar(&o.plugins, "plugins", "bin", "directory holding the plugins under test (bridge, host-local)")
	fs.StringVar(&o.compare, "compare", "", "directory of a second set of plugins to run side by side, e.g. bin/reference")
	fs.StringVar(&o.label, "label", "bpfbridge", "name of the --plugins set in the output")
	fs.StringVar(&o.compareLabel, "compare-label", "reference", "name of the --compare set in the output")
	nList := fs.String("n", "1,50,200,500", "comma-separated container counts")
	concList := fs.String("concurrency", "1", "comma-separated ADDs (and DELs) in flight at once, as a runtime starting pods in parallel; the scale phase runs once per value")
	masqList := fs.String("ipmasq", "false", "comma-separated ipMasq values of the scale config (false,true): the scale phase runs once per value")
	fs.BoolVar(&o.floor, "floor", true, "measure the floor beside each figure: libcni running an empty plugin (built with go into a temporary directory), and for DEL deleting a veth pair")
	fs.BoolVar(&o.traffic, "traffic", true, "run the traffic phases after the scale phase")
	fs.BoolVar(&o.preload, "preload", false, "run `bridge datapath load` of the --plugins set on each fresh node before its first ADD, as an install would: cold_add_ms is then the first ADD of an installed node")
	fs.DurationVar(&o.phase, "duration", 5*time.Second, "length of each traffic phase")
	fs.IntVar(&o.rounds, "rounds", 5, "rounds each traffic phase is cut into, every set and the bare pair taking a turn in each; a figure is the median of its rounds")
	fs.StringVar(&o.outDir, "o", "test/results", "output directory for cnibench.{md,json,svg}")
	fs.BoolVar(&o.iperf3, "iperf3", false, "cross-check the container-to-container TCP stream with iperf3")
	fs.IntVar(&o.publishedAdds, "published-adds", 20, fmt.Sprintf("ADDs with %d port mappings, and as many without, timed in the published-ports run", publishedMappings))
	fs.DurationVar(&o.callTimeout, "call-timeout", 30*time.Second, "limit for one plugin call")
	fs.DurationVar(&o.maxTime, "max-time", 30*time.Minute, "limit for the whole run")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for f := range strings.SplitSeq(*nList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		// The scale config's /20 holds 4093 containers after the gateway.
		if err != nil || n < 1 || n > maxContainers {
			return o, fmt.Errorf("-n: %q is not a count between 1 and %d", f, maxContainers)
		}
		if len(o.ns) > 0 && n <= o.ns[len(o.ns)-1] {
			return o, fmt.Errorf("-n: counts must ascend, %d follows %d", n, o.ns[len(o.ns)-1])
		}
		o.ns = append(o.ns, n)
	}
	for f := range strings.SplitSeq(*concList, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || c < 1 {
			return o, fmt.Errorf("-concurrency: %q is not a positive count", f)
		}
		o.concurrency = append(o.concurrency, c)
	}
	for f := range strings.SplitSeq(*masqList, ",") {
		m, err := strconv.ParseBool(strings.TrimSpace(f))
		if err != nil {
			return o, fmt.Errorf("-ipmasq: %q is not true or false", f)
		}
		o.masquerade = append(o.masquerade, m)
	}
	if o.phase <= 0 || o.callTimeout <= 0 || o.maxTime <= 0 || o.publishedAdds <= 0 || o.rounds <= 0 {
		return o, errors.New("-duration, -rounds, -call-timeout, -max-time and -published-adds must be positive")
	}
	if o.compare != "" && o.label == o.compareLabel {
		return o, errors.New("-label and -compare-label must differ")
	}
	return o, nil
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cnibench:", err)
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "cnibench:", err)
		os.Exit(1)
	}
}

func run(o options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root: it creates network namespaces (sudo)")
	}
	plugins, err := findPlugins(o)
	if err != nil {
		return err
	}
	// Cancelled by SIGINT or SIGTERM; the deferred cleanup below then runs
	// before the process exits, whatever phase was in progress.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.maxTime)
	defer cancel()

	tmp, err := os.MkdirTemp("", "cnibench-")
	if err != nil {
		return err
	}
	// One prefix per run: every sandbox of the run starts with it, so one
	// RemoveAll takes them all, namespaces and bpffs mounts alike, and no
	// other run's namespaces.
	prefix := fmt.Sprintf("%scb%06x-", sandbox.NamePrefix, rand.IntN(1<<24))
	defer func() {
		err = errors.Join(err, sandbox.RemoveAll(prefix), os.RemoveAll(tmp))
		if ctx.Err() != nil && err != nil {
			err = fmt.Errorf("interrupted (%w); cleaned up", err)
		}
	}()

	b := &bench{opts: o, ctx: ctx, prefix: prefix, tmp: tmp, plugins: plugins, progress: newProgress(os.Stderr)}
	if o.floor {
		if b.floor, err = buildFloor(ctx, tmp); err != nil {
			return err
		}
	}
	rep := newReport(o, plugins, prefix)
	started := time.Now()
	if rep.Scale, err = b.scale(); err != nil {
		return err
	}
	if o.traffic {
		if rep.Traffic, rep.Published, rep.Iperf3, err = b.traffic(); err != nil {
			return err
		}
	}
	rep.WallSeconds = time.Since(started).Seconds()
	files, err := rep.write(o.outDir)
	if err != nil {
		return err
	}
	os.Stdout.WriteString(rep.markdown())
	fmt.Fprintf(os.Stderr, "cnibench: wrote %s in %.0fs\n", strings.Join(files, ", "), rep.WallSeconds)
	return nil
}

// findPlugins checks that each plugin directory has a bridge plugin and
// returns the plugin sets in the order they take turns.
func findPlugins(o options) ([]*plugin, error) {
	sets := []*plugin{{Label: o.label, Dir: o.plugins}}
	if o.compare != "" {
		sets = append(sets, &plugin{Label: o.compareLabel, Dir: o.compare})
	}
	for _, p := range sets {
		dir, err := filepath.Abs(p.Dir)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(filepath.Join(dir, "bridge")); err != nil {
			return nil, fmt.Errorf("%s plugins: %w (run `make build tools`)", p.Label, err)
		}
		p.Dir = dir
	}
	return sets, nil
}
