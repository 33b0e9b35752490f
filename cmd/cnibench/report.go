package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// metricInfo describes one figure of the report.
type metricInfo struct {
	// Run is the kind of run that measures the figure.
	Run  runKind `json:"-"`
	Name string  `json:"-"`
	Unit string  `json:"unit"`
	// Better is "lower" or "higher"; empty for counts that have no better
	// direction, which get no ratio.
	Better string `json:"better,omitempty"`
	What   string `json:"what"`
}

// runKind is a kind of run of the report.
type runKind int

const (
	scaleRun     runKind = iota // one plugin set at one N
	trafficRun                  // one plugin set in one traffic run
	publishedRun                // the published-ports run: from the outside to a container's published port, and ADD with port mappings
)

// metrics are the figures of the report, in table order.
var metrics = []metricInfo{
	{scaleRun, "add_p50_ms", "ms", "lower", "ADD latency, median"},
	{scaleRun, "add_p90_ms", "ms", "lower", "ADD latency, 90th percentile"},
	{scaleRun, "add_p99_ms", "ms", "lower", "ADD latency, 99th percentile"},
	{scaleRun, "add_max_ms", "ms", "lower", "ADD latency, slowest"},
	{scaleRun, "del_p50_ms", "ms", "lower", "DEL latency, median"},
	{scaleRun, "del_p90_ms", "ms", "lower", "DEL latency, 90th percentile"},
	{scaleRun, "del_p99_ms", "ms", "lower", "DEL latency, 99th percentile"},
	{scaleRun, "del_max_ms", "ms", "lower", "DEL latency, slowest"},
	{scaleRun, "cold_add_ms", "ms", "lower", "the first ADD on a fresh node (not in the percentiles)"},
	{scaleRun, "add_rate_per_s", "1/s", "higher", "ADDs completed per second at the run's concurrency"},
	{scaleRun, "add_wall_ms", "ms", "lower", "wall time of the N ADDs at the run's concurrency (a boot storm at concurrency > 1)"},
	{scaleRun, "add_growth", "ratio", "lower", "median ADD latency of the last 10% of containers over that of the first 10%"},
	{scaleRun, "add_cpu_ms", "ms", "lower", "user+system CPU per ADD, plugin and the children it waited for"},
	{scaleRun, "del_cpu_ms", "ms", "lower", "user+system CPU per DEL"},
	{scaleRun, "add_maxrss_kib", "KiB", "lower", "largest peak RSS of an ADD's processes"},
	{scaleRun, "del_maxrss_kib", "KiB", "lower", "largest peak RSS of a DEL's processes"},
	{scaleRun, "iptables_rules", "rules", "", "iptables-save rules in the node after N ADDs"},
	{scaleRun, "ip6tables_rules", "rules", "", "ip6tables-save rules in the node after N ADDs"},
	{scaleRun, "nft_rules", "rules", "", "nftables rules in the node after N ADDs (iptables-nft rules included)"},
	{scaleRun, "bpf_map_entries", "entries", "", "keys of the hash maps pinned under <bpffs>/bpfbridge/maps/v*/ after N ADDs"},
	{scaleRun, "leftover_allocations", "addresses", "", "IPAM allocations left after every DEL (must be 0)"},
	{trafficRun, "tcp_stream_c2c_gbps", "Gbit/s", "higher", "TCP stream throughput, one connection, container to container"},
	{trafficRun, "iperf3_stream_c2c_gbps", "Gbit/s", "higher", "the same measured by iperf3 (--iperf3), median of rounds"},
	{trafficRun, "paired_stream_c2c_gbps", "Gbit/s", "higher", "cnibench's stream in turns with those iperf3 rounds, median"},
	{trafficRun, "tcp_stream_ext_gbps", "Gbit/s", "higher", "TCP stream throughput, container to external"},
	{trafficRun, "tcp_rr_c2c_p50_us", "µs", "lower", "1-byte TCP request/response round trip, median, container to container"},
	{trafficRun, "tcp_rr_c2c_p99_us", "µs", "lower", "the same, 99th percentile"},
	{trafficRun, "tcp_rr_ext_p50_us", "µs", "lower", "1-byte TCP request/response round trip, median, container to external"},
	{trafficRun, "tcp_rr_ext_p99_us", "µs", "lower", "the same, 99th percentile"},
	{trafficRun, "tcp_crr_c2c_per_s", "1/s", "higher", "TCP connect+close per second, container to container"},
	{trafficRun, "tcp_crr_ext_per_s", "1/s", "higher", "TCP connect+close per second, container to external"},
	{trafficRun, "udp_c2c_pps", "packets/s", "higher", "64-byte UDP datagrams received per second, one sender, container to container"},
	{publishedRun, "tcp_rr_pub_p50_us", "µs", "lower", "1-byte TCP request/response round trip, median, external to a container's published port (the node's address, host port)"},
	{publishedRun, "tcp_rr_pub_p99_us", "µs", "lower", "the same, 99th percentile"},
	{publishedRun, "tcp_crr_pub_per_s", "1/s", "higher", "TCP connect+close per second, external to the published port"},
	{publishedRun, "add_pub0_p50_ms", "ms", "lower", "ADD latency, median, on the published-ports network, without port mappings"},
	{publishedRun, "add_pub10_p50_ms", "ms", "lower", "the same with 10 port mappings"},
	{publishedRun, "add_pub10_extra_ms", "ms", "", "ADD median with 10 port mappings minus without"},
}

