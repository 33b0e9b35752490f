package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// BenchmarkContainerTraffic measures what the datapath costs traffic
// between two containers on one network: TCP stream throughput and TCP
// request/response latency, first with the programs attached, then on the
// same containers with them removed.
func BenchmarkContainerTraffic(b *testing.B) {
	if attachMode() != datapath.AttachLegacy {
		b.Skip("detaching for the baseline removes cls_bpf filters: run in the default attach mode")
	}
	sb := sandbox.ForTest(b)
	n := newNetwork(b, sb, isoConf("traffic", "br-traffic", "10.140.0.0/24", "network", b.TempDir()), bins.PluginDir())
	from, to := n.attach("t0"), n.attach("t1")
	ctx := context.Background()
	veths := []string{hostVeth(b, sb, from), hostVeth(b, sb, to)}
	for _, phase := range []string{"attached", "detached"} {
		if phase == "detached" {
			removeClsact(b, sb, veths)
		}
		b.Run("programs="+phase, func(b *testing.B) {
			for b.Loop() {
				bps, err := sandbox.TCPStream(ctx, from.ns, to.ns, to.ip, 2*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				rtts, err := sandbox.TCPRequestResponse(ctx, from.ns, to.ns, to.ip, 2*time.Second, 20000)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(bps/1e9, "Gbit/s")
				b.ReportMetric(float64(sandbox.Percentile(rtts, 50).Nanoseconds())/1e3, "rr-p50-µs")
				b.ReportMetric(float64(sandbox.Percentile(rtts, 99).Nanoseconds())/1e3, "rr-p99-µs")
			}
		})
	}
}

// removeClsact deletes the clsact qdisc, and with it the datapath's
// filters, of the node's links names.
func removeClsact(b *testing.B, sb *sandbox.Sandbox, names []string) {
	err := sb.InNode(func() error {
		for _, name := range names {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index,
				Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
			if err := netlink.QdiscDel(q); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

// udpBenchPhase is how long BenchmarkContainerUDP floods each path per
// iteration.
const udpBenchPhase = 3 * time.Second

// BenchmarkContainerUDP measures what the fast path costs a small packet: a
// flood of 64-byte UDP datagrams from one container to another of its
// bridge, which the sender's from_container delivers by bpf_redirect_peer,
// beside the same flood on a bare veth pair (the physical limit), in turns.
// It reports datagrams received per second on each, and for the containers
// the kernel's run-time statistics of the programs on the way: nanoseconds
// per from_container run (the fast path's whole decision) and how many
// times each program ran per datagram received (to_container none when the
// fast path took them all). The bare-ratio of path=c2c is against the
// path=bare run just before it. Run it with -benchtime=Nx: an iteration
// floods a path for udpBenchPhase. `perf record -a -g` while
// -bench 'ContainerUDP/path=c2c' runs shows where the rest of the time goes.
func BenchmarkContainerUDP(b *testing.B) {
	sb := sandbox.ForTest(b)
	conf := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "udp", "type": "bridge", "bridge": "br-udp",
		"isGateway": true, "datapath": {"bpffs": %q, "fastPath": true},
		"ipam": {"type": "host-local", "subnet": "10.141.0.0/24", "dataDir": %q}}`, sb.BPFFS, b.TempDir())
	n := newNetwork(b, sb, conf, bins.PluginDir())
	from, to := n.attach("u0"), n.attach("u1")
	// The pair's namespaces start with the node's prefix: the sandbox's
	// cleanup removes them with its own.
	pair, err := sandbox.NewVethPair(sb.Prefix+"pair-", 1500)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pair.Close() })
	progs := endpointPrograms(b, sb, hostVeth(b, sb, from), hostVeth(b, sb, to))
	// The kernel counts programs' run time only while an fd of this
	// kind is open; closing it turns the statistics off again.
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		b.Fatalf("enable BPF run-time statistics: %v", err)
	}
	defer stats.Close()
	ctx := context.Background()
	bare := rateRun(b, "path=bare", "pps", 0, nil, func() (float64, error) {
		pps, _, err := sandbox.UDPRate(ctx, pair.A, pair.B, pair.AddrB, 64, udpBenchPhase)
		return pps, err
	}, nil)
	rateRun(b, "path=c2c", "pps", bare, progs, func() (float64, error) {
		pps, _, err := sandbox.UDPRate(ctx, from.ns, to.ns, to.ip, 64, udpBenchPhase)
		return pps, err
	}, func(b *testing.B, pps float64, runs, runTime []float64) {
		received := max(pps*udpBenchPhase.Seconds(), 1)
		b.ReportMetric(runTime[0]/max(runs[0], 1), "ns/from_container")
		b.ReportMetric(runs[0]/received, "from_container/pkt")
		b.ReportMetric(runs[1]/received, "to_container/pkt")
	})
}

// rateRun runs the sub-benchmark name: each iteration measures a rate,
// reported in unit and, when bare (the bare pair's, measured just before)
// is not 0, as a ratio to it. With progs, report also gets how many times
// each of them ran and for how many nanoseconds during the measurement (the
// kernel's run-time statistics). It returns the last rate.
func rateRun(b *testing.B, name, unit string, bare float64, progs []*ebpf.Program, measure func() (float64, error),
	report func(b *testing.B, rate float64, runs, runTime []float64)) float64 {
	var rate float64
	b.Run(name, func(b *testing.B) {
		for b.Loop() {
			before := programStats(b, progs)
			var err error
			if rate, err = measure(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(rate, unit)
			if bare > 0 {
				b.ReportMetric(rate/bare, "bare-ratio")
			}
			if report == nil {
				continue
			}
			runs, runTime := make([]float64, len(progs)), make([]float64, len(progs))
			for i, after := range programStats(b, progs) {
				runs[i] = float64(after.RunCount - before[i].RunCount)
				runTime[i] = float64(after.Runtime - before[i].Runtime)
			}
			report(b, rate, runs, runTime)
		}
	})
	return rate
}

// endpointPrograms opens the programs at the sender's host veth's tc
// ingress (from_container) and the receiver's tc egress (to_container).
func endpointPrograms(b *testing.B, sb *sandbox.Sandbox, sender, receiver string) []*ebpf.Program {
	var ingress, egress []ebpf.ProgramID
	for _, a := range inNode(b, sb, "list tc programs", datapath.TCAttachments) {
		switch {
		case a.IfName == sender && a.Direction == "ingress":
			ingress = append(ingress, a.ProgramID)
		case a.IfName == receiver && a.Direction == "egress":
			egress = append(egress, a.ProgramID)
		}
	}
	if len(ingress) != 1 || len(egress) != 1 {
		b.Fatalf("programs on %s ingress %v and %s egress %v, want one each", sender, ingress, receiver, egress)
	}
	var progs []*ebpf.Program
	for _, id := range []ebpf.ProgramID{ingress[0], egress[0]} {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { p.Close() })
		progs = append(progs, p)
	}
	return progs
}

// programStats reads the run-time statistics of each of progs.
func programStats(b *testing.B, progs []*ebpf.Program) []ebpf.ProgramStats {
	var out []ebpf.ProgramStats
	for _, p := range progs {
		s, err := p.Stats()
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, *s)
	}
	return out
}

// connectBenchPhase is how long BenchmarkMasqueradeConnect opens
// connections on each path per iteration.
const connectBenchPhase = 3 * time.Second

// BenchmarkMasqueradeConnect measures what the datapath costs a new
// connection through masquerade: TCP connect-and-close from a container to
// the external namespace, as fast as one client goes, beside the same on a
// bare veth pair (the physical limit), in turns. For the container it
// reports connections per second, the ratio to the bare pair's run just
// before, and, from the kernel's run-time statistics, each program's runs
// and nanoseconds per connection, by where it is attached: what of a
// connection's time is ours, and which packets take which path (a
// connection's SYN takes the stack, the rest the fast path).
func BenchmarkMasqueradeConnect(b *testing.B) {
	sb := sandbox.ForTest(b)
	n := newNetwork(b, sb, masqConf("crr", "br-crr", b.TempDir(), `[[{"subnet": "10.172.0.0/24"}]]`,
		fmt.Sprintf(`"datapath": {"bpffs": %q, "fastPath": true}`, sb.BPFFS)), bins.PluginDir())
	c := n.attach("crr0")
	pair, err := sandbox.NewVethPair(sb.Prefix+"pair-", 1500)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pair.Close() })
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		b.Fatalf("enable BPF run-time statistics: %v", err)
	}
	defer stats.Close()
	ctx := context.Background()
	// A short run first resolves the neighbours on the way.
	if _, err := sandbox.TCPConnectRate(ctx, c.ns, sb.External, sb.Internet4, 200*time.Millisecond); err != nil {
		b.Fatal(err)
	}
	var (
		progs []*ebpf.Program
		names []string // program@hook
	)
	for _, a := range inNode(b, sb, "list tc programs", datapath.TCAttachments) {
		p, err := ebpf.NewProgramFromID(a.ProgramID)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { p.Close() })
		info, err := p.Info()
		if err != nil {
			b.Fatal(err)
		}
		hook := "uplink-" + a.Direction
		if a.IfName != sandbox.NodeUplinkName {
			hook = "veth-" + a.Direction
		}
		progs, names = append(progs, p), append(names, info.Name+"@"+hook)
	}
	bare := rateRun(b, "path=bare", "conn/s", 0, nil, func() (float64, error) {
		return sandbox.TCPConnectRate(ctx, pair.A, pair.B, pair.AddrB, connectBenchPhase)
	}, nil)
	rateRun(b, "path=c2ext", "conn/s", bare, progs, func() (float64, error) {
		return sandbox.TCPConnectRate(ctx, c.ns, sb.External, sb.Internet4, connectBenchPhase)
	}, func(b *testing.B, rate float64, runs, runTime []float64) {
		conns := max(rate*connectBenchPhase.Seconds(), 1)
		for i, name := range names {
			b.ReportMetric(runs[i]/conns, "runs/conn:"+name)
			b.ReportMetric(runTime[i]/conns, "ns/conn:"+name)
		}
	})
}
