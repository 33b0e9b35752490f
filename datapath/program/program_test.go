package program_test

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath/program"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// These tests run the programs with BPF_PROG_TEST_RUN on crafted frames: no
// traffic, no attachment. The kernel sets skb->ifindex from the context only
// to a device that exists in the caller's network namespace (else ENODEV),
// so the runs happen inside a throwaway namespace holding two veth pairs,
// whose four ifindexes stand for host-side veths.

const (
	verdictPass = 0xffffffff // TC_ACT_UNSPEC (-1)
	verdictDrop = 2          // TC_ACT_SHOT

)

// skbContext is the head of struct __sk_buff up to ifindex, the context
// BPF_PROG_TEST_RUN accepts for tc programs. The kernel requires the fields
// it does not support (everything here but mark, priority, ingress_ifindex
// and ifindex) to be zero, and zero-fills what we leave out.
type skbContext struct {
	Len, PktType, Mark, QueueMapping, Protocol uint32
	VlanPresent, VlanTCI, VlanProto, Priority  uint32
	IngressIfindex, Ifindex                    uint32
}

// A container attachment for the tests.
type testEndpoint struct {
	name      string
	mac       net.HardwareAddr
	network   uint32
	isolation program.BpfbridgeIsolationMode
	flags     program.BpfbridgeEndpointFlags
	ipv4      []netip.Addr
	ipv6      []netip.Addr
	bridge    uint32 // ifindex of its bridge, for the fast path; 0: unknown
	ifindex   uint32 // filled in by newEnv
}

func (ep *testEndpoint) ll() netip.Addr { return linkLocal(ep.mac) }
func (ep *testEndpoint) v4() netip.Addr { return ep.ipv4[0] }
func (ep *testEndpoint) v6() netip.Addr { return ep.ipv6[0] }

func (ep *testEndpoint) entry() program.BpfbridgeEndpoint {
	e := program.BpfbridgeEndpoint{Isolation: uint8(ep.isolation), Flags: uint8(ep.flags), Network: ep.network}
	if err := e.SetAddrs(ep.mac, slices.Concat(ep.ipv4, ep.ipv6)); err != nil {
		panic(err)
	}
	return e
}

// The test namespace's addresses other than the endpoints'.
var (
	// The bridge's gateway.
	gwMAC = mac("02:00:00:00:00:01")
	gw4   = ip("10.0.0.1")
	gw6   = ip("fd00::1")
	// A foreign MAC and addresses nobody on the bridge owns.
	evilMAC = mac("02:66:66:66:66:66")
	evil4   = ip("10.0.0.66")
	evil6   = ip("fd00::66")
	// The masquerade tests' uplink (nat_test.go), the router behind it, a
	// remote host and a destination prefix excluded from masquerading.
	uplinkMAC = mac("02:00:00:00:00:99")
	routerMAC = mac("02:00:00:00:00:fe")
	uplink4   = ip("203.0.113.1")
	uplink6   = ip("2001:db8::1")
	router4   = ip("198.51.100.1")
	router6   = ip("2001:db8:ffff::1")
	remote4   = ip("198.51.100.7")
	remote6   = ip("2001:db8:ffff::7")
	excluded4 = netip.MustParsePrefix("192.0.2.0/24")
)

// Fresh endpoints for every env: A and B share network 1, C is network 2.
// The fourth ifindex has no endpoint.
func testEndpoints() (a, b, c *testEndpoint) {
	a = &testEndpoint{name: "a", mac: mac("02:00:00:00:00:0a"), network: 1, isolation: program.BpfbridgeIsolationModeISOLATION_NETWORK,
		ipv4: []netip.Addr{ip("10.0.0.10"), ip("10.0.0.20")}, ipv6: []netip.Addr{ip("fd00::10")}}
	b = &testEndpoint{name: "b", mac: mac("02:00:00:00:00:0b"), network: 1, isolation: program.BpfbridgeIsolationModeISOLATION_NETWORK,
		ipv4: []netip.Addr{ip("10.0.0.11")}, ipv6: []netip.Addr{ip("fd00::11")}}
	c = &testEndpoint{name: "c", mac: mac("02:00:00:00:00:0c"), network: 2, isolation: program.BpfbridgeIsolationModeISOLATION_NETWORK,
		ipv4: []netip.Addr{ip("10.0.1.12")}, ipv6: []netip.Addr{ip("fd00:1::12")}}
	return a, b, c
}

// The namespace and its four ifindexes, shared by all tests of the binary.
var (
	nsOnce    sync.Once
	testNS    *sandbox.NetNS
	nsIfindex []uint32
	nsErr     error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if testNS != nil {
		if err := testNS.Delete(); err != nil {
			fmt.Fprintln(os.Stderr, "delete test netns:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func setupNetNS() (*sandbox.NetNS, []uint32, error) {
	nsOnce.Do(func() {
		var rnd [4]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			nsErr = err
			return
		}
		testNS, nsErr = sandbox.NewNetNS("bpfb-prog-" + hex.EncodeToString(rnd[:]))
		if nsErr != nil {
			return
		}
		nsErr = testNS.Do(func() error {
			for i := range 2 {
				veth := &netlink.Veth{
					LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("hveth%d", i)},
					PeerName:  fmt.Sprintf("cveth%d", i),
				}
				if err := netlink.LinkAdd(veth); err != nil {
					return fmt.Errorf("add veth: %w", err)
				}
				for _, name := range []string{veth.Name, veth.PeerName} {
					l, err := netlink.LinkByName(name)
					if err != nil {
						return err
					}
					nsIfindex = append(nsIfindex, uint32(l.Attrs().Index))
				}
			}
			return nil
		})
	})
	return testNS, nsIfindex, nsErr
}

type env struct {
	ns       *sandbox.NetNS
	objs     program.BpfbridgeObjects
	a, b, c  *testEndpoint
	noEP     uint32 // an ifindex without endpoint
	possible int
}

// newEnv loads a fresh collection (fresh maps: counters and the event
// budget start at zero) with endpoints a, b and c.
func newEnv(t testing.TB) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loading BPF programs and creating a network namespace need root")
	}
	netns, idx, err := setupNetNS()
	if err != nil {
		t.Fatalf("test netns: %v", err)
	}
	spec, err := program.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	e := &env{ns: netns, noEP: idx[3]}
	if err := spec.LoadAndAssign(&e.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("verifier rejected the programs: %+v", ve)
		}
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { e.objs.Close() })
	if e.possible, err = ebpf.PossibleCPU(); err != nil {
		t.Fatal(err)
	}
	e.a, e.b, e.c = testEndpoints()
	for i, ep := range []*testEndpoint{e.a, e.b, e.c} {
		ep.ifindex = idx[i]
		e.putEndpoint(t, ep)
	}
	return e
}

