package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

const (
	// trafficSubnet is the traffic network's; External learns a route to
	// it when there is no masquerade.
	trafficSubnet = "10.201.0.0/24"
	// udpPayload is the size of the small-packet UDP phase's datagrams.
	udpPayload = 64
	// maxExchanges bounds the request/response phase by count as well as
	// by time.
	maxExchanges = 1 << 22
	// iperf3Attempts bounds the wait for iperf3's server to listen: the
	// client is retried every 100 ms while the connection is refused.
	iperf3Attempts = 50
	// crossCheckRounds is how many times, at most, cnibench's stream and
	// iperf3 take turns in the cross-check.
	crossCheckRounds = 3
)

// trafficEnv is one plugin set's traffic node: two containers, c0 and c1,
// on one network, and the External namespace beyond the node's uplink.
type trafficEnv struct {
	plugin *plugin
	sb     *sandbox.Sandbox
	net    *network
	ctrs   [2]*sandbox.NetNS
	ips    [2]netip.Addr
	// failed is a figure for every phase when the containers could not be
	// attached: unsupported when the plugin rejects the config as such
	// (CNI error 2, bpfbridge's answer to ipMasq until masquerade lands).
	failed *figure
}

// phase is one traffic measurement; it fills the figures it names.
type phase struct {
	name    string
	figures []string
	run     func(ctx context.Context, e *trafficEnv, d time.Duration) (map[string]float64, error)
	// span is how long run takes for a phase length d, if not d.
	span func(d time.Duration) time.Duration
}

func (b *bench) phases(masq bool) []phase {
	ps := []phase{
		{"TCP stream container→container", []string{"tcp_stream_c2c_gbps"}, func(ctx context.Context, e *trafficEnv, d time.Duration) (map[string]float64, error) {
			bps, err := sandbox.TCPStream(ctx, e.ctrs[0], e.ctrs[1], e.ips[1], d)
			return map[string]float64{"tcp_stream_c2c_gbps": bps / 1e9}, err
		}, nil},
	}
	if b.opts.iperf3 && !masq {
		// Right after the stream phase, on the same containers.
		ps = append(ps, phase{"iperf3 cross-check container→container", []string{"iperf3_stream_c2c_gbps", "paired_stream_c2c_gbps"}, func(ctx context.Context, e *trafficEnv, d time.Duration) (map[string]float64, error) {
			ours, theirs, err := crossCheck(ctx, e.ctrs[0], e.ctrs[1], e.ips[1], d)
			return map[string]float64{"iperf3_stream_c2c_gbps": theirs / 1e9, "paired_stream_c2c_gbps": ours / 1e9}, err
		}, func(d time.Duration) time.Duration {
			rounds, round := crossCheckPlan(d)
			return 2 * time.Duration(rounds) * round
		}})
	}
	return append(ps,
		phase{"TCP stream container→external", []string{"tcp_stream_ext_gbps"}, func(ctx context.Context, e *trafficEnv, d time.Duration) (map[string]float64, error) {
			bps, err := sandbox.TCPStream(ctx, e.ctrs[0], e.sb.External, e.sb.Internet4, d)
			return map[string]float64{"tcp_stream_ext_gbps": bps / 1e9}, err
		}, nil},
		rrPhase("TCP request/response container→container", "tcp_rr_c2c", func(e *trafficEnv) (*sandbox.NetNS, netip.Addr) {
			return e.ctrs[1], e.ips[1]
		}),
		rrPhase("TCP request/response container→external", "tcp_rr_ext", func(e *trafficEnv) (*sandbox.NetNS, netip.Addr) {
			return e.sb.External, e.sb.Internet4
		}),
		phase{"TCP connections container→external", []string{"tcp_crr_ext_per_s"}, func(ctx context.Context, e *trafficEnv, d time.Duration) (map[string]float64, error) {
			rate, err := sandbox.TCPConnectRate(ctx, e.ctrs[0], e.sb.External, e.sb.Internet4, d)
			return map[string]float64{"tcp_crr_ext_per_s": rate}, err
		}, nil},
		phase{"UDP 64-byte container→container", []string{"udp_c2c_pps"}, func(ctx context.Context, e *trafficEnv, d time.Duration) (map[string]float64, error) {
			pps, _, err := sandbox.UDPRate(ctx, e.ctrs[0], e.ctrs[1], e.ips[1], udpPayload, d)
			return map[string]float64{"udp_c2c_pps": pps}, err
		}, nil},
	)
}

