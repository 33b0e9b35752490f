package trace

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestLineRoundTrip writes a call's line and reads it back with Parse: the
// phases in order, their sum within the total, a repeated phase summed,
// and a failed call marked.
func TestLineRoundTrip(t *testing.T) {
	var out bytes.Buffer
	tr := &Tracer{verb: "ADD", w: &out, start: time.Now()}
	tr.last = tr.start
	for _, name := range []string{"config", "ipam", "ipam", "veth"} {
		time.Sleep(time.Millisecond)
		tr.Mark(name)
	}
	tr.Finish(errors.New("boom"))
	line := out.String()
	if !strings.HasPrefix(line, "bpfbridge-trace ADD total=") || !strings.HasSuffix(line, " error\n") {
		t.Fatalf("line %q", line)
	}
	verb, total, phases, ok := Parse("other output\n" + line)
	if !ok || verb != "ADD" {
		t.Fatalf("Parse(%q) = %q, %v", line, verb, ok)
	}
	var names []string
	var sum time.Duration
	for _, p := range phases {
		names = append(names, p.Name)
		sum += p.Duration
	}
	if got := strings.Join(names, ","); got != "config,ipam,veth,rest" {
		t.Errorf("phases %s, want config,ipam,veth,rest", got)
	}
	if phases[1].Duration < 2*time.Millisecond {
		t.Errorf("ipam, marked twice after 1 ms sleeps, is %v", phases[1].Duration)
	}
	if sum > total+time.Millisecond || total < 4*time.Millisecond {
		t.Errorf("phases add up to %v, total %v", sum, total)
	}
}

// TestOff: a tracer switched on neither by the environment nor by Enable,
// and a nil one, write nothing.
func TestOff(t *testing.T) {
	t.Setenv(EnvVar, "")
	tr := Start("DEL")
	tr.Mark("config")
	tr.Finish(nil)
	if tr.w != nil || len(tr.phases) != 0 {
		t.Errorf("tracer off recorded %v", tr.phases)
	}
	var none *Tracer
	none.Enable(true)
	none.Mark("x")
	none.Finish(nil)
	if _, _, _, ok := Parse("no trace here\n"); ok {
		t.Error("Parse found a line in output without one")
	}
}

// TestEnable: the config key switches a tracer on after Start.
func TestEnable(t *testing.T) {
	t.Setenv(EnvVar, "0")
	tr := Start("ADD")
	tr.Enable(true)
	var out bytes.Buffer
	tr.w = &out // Enable points it at stderr; capture instead
	tr.Mark("config")
	tr.Finish(nil)
	if _, _, phases, ok := Parse(out.String()); !ok || phases[0].Name != "config" {
		t.Errorf("enabled tracer wrote %q", out.String())
	}
}
