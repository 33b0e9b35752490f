package main

import (
	"context"
	"fmt"
	"time"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// Published ports: a container publishes a port on the node, and the
// external namespace connects to the node's uplink address at the host port.
// A set with a portmap plugin chains it (the reference: bridge + portmap,
// which writes iptables DNAT rules); one without declares the portMappings
// capability on its bridge plugin (bpfbridge). Either way the mappings reach
// the plugins as a runtime passes them: libcni's capability arguments
// (cnitool's CAP_ARGS), injected as runtimeConfig.portMappings.
const (
	publishedHostPort      = 18080
	publishedContainerPort = 8080
	// publishedMappings is how many ports the ADD-cost phase publishes.
	publishedMappings = 10
	// The ADD-cost phase's mappings start here (host) and at
	// publishedContainerPort+1 (container), clear of the traffic mapping.
	publishedAddHostPort = 20000
	// publishedMasquerade is the published-ports node's ipMasq: on, as
	// the runtimes that publish ports (podman, Kubernetes) configure it.
	publishedMasquerade = true
	// publishedProbeTimeout bounds the connection that tells whether the
	// plugin published the port at all.
	publishedProbeTimeout = 2 * time.Second
)

// portMapping is one entry of runtimeConfig.portMappings, as the CNI
// conventions define it and the reference portmap reads it.
type portMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
}

// portMappings are the capability arguments that publish n TCP ports, host
// ports from host and container ports from ctr on.
func portMappings(host, ctr, n int) map[string]any {
	m := make([]portMapping, n)
	for i := range m {
		m[i] = portMapping{HostPort: host + i, ContainerPort: ctr + i, Protocol: "tcp"}
	}
	return map[string]any{"portMappings": m}
}

// publishedPhases measure the path from the outside to a published port,
// and what publishing ports adds to an ADD.
func (b *bench) publishedPhases() []phase {
	pub := func(e *trafficEnv) target { return e.pub }
	return []phase{
		rrPhase("TCP request/response external→published port", "tcp_rr_pub", pub),
		crrPhase("TCP connections external→published port", "tcp_crr_pub_per_s", pub),
		{name: fmt.Sprintf("ADD with %d port mappings and without", publishedMappings),
			figures:     []string{"add_pub0_p50_ms", "add_pub10_p50_ms", "add_pub10_extra_ms"},
			run:         b.publishedAdds,
			pluginsOnly: true,
			// About 50 ms per ADD and DEL here.
			span:  func(time.Duration) time.Duration { return time.Duration(b.opts.publishedAdds) * 200 * time.Millisecond },
			whole: true},
	}
}

// checkPublished connects once from the outside to e's published port: a
// plugin that ignored the mappings (a bpfbridge without port mapping) gets
// its figures marked unsupported, as a refused config does; a failure of a
// chained portmap is an error. It returns nil when the port answers.
func (b *bench) checkPublished(e *trafficEnv) *figure {
	_, stop, err := sandbox.ServeTCPEcho(e.pub.server, e.pub.listen)
	if err == nil {
		err = sandbox.TCPEcho(e.pub.client, e.pub.dial, []byte("cnibench"), publishedProbeTimeout)
		stop()
	}
	if err == nil {
		return nil
	}
	b.progress.logf("%s: the published port does not answer, phases skipped: %v", e.label, err)
	if e.plugin.chainsPortmap() {
		return &figure{Error: err.Error()}
	}
	return &figure{Unsupported: true, Error: fmt.Sprintf("published port %s not reachable from outside "+
		"(the plugin ignores runtimeConfig.portMappings?): %v", e.pub.dial, err)}
}

// publishedAdds times ADDs of one more container on e's node, in turns with
// publishedMappings mappings and without, b.opts.publishedAdds of each,
// deleting it after each, and returns both medians and their difference.
func (b *bench) publishedAdds(ctx context.Context, e *trafficEnv, _ time.Duration) (map[string]float64, error) {
	ctr, err := e.sb.NewContainer("adds")
	if err != nil {
		return nil, err
	}
	defer ctr.Delete()
	var without, with []time.Duration
	mappings := portMappings(publishedAddHostPort, publishedContainerPort+1, publishedMappings)
	for i := range 2 * b.opts.publishedAdds {
		var caps map[string]any
		if i%2 == 1 {
			caps = mappings
		}
		id := fmt.Sprintf("cnibench-pub%d", i)
		_, c, err := e.net.addWith(ctx, ctr, id, caps)
		if err != nil {
			return nil, fmt.Errorf("ADD %s: %w", id, err)
		}
		if _, err := e.net.del(ctx, ctr, id); err != nil {
			return nil, fmt.Errorf("DEL %s: %w", id, err)
		}
		if caps == nil {
			without = append(without, c.Wall)
		} else {
			with = append(with, c.Wall)
		}
	}
	p0, p10 := ms(sandbox.Percentile(without, 50)), ms(sandbox.Percentile(with, 50))
	return map[string]float64{"add_pub0_p50_ms": p0, "add_pub10_p50_ms": p10, "add_pub10_extra_ms": p10 - p0}, nil
}

// bareLabel names the bare veth pair in the output.
const bareLabel = "bare veth"

// divide divides each figure of metrics in a by the same figure in b: nil
// where either has none, no entry for figures without a better direction.
func divide(metrics []metricInfo, a, b map[string]float64) map[string]*float64 {
	r := map[string]*float64{}
	for _, m := range metrics {
		if m.Better == "" {
			continue
		}
		va, okA := a[m.Name]
		vb, okB := b[m.Name]
		if !okA || !okB || vb == 0 {
			r[m.Name] = nil
			continue
		}
		q := va / vb
		r[m.Name] = &q
	}
	return r
}
