package main

import (
	"fmt"
	"html"
	"strings"
)

// Chart geometry, in SVG user units.
const (
	chartWidth = 960
	lineLeft   = 60  // x of the latency chart's y axis
	lineRight  = 440 // x of its right edge
	barLeft    = 730 // x where the traffic bars start (labels to the left)
	barRight   = 930
	chartTop   = 50
	lineBottom = 330
	barRow     = 27 // height of one traffic figure (its bars and gap)
)

// colors of the plugin sets, in order; the first is ours.
var colors = []string{"#1565c0", "#e65100"}

// bareColor is the bare veth pair's.
const bareColor = "#757575"

// barRun is one traffic run's figures of metrics, as the bars draw them.
type barRun struct {
	pt      trafficPoint
	metrics []metricInfo
}

// barRuns are the traffic runs the bars draw, in order.
func (r *report) barRuns() []barRun {
	var runs []barRun
	for _, pt := range r.Traffic {
		runs = append(runs, barRun{pt, trafficMetrics})
	}
	if r.Published != nil {
		runs = append(runs, barRun{*r.Published, publishedMetrics})
	}
	return runs
}

// barSeries are the sets each figure has a bar for: the plugin sets, then
// the bare veth pair.
func (r *report) barSeries(pt trafficPoint) (labels, colours []string, figs []map[string]figure) {
	for i, l := range r.labels() {
		labels, colours, figs = append(labels, l), append(colours, colors[i]), append(figs, pt.Plugins[l])
	}
	return append(labels, bareLabel), append(colours, bareColor), append(figs, pt.Bare)
}

// svg draws ADD latency (median and 99th percentile) against N for each
// plugin set, and the traffic figures as bars scaled per figure, so that
// figures of different units share one chart.
func (r *report) svg() string {
	rows := 0
	for _, run := range r.barRuns() {
		for _, m := range run.metrics {
			if _, ok := run.pt.Plugins[r.Plugins[0].Label][m.Name]; ok && m.Better != "" {
				rows++
			}
		}
	}
	height := max(lineBottom+60, chartTop+rows*barRow+20)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %[1]d %[2]d" font-family="sans-serif" font-size="11">`+"\n", chartWidth, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="10" y="18" font-size="13" font-weight="bold">cnibench: %s — %s, %d CPUs, Linux %s</text>`+"\n",
		html.EscapeString(strings.Join(r.labels(), " vs ")), html.EscapeString(r.Machine.CPUModel), r.Machine.CPUs, html.EscapeString(r.Machine.Kernel))
	r.latencyChart(&b)
	r.trafficBars(&b)
	b.WriteString("</svg>\n")
	return b.String()
}

// chartPoints are the scale points the latency chart draws: those of the
// first ipMasq and concurrency of the run.
func (r *report) chartPoints() []scalePoint {
	var pts []scalePoint
	if len(r.Scale) == 0 {
		return nil
	}
	for _, pt := range r.Scale {
		if pt.Masquerade == r.Scale[0].Masquerade && pt.Concurrency == r.Scale[0].Concurrency {
			pts = append(pts, pt)
		}
	}
	return pts
}

func (r *report) latencyChart(b *strings.Builder) {
	scale := r.chartPoints()
	fmt.Fprintf(b, `<text x="%d" y="%d" font-weight="bold">ADD latency (ms) vs containers N — solid p50, dashed p99</text>`+"\n", lineLeft-40, chartTop-12)
	top := 0.0
	for _, pt := range scale {
		for _, res := range pt.Plugins {
			top = max(top, res.Metrics["add_p99_ms"])
		}
	}
	if top == 0 || len(scale) == 0 {
		return
	}
	top *= 1.1
	// N is placed at even steps: the default counts (1, 50, 200, 500) would
	// crowd the left of a linear axis.
	x := func(i int) float64 {
		if len(scale) == 1 {
			return (lineLeft + lineRight) / 2
		}
		return lineLeft + 20 + float64(i)*float64(lineRight-lineLeft-40)/float64(len(scale)-1)
	}
	y := func(v float64) float64 { return lineBottom - v/top*(lineBottom-chartTop) }
	fmt.Fprintf(b, `<path d="M%d %d V%d H%d" fill="none" stroke="#444"/>`+"\n", lineLeft, chartTop, lineBottom, lineRight)
	for i := 0; i <= 4; i++ {
		v := top * float64(i) / 4
		fmt.Fprintf(b, `<text x="%d" y="%.1f" text-anchor="end">%s</text><line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n",
			lineLeft-4, y(v)+4, num(v), lineLeft, lineRight, y(v), y(v))
	}
	for i, pt := range scale {
		fmt.Fprintf(b, `<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", x(i), lineBottom+15, pt.N)
	}
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle">N</text>`+"\n", (lineLeft+lineRight)/2, lineBottom+30)
	for pi, label := range r.labels() {
		for _, s := range []struct{ metric, dash string }{{"add_p50_ms", ""}, {"add_p99_ms", "6 4"}} {
			var pts []string
			for i, pt := range scale {
				if v, ok := pt.Plugins[label].Metrics[s.metric]; ok {
					pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(i), y(v)))
				}
			}
			fmt.Fprintf(b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2" stroke-dasharray="%s"/>`+"\n",
				strings.Join(pts, " "), colors[pi], s.dash)
		}
		fmt.Fprintf(b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n",
			lineLeft+10+pi*150, lineBottom+40, colors[pi], lineLeft+26+pi*150, lineBottom+50, html.EscapeString(label))
	}
}

func (r *report) trafficBars(b *strings.Builder) {
	fmt.Fprintf(b, `<text x="%d" y="%d" font-weight="bold">Traffic (each figure scaled to the largest; grey: %s)</text>`+"\n", lineRight+50, chartTop-12, bareLabel)
	row := 0
	for _, run := range r.barRuns() {
		labels, colours, figs := r.barSeries(run.pt)
		for _, m := range run.metrics {
			if _, ok := run.pt.Plugins[r.Plugins[0].Label][m.Name]; !ok || m.Better == "" {
				continue
			}
			top := 0.0
			for _, f := range figs {
				if v := f[m.Name].Value; v != nil {
					top = max(top, *v)
				}
			}
			y0 := chartTop + row*barRow
			fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="end">%s (%s, %s, %s is better)</text>`+"\n",
				barLeft-6, y0+13, m.Name, html.EscapeString(m.Unit), html.EscapeString(run.pt.Run), m.Better)
			bar := (barRow - 4) / len(labels)
			for i := range labels {
				f, ok := figs[i][m.Name]
				if !ok {
					continue // a figure the bare pair has no meaning for
				}
				yb := y0 + i*bar
				if f.Value == nil || top == 0 {
					fmt.Fprintf(b, `<text x="%d" y="%d" font-size="8" fill="%s">%s</text>`+"\n", barLeft+2, yb+bar-1, colours[i], f.String())
					continue
				}
				w := *f.Value / top * (barRight - barLeft - 40)
				fmt.Fprintf(b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/><text x="%.1f" y="%d" font-size="8">%s</text>`+"\n",
					barLeft, yb, w, bar-1, colours[i], float64(barLeft)+w+3, yb+bar-1, num(*f.Value))
			}
			row++
		}
	}
}
