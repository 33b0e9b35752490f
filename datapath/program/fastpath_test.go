package program_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

const verdictRedirect = 7 // TC_ACT_REDIRECT

// TestFastPath: which frames from_container delivers itself with
// bpf_redirect_peer (verdict redirect, the receiver's policy applied and its
// counters moved, the sender's fast path counter too), and which it leaves
// to the bridge, and why.
func TestFastPath(t *testing.T) {
	fast := program.BpfbridgeEndpointFlagsEP_F_FAST_PATH
	cases := []struct {
		name  string
		setup func(e *env)
		frame func(e *env) []byte
		// verdict of from_container on a; reason a drop counts under on b
		// (or on a when the sender's own policy drops it).
		verdict uint32
		dropOn  func(e *env) *testEndpoint
		reason  program.DropReason
	}{
		{"to a neighbour's MAC", nil,
			func(e *env) []byte { return udp4To(e.a.mac, e.b.mac, e.a.v4(), e.b.v4()) }, verdictRedirect, nil, pass},
		{"IPv6 link-local to a neighbour's MAC", nil,
			func(e *env) []byte { return ping6(e.a.mac, e.b.mac, e.a.ll(), e.b.ll()) }, verdictRedirect, nil, pass},
		{"to another network: the sender's policy drops it", nil,
			func(e *env) []byte { return udp4To(e.a.mac, e.c.mac, e.a.v4(), e.c.v4()) }, verdictDrop, epA, cross},
		{"to another network from mode none: the receiver's policy drops it",
			func(e *env) { e.setIsolation(t, e.a, modeNone) },
			func(e *env) []byte { return udp4To(e.a.mac, e.c.mac, e.a.v4(), e.c.v4()) }, verdictDrop, epC, cross},
		{"to a neighbour in container mode: the receiver's policy drops it",
			func(e *env) { e.setIsolation(t, e.a, modeNone); e.setIsolation(t, e.b, modeContainer) },
			func(e *env) []byte { return udp4To(e.a.mac, e.b.mac, e.a.v4(), e.b.v4()) }, verdictDrop, epB, same},
		{"to a neighbour in container mode from network mode: the receiver's policy drops it (the owners the sender's isolation found)",
			func(e *env) { e.setIsolation(t, e.b, modeContainer) },
			func(e *env) []byte { return udp4To(e.a.mac, e.b.mac, e.a.v4(), e.b.v4()) }, verdictDrop, epB, same},
		{"broadcast takes the bridge", nil,
			func(e *env) []byte { return udp4To(e.a.mac, broadcast, e.a.v4(), ip("255.255.255.255")) }, verdictPass, nil, pass},
		{"multicast takes the bridge", nil,
			func(e *env) []byte { return ping6(e.a.mac, allNodesHW, e.a.ll(), allNodes6) }, verdictPass, nil, pass},
		{"an unknown MAC takes the bridge", nil,
			func(e *env) []byte { return udp4To(e.a.mac, evilMAC, e.a.v4(), evil4) }, verdictPass, nil, pass},
		{"the gateway's MAC takes the bridge", nil,
			func(e *env) []byte { return udp4To(e.a.mac, gwMAC, e.a.v4(), e.b.v4()) }, verdictPass, nil, pass},
		{"ARP takes the bridge", nil,
			func(e *env) []byte {
				return eth(e.b.mac, e.a.mac, 0x0806, arp(2, e.a.mac, e.a.v4(), e.b.mac, e.b.v4()))
			}, verdictPass, nil, pass},
		{"br_netfilter: a TCP segment past the SYN, no flow of conntrack", bridgeNF,
			func(e *env) []byte { return tcp4To(e.a, e.b, 0x10) }, verdictRedirect, nil, pass},
		{"br_netfilter: a SYN takes the bridge (netfilter sees every new connection)", bridgeNF,
			func(e *env) []byte { return tcp4To(e.a, e.b, 0x02) }, verdictPass, nil, pass},
		{"br_netfilter: UDP takes the bridge (no state says where its flow started)", bridgeNF,
			func(e *env) []byte { return udp4To(e.a.mac, e.b.mac, e.a.v4(), e.b.v4()) }, verdictPass, nil, pass},
		{"a receiver without the fast path", func(e *env) { e.b.flags &^= fast; e.putEndpoint(t, e.b) },
			func(e *env) []byte { return udp4To(e.a.mac, e.b.mac, e.a.v4(), e.b.v4()) }, verdictPass, nil, pass},
		{"a sender without the fast path", func(e *env) { e.a.flags &^= fast; e.putEndpoint(t, e.a) },
			func(e *env) []byte { return udp4To(e.a.mac, e.b.mac, e.a.v4(), e.b.v4()) }, verdictPass, nil, pass},
		{"a receiver on another bridge", func(e *env) { e.b.bridge = 200; e.putEndpoint(t, e.b) },
			func(e *env) []byte { return udp4To(e.a.mac, e.b.mac, e.a.v4(), e.b.v4()) }, verdictPass, nil, pass},
		{"a bridge nobody recorded", func(e *env) { e.a.bridge, e.b.bridge = 0, 0; e.putEndpoint(t, e.a); e.putEndpoint(t, e.b) },
			func(e *env) []byte { return udp4To(e.a.mac, e.b.mac, e.a.v4(), e.b.v4()) }, verdictPass, nil, pass},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			for _, ep := range []*testEndpoint{e.a, e.b, e.c} {
				ep.flags |= fast
				ep.bridge = 100
				e.putEndpoint(t, ep)
			}
			if tc.setup != nil {
				tc.setup(e)
			}
			frame := tc.frame(e)
			rcvBefore, _ := e.stats(t, e.b.ifindex)
			got := e.run(t, e.objs.FromContainer, e.a.ifindex, frame, 0)
			if got != tc.verdict {
				t.Fatalf("verdict %d, want %d", got, tc.verdict)
			}
			sndAfter, _ := e.stats(t, e.a.ifindex)
			if sndAfter.FromPackets != 1 {
				t.Errorf("sender counted %d packets sent, want 1", sndAfter.FromPackets)
			}
			rcvAfter, _ := e.stats(t, e.b.ifindex)
			delivered := rcvAfter.ToPackets - rcvBefore.ToPackets
			wantDelivered := uint64(0)
			if tc.verdict == verdictRedirect {
				wantDelivered = 1
			}
			if delivered != wantDelivered || (wantDelivered == 1 && rcvAfter.ToBytes-rcvBefore.ToBytes != uint64(len(frame))) {
				t.Errorf("receiver counted %d packets delivered, want %d", delivered, wantDelivered)
			}
			if n := e.fastPathPackets(t, e.a.ifindex); n != wantDelivered {
				t.Errorf("sender's fast path counter %d, want %d", n, wantDelivered)
			}
			if tc.dropOn != nil {
				st, _ := e.stats(t, tc.dropOn(e).ifindex)
				if st.Drops[tc.reason] != 1 {
					t.Errorf("%s counted %d %v drops, want 1", tc.dropOn(e).name, st.Drops[tc.reason], tc.reason)
				}
			}
		})
	}
}