// putEndpoint writes ep's endpoint and ip_owners entries, as the control
// plane does at ADD (and again when a test changes the isolation mode).
func (e *env) putEndpoint(t testing.TB, ep *testEndpoint) {
	t.Helper()
	if err := e.objs.Endpoints.Put(ep.ifindex, ep.entry()); err != nil {
		t.Fatal(err)
	}
	for _, a := range append(append([]netip.Addr{}, ep.ipv4...), ep.ipv6...) {
		if err := e.objs.IpOwners.Put(program.IPKeyOf(a), program.BpfbridgeIpOwner{Ifindex: ep.ifindex, Network: ep.network}); err != nil {
			t.Fatal(err)
		}
	}
	owner := program.BpfbridgeMacOwner{Ifindex: ep.ifindex, Network: ep.network, Isolation: uint8(ep.isolation), Bridge: ep.bridge}
	if err := e.objs.MacOwners.Put(program.BpfbridgeMacKey{Mac: [6]uint8(ep.mac)}, owner); err != nil {
		t.Fatal(err)
	}
}

func (e *env) setIsolation(t testing.TB, ep *testEndpoint, mode program.BpfbridgeIsolationMode) {
	t.Helper()
	ep.isolation = mode
	e.putEndpoint(t, ep)
}

// run runs prog on frame as if it arrived on the veth ifindex.
func (e *env) run(t testing.TB, prog *ebpf.Program, ifindex uint32, frame []byte, repeat uint32) uint32 {
	t.Helper()
	var ret uint32
	err := e.ns.Do(func() error {
		var err error
		ret, err = prog.Run(&ebpf.RunOptions{Data: frame, Context: skbContext{Ifindex: ifindex}, Repeat: repeat})
		return err
	})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return ret
}

// stats sums an endpoint's per-CPU counters; ok is false without an entry.
func (e *env) stats(t testing.TB, ifindex uint32) (s program.BpfbridgeEndpointStats, ok bool) {
	t.Helper()
	var per []program.BpfbridgeEndpointStats
	if err := e.objs.EndpointStats.Lookup(ifindex, &per); errors.Is(err, ebpf.ErrKeyNotExist) {
		return s, false
	} else if err != nil {
		t.Fatal(err)
	}
	return program.Sum(per), true
}

func (e *env) totals(t testing.TB) (sum [program.NumDropReasons]uint64) {
	t.Helper()
	for r := range sum {
		var per []uint64
		if err := e.objs.DropTotals.Lookup(uint32(r), &per); err != nil {
			t.Fatal(err)
		}
		sum[r] = program.SumUint64(per)
	}
	return sum
}

func (e *env) budget(t testing.TB) (used, suppressed uint32) {
	t.Helper()
	var per []program.BpfbridgeEventBudget
	if err := e.objs.EventBudget.Lookup(uint32(0), &per); err != nil {
		t.Fatal(err)
	}
	sum := program.Sum(per)
	return sum.Used, sum.Suppressed
}

// expect runs one frame and checks the verdict, that exactly the counter of
// want moved (per endpoint and in total; none for DROP_NONE), and that the
// endpoint's packet and byte counters for the direction grew by the frame:
// from the container whatever the verdict, to it only if it passed (a
// dropped packet is never counted as delivered).
func (e *env) expect(t *testing.T, dir program.BpfbridgeDirection, ifindex uint32, frame []byte, want program.DropReason) {
	t.Helper()
	prog := e.objs.FromContainer
	if dir == program.BpfbridgeDirectionDIR_TO_CONTAINER {
		prog = e.objs.ToContainer
	}
	before, _ := e.stats(t, ifindex)
	totalsBefore := e.totals(t)

	got := e.run(t, prog, ifindex, frame, 0)

	after, ok := e.stats(t, ifindex)
	totalsAfter := e.totals(t)
	wantVerdict := uint32(verdictPass)
	if want != program.BpfbridgeDropReasonDROP_NONE {
		wantVerdict = verdictDrop
	}
	if got != wantVerdict {
		t.Errorf("verdict %#x, want %#x (%v)", got, wantVerdict, want)
	}
	for r := range program.NumDropReasons {
		var n uint64
		if program.DropReason(r) == want && want != program.BpfbridgeDropReasonDROP_NONE {
			n = 1
		}
		if d := totalsAfter[r] - totalsBefore[r]; d != n {
			t.Errorf("drop_totals[%v] grew by %d, want %d", program.DropReason(r), d, n)
		}
		if !ok {
			continue
		}
		if d := after.Drops[r] - before.Drops[r]; d != n {
			t.Errorf("endpoint_stats.drops[%v] grew by %d, want %d", program.DropReason(r), d, n)
		}
	}
	if want == program.BpfbridgeDropReasonDROP_NO_ENDPOINT {
		if ok {
			t.Errorf("endpoint_stats has an entry for ifindex %d without endpoint", ifindex)
		}
		return
	}
	if !ok {
		t.Fatalf("no endpoint_stats entry for ifindex %d", ifindex)
	}
	pk, by := after.FromPackets-before.FromPackets, after.FromBytes-before.FromBytes
	opk, oby := after.ToPackets-before.ToPackets, after.ToBytes-before.ToBytes
	if dir == program.BpfbridgeDirectionDIR_TO_CONTAINER {
		pk, by, opk, oby = opk, oby, pk, by
	}
	wantPk, wantBy := uint64(1), uint64(len(frame))
	if dir == program.BpfbridgeDirectionDIR_TO_CONTAINER && want != program.BpfbridgeDropReasonDROP_NONE {
		wantPk, wantBy = 0, 0
	}
	if pk != wantPk || by != wantBy || opk != 0 || oby != 0 {
		t.Errorf("counters grew by %d packets/%d bytes (other direction %d/%d), want %d/%d", pk, by, opk, oby, wantPk, wantBy)
	}
}