// metricsOf returns the figures that runs of kind measure.
func metricsOf(kind runKind) []metricInfo {
	var ms []metricInfo
	for _, m := range metrics {
		if m.Run == kind {
			ms = append(ms, m)
		}
	}
	return ms
}

// The figures of each kind of run, in table order.
var (
	scaleMetrics     = metricsOf(scaleRun)
	trafficMetrics   = metricsOf(trafficRun)
	publishedMetrics = metricsOf(publishedRun)
)

// report is the JSON file, and the source of the Markdown and the SVG.
type report struct {
	Tool         string                  `json:"tool"`
	Started      time.Time               `json:"started"`
	WallSeconds  float64                 `json:"wall_seconds"`
	Machine      machine                 `json:"machine"`
	Settings     settings                `json:"settings"`
	Plugins      []*plugin               `json:"plugins"` // Plugins[0] is "ours", the ratios' numerator
	RatioMeaning string                  `json:"ratio_meaning"`
	Metrics      map[string]metricInfo   `json:"metrics"`
	Scale        []scalePoint            `json:"scale"`
	Traffic      []trafficPoint          `json:"traffic"`
	Published    *trafficPoint           `json:"published_ports,omitempty"`
	Iperf3       map[string]*iperf3Check `json:"iperf3,omitempty"`
}

type settings struct {
	N            []int   `json:"n"`
	Concurrency  []int   `json:"concurrency"`
	IPMasq       []bool  `json:"ipmasq"`
	PhaseSeconds float64 `json:"phase_seconds"`
	// PhaseRounds is how many turns each traffic phase is cut into; a
	// figure is the median of its rounds.
	PhaseRounds     int    `json:"phase_rounds"`
	UDPPayloadBytes int    `json:"udp_payload_bytes"`
	SandboxPrefix   string `json:"sandbox_prefix"`
	ScaleSubnet     string `json:"scale_subnet"`
	TrafficSubnet   string `json:"traffic_subnet"`
	// PublishedAdds is how many ADDs of each kind (with and without port
	// mappings) the published-ports run times.
	PublishedAdds int `json:"published_adds"`
	// BareVeth describes the physical-limit path measured beside the
	// plugins.
	BareVeth string `json:"bare_veth"`
}

// scalePoint is one N at one ipMasq and concurrency: each plugin set's
// figures, ours/reference ratios, and the floor's figures.
type scalePoint struct {
	N           int                     `json:"n"`
	Masquerade  bool                    `json:"ipmasq"`
	Concurrency int                     `json:"concurrency"`
	Plugins     map[string]*scaleResult `json:"plugins"`
	Ratios      map[string]*float64     `json:"ratios,omitempty"` // null where a side has no figure
	Floor       *scaleResult            `json:"floor,omitempty"`
}

