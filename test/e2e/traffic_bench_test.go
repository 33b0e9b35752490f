package e2e

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// BenchmarkContainerTraffic measures what the datapath costs traffic
// between two containers on one network: TCP stream throughput and TCP
// request/response latency, first with the programs attached, then on the
// same containers with them removed.
func BenchmarkContainerTraffic(b *testing.B) {
	if attachMode() != "legacy" {
		b.Skip("detaching for the baseline removes cls_bpf filters: run in the default attach mode")
	}
	sb := sandbox.ForTest(b)
	n := newNetwork(b, sb, isoConf("traffic", "br-traffic", "10.140.0.0/24", "network", b.TempDir()), bins.PluginDir())
	from, to := n.attach("t0"), n.attach("t1")
	veths := []string{hostVeth(b, sb, from), hostVeth(b, sb, to)}
	for _, phase := range []string{"attached", "detached"} {
		if phase == "detached" {
			removeClsact(b, sb, veths)
		}
		b.Run("programs="+phase, func(b *testing.B) {
			for b.Loop() {
				gbps := streamThroughput(b, from, to, 2*time.Second)
				rtts := requestResponse(b, from, to, 20000, 2*time.Second)
				b.ReportMetric(gbps, "Gbit/s")
				b.ReportMetric(float64(percentile(rtts, 50).Nanoseconds())/1e3, "rr-p50-µs")
				b.ReportMetric(float64(percentile(rtts, 99).Nanoseconds())/1e3, "rr-p99-µs")
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

// connect opens a TCP connection from one container to the other and
// returns both ends.
func connect(b *testing.B, from, to container) (client, server net.Conn) {
	var ln net.Listener
	if err := to.ns.Do(func() (err error) { ln, err = net.Listen("tcp", netip.AddrPortFrom(to.ip, 0).String()); return err }); err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	if err := from.ns.Do(func() (err error) {
		client, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	return client, server
}

// streamThroughput sends as fast as it can for d and returns Gbit/s.
func streamThroughput(b *testing.B, from, to container, d time.Duration) float64 {
	client, server := connect(b, from, to)
	defer server.Close()
	done := make(chan int64)
	go func() {
		n, _ := io.Copy(io.Discard, server)
		done <- n
	}()
	chunk := make([]byte, 128<<10)
	deadline := time.Now().Add(d)
	start := time.Now()
	for time.Now().Before(deadline) {
		if _, err := client.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	client.Close()
	received := <-done
	return float64(received*8) / time.Since(start).Seconds() / 1e9
}

// requestResponse times 1-byte request/response exchanges over one
// connection, at most count of them and for at most d.
func requestResponse(b *testing.B, from, to container, count int, d time.Duration) []time.Duration {
	client, server := connect(b, from, to)
	defer client.Close()
	defer server.Close()
	go func() {
		buf := make([]byte, 1)
		for {
			if _, err := io.ReadFull(server, buf); err != nil {
				return
			}
			if _, err := server.Write(buf); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 1)
	rtts := make([]time.Duration, 0, count)
	deadline := time.Now().Add(d)
	for len(rtts) < count && time.Now().Before(deadline) {
		start := time.Now()
		if _, err := client.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(client, buf); err != nil {
			b.Fatal(err)
		}
		rtts = append(rtts, time.Since(start))
	}
	return rtts
}