// Frames a container sends.

func (ep *testEndpoint) udp4(src, dst netip.Addr) []byte {
	return eth(gwMAC, ep.mac, etherTypeIPv4, ipv4(src, dst, protoUDP, udp(src, dst, 40000, 53, []byte("hello"))))
}

func (ep *testEndpoint) tcp4(src, dst netip.Addr) []byte {
	return eth(gwMAC, ep.mac, etherTypeIPv4, ipv4(src, dst, protoTCP, tcp(src, dst, 40000, 80)))
}

func (ep *testEndpoint) tcp6(src, dst netip.Addr) []byte {
	return eth(gwMAC, ep.mac, etherTypeIPv6, ipv6(src, dst, protoTCP, 64, tcp(src, dst, 40000, 443)))
}

// icmp6Frame wraps an ICMPv6 message from src to dst; NDP uses hop limit 255.
func icmp6Frame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, msg []byte) []byte {
	return eth(dstMAC, srcMAC, etherTypeIPv6, ipv6(src, dst, protoICMPv6, 255, msg))
}

func arpFrame(src, dst net.HardwareAddr, body []byte) []byte {
	return eth(dst, src, etherTypeARP, body)
}

func TestFromContainer(t *testing.T) {
	e := newEnv(t)
	a, b, c := e.a, e.b, e.c
	allNodes := ip("ff02::1")
	allRouters := ip("ff02::2")
	zero4 := netip.IPv4Unspecified()
	zero6 := netip.IPv6Unspecified()
	snA := solicitedNode(a.v6())

	cases := []struct {
		name  string
		mode  string                         // a's isolation mode; "" is network
		flags program.BpfbridgeEndpointFlags // a's flags
		frame []byte
		want  program.DropReason
	}{
		// What a container may send.
		{name: "ipv4 tcp", frame: a.tcp4(a.v4(), gw4)},
		{name: "ipv4 udp from second address", frame: a.udp4(a.ipv4[1], ip("8.8.8.8"))},
		{name: "ipv4 icmp", frame: eth(gwMAC, a.mac, etherTypeIPv4, ipv4(a.v4(), gw4, protoICMP, icmp4Echo()))},
		{name: "ipv4 broadcast", frame: eth(broadcastMAC, a.mac, etherTypeIPv4, ipv4(a.v4(), ip("10.0.0.255"), protoUDP, udp(a.v4(), ip("10.0.0.255"), 9, 9, nil)))},
		{name: "ipv6 tcp", frame: a.tcp6(a.v6(), gw6)},
		{name: "ipv6 from link-local", frame: icmp6Frame(a.mac, gwMAC, a.ll(), ip("fe80::1"), icmp6(a.ll(), ip("fe80::1"), icmp6EchoRequest, 0, []byte{0, 1, 0, 1}))},
		{name: "dad ns from ::", frame: icmp6Frame(a.mac, multicastMAC(snA), zero6, snA, ns(zero6, snA, a.v6()))},
		{name: "mld report from ::", frame: eth(multicastMAC(ip("ff02::16")), a.mac, etherTypeIPv6,
			ipv6(zero6, ip("ff02::16"), protoHop, 1, mld2Report(zero6, ip("ff02::16"), snA)))},
		{name: "arp request", frame: arpFrame(a.mac, broadcastMAC, arp(1, a.mac, a.v4(), make(net.HardwareAddr, 6), gw4))},
		{name: "arp reply", frame: arpFrame(a.mac, gwMAC, arp(2, a.mac, a.v4(), gwMAC, gw4))},
		{name: "arp probe", frame: arpFrame(a.mac, broadcastMAC, arp(1, a.mac, zero4, make(net.HardwareAddr, 6), a.v4()))},
		{name: "gratuitous arp", frame: arpFrame(a.mac, broadcastMAC, arp(1, a.mac, a.v4(), broadcastMAC, a.v4()))},
		{name: "ns with own source ll", frame: icmp6Frame(a.mac, multicastMAC(solicitedNode(gw6)), a.v6(), solicitedNode(gw6),
			ns(a.v6(), solicitedNode(gw6), gw6, ndOpt(ndOptSourceLL, a.mac)))},
		{name: "na for own address", frame: icmp6Frame(a.mac, gwMAC, a.v6(), gw6, na(a.v6(), gw6, a.v6(), ndOpt(ndOptTargetLL, a.mac)))},
		{name: "na for own link-local", frame: icmp6Frame(a.mac, gwMAC, a.ll(), ip("fe80::1"), na(a.ll(), ip("fe80::1"), a.ll(), ndOpt(ndOptTargetLL, a.mac)))},
		{name: "rs", frame: icmp6Frame(a.mac, multicastMAC(allRouters), a.ll(), allRouters, rs(a.ll(), allRouters, ndOpt(ndOptSourceLL, a.mac)))},
		{name: "tagged frame on trunk", flags: program.BpfbridgeEndpointFlagsEP_F_TAGGED_OK, frame: eth(gwMAC, a.mac, etherType8021Q, vlan(100, etherTypeIPv4, ipv4(evil4, gw4, protoUDP, udp(evil4, gw4, 1, 1, nil))))},

		// Spoofing.
		{name: "spoofed mac", frame: evilTCP4(a), want: program.BpfbridgeDropReasonDROP_SPOOF_MAC},
		{name: "spoofed ipv4 source", frame: a.tcp4(evil4, gw4), want: program.BpfbridgeDropReasonDROP_SPOOF_IPV4},
		{name: "other container's ipv4 source", frame: a.tcp4(b.v4(), gw4), want: program.BpfbridgeDropReasonDROP_SPOOF_IPV4},
		{name: "ipv4 from 0.0.0.0", frame: a.udp4(zero4, ip("255.255.255.255")), want: program.BpfbridgeDropReasonDROP_SPOOF_IPV4},
		{name: "spoofed ipv6 source", frame: a.tcp6(evil6, gw6), want: program.BpfbridgeDropReasonDROP_SPOOF_IPV6},
		{name: "foreign link-local source", frame: a.tcp6(ip("fe80::66"), gw6), want: program.BpfbridgeDropReasonDROP_SPOOF_IPV6},
		{name: "tcp from ::", frame: a.tcp6(zero6, gw6), want: program.BpfbridgeDropReasonDROP_SPOOF_IPV6},
		{name: "na from ::", frame: icmp6Frame(a.mac, multicastMAC(allNodes), zero6, allNodes, na(zero6, allNodes, a.v6())), want: program.BpfbridgeDropReasonDROP_SPOOF_IPV6},
		{name: "arp with foreign sender ip", frame: arpFrame(a.mac, broadcastMAC, arp(2, a.mac, gw4, broadcastMAC, gw4)), want: program.BpfbridgeDropReasonDROP_SPOOF_ARP},
		{name: "arp with foreign sender mac", frame: arpFrame(a.mac, broadcastMAC, arp(2, evilMAC, a.v4(), broadcastMAC, a.v4())), want: program.BpfbridgeDropReasonDROP_SPOOF_ARP},
		{name: "ns with foreign source ll", frame: icmp6Frame(a.mac, multicastMAC(solicitedNode(gw6)), a.v6(), solicitedNode(gw6),
			ns(a.v6(), solicitedNode(gw6), gw6, ndOpt(ndOptSourceLL, evilMAC))), want: program.BpfbridgeDropReasonDROP_SPOOF_NDP},
		{name: "na with foreign target ll", frame: icmp6Frame(a.mac, gwMAC, a.v6(), gw6, na(a.v6(), gw6, a.v6(), ndOpt(ndOptTargetLL, evilMAC))), want: program.BpfbridgeDropReasonDROP_SPOOF_NDP},
		{name: "na with foreign ll in second option", frame: icmp6Frame(a.mac, gwMAC, a.v6(), gw6,
			na(a.v6(), gw6, a.v6(), []byte{14, 1, 1, 2, 3, 4, 5, 6}, ndOpt(ndOptTargetLL, evilMAC))), want: program.BpfbridgeDropReasonDROP_SPOOF_NDP},
		{name: "na for foreign target", frame: icmp6Frame(a.mac, multicastMAC(allNodes), a.v6(), allNodes, na(a.v6(), allNodes, gw6, ndOpt(ndOptTargetLL, a.mac))), want: program.BpfbridgeDropReasonDROP_SPOOF_NDP},
		{name: "na for other container's address", frame: icmp6Frame(a.mac, multicastMAC(allNodes), a.v6(), allNodes, na(a.v6(), allNodes, b.v6())), want: program.BpfbridgeDropReasonDROP_SPOOF_NDP},
		{name: "rs with foreign source ll", frame: icmp6Frame(a.mac, multicastMAC(allRouters), a.ll(), allRouters, rs(a.ll(), allRouters, ndOpt(ndOptSourceLL, evilMAC))), want: program.BpfbridgeDropReasonDROP_SPOOF_NDP},
		{name: "ra from container", frame: icmp6Frame(a.mac, multicastMAC(allNodes), a.ll(), allNodes, ra(a.ll(), allNodes, ndOpt(ndOptSourceLL, a.mac))), want: program.BpfbridgeDropReasonDROP_ROUTER_NDP},
		{name: "redirect from container", frame: icmp6Frame(a.mac, gwMAC, a.ll(), ip("fe80::1"), redirect(a.ll(), ip("fe80::1"), a.ll(), ip("2001:db8::1"))), want: program.BpfbridgeDropReasonDROP_ROUTER_NDP},
		{name: "ra behind destination options", frame: eth(multicastMAC(allNodes), a.mac, etherTypeIPv6, ipv6(a.ll(), allNodes, 60, 255,
			append([]byte{protoICMPv6, 0, 1, 4, 0, 0, 0, 0}, ra(a.ll(), allNodes)...))), want: program.BpfbridgeDropReasonDROP_ROUTER_NDP},

		// Not IP, not ARP, or broken.
		{name: "unknown ethertype", frame: eth(mac("01:80:c2:00:00:0e"), a.mac, etherTypeLLDP, make([]byte, 46)), want: program.BpfbridgeDropReasonDROP_ETHERTYPE},
		{name: "tagged frame on access port", frame: eth(gwMAC, a.mac, etherType8021Q, vlan(100, etherTypeIPv4, ipv4(a.v4(), gw4, protoUDP, udp(a.v4(), gw4, 1, 1, nil)))), want: program.BpfbridgeDropReasonDROP_ETHERTYPE},
		// BPF_PROG_TEST_RUN (6.18) refuses IPv4 frames shorter than
		// 34 bytes and IPv6 ones shorter than 54 with EINVAL, so the
		// truncations tested are those behind the fixed header.
		{name: "truncated ipv4 options", frame: func() []byte {
			f := a.tcp4(a.v4(), gw4)[:14+20+8]
			f[14] = 0x4f // 60-byte header in a 28-byte packet
			return f
		}(), want: program.BpfbridgeDropReasonDROP_MALFORMED},
		{name: "ipv4 ihl below 5", frame: func() []byte { f := a.tcp4(a.v4(), gw4); f[14] = 0x44; return f }(), want: program.BpfbridgeDropReasonDROP_MALFORMED},
		{name: "ipv4 version 6", frame: func() []byte { f := a.tcp4(a.v4(), gw4); f[14] = 0x65; return f }(), want: program.BpfbridgeDropReasonDROP_MALFORMED},
		{name: "truncated ipv6 payload", frame: a.tcp6(a.v6(), gw6)[:14+40+10], want: program.BpfbridgeDropReasonDROP_MALFORMED},
		{name: "truncated ipv6 extension header", frame: eth(gwMAC, a.mac, etherTypeIPv6, ipv6(a.v6(), gw6, protoHop, 64, []byte{protoTCP, 0})), want: program.BpfbridgeDropReasonDROP_MALFORMED},
		{name: "truncated icmpv6", frame: eth(gwMAC, a.mac, etherTypeIPv6, ipv6(a.v6(), gw6, protoICMPv6, 255, []byte{icmp6RA, 0, 0, 0})), want: program.BpfbridgeDropReasonDROP_MALFORMED},
		{name: "truncated ns", frame: icmp6Frame(a.mac, gwMAC, a.v6(), gw6, ns(a.v6(), gw6, gw6)[:20]), want: program.BpfbridgeDropReasonDROP_MALFORMED},
		{name: "truncated arp", frame: arpFrame(a.mac, broadcastMAC, arp(1, a.mac, a.v4(), make(net.HardwareAddr, 6), gw4)[:20]), want: program.BpfbridgeDropReasonDROP_MALFORMED},
		{name: "arp for another protocol", frame: func() []byte {
			f := arpFrame(a.mac, broadcastMAC, arp(1, a.mac, a.v4(), make(net.HardwareAddr, 6), gw4))
			f[14+3] = 0x01 // ptype 0x0801
			return f
		}(), want: program.BpfbridgeDropReasonDROP_MALFORMED},
		{name: "ndp option of length 0", frame: icmp6Frame(a.mac, gwMAC, a.v6(), gw6, na(a.v6(), gw6, a.v6(), []byte{ndOptTargetLL, 0, 2, 0, 0, 0, 0, 0x0a})), want: program.BpfbridgeDropReasonDROP_MALFORMED},
		{name: "ndp option past the end", frame: icmp6Frame(a.mac, gwMAC, a.v6(), gw6, na(a.v6(), gw6, a.v6(), []byte{ndOptTargetLL, 2, 2, 0, 0, 0, 0, 0x0a})), want: program.BpfbridgeDropReasonDROP_MALFORMED},
		{name: "ndp with more options than inspected", frame: icmp6Frame(a.mac, gwMAC, a.v6(), gw6, na(a.v6(), gw6, a.v6(),
			bytes.Repeat([]byte{14, 1, 0, 0, 0, 0, 0, 0}, 8), ndOpt(ndOptTargetLL, evilMAC))), want: program.BpfbridgeDropReasonDROP_MALFORMED},

		// Isolation by destination, in a's mode.
		{name: "network: same network", mode: "network", frame: a.tcp4(a.v4(), b.v4())},
		{name: "network: other network", mode: "network", frame: a.tcp4(a.v4(), c.v4()), want: program.BpfbridgeDropReasonDROP_CROSS_NETWORK},
		{name: "network: other network ipv6", mode: "network", frame: a.tcp6(a.v6(), c.v6()), want: program.BpfbridgeDropReasonDROP_CROSS_NETWORK},
		{name: "network: gateway", mode: "network", frame: a.tcp4(a.v4(), gw4)},
		{name: "container: same network", mode: "container", frame: a.tcp4(a.v4(), b.v4()), want: program.BpfbridgeDropReasonDROP_SAME_NETWORK},
		{name: "container: same network ipv6", mode: "container", frame: a.tcp6(a.v6(), b.v6()), want: program.BpfbridgeDropReasonDROP_SAME_NETWORK},
		{name: "container: other network", mode: "container", frame: a.tcp4(a.v4(), c.v4()), want: program.BpfbridgeDropReasonDROP_CROSS_NETWORK},
		{name: "container: gateway", mode: "container", frame: a.tcp4(a.v4(), gw4)},
		{name: "container: own other address", mode: "container", frame: a.tcp4(a.v4(), a.ipv4[1])},
		{name: "container: ndp to same network", mode: "container", frame: icmp6Frame(a.mac, b.mac, a.v6(), b.v6(), na(a.v6(), b.v6(), a.v6(), ndOpt(ndOptTargetLL, a.mac)))},
		{name: "container: arp to same network", mode: "container", frame: arpFrame(a.mac, b.mac, arp(2, a.mac, a.v4(), b.mac, b.v4()))},
		{name: "none: other network", mode: "none", frame: a.tcp4(a.v4(), c.v4())},
		{name: "none: same network", mode: "none", frame: a.tcp6(a.v6(), b.v6())},
		{name: "none: still anti-spoofed", mode: "none", frame: a.tcp4(evil4, c.v4()), want: program.BpfbridgeDropReasonDROP_SPOOF_IPV4},
		{name: "unknown mode is strictest", mode: "unknown", frame: a.tcp4(a.v4(), b.v4()), want: program.BpfbridgeDropReasonDROP_SAME_NETWORK},
	}
	modes := map[string]program.BpfbridgeIsolationMode{"": program.BpfbridgeIsolationModeISOLATION_NETWORK, "none": program.BpfbridgeIsolationModeISOLATION_NONE, "network": program.BpfbridgeIsolationModeISOLATION_NETWORK,
		"container": program.BpfbridgeIsolationModeISOLATION_CONTAINER, "unknown": 7}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a.isolation, a.flags = modes[tc.mode], tc.flags
			e.putEndpoint(t, a)
			e.expect(t, program.BpfbridgeDirectionDIR_FROM_CONTAINER, a.ifindex, tc.frame, tc.want)
		})
	}
}