type scaleResult struct {
	Metrics map[string]float64 `json:"metrics,omitempty"`
	BPFMaps map[string]int     `json:"bpf_maps,omitempty"` // entries per pinned hash map
	// AddPhases and DelPhases are the median ms of each phase of the
	// plugin's trace (bpfbridge only), ColdAddPhases those of the first ADD.
	AddPhases map[string]float64 `json:"add_phases_ms,omitempty"`
	// AddPhasesFirst and AddPhasesLast are those of the first and the last
	// tenth of the ADDs: what grows with N.
	AddPhasesFirst map[string]float64 `json:"add_phases_first_tenth_ms,omitempty"`
	AddPhasesLast  map[string]float64 `json:"add_phases_last_tenth_ms,omitempty"`
	DelPhases      map[string]float64 `json:"del_phases_ms,omitempty"`
	ColdAddPhases  map[string]float64 `json:"cold_add_phases_ms,omitempty"`
	Error          string             `json:"error,omitempty"`
}

// trafficPoint is one traffic run: without or with masquerade, or the
// published-ports run.
type trafficPoint struct {
	Run        string                       `json:"run"` // "ipMasq false", "ipMasq true" or "published ports"
	Masquerade bool                         `json:"masquerade"`
	Plugins    map[string]map[string]figure `json:"plugins"`
	Ratios     map[string]*float64          `json:"ratios,omitempty"`
	// Bare are the figures of the bare veth pair in the same run, and
	// BareRatios each plugin set's figures divided by them.
	Bare       map[string]figure              `json:"bare_veth"`
	BareRatios map[string]map[string]*float64 `json:"bare_ratios"`
}

// figure is a measured value, or why there is none: Unsupported when the
// plugin rejected the config as something it does not support (CNI error
// 2), otherwise a failure.
type figure struct {
	Value       *float64 `json:"value,omitempty"`
	Unsupported bool     `json:"unsupported,omitempty"`
	Error       string   `json:"error,omitempty"`
}

// iperf3Check compares cnibench's own TCP stream with iperf3's, both
// container to container on the same node, taking turns.
type iperf3Check struct {
	CnibenchGbps  float64 `json:"cnibench_gbps"`
	Iperf3Gbps    float64 `json:"iperf3_gbps"`
	DifferencePct float64 `json:"difference_pct"`
}

func (f figure) String() string {
	switch {
	case f.Value != nil:
		return num(*f.Value)
	case f.Unsupported:
		return "n/a"
	default:
		return "error"
	}
}

// values returns the figures that have a value.
func values(figs map[string]figure) map[string]float64 {
	v := map[string]float64{}
	for name, f := range figs {
		if f.Value != nil {
			v[name] = *f.Value
		}
	}
	return v
}

// unsupported returns the reason given for the first unsupported figure of
// metrics, or "".
func unsupported(figs map[string]figure, metrics []metricInfo) string {
	for _, m := range metrics {
		if f := figs[m.Name]; f.Unsupported {
			return f.Error
		}
	}
	return ""
}

// ratios divides the first plugin set's figures by the second's.
func ratios(metrics []metricInfo, plugins []*plugin, get func(label string) map[string]float64) map[string]*float64 {
	if len(plugins) < 2 {
		return nil
	}
	return divide(metrics, get(plugins[0].Label), get(plugins[1].Label))
}

type machine struct {
	Hostname  string  `json:"hostname"`
	Kernel    string  `json:"kernel"`
	CPUModel  string  `json:"cpu_model"`
	CPUs      int     `json:"cpus"`
	MemoryGiB float64 `json:"memory_gib"`
	Go        string  `json:"go"`
}

// thisMachine describes the machine the numbers come from.
func thisMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	m.Hostname, _ = os.Hostname()
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	m.CPUModel = procField("/proc/cpuinfo", "model name")
	var kib float64
	fmt.Sscanf(procField("/proc/meminfo", "MemTotal"), "%f", &kib)
	m.MemoryGiB = kib / (1 << 20)
	return m
}

