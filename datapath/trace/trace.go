// Package trace times the phases of one plugin call (ADD, DEL) for an
// operator who switched it on (BPFBRIDGE_TRACE=1 or the config key
// "trace": true): one line on stderr per call, naming each phase and how
// long it took. Off, a Tracer does nothing: every method returns at once.
//
// A line reads
//
//	bpfbridge-trace ADD total=7.412ms config=0.210ms ipam=0.801ms …
//
// and Parse reads it back (cnibench uses it to report where the time goes).
package trace

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// EnvVar switches tracing on for every call of the plugin process.
const EnvVar = "BPFBRIDGE_TRACE"

// prefix starts every trace line.
const prefix = "bpfbridge-trace "

// Phase is one timed step of a call.
type Phase struct {
	Name     string
	Duration time.Duration
}

// Tracer times the phases of one call. The zero value and nil are off.
type Tracer struct {
	verb   string
	w      io.Writer
	start  time.Time
	last   time.Time
	phases []Phase
}

// Start starts timing a call of verb. The tracer is on when EnvVar is set
// to a true value; a config key can switch it on later with Enable, before
// the first Mark, since the clock starts here either way.
func Start(verb string) *Tracer {
	now := time.Now()
	t := &Tracer{verb: verb, start: now, last: now}
	if v := os.Getenv(EnvVar); v == "1" || strings.EqualFold(v, "true") {
		t.w = os.Stderr
	}
	return t
}

// Enable switches the tracer on (the config's "trace" key).
func (t *Tracer) Enable(on bool) {
	if t != nil && on && t.w == nil {
		t.w = os.Stderr
	}
}

// Mark ends the current phase, which is named name, and starts the next.
func (t *Tracer) Mark(name string) {
	if t == nil || t.w == nil {
		return
	}
	now := time.Now()
	t.phases = append(t.phases, Phase{name, now.Sub(t.last)})
	t.last = now
}

// Finish writes the call's line; a failed call's line ends with "error".
// The time since the last Mark is "rest".
func (t *Tracer) Finish(err error) {
	if t == nil || t.w == nil {
		return
	}
	t.Mark("rest")
	var b strings.Builder
	fmt.Fprintf(&b, "%s%s total=%s", prefix, t.verb, msString(time.Since(t.start)))
	for _, p := range t.phases {
		fmt.Fprintf(&b, " %s=%s", p.Name, msString(p.Duration))
	}
	if err != nil {
		b.WriteString(" error")
	}
	b.WriteByte('\n')
	_, _ = io.WriteString(t.w, b.String())
}

func msString(d time.Duration) string {
	return fmt.Sprintf("%.3fms", float64(d)/float64(time.Millisecond))
}

// Parse reads the trace line of a call out of a plugin's stderr: its verb,
// total and phases (a phase repeated within a call is summed). ok is false
// when out holds none.
func Parse(out string) (verb string, total time.Duration, phases []Phase, ok bool) {
	for line := range strings.Lines(out) {
		rest, found := strings.CutPrefix(strings.TrimSpace(line), prefix)
		if !found {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) < 2 {
			continue
		}
		verb = fields[0]
		for _, f := range fields[1:] {
			name, value, found := strings.Cut(f, "=")
			if !found {
				continue
			}
			d, err := time.ParseDuration(value)
			if err != nil {
				continue
			}
			if name == "total" {
				total = d
				continue
			}
			phases = addPhase(phases, name, d)
		}
		return verb, total, phases, true
	}
	return "", 0, nil, false
}

func addPhase(phases []Phase, name string, d time.Duration) []Phase {
	for i := range phases {
		if phases[i].Name == name {
			phases[i].Duration += d
			return phases
		}
	}
	return append(phases, Phase{name, d})
}