func evilTCP4(a *testEndpoint) []byte {
	return eth(gwMAC, evilMAC, etherTypeIPv4, ipv4(a.v4(), gw4, protoTCP, tcp(a.v4(), gw4, 1, 80)))
}

// to_container isolates by source address, in the receiver's mode.
func TestToContainer(t *testing.T) {
	e := newEnv(t)
	a, b, c := e.a, e.b, e.c
	bcast := ip("10.0.0.255")
	snA := solicitedNode(a.v6())

	udpFrom := func(from *testEndpoint, src, dst netip.Addr, dstMAC net.HardwareAddr) []byte {
		return eth(dstMAC, from.mac, etherTypeIPv4, ipv4(src, dst, protoUDP, udp(src, dst, 5000, 5000, nil)))
	}
	cases := []struct {
		name  string
		setup func()
		frame []byte
		want  program.DropReason
	}{
		{name: "from the gateway", frame: eth(a.mac, gwMAC, etherTypeIPv4, ipv4(gw4, a.v4(), protoTCP, tcp(gw4, a.v4(), 80, 40000)))},
		{name: "from the outside world", frame: eth(a.mac, gwMAC, etherTypeIPv6, ipv6(ip("2001:db8::1"), a.v6(), protoTCP, 64, tcp(ip("2001:db8::1"), a.v6(), 443, 40000)))},
		{name: "network: from same network", frame: udpFrom(b, b.v4(), a.v4(), a.mac)},
		{name: "network: from other network", frame: udpFrom(c, c.v4(), a.v4(), a.mac), want: program.BpfbridgeDropReasonDROP_CROSS_NETWORK},
		{
			name:  "network: from other network whose mode is none",
			setup: func() { e.setIsolation(t, c, program.BpfbridgeIsolationModeISOLATION_NONE) },
			frame: udpFrom(c, c.v4(), a.v4(), a.mac),
			want:  program.BpfbridgeDropReasonDROP_CROSS_NETWORK,
		},
		{
			name:  "network: from other network ipv6",
			frame: eth(a.mac, c.mac, etherTypeIPv6, ipv6(c.v6(), a.v6(), protoTCP, 64, tcp(c.v6(), a.v6(), 1, 2))),
			want:  program.BpfbridgeDropReasonDROP_CROSS_NETWORK,
		},
		{name: "network: arp from other network", frame: arpFrame(c.mac, broadcastMAC, arp(1, c.mac, c.v4(), make(net.HardwareAddr, 6), a.v4()))},
		{name: "network: ns from other network", frame: icmp6Frame(c.mac, multicastMAC(snA), c.v6(), snA, ns(c.v6(), snA, a.v6(), ndOpt(ndOptSourceLL, c.mac)))},
		{
			name:  "container: from same network",
			setup: func() { e.setIsolation(t, a, program.BpfbridgeIsolationModeISOLATION_CONTAINER) },
			frame: udpFrom(b, b.v4(), a.v4(), a.mac),
			want:  program.BpfbridgeDropReasonDROP_SAME_NETWORK,
		},
		{name: "container: broadcast from same network", frame: udpFrom(b, b.v4(), bcast, broadcastMAC), want: program.BpfbridgeDropReasonDROP_SAME_NETWORK},
		{name: "container: multicast from same network", frame: eth(multicastMAC(ip("ff02::1")), b.mac, etherTypeIPv6,
			ipv6(b.v6(), ip("ff02::1"), protoUDP, 1, udp(b.v6(), ip("ff02::1"), 1, 1, nil))), want: program.BpfbridgeDropReasonDROP_SAME_NETWORK},
		{name: "container: from other network", frame: udpFrom(c, c.v4(), a.v4(), a.mac), want: program.BpfbridgeDropReasonDROP_CROSS_NETWORK},
		{name: "container: arp from same network", frame: arpFrame(b.mac, broadcastMAC, arp(1, b.mac, b.v4(), make(net.HardwareAddr, 6), a.v4()))},
		{name: "container: ns from same network", frame: icmp6Frame(b.mac, multicastMAC(snA), b.v6(), snA, ns(b.v6(), snA, a.v6(), ndOpt(ndOptSourceLL, b.mac)))},
		{name: "container: from the gateway", frame: eth(a.mac, gwMAC, etherTypeIPv4, ipv4(gw4, a.v4(), protoICMP, icmp4Echo()))},
		{
			name:  "none: from other network",
			setup: func() { e.setIsolation(t, a, program.BpfbridgeIsolationModeISOLATION_NONE) },
			frame: udpFrom(c, c.v4(), a.v4(), a.mac),
		},
		{name: "none: truncated ipv6", frame: eth(a.mac, c.mac, etherTypeIPv6, ipv6(c.v6(), a.v6(), protoTCP, 64, tcp(c.v6(), a.v6(), 1, 2))[:50]), want: program.BpfbridgeDropReasonDROP_MALFORMED},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
			}
			e.expect(t, program.BpfbridgeDirectionDIR_TO_CONTAINER, a.ifindex, tc.frame, tc.want)
		})
	}

	// The sender's side of the first cross-network case: c (mode none)
	// may send it, a (mode network) refuses it.
	t.Run("sender with mode none passes it", func(t *testing.T) {
		e.setIsolation(t, a, program.BpfbridgeIsolationModeISOLATION_NETWORK)
		e.expect(t, program.BpfbridgeDirectionDIR_FROM_CONTAINER, c.ifindex, udpFrom(c, c.v4(), a.v4(), a.mac), program.BpfbridgeDropReasonDROP_NONE)
		e.expect(t, program.BpfbridgeDirectionDIR_TO_CONTAINER, a.ifindex, udpFrom(c, c.v4(), a.v4(), a.mac), program.BpfbridgeDropReasonDROP_CROSS_NETWORK)
	})
}