// procField returns the value of the first "key: value" line of a /proc file.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func newReport(o options, plugins []*plugin, prefix string) *report {
	r := &report{
		Tool:    "cnibench",
		Started: time.Now().UTC().Truncate(time.Second),
		Machine: thisMachine(),
		Settings: settings{
			N: o.ns, Concurrency: o.concurrency, IPMasq: o.masquerade, PhaseSeconds: o.phase.Seconds(), PhaseRounds: o.rounds, UDPPayloadBytes: udpPayload,
			SandboxPrefix: prefix, ScaleSubnet: scaleSubnet, TrafficSubnet: trafficSubnet, PublishedAdds: o.publishedAdds,
			BareVeth: fmt.Sprintf("two namespaces joined by one veth pair, MTU %d, no plugin: the physical limit, measured in every traffic run", networkMTU),
		},
		Plugins: plugins,
		Metrics: map[string]metricInfo{},
	}
	if len(plugins) > 1 {
		r.RatioMeaning = fmt.Sprintf("%s / %s. For metrics whose better is \"lower\" (latency, CPU, memory) a ratio below 1 means %[1]s is better; "+
			"for \"higher\" (throughput, rates) a ratio above 1 means %[1]s is better.", plugins[0].Label, plugins[1].Label)
	}
	for _, m := range metrics {
		r.Metrics[m.Name] = m
	}
	return r
}

// write writes cnibench.json, cnibench.md and cnibench.svg into dir.
func (r *report) write(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, err
	}
	var files []string
	for name, data := range map[string][]byte{
		"cnibench.json": append(js, '\n'),
		"cnibench.md":   []byte(r.markdown()),
		"cnibench.svg":  []byte(r.svg()),
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return nil, err
		}
		files = append(files, path)
	}
	return files, nil
}

