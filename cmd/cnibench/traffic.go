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

// target is one path a phase measures: from client to a server inside
// server listening at listen (port 0: any free port), which the client
// reaches at dial; a zero dial is the listener's own address, another one a
// translation on the way (a published port).
type target struct {
	client, server *sandbox.NetNS
	listen, dial   netip.AddrPort
}

// to is the target of a server listening at addr inside server, reached
// directly from client.
func to(client, server *sandbox.NetNS, addr netip.Addr) target {
	return target{client: client, server: server, listen: netip.AddrPortFrom(addr, 0)}
}

// trafficEnv is one set of endpoints the phases measure: a plugin set's
// traffic node (two containers, c0 and c1, on one network, and the External
// namespace beyond the node's uplink), or the bare veth pair.
type trafficEnv struct {
	label  string
	plugin *plugin // nil for the bare pair
	// c2c is container to container, ext container to the outside, pub
	// the outside to a container's published port (the published-ports
	// run); for the bare pair each is the pair itself.
	c2c, ext, pub target
	// failed is a figure for every phase when the containers could not be
	// attached: unsupported when the plugin rejects the config as such
	// (CNI error 2), or ignores the port mappings it was given.
	failed *figure
	close  func(ctx context.Context) error
	// net and sb are the plugin set's network and node (nil for the bare
	// pair), for the phases that call the plugin.
	net *network
	sb  *sandbox.Sandbox
}

// phase is one traffic measurement; it fills the figures it names.
type phase struct {
	name    string
	figures []string
	run     func(ctx context.Context, e *trafficEnv, d time.Duration) (map[string]float64, error)
	// span is how long run takes for a phase length d, if not d.
	span func(d time.Duration) time.Duration
	// pluginsOnly phases measure the plugin, not a path: the bare pair
	// skips them.
	pluginsOnly bool
	// whole phases run once, for the whole phase length, instead of in
	// rounds (-rounds): they take their own turns (the iperf3 cross-check)
	// or time calls rather than a path.
	whole bool
}

func (b *bench) phases(masq bool) []phase {
	c2c := func(e *trafficEnv) target { return e.c2c }
	ext := func(e *trafficEnv) target { return e.ext }
	ps := []phase{streamPhase("TCP stream container→container", "tcp_stream_c2c_gbps", c2c)}
	if b.opts.iperf3 && !masq {
		// Right after the stream phase, on the same containers.
		ps = append(ps, phase{name: "iperf3 cross-check container→container", figures: []string{"iperf3_stream_c2c_gbps", "paired_stream_c2c_gbps"},
			run: func(ctx context.Context, e *trafficEnv, d time.Duration) (map[string]float64, error) {
				t := e.c2c
				ours, theirs, err := crossCheck(ctx, t.client, t.server, t.listen.Addr(), d)
				return map[string]float64{"iperf3_stream_c2c_gbps": theirs / 1e9, "paired_stream_c2c_gbps": ours / 1e9}, err
			}, span: func(d time.Duration) time.Duration {
				rounds, round := crossCheckPlan(d)
				return 2 * time.Duration(rounds) * round
			}, whole: true})
	}
	return append(ps,
		streamPhase("TCP stream container→external", "tcp_stream_ext_gbps", ext),
		rrPhase("TCP request/response container→container", "tcp_rr_c2c", c2c),
		rrPhase("TCP request/response container→external", "tcp_rr_ext", ext),
		crrPhase("TCP connections container→container", "tcp_crr_c2c_per_s", c2c),
		crrPhase("TCP connections container→external", "tcp_crr_ext_per_s", ext),
		phase{name: "UDP 64-byte container→container", figures: []string{"udp_c2c_pps"},
			run: func(ctx context.Context, e *trafficEnv, d time.Duration) (map[string]float64, error) {
				t := e.c2c
				pps, _, err := sandbox.UDPRate(ctx, t.client, t.server, t.listen.Addr(), udpPayload, d)
				return map[string]float64{"udp_c2c_pps": pps}, err
			}},
	)
}

// streamPhase measures one TCP stream to the target pick chooses, as metric
// key.
func streamPhase(name, key string, pick func(*trafficEnv) target) phase {
	return phase{name: name, figures: []string{key}, run: func(ctx context.Context, e *trafficEnv, d time.Duration) (map[string]float64, error) {
		t := pick(e)
		bps, err := sandbox.TCPStream(ctx, t.client, t.server, t.listen.Addr(), d)
		return map[string]float64{key: bps / 1e9}, err
	}}
}