// rrPhase measures 1-byte TCP request/response round trips from the first
// container to the server dst picks, as metrics <key>_p50_us and _p99_us.
func rrPhase(name, key string, dst func(*trafficEnv) (*sandbox.NetNS, netip.Addr)) phase {
	return phase{name, []string{key + "_p50_us", key + "_p99_us"}, func(ctx context.Context, e *trafficEnv, d time.Duration) (map[string]float64, error) {
		ns, ip := dst(e)
		rtts, err := sandbox.TCPRequestResponse(ctx, e.ctrs[0], ns, ip, d, maxExchanges)
		if err == nil && len(rtts) == 0 {
			err = errors.New("no exchange completed")
		}
		us := func(p float64) float64 { return float64(sandbox.Percentile(rtts, p)) / float64(time.Microsecond) }
		return map[string]float64{key + "_p50_us": us(50), key + "_p99_us": us(99)}, err
	}, nil}
}

// traffic runs every phase without and with masquerade, the plugin sets
// taking turns at each phase.
func (b *bench) traffic() ([]trafficPoint, map[string]*iperf3Check, error) {
	var points []trafficPoint
	for _, masq := range []bool{false, true} {
		pt, err := b.trafficRun(masq)
		if err != nil {
			return nil, nil, err
		}
		points = append(points, pt)
	}
	if !b.opts.iperf3 {
		return points, nil, nil
	}
	checks := map[string]*iperf3Check{}
	for label, figs := range points[0].Plugins {
		ours, theirs := figs["paired_stream_c2c_gbps"].Value, figs["iperf3_stream_c2c_gbps"].Value
		if ours != nil && theirs != nil {
			checks[label] = &iperf3Check{CnibenchGbps: *ours, Iperf3Gbps: *theirs, DifferencePct: 100 * (*ours - *theirs) / *theirs}
		}
	}
	return points, checks, nil
}

func (b *bench) trafficRun(masq bool) (pt trafficPoint, err error) {
	pt = trafficPoint{Masquerade: masq, Plugins: map[string]map[string]figure{}}
	var envs []*trafficEnv
	defer func() {
		for _, e := range envs {
			err = errors.Join(err, e.close(b.ctx))
		}
	}()
	for i, p := range b.plugins {
		e, err := b.newTrafficEnv(i, p, masq)
		if err != nil {
			return pt, err
		}
		envs = append(envs, e)
		pt.Plugins[p.Label] = map[string]figure{}
	}
	mode := map[bool]string{false: "no masquerade", true: "masquerade"}[masq]
	for _, ph := range b.phases(masq) {
		for _, e := range envs {
			figs := pt.Plugins[e.plugin.Label]
			if e.failed != nil {
				// Still run no phase, but name every figure it would have
				// had, so that the JSON has the same shape for both sets.
				for _, name := range ph.figures {
					figs[name] = *e.failed
				}
				continue
			}
			span := b.opts.phase
			if ph.span != nil {
				span = ph.span(span)
			}
			stop := b.progress.timed(fmt.Sprintf("%s, %s: %s", e.plugin.Label, mode, ph.name), span)
			values, err := ph.run(b.ctx, e, b.opts.phase)
			stop()
			if b.ctx.Err() != nil {
				return pt, b.ctx.Err()
			}
			for name, v := range values {
				if err != nil {
					figs[name] = figure{Error: err.Error()}
				} else {
					figs[name] = figure{Value: &v}
				}
			}
			if err != nil {
				b.progress.logf("%s, %s: %s: %v", e.plugin.Label, mode, ph.name, err)
			}
		}
	}
	pt.Ratios = ratios(trafficMetrics, b.plugins, func(label string) map[string]float64 { return values(pt.Plugins[label]) })
	return pt, nil
}