func TestNoEndpoint(t *testing.T) {
	e := newEnv(t)
	frame := e.a.tcp4(e.a.v4(), gw4)
	t.Run("from_container", func(t *testing.T) {
		e.expect(t, program.BpfbridgeDirectionDIR_FROM_CONTAINER, e.noEP, frame, program.BpfbridgeDropReasonDROP_NO_ENDPOINT)
	})
	t.Run("to_container", func(t *testing.T) {
		e.expect(t, program.BpfbridgeDirectionDIR_TO_CONTAINER, e.noEP, frame, program.BpfbridgeDropReasonDROP_NO_ENDPOINT)
	})
}

func TestCounters(t *testing.T) {
	e := newEnv(t)
	a := e.a
	if _, ok := e.stats(t, a.ifindex); ok {
		t.Fatal("stats entry before the first packet")
	}
	out := a.tcp4(a.v4(), gw4)
	in := eth(a.mac, gwMAC, etherTypeIPv4, ipv4(gw4, a.v4(), protoTCP, tcp(gw4, a.v4(), 80, 40000)))
	bad := a.tcp4(evil4, gw4)
	c := e.c // of another network
	cross := eth(a.mac, c.mac, etherTypeIPv4, ipv4(c.v4(), a.v4(), protoUDP, udp(c.v4(), a.v4(), 5000, 5000, nil)))
	for range 3 {
		e.run(t, e.objs.FromContainer, a.ifindex, out, 0)
	}
	e.run(t, e.objs.FromContainer, a.ifindex, bad, 0)
	e.run(t, e.objs.ToContainer, a.ifindex, in, 0)
	e.run(t, e.objs.ToContainer, a.ifindex, in, 0)
	if v := e.run(t, e.objs.ToContainer, a.ifindex, cross, 0); v != verdictDrop {
		t.Fatalf("cross-network packet to a: verdict %#x, want drop", v)
	}

	s, ok := e.stats(t, a.ifindex)
	if !ok {
		t.Fatal("no stats entry after traffic")
	}
	// Dropped packets count as sent: the from counters say what the
	// container tried, drops say what became of it. A packet dropped on
	// its way to the container counts only as a drop, never as
	// delivered.
	want := program.BpfbridgeEndpointStats{
		FromPackets: 4, FromBytes: uint64(3*len(out) + len(bad)),
		ToPackets: 2, ToBytes: uint64(2 * len(in)),
	}
	want.Drops[program.BpfbridgeDropReasonDROP_SPOOF_IPV4] = 1
	want.Drops[program.BpfbridgeDropReasonDROP_CROSS_NETWORK] = 1
	if s != want {
		t.Errorf("stats %+v, want %+v", s, want)
	}
	if _, ok := e.stats(t, e.b.ifindex); ok {
		t.Error("an endpoint without traffic got a stats entry")
	}
}

