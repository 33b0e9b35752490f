package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

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
