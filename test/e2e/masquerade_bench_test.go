package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/datapath/program"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// delBesideFlows is how many translations of another container the NAT
// table holds in BenchmarkDelBesideFlows (issue 11: DEL with 100,000 other
// flows costs under 5 ms more than DEL on an empty table).
const delBesideFlows = 100_000

// BenchmarkDelBesideFlows times the CNI DEL (through libcni, the whole
// plugin process) of a container on a masquerading node, first while the
// NAT table holds no flow, then while it holds delBesideFlows live flows of
// another container on the node, on the same node. Each iteration ADDs the
// container again, untimed. Run it with -benchtime=Nx: an iteration is an
// ADD and a DEL, tens of milliseconds.
func BenchmarkDelBesideFlows(b *testing.B) {
	sb := sandbox.ForTest(b)
	n := newNetwork(b, sb, masqConf("masq", "br-masq", b.TempDir(), masqRanges4, ""), bins.PluginDir())
	// The flows' owner: it keeps the network's masquerade state while the
	// benchmarked container comes and goes.
	holder := n.attach("holder")
	ctr, err := sb.NewContainer("leaving")
	if err != nil {
		b.Fatal(err)
	}
	for _, flows := range []int{0, delBesideFlows} {
		if flows > 0 {
			fillFlows(b, sb, holder.ip, flows)
		}
		b.Run(fmt.Sprintf("flows=%d", flows), func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				n.mustAdd(ctr, "leaving", "eth0")
				b.StartTimer()
				if err := n.del(ctr, "leaving", "eth0"); err != nil {
					b.Fatal(err)
				}
			}
			// DEL left the other container's translations alone.
			if got := liveFlows(b, sb, holder.ip); got != flows {
				b.Fatalf("%d live flows of %v after the DELs, want %d", got, holder.ip, flows)
			}
		})
	}
}

// fillFlows writes count live, established TCP translations of the
// container address src to distinct remotes into the node's nat_out and
// nat_in, as the programs would have created them (the pair's halves are
// each other's reply; see program.BpfbridgeNatTuple.Reply), through the
// typed codec of datapath/program.
func fillFlows(b *testing.B, sb *sandbox.Sandbox, src netip.Addr, count int) {
	b.Helper()
	out, in := writableNATMaps(b, sb)
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		b.Fatal(err)
	}
	now := uint64(ts.Nano()) // bpf_ktime_get_ns's clock
	uplink := linkIn(b, sb.Node, sandbox.NodeUplinkName).Attrs().Index
	outKeys := make([]program.BpfbridgeNatTuple, count)
	outVals := make([]program.BpfbridgeNatEntry, count)
	inKeys := make([]program.BpfbridgeNatTuple, count)
	inVals := make([]program.BpfbridgeNatEntry, count)
	remote := netip.MustParseAddr("100.64.0.0")
	for i := range count {
		// Distinct remotes (100.64.0.1, …), one flow each, the container's
		// port kept, as port preservation does.
		remote = remote.Next()
		sport := uint16(10000 + i%50000)
		fwd := program.NATTupleOf(unix.IPPROTO_TCP, netip.AddrPortFrom(src, sport), netip.AddrPortFrom(remote, 80))
		entry := program.BpfbridgeNatEntry{State: uint8(program.BpfbridgeCtStateCT_ESTABLISHED), Uplink: uint32(uplink),
			CreatedNs: now, LastSeenNs: now}
		entry.Addr, entry.Port = program.IPKeyOf(sb.NodeUplink4.Addr()).Addr, program.Be16(sport)
		outKeys[i], outVals[i] = fwd, entry
		back := entry
		back.Addr, back.Port = fwd.Src, fwd.Sport
		inKeys[i], inVals[i] = fwd.Reply(&entry), back
	}
	for _, m := range []struct {
		m    *ebpf.Map
		keys []program.BpfbridgeNatTuple
		vals []program.BpfbridgeNatEntry
	}{{out, outKeys, outVals}, {in, inKeys, inVals}} {
		if n, err := m.m.BatchUpdate(m.keys, m.vals, nil); err != nil || n != count {
			b.Fatalf("fill %v: %d of %d written: %v", m.m, n, count, err)
		}
	}
	// The datapath reads them back as whole, live pairs of src.
	if got := liveFlows(b, sb, src); got != count {
		b.Fatalf("%d live flows of %v after the fill, want %d", got, src, count)
	}
}

// writableNATMaps opens the node's nat_out and nat_in, found where the
// datapath reports them pinned, for writing.
func writableNATMaps(b *testing.B, sb *sandbox.Sandbox) (out, in *ebpf.Map) {
	b.Helper()
	maps, err := openDatapath(b, sb).Maps()
	if err != nil {
		b.Fatal(err)
	}
	for _, pm := range maps {
		var dst **ebpf.Map
		switch pm.Name {
		case program.BpfbridgeMapNatOut:
			dst = &out
		case program.BpfbridgeMapNatIn:
			dst = &in
		default:
			continue
		}
		if *dst, err = ebpf.LoadPinnedMap(pm.Path, nil); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { (*dst).Close() })
	}
	if out == nil || in == nil {
		b.Fatal("no nat_out or nat_in pinned: masquerade state missing")
	}
	return out, in
}

// liveFlows counts the translations of container address src that the
// datapath reports whole (both halves) and unexpired.
func liveFlows(b *testing.B, sb *sandbox.Sandbox, src netip.Addr) int {
	b.Helper()
	flows, err := openDatapath(b, sb).Flows()
	if err != nil && !errors.Is(err, datapath.ErrNoFlows) {
		b.Fatal(err)
	}
	live := 0
	for _, f := range flows {
		if f.Container.Addr() == src && !f.HalfOnly && f.ExpiresIn > 0 {
			live++
		}
	}
	return live
}