// rrPhase measures 1-byte TCP request/response round trips to the target
// pick chooses, as metrics <key>_p50_us and _p99_us.
func rrPhase(name, key string, pick func(*trafficEnv) target) phase {
	return phase{name: name, figures: []string{key + "_p50_us", key + "_p99_us"}, run: func(ctx context.Context, e *trafficEnv, d time.Duration) (map[string]float64, error) {
		t := pick(e)
		rtts, err := sandbox.TCPRequestResponseAt(ctx, t.client, t.server, t.listen, t.dial, d, maxExchanges)
		if err == nil && len(rtts) == 0 {
			err = errors.New("no exchange completed")
		}
		us := func(p float64) float64 { return float64(sandbox.Percentile(rtts, p)) / float64(time.Microsecond) }
		return map[string]float64{key + "_p50_us": us(50), key + "_p99_us": us(99)}, err
	}}
}

// crrPhase measures TCP connect+close per second to the target pick
// chooses, as metric key.
func crrPhase(name, key string, pick func(*trafficEnv) target) phase {
	return phase{name: name, figures: []string{key}, run: func(ctx context.Context, e *trafficEnv, d time.Duration) (map[string]float64, error) {
		t := pick(e)
		rate, err := sandbox.TCPConnectRateAt(ctx, t.client, t.server, t.listen, t.dial, d)
		return map[string]float64{key: rate}, err
	}}
}

// traffic runs every phase without and with masquerade, then the published
// ports phases, the plugin sets and the bare veth pair taking turns at each
// phase.
func (b *bench) traffic() (points []trafficPoint, published *trafficPoint, checks map[string]*iperf3Check, err error) {
	for _, masq := range []bool{false, true} {
		pt, err := b.trafficRun(masq, false, b.phases(masq), trafficMetrics)
		if err != nil {
			return nil, nil, nil, err
		}
		points = append(points, pt)
	}
	pub, err := b.trafficRun(publishedMasquerade, true, b.publishedPhases(), publishedMetrics)
	if err != nil {
		return nil, nil, nil, err
	}
	if !b.opts.iperf3 {
		return points, &pub, nil, nil
	}
	checks = map[string]*iperf3Check{}
	for label, figs := range points[0].Plugins {
		ours, theirs := figs["paired_stream_c2c_gbps"].Value, figs["iperf3_stream_c2c_gbps"].Value
		if ours != nil && theirs != nil {
			checks[label] = &iperf3Check{CnibenchGbps: *ours, Iperf3Gbps: *theirs, DifferencePct: 100 * (*ours - *theirs) / *theirs}
		}
	}
	return points, &pub, checks, nil
}

// trafficRun builds each plugin set's node (with published ports if
// published) and the bare pair, runs the phases on each in turn, and
// divides the figures of metrics.
func (b *bench) trafficRun(masq, published bool, phases []phase, metrics []metricInfo) (pt trafficPoint, err error) {
	pt = trafficPoint{Masquerade: masq, Plugins: map[string]map[string]figure{}, Bare: map[string]figure{}}
	var envs []*trafficEnv
	defer func() {
		for _, e := range envs {
			err = errors.Join(err, e.close(b.ctx))
		}
	}()
	tag := fmt.Sprintf("t%t", masq)
	if published {
		tag = "pub"
	}
	for i, p := range b.plugins {
		e, err := b.newTrafficEnv(i, p, tag, masq, published)
		if err != nil {
			return pt, err
		}
		envs = append(envs, e)
		pt.Plugins[p.Label] = map[string]figure{}
	}
	bare, err := newBareEnv(b.prefix + "bare" + tag + "-")
	if err != nil {
		return pt, err
	}
	envs = append(envs, bare)
	mode := map[bool]string{false: "ipMasq false", true: "ipMasq true"}[masq]
	if published {
		mode = "published ports"
	}
	pt.Run = mode
	for _, ph := range phases {
		if err := b.runPhase(ph, mode, envs, pt); err != nil {
			return pt, err
		}
	}
	pt.Ratios = ratios(metrics, b.plugins, func(label string) map[string]float64 { return values(pt.Plugins[label]) })
	pt.BareRatios = map[string]map[string]*float64{}
	for _, p := range b.plugins {
		pt.BareRatios[p.Label] = divide(metrics, values(pt.Plugins[p.Label]), values(pt.Bare))
	}
	return pt, nil
}