// bridgeNF marks endpoint a as on a node whose netfilter sees bridged
// frames (EP_F_BRIDGE_NF).
func bridgeNF(e *env) {
	e.a.flags |= program.BpfbridgeEndpointFlagsEP_F_BRIDGE_NF
	if err := e.objs.Endpoints.Put(e.a.ifindex, e.a.entry()); err != nil {
		panic(err)
	}
}

// tcp4To is a TCP segment with flags from endpoint a to b, on the bridge.
func tcp4To(a, b *testEndpoint, flags uint8) []byte {
	return ipv4Frame(a.mac, b.mac, a.v4(), b.v4(), protoTCP, tcpSeg(a.v4(), b.v4(), 40000, 80, flags, 1, 1, 1000, nil))
}

func (e *env) fastPathPackets(t *testing.T, ifindex uint32) uint64 {
	t.Helper()
	var per []uint64
	err := e.objs.FastPathStats.Lookup(ifindex, &per)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return program.SumUint64(per)
}

// BenchmarkFastPathDecision: what from_container costs a 64-byte UDP
// datagram to a neighbour that it delivers by the fast path (anti-spoofing,
// both endpoints' isolation and counters, the redirect's decision), run with
// BPF_PROG_TEST_RUN: nanoseconds per run by the kernel's run-time
// statistics, enabled only while their fd is open. No traffic and no
// forwarding (the redirect helper only records its target here), so
// unlike an end-to-end figure it hardly moves with the machine's load.
func BenchmarkFastPathDecision(b *testing.B) {
	const runs = 200000
	e := newEnv(b)
	for _, ep := range []*testEndpoint{e.a, e.b, e.c} {
		ep.flags |= program.BpfbridgeEndpointFlagsEP_F_FAST_PATH
		ep.bridge = 100
		e.putEndpoint(b, ep)
	}
	frame := ipv4Frame(e.a.mac, e.b.mac, e.a.v4(), e.b.v4(), protoUDP, udp(e.a.v4(), e.b.v4(), 40000, 53, make([]byte, 64)))
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		b.Fatalf("enable BPF run-time statistics: %v", err)
	}
	defer stats.Close()
	prog := e.objs.FromContainer
	for b.Loop() {
		before, err := prog.Stats()
		if err != nil {
			b.Fatal(err)
		}
		if got := e.run(b, prog, e.a.ifindex, frame, runs); got != verdictRedirect {
			b.Fatalf("verdict %d, want redirect", got)
		}
		after, err := prog.Stats()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(after.Runtime-before.Runtime)/float64(after.RunCount-before.RunCount), "ns/run")
	}
}

