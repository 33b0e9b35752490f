package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

const (
	barWidth = 30
	// ttyTick redraws the bar; lineTick spaces the plain lines written
	// when stderr is a file or pipe, such as a CI log.
	ttyTick  = 200 * time.Millisecond
	lineTick = 10 * time.Second
)

// progress reports long phases on w: a bar redrawn in place when w is a
// terminal, otherwise a plain line every lineTick and one at the end.
type progress struct {
	mu  sync.Mutex // one writer at a time
	w   io.Writer
	tty bool
}

func newProgress(f *os.File) *progress {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return &progress{w: f, tty: err == nil}
}

// logf writes one line.
func (p *progress) logf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "cnibench: "+format+"\n", args...)
}

// start reports the phase label, whose completion (0…1) fraction returns,
// until the returned stop is called.
func (p *progress) start(label string, fraction func() float64) (stop func()) {
	began := time.Now()
	quit := make(chan struct{})
	var wg sync.WaitGroup
	tick := lineTick
	if p.tty {
		tick = ttyTick
	}
	wg.Go(func() {
		t := time.NewTicker(tick)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				p.draw(label, fraction(), time.Since(began), false)
			}
		}
	})
	return func() {
		close(quit)
		wg.Wait()
		p.draw(label, fraction(), time.Since(began), true)
	}
}

func (p *progress) draw(label string, f float64, elapsed time.Duration, final bool) {
	f = min(max(f, 0), 1)
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.tty {
		fmt.Fprintf(p.w, "cnibench: %s %3.0f%% %s\n", label, 100*f, elapsed.Round(100*time.Millisecond))
		return
	}
	full := int(f * barWidth)
	fmt.Fprintf(p.w, "\r\033[K%-36s [%s%s] %3.0f%% %s", label, strings.Repeat("#", full), strings.Repeat(".", barWidth-full),
		100*f, elapsed.Round(100*time.Millisecond))
	if final {
		fmt.Fprintln(p.w)
	}
}

// count runs fn for 0…n-1 one after another under a progress report,
// stopping at the first error.
func (p *progress) count(label string, n int, fn func(i int) error) error {
	var done atomic.Int64
	stop := p.start(label, func() float64 { return float64(done.Load()) / float64(n) })
	defer stop()
	for i := range n {
		if err := fn(i); err != nil {
			return err
		}
		done.Add(1)
	}
	return nil
}

// timed reports a phase that lasts d.
func (p *progress) timed(label string, d time.Duration) (stop func()) {
	began := time.Now()
	return p.start(label, func() float64 { return float64(time.Since(began)) / float64(d) })
}