// runPhase runs ph on every env in turn, in b.opts.rounds rounds that add
// up to the phase length (one for a whole phase), each round starting with
// the next env, and records each figure as the median of its rounds in pt:
// short turns spread a shared machine's drift over every set alike, where
// one long turn each lets it fall on whichever set runs at the time. A
// failed round fails the env's figures of the phase, and its remaining
// rounds are skipped. Only the context's end is an error.
func (b *bench) runPhase(ph phase, mode string, envs []*trafficEnv, pt trafficPoint) error {
	rounds := b.opts.rounds
	if ph.whole {
		rounds = 1
	}
	length := b.opts.phase / time.Duration(rounds)
	span := length
	if ph.span != nil {
		span = ph.span(length)
	}
	samples := make([]map[string][]float64, len(envs))
	failed := make([]error, len(envs))
	for round := range rounds {
		for k := range envs {
			// Each round starts with the next set: the order counts
			// (two builds measured 0.84x and 1.09x each other's new
			// connections through masquerade, as one or the other ran
			// first).
			i := (k + round) % len(envs)
			e := envs[i]
			if failed[i] != nil || e.failed != nil || (e.plugin == nil && ph.pluginsOnly) {
				continue
			}
			label := fmt.Sprintf("%s, %s: %s", e.label, mode, ph.name)
			if rounds > 1 {
				label += fmt.Sprintf(" (round %d/%d)", round+1, rounds)
			}
			stop := b.progress.timed(label, span)
			values, err := ph.run(b.ctx, e, length)
			stop()
			if b.ctx.Err() != nil {
				return b.ctx.Err()
			}
			if err != nil {
				failed[i] = err
				b.progress.logf("%s: %v", label, err)
				continue
			}
			if samples[i] == nil {
				samples[i] = map[string][]float64{}
			}
			for name, v := range values {
				samples[i][name] = append(samples[i][name], v)
			}
		}
	}
	for i, e := range envs {
		figs := pt.Bare
		if e.plugin != nil {
			figs = pt.Plugins[e.plugin.Label]
		} else if ph.pluginsOnly {
			continue
		}
		for _, name := range ph.figures {
			switch {
			case e.failed != nil:
				// No phase ran, but every figure it would have had is
				// named, so that the JSON has the same shape for both sets.
				figs[name] = *e.failed
			case failed[i] != nil:
				figs[name] = figure{Error: failed[i].Error()}
			case len(samples[i][name]) > 0:
				v := median(samples[i][name])
				figs[name] = figure{Value: &v}
			}
		}
	}
	return nil
}

// newTrafficEnv builds plugin set p's traffic node and attaches c0 and c1
// (with published, c0 alone, publishing a port). A plugin's refusal is
// recorded in the env; only a broken sandbox is an error.
func (b *bench) newTrafficEnv(index int, p *plugin, tag string, masq, published bool) (*trafficEnv, error) {
	sb, err := sandbox.New(fmt.Sprintf("%sp%d%s-", b.prefix, index, tag))
	if err != nil {
		return nil, err
	}
	e := &trafficEnv{label: p.Label, plugin: p, sb: sb}
	var ctrs [2]*sandbox.NetNS
	var ips [2]netip.Addr
	e.close = func(ctx context.Context) error {
		var errs []error
		for i, c := range ctrs {
			if c != nil && ips[i].IsValid() {
				_, err := e.net.del(ctx, c, fmt.Sprintf("cnibench-t%d", i))
				errs = append(errs, err)
			}
		}
		return errors.Join(append(errs, sb.Close())...)
	}
	if e.net, err = newNetwork(sb, p, b.tmp, "traffic", trafficSubnet, masq, published, b.opts.callTimeout); err != nil {
		return e, errors.Join(err, sb.Close())
	}
	count := len(ctrs)
	if published {
		count = 1
	}
	for i := range count {
		if ctrs[i], err = sb.NewContainer(fmt.Sprintf("c%d", i)); err != nil {
			return e, errors.Join(err, sb.Close())
		}
	}
	for i := range count {
		var caps map[string]any
		if published {
			caps = portMappings(publishedHostPort, publishedContainerPort, 1)
		}
		if ips[i], _, err = e.net.addWith(b.ctx, ctrs[i], fmt.Sprintf("cnibench-t%d", i), caps); err != nil {
			e.failed = &figure{Unsupported: cniCode(err) == 2, Error: err.Error()}
			b.progress.logf("%s, %s: ADD failed, phases skipped: %v", p.Label, tag, err)
			return e, nil
		}
	}
	if published {
		e.pub = target{client: sb.External, server: ctrs[0], listen: netip.AddrPortFrom(ips[0], publishedContainerPort),
			dial: netip.AddrPortFrom(sb.NodeUplink4.Addr(), publishedHostPort)}
		e.failed = b.checkPublished(e)
		return e, nil
	}
	e.c2c = to(ctrs[0], ctrs[1], ips[1])
	e.ext = to(ctrs[0], sb.External, sb.Internet4)
	if !masq {
		// Without NAT, External must route the containers' subnet back.
		err = sb.AddExternalRoute(netip.MustParsePrefix(trafficSubnet))
	}
	return e, err
}

// newBareEnv builds the bare veth pair: every path of it goes from one end
// to the other.
func newBareEnv(prefix string) (*trafficEnv, error) {
	pair, err := sandbox.NewVethPair(prefix, networkMTU)
	if err != nil {
		return nil, err
	}
	t := to(pair.A, pair.B, pair.AddrB)
	return &trafficEnv{label: bareLabel, c2c: t, ext: t, pub: t, close: func(context.Context) error { return pair.Close() }}, nil
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