func readEvent(t *testing.T, rd *ringbuf.Reader, timeout time.Duration) (program.BpfbridgeDropEvent, bool) {
	t.Helper()
	var ev program.BpfbridgeDropEvent
	rd.SetDeadline(time.Now().Add(timeout))
	rec, err := rd.Read()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return ev, false
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.RawSample) != binary.Size(ev) {
		t.Fatalf("event of %d bytes, want %d", len(rec.RawSample), binary.Size(ev))
	}
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &ev); err != nil {
		t.Fatal(err)
	}
	return ev, true
}

func TestDropEvent(t *testing.T) {
	e := newEnv(t)
	a, c := e.a, e.c
	rd, err := ringbuf.NewReader(e.objs.DropEvents)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	t.Run("spoofed udp", func(t *testing.T) {
		start := time.Now()
		frame := a.udp4(evil4, ip("8.8.8.8"))
		if v := e.run(t, e.objs.FromContainer, a.ifindex, frame, 0); v != verdictDrop {
			t.Fatalf("verdict %#x", v)
		}
		ev, ok := readEvent(t, rd, time.Second)
		if !ok {
			t.Fatal("no drop event")
		}
		want := program.BpfbridgeDropEvent{
			TimestampNs: ev.TimestampNs,
			Ifindex:     a.ifindex,
			Reason:      uint8(program.BpfbridgeDropReasonDROP_SPOOF_IPV4),
			Direction:   uint8(program.BpfbridgeDirectionDIR_FROM_CONTAINER),
			EthProto:    etherTypeIPv4,
			IpProto:     protoUDP,
			Sport:       40000,
			Dport:       53,
		}
		copy(want.SrcMac[:], a.mac)
		copy(want.DstMac[:], gwMAC)
		copy(want.SrcIp[:], evil4.AsSlice())
		copy(want.DstIp[:], ip("8.8.8.8").AsSlice())
		if ev != want {
			t.Errorf("event\n%+v\nwant\n%+v", ev, want)
		}
		// CLOCK_MONOTONIC, as user space needs to convert it.
		var now unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &now); err != nil {
			t.Fatal(err)
		}
		if age := time.Duration(now.Nano() - int64(ev.TimestampNs)); age < 0 || age > time.Since(start)+time.Second {
			t.Errorf("timestamp %d is %v away from CLOCK_MONOTONIC", ev.TimestampNs, age)
		}
	})

	t.Run("cross-network ipv6 to container", func(t *testing.T) {
		frame := eth(a.mac, c.mac, etherTypeIPv6, ipv6(c.v6(), a.v6(), protoTCP, 64, tcp(c.v6(), a.v6(), 1234, 22)))
		e.run(t, e.objs.ToContainer, a.ifindex, frame, 0)
		ev, ok := readEvent(t, rd, time.Second)
		if !ok {
			t.Fatal("no drop event")
		}
		if program.DropReason(ev.Reason) != program.BpfbridgeDropReasonDROP_CROSS_NETWORK || program.BpfbridgeDirection(ev.Direction) != program.BpfbridgeDirectionDIR_TO_CONTAINER || ev.Ifindex != a.ifindex ||
			ev.EthProto != etherTypeIPv6 || ev.IpProto != protoTCP || ev.Sport != 1234 || ev.Dport != 22 ||
			netip.AddrFrom16(ev.SrcIp) != c.v6() || netip.AddrFrom16(ev.DstIp) != a.v6() {
			t.Errorf("event %+v", ev)
		}
	})

	t.Run("arp", func(t *testing.T) {
		frame := arpFrame(a.mac, broadcastMAC, arp(2, a.mac, gw4, broadcastMAC, gw4))
		e.run(t, e.objs.FromContainer, a.ifindex, frame, 0)
		ev, ok := readEvent(t, rd, time.Second)
		if !ok {
			t.Fatal("no drop event")
		}
		if program.DropReason(ev.Reason) != program.BpfbridgeDropReasonDROP_SPOOF_ARP || ev.EthProto != etherTypeARP || ev.IpProto != 0 ||
			netip.AddrFrom4([4]byte(ev.SrcIp[:4])) != gw4 || netip.AddrFrom4([4]byte(ev.DstIp[:4])) != gw4 {
			t.Errorf("event %+v", ev)
		}
	})

	t.Run("no endpoint", func(t *testing.T) {
		e.run(t, e.objs.FromContainer, e.noEP, a.tcp4(a.v4(), gw4), 0)
		ev, ok := readEvent(t, rd, time.Second)
		if !ok {
			t.Fatal("no drop event")
		}
		if program.DropReason(ev.Reason) != program.BpfbridgeDropReasonDROP_NO_ENDPOINT || ev.Ifindex != e.noEP || ev.Dport != 80 {
			t.Errorf("event %+v", ev)
		}
	})
}