// num formats a figure with three significant digits or so.
func num(v float64) string {
	switch {
	case v == math.Trunc(v) && math.Abs(v) < 1e9: // counts
		return fmt.Sprintf("%.0f", v)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// cell shows each plugin set's figure and, with two, the ratio.
func cell(figs []string, ratio *float64) string {
	s := strings.Join(figs, " / ")
	if len(figs) > 1 {
		s += ratioSuffix(ratio)
	}
	return s
}

// ratioSuffix shows a ratio after the figures, in bold.
func ratioSuffix(ratio *float64) string {
	if ratio == nil {
		return " (–)"
	}
	return fmt.Sprintf(" (**%.2f**)", *ratio)
}

func (r *report) labels() []string {
	var l []string
	for _, p := range r.Plugins {
		l = append(l, p.Label)
	}
	return l
}

// floorMetrics are the figures the floor has a meaning for.
var floorMetrics = map[string]bool{"add_p50_ms": true, "add_p99_ms": true, "del_p50_ms": true, "del_p99_ms": true,
	"add_wall_ms": true, "cold_add_ms": true}

// metric is the result's figure name, if it has one.
func (res *scaleResult) metric(name string) (float64, bool) {
	if res == nil {
		return 0, false
	}
	v, ok := res.Metrics[name]
	return v, ok
}

// phaseTable shows where the first plugin set's ADD and DEL time goes, by
// the medians of its trace's phases.
func (r *report) phaseTable(b *strings.Builder) {
	label := r.Plugins[0].Label
	traced := false
	for _, pt := range r.Scale {
		traced = traced || pt.Plugins[label].AddPhases != nil
	}
	if !traced {
		return
	}
	fmt.Fprintf(b, "**Where %s's time goes** (median ms per phase of its trace, BPFBRIDGE_TRACE=1; the rest of a call's "+
		"latency is process start-up and libcni; ADD first/last 10%%: the first and the last tenth of the ADDs)\n\n"+
		"| N | ipMasq | concurrency | first ADD | ADD | ADD first 10%% | ADD last 10%% | DEL |\n|---:|---|---:|---|---|---|---|---|\n", label)
	for _, pt := range r.Scale {
		res := pt.Plugins[label]
		fmt.Fprintf(b, "| %d | %t | %d | %s | %s | %s | %s | %s |\n", pt.N, pt.Masquerade, pt.Concurrency,
			phaseList(res.ColdAddPhases), phaseList(res.AddPhases), phaseList(res.AddPhasesFirst),
			phaseList(res.AddPhasesLast), phaseList(res.DelPhases))
	}
	b.WriteString("\n")
}

// phaseList writes phases as "total 7.4: veth 1.5, ipam 0.8, …", in
// decreasing order of time.
func phaseList(phases map[string]float64) string {
	if phases == nil {
		return "–"
	}
	names := slices.Collect(maps.Keys(phases))
	slices.SortFunc(names, func(a, b string) int { return cmp.Compare(phases[b], phases[a]) })
	parts := make([]string, 0, len(names))
	for _, n := range names {
		if phases[n] >= 0.05 {
			parts = append(parts, fmt.Sprintf("%s %s", n, num(phases[n])))
		}
	}
	return strings.Join(parts, ", ")
}

// markdown renders the tables the README shows.
func (r *report) markdown() string {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "Measured %s on %s: %s, %d CPUs, %.1f GiB, Linux %s, %s; %s; ADD/DEL concurrency %s, traffic phases of %gs in %d rounds (each figure the median of its rounds).\n\n",
		r.Started.Format("2006-01-02"), m.Hostname, m.CPUModel, m.CPUs, m.MemoryGiB, m.Kernel, m.Go,
		strings.Join(r.labels(), " vs "), strings.Trim(fmt.Sprint(r.Settings.Concurrency), "[]"), r.Settings.PhaseSeconds,
		r.Settings.PhaseRounds)
	if r.RatioMeaning != "" {
		fmt.Fprintf(&b, "Cells are %s (**ratio**). Ratio = %s\n\n", strings.Join(r.labels(), " / "), r.RatioMeaning)
	}
	if len(r.Scale) > 0 && r.Scale[0].Floor != nil {
		fmt.Fprintf(&b, "⌊floor⌋: the same call through libcni to a plugin that does nothing, and for DEL that plus deleting "+
			"the container's veth pair, measured in the same run.\n\n")
	}

	scaleTable := func(title string, cols []string) {
		fmt.Fprintf(&b, "%s\n\n| N | ipMasq | concurrency |", title)
		for _, c := range cols {
			fmt.Fprintf(&b, " %s (%s) |", c, r.Metrics[c].Unit)
		}
		b.WriteString("\n|---:|---|---:|" + strings.Repeat("---:|", len(cols)) + "\n")
		for _, pt := range r.Scale {
			fmt.Fprintf(&b, "| %d | %t | %d |", pt.N, pt.Masquerade, pt.Concurrency)
			for _, c := range cols {
				var figs []string
				for _, l := range r.labels() {
					res := pt.Plugins[l]
					if v, ok := res.Metrics[c]; ok {
						figs = append(figs, num(v))
					} else {
						figs = append(figs, "error")
					}
				}
				s := cell(figs, pt.Ratios[c])
				if v, ok := pt.Floor.metric(c); ok && floorMetrics[c] {
					s += fmt.Sprintf(" ⌊%s⌋", num(v))
				}
				fmt.Fprintf(&b, " %s |", s)
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
	}
	scaleTable("**ADD and DEL latency by number of containers N** (lower is better)",
		[]string{"add_p50_ms", "add_p99_ms", "del_p50_ms", "del_p99_ms", "add_growth", "add_wall_ms"})
	scaleTable("**Cost per call and node state after N ADDs**",
		[]string{"add_cpu_ms", "add_maxrss_kib", "cold_add_ms", "iptables_rules", "nft_rules", "bpf_map_entries"})
	r.phaseTable(&b)

	if len(r.Traffic) > 0 {
		r.trafficTable(&b, "**Traffic** (2 containers on the node; external = a namespace beyond the node's uplink)",
			r.Traffic, trafficMetrics)
	}
	if r.Published != nil {
		r.trafficTable(&b, fmt.Sprintf("**Published ports** (external → the node's uplink address, host port → a container; ipMasq %t; "+
			"a set with a portmap plugin chains it, others get `\"capabilities\": {\"portMappings\": true}`; mappings passed as libcni capability "+
			"arguments, %d ADDs of each kind)", r.Published.Masquerade, r.Settings.PublishedAdds),
			[]trafficPoint{*r.Published}, publishedMetrics)
	}
	r.bareTable(&b)
	for _, l := range r.labels() {
		if c := r.Iperf3[l]; c != nil {
			fmt.Fprintf(&b, "\nCross-check, %s, container to container: cnibench %.2f Gbit/s, iperf3 %.2f Gbit/s (%+.1f%%).\n",
				l, c.CnibenchGbps, c.Iperf3Gbps, c.DifferencePct)
		}
	}
	return b.String()
}

// trafficTable writes one column per run of points and one row per figure
// of metrics that the runs have: cells are each plugin set's figure, then
// the bare veth pair's where it has one, and the ratio of the first two.
func (r *report) trafficTable(b *strings.Builder, title string, points []trafficPoint, metrics []metricInfo) {
	bare := false
	for _, pt := range points {
		bare = bare || len(pt.Bare) > 0
	}
	labels := strings.Join(r.labels(), " / ")
	if bare {
		labels += " / " + bareLabel
	}
	fmt.Fprintf(b, "%s; cells are %s\n\n| figure | better |", title, labels)
	for _, pt := range points {
		fmt.Fprintf(b, " %s |", pt.Run)
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---:|", len(points)) + "\n")
	for _, m := range metrics {
		if _, ok := points[0].Plugins[r.Plugins[0].Label][m.Name]; !ok {
			continue // a phase not run (iperf3 without --iperf3)
		}
		fmt.Fprintf(b, "| %s (%s) | %s |", m.What, m.Unit, cmp.Or(m.Better, "–"))
		for _, pt := range points {
			var figs []string
			for _, l := range r.labels() {
				f, ok := pt.Plugins[l][m.Name]
				if !ok {
					figs = append(figs, "–")
					continue
				}
				figs = append(figs, f.String())
			}
			s := strings.Join(figs, " / ")
			if f, ok := pt.Bare[m.Name]; ok {
				s += " / " + f.String()
			}
			if len(figs) > 1 {
				s += ratioSuffix(pt.Ratios[m.Name])
			}
			fmt.Fprintf(b, " %s |", s)
		}
		b.WriteString("\n")
	}
	for _, pt := range points {
		for _, l := range r.labels() {
			if why := unsupported(pt.Plugins[l], metrics); why != "" {
				fmt.Fprintf(b, "\nn/a: %s, %s: unsupported: %s\n", l, pt.Run, why)
			}
		}
	}
	b.WriteString("\n")
}

// bareTable writes each plugin set's traffic figures divided by the bare
// veth pair's in the same run, one row per figure the pair has, one column
// per run: the distance to the physical limit.
func (r *report) bareTable(b *strings.Builder) {
	points := slices.Clone(r.Traffic)
	if r.Published != nil {
		points = append(points, *r.Published)
	}
	if len(points) == 0 {
		return
	}
	fmt.Fprintf(b, "**Against the physical limit**: each figure ÷ the %s pair's in the same run (%s); cells are %s. "+
		"For \"higher\" figures 1.0 is the limit, for \"lower\" ones (latency) the ratio is how many times the pair's.\n\n| figure | better |",
		bareLabel, r.Settings.BareVeth, strings.Join(r.labels(), " / "))
	for _, pt := range points {
		fmt.Fprintf(b, " %s |", pt.Run)
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---:|", len(points)) + "\n")
	for _, m := range append(slices.Clone(trafficMetrics), publishedMetrics...) {
		measured := false
		for _, pt := range points {
			_, ok := pt.Bare[m.Name]
			measured = measured || ok
		}
		if !measured || m.Better == "" {
			continue
		}
		fmt.Fprintf(b, "| %s (%s) | %s |", m.What, m.Unit, m.Better)
		for _, pt := range points {
			if _, ok := pt.Bare[m.Name]; !ok {
				b.WriteString(" – |")
				continue
			}
			var cells []string
			for _, l := range r.labels() {
				if q := pt.BareRatios[l][m.Name]; q != nil {
					cells = append(cells, fmt.Sprintf("%.2f", *q))
				} else {
					cells = append(cells, "–")
				}
			}
			fmt.Fprintf(b, " %s |", strings.Join(cells, " / "))
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}