// newTrafficEnv builds plugin set p's traffic node and attaches c0 and c1.
// A plugin's refusal is recorded in the env; only a broken sandbox is an error.
func (b *bench) newTrafficEnv(index int, p *plugin, masq bool) (*trafficEnv, error) {
	sb, err := sandbox.New(fmt.Sprintf("%sp%dt%t-", b.prefix, index, masq))
	if err != nil {
		return nil, err
	}
	e := &trafficEnv{plugin: p, sb: sb}
	if e.net, err = newNetwork(sb, p, b.tmp, "traffic", trafficSubnet, masq, b.opts.callTimeout); err != nil {
		return e, errors.Join(err, sb.Close())
	}
	for i := range e.ctrs {
		if e.ctrs[i], err = sb.NewContainer(fmt.Sprintf("c%d", i)); err != nil {
			return e, errors.Join(err, sb.Close())
		}
	}
	for i := range e.ctrs {
		if e.ips[i], _, err = e.net.add(b.ctx, e.ctrs[i], fmt.Sprintf("cnibench-t%d", i)); err != nil {
			e.failed = &figure{Unsupported: cniCode(err) == 2, Error: err.Error()}
			b.progress.logf("%s, ipMasq %t: ADD failed, phases skipped: %v", p.Label, masq, err)
			return e, nil
		}
	}
	if !masq {
		// Without NAT, External must route the containers' subnet back.
		err = sb.AddExternalRoute(netip.MustParsePrefix(trafficSubnet))
	}
	return e, err
}

// close detaches the containers and removes the node.
func (e *trafficEnv) close(ctx context.Context) error {
	var errs []error
	for i, c := range e.ctrs {
		if c != nil && e.ips[i].IsValid() {
			_, err := e.net.del(ctx, c, fmt.Sprintf("cnibench-t%d", i))
			errs = append(errs, err)
		}
	}
	return errors.Join(append(errs, e.sb.Close())...)
}

// crossCheck measures the TCP stream from client to addr inside server with
// sandbox.TCPStream and with iperf3 in turns, for rounds of the same length
// that add up to about d each, and returns the median of each. Taking turns
// cancels drift on a shared machine, which a single run of each does not.
func crossCheck(ctx context.Context, client, server *sandbox.NetNS, addr netip.Addr, d time.Duration) (ours, theirs float64, err error) {
	rounds, round := crossCheckPlan(d)
	var o, t []float64
	for range rounds {
		bps, err := sandbox.TCPStream(ctx, client, server, addr, round)
		if err != nil {
			return 0, 0, err
		}
		o = append(o, bps)
		if bps, err = iperf3Stream(ctx, client, server, addr, round); err != nil {
			return 0, 0, err
		}
		t = append(t, bps)
	}
	return median(o), median(t), nil
}

// crossCheckPlan splits d into rounds of whole seconds, which is what
// iperf3 counts in.
func crossCheckPlan(d time.Duration) (rounds int, round time.Duration) {
	rounds = min(crossCheckRounds, max(int(d/time.Second), 1))
	return rounds, max(time.Duration(float64(d)/float64(rounds)).Round(time.Second), time.Second)
}

func median(v []float64) float64 {
	slices.Sort(v)
	return v[len(v)/2]
}

// iperf3Stream runs `iperf3 -s` inside server, bound to addr, and
// `iperf3 -c addr` inside client for d, a whole number of seconds, and
// returns the throughput iperf3's receiver reports, in bits per second.
func iperf3Stream(ctx context.Context, client, server *sandbox.NetNS, addr netip.Addr, d time.Duration) (float64, error) {
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	srv := server.Command(sctx, "iperf3", "--server", "--one-off", "--bind", addr.String())
	if err := srv.Start(); err != nil {
		return 0, fmt.Errorf("iperf3 server: %w", err)
	}
	defer func() { stop(); srv.Wait() }()
	secs := strconv.Itoa(int(d / time.Second))
	for range iperf3Attempts {
		out, err := client.Command(ctx, "iperf3", "--client", addr.String(), "--time", secs, "--json").Output()
		var res struct {
			Error string `json:"error"`
			End   struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if jerr := json.Unmarshal(out, &res); jerr != nil {
			return 0, fmt.Errorf("iperf3 client: %w (%v)", jerr, err)
		}
		if res.Error == "" && err == nil {
			return res.End.SumReceived.BitsPerSecond, nil
		}
		if !strings.Contains(res.Error, "refused") || ctx.Err() != nil {
			return 0, fmt.Errorf("iperf3 client: %s (%v)", res.Error, err)
		}
		time.Sleep(100 * time.Millisecond) // the server is not listening yet
	}
	return 0, errors.New("iperf3 server did not listen")
}