// TestFastPathNodeMulticast: on a bridge that does not snoop
// (EP_F_NODE_MCAST), a container's router solicitations and MLD reports go
// to the node past the bridge (verdict redirect, counted by the fast path,
// delivered to no endpoint); everything else multicast, duplicate address
// detection first, still takes the bridge, as everything does from an
// endpoint without the flag.
func TestFastPathNodeMulticast(t *testing.T) {
	allRouters, mldRouters, zero6 := ip("ff02::2"), ip("ff02::16"), netip.IPv6Unspecified()
	rsFrame := func(e *env) []byte {
		return icmp6Frame(e.a.mac, multicastMAC(allRouters), e.a.ll(), allRouters,
			rs(e.a.ll(), allRouters, ndOpt(ndOptSourceLL, e.a.mac)))
	}
	mldFrame := func(e *env) []byte {
		return eth(multicastMAC(mldRouters), e.a.mac, etherTypeIPv6,
			ipv6(zero6, mldRouters, protoHop, 1, mld2Report(zero6, mldRouters, solicitedNode(e.a.v6()))))
	}
	cases := []struct {
		name    string
		flags   program.BpfbridgeEndpointFlags
		frame   func(e *env) []byte
		verdict uint32
	}{
		{"router solicitation", program.BpfbridgeEndpointFlagsEP_F_NODE_MCAST, rsFrame, verdictRedirect},
		{"MLDv2 report from ::", program.BpfbridgeEndpointFlagsEP_F_NODE_MCAST, mldFrame, verdictRedirect},
		{"duplicate address detection takes the bridge", program.BpfbridgeEndpointFlagsEP_F_NODE_MCAST,
			func(e *env) []byte {
				sn := solicitedNode(e.a.v6())
				return icmp6Frame(e.a.mac, multicastMAC(sn), zero6, sn, ns(zero6, sn, e.a.v6()))
			}, verdictPass},
		{"an echo to all nodes takes the bridge", program.BpfbridgeEndpointFlagsEP_F_NODE_MCAST,
			func(e *env) []byte { return ping6(e.a.mac, allNodesHW, e.a.ll(), allNodes6) }, verdictPass},
		{"a router solicitation on a snooping bridge takes it", 0, rsFrame, verdictPass},
		{"an MLD report on a snooping bridge takes it", 0, mldFrame, verdictPass},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			for _, ep := range []*testEndpoint{e.a, e.b} {
				ep.flags |= program.BpfbridgeEndpointFlagsEP_F_FAST_PATH | tc.flags
				ep.bridge = 100
				e.putEndpoint(t, ep)
			}
			if got := e.run(t, e.objs.FromContainer, e.a.ifindex, tc.frame(e), 0); got != tc.verdict {
				t.Fatalf("verdict %d, want %d", got, tc.verdict)
			}
			wantFast := uint64(0)
			if tc.verdict == verdictRedirect {
				wantFast = 1
			}
			if n := e.fastPathPackets(t, e.a.ifindex); n != wantFast {
				t.Errorf("sender's fast path counter %d, want %d", n, wantFast)
			}
			snd, _ := e.stats(t, e.a.ifindex)
			rcv, _ := e.stats(t, e.b.ifindex)
			if snd.FromPackets != 1 || rcv.ToPackets != 0 {
				t.Errorf("counted %d sent by %s and %d delivered to %s, want 1 and 0", snd.FromPackets, e.a.name, rcv.ToPackets, e.b.name)
			}
		})
	}
}