func TestEventBudget(t *testing.T) {
	e := newEnv(t)
	a := e.a
	limit := int(program.BpfbridgeEventBudgetLimitEVENTS_PER_WINDOW)
	const extra = 10
	rd, err := ringbuf.NewReader(e.objs.DropEvents)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	// One run of limit+extra drops, well inside one window. The budget
	// is per CPU: keep the thread on one CPU for the run.
	frame := a.tcp4(evil4, gw4)
	err = e.ns.Do(func() error {
		var saved, one unix.CPUSet
		if err := unix.SchedGetaffinity(0, &saved); err != nil {
			return err
		}
		for cpu := range 1024 {
			if saved.IsSet(cpu) {
				one.Set(cpu)
				break
			}
		}
		if err := unix.SchedSetaffinity(0, &one); err != nil {
			return err
		}
		defer unix.SchedSetaffinity(0, &saved)
		_, err := e.objs.FromContainer.Run(&ebpf.RunOptions{
			Data: frame, Context: skbContext{Ifindex: a.ifindex}, Repeat: uint32(limit + extra),
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	if got := e.totals(t)[program.BpfbridgeDropReasonDROP_SPOOF_IPV4]; got != uint64(limit+extra) {
		t.Errorf("%d drops counted, want %d", got, limit+extra)
	}
	n := 0
	for {
		if _, ok := readEvent(t, rd, 200*time.Millisecond); !ok {
			break
		}
		n++
	}
	if n != limit {
		t.Errorf("%d events, want %d", n, limit)
	}
	if used, suppressed := e.budget(t); used != uint32(limit) || suppressed != extra {
		t.Errorf("budget used %d, suppressed %d; want %d, %d", used, suppressed, limit, extra)
	}

	// A new window brings a new budget. Rewind every CPU's window start
	// rather than sleeping for a second.
	per := make([]program.BpfbridgeEventBudget, e.possible)
	for i := range per {
		per[i] = program.BpfbridgeEventBudget{WindowStartNs: 0, Used: uint32(limit), Suppressed: extra}
	}
	if err := e.objs.EventBudget.Put(uint32(0), per); err != nil {
		t.Fatal(err)
	}
	e.run(t, e.objs.FromContainer, a.ifindex, frame, 0)
	if _, ok := readEvent(t, rd, time.Second); !ok {
		t.Error("no event in a new window")
	}
	if used, suppressed := e.budget(t); suppressed != uint32(e.possible*extra) || used != uint32((e.possible-1)*limit+1) {
		t.Errorf("after a new window: used %d, suppressed %d", used, suppressed)
	}
}
