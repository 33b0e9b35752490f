package program_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// Isolation at L2: a frame between two endpoints on a bridge is decided by
// who they are (mac_owners), whatever its addresses; link-local and
// multicast are the cases an owner map of assigned addresses misses.

var (
	allNodes6  = ip("ff02::1")
	allNodesHW = multicastMAC(allNodes6)
	broadcast  = mac("ff:ff:ff:ff:ff:ff")
)

// ping6 is an ICMPv6 echo request from src to dst, between the MACs.
func ping6(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr) []byte {
	return ipv6Frame(srcMAC, dstMAC, src, dst, protoICMPv6, icmp6EchoMsg(src, dst, 128, 7, 1))
}

// udp4To is UDP between two MACs, whatever the addresses' subnets.
func udp4To(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr) []byte {
	return ipv4Frame(srcMAC, dstMAC, src, dst, protoUDP, udp(src, dst, 40000, 53, []byte("hello")))
}

const (
	modeNone      = program.BpfbridgeIsolationModeISOLATION_NONE
	modeNetwork   = program.BpfbridgeIsolationModeISOLATION_NETWORK
	modeContainer = program.BpfbridgeIsolationModeISOLATION_CONTAINER

	cross = program.BpfbridgeDropReasonDROP_CROSS_NETWORK
	same  = program.BpfbridgeDropReasonDROP_SAME_NETWORK
	pass  = program.BpfbridgeDropReasonDROP_NONE

	fromC = program.BpfbridgeDirectionDIR_FROM_CONTAINER
	toC   = program.BpfbridgeDirectionDIR_TO_CONTAINER
)

func TestIsolationAtL2(t *testing.T) {
	type modes struct {
		a, b, c program.BpfbridgeIsolationMode
	}
	cases := []struct {
		name  string
		modes modes
		dir   program.BpfbridgeDirection
		on    func(e *env) *testEndpoint // the endpoint whose veth runs it
		frame func(e *env) []byte
		want  program.DropReason
	}{
		// Unicast link-local to a neighbour's MAC, as the sender sends it.
		{"link-local same network", modes{modeNetwork, modeNetwork, modeNetwork}, fromC, epA, llPing(epA, epB), pass},
		{"link-local other network", modes{modeNetwork, modeNetwork, modeNetwork}, fromC, epA, llPing(epA, epC), cross},
		{"link-local neighbour, container mode", modes{modeContainer, modeContainer, modeNetwork}, fromC, epA, llPing(epA, epB), same},
		{"link-local other network, mode none", modes{modeNone, modeNetwork, modeNetwork}, fromC, epA, llPing(epA, epC), pass},
		// Any address, as long as the frame goes to the peer's MAC.
		{"IPv4 to another network's MAC", modes{modeNetwork, modeNetwork, modeNetwork}, fromC, epA,
			func(e *env) []byte { return udp4To(e.a.mac, e.c.mac, e.a.v4(), e.c.v4()) }, cross},
		// Received: the peer is the source MAC.
		{"received link-local from another network", modes{modeNetwork, modeNetwork, modeNetwork}, toC, epC, llPing(epA, epC), cross},
		{"received link-local from the network", modes{modeNetwork, modeNetwork, modeNetwork}, toC, epB, llPing(epA, epB), pass},
		// Multicast and broadcast: the sender passes them, each receiver
		// decides with the stricter of its mode and the sender's.
		{"multicast sent", modes{modeContainer, modeContainer, modeNetwork}, fromC, epA, allNodesPing(epA), pass},
		{"multicast received across networks", modes{modeNetwork, modeNetwork, modeNetwork}, toC, epC, allNodesPing(epA), cross},
		{"multicast received, receiver in mode none", modes{modeNetwork, modeNetwork, modeNone}, toC, epC, allNodesPing(epA), cross},
		{"multicast received, both in mode none", modes{modeNone, modeNetwork, modeNone}, toC, epC, allNodesPing(epA), pass},
		{"multicast within the network", modes{modeNetwork, modeNetwork, modeNetwork}, toC, epB, allNodesPing(epA), pass},
		{"multicast from a container-mode neighbour", modes{modeContainer, modeNetwork, modeNetwork}, toC, epB, allNodesPing(epA), same},
		{"IPv4 broadcast across networks", modes{modeNetwork, modeNetwork, modeNetwork}, toC, epC,
			func(e *env) []byte { return udp4To(e.a.mac, broadcast, e.a.v4(), ip("255.255.255.255")) }, cross},
		// Neighbour discovery is never isolated.
		{"neighbour solicitation across networks", modes{modeContainer, modeContainer, modeContainer}, toC, epC,
			func(e *env) []byte {
				return ipv6Frame(e.a.mac, multicastMAC(solicitedNode(e.c.ll())), e.a.ll(), solicitedNode(e.c.ll()),
					protoICMPv6, ns(e.a.ll(), solicitedNode(e.c.ll()), e.c.ll(), ndOpt(1, e.a.mac)))
			}, pass},
		// Routed through the gateway: the peer MAC is the gateway's, the
		// address decides (the path the tests of program_test.go take).
		{"routed to another network", modes{modeNetwork, modeNetwork, modeNetwork}, fromC, epA,
			func(e *env) []byte { return udp4To(e.a.mac, gwMAC, e.a.v4(), e.c.v4()) }, cross},
		{"routed from another network", modes{modeNetwork, modeNetwork, modeNetwork}, toC, epC,
			func(e *env) []byte { return udp4To(gwMAC, e.c.mac, e.a.v4(), e.c.v4()) }, cross},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			for ep, m := range map[*testEndpoint]program.BpfbridgeIsolationMode{e.a: tc.modes.a, e.b: tc.modes.b, e.c: tc.modes.c} {
				e.setIsolation(t, ep, m)
			}
			e.expect(t, tc.dir, tc.on(e).ifindex, tc.frame(e), tc.want)
		})
	}
}

// llPing is a link-local ping6 from one endpoint to another's MAC.
func llPing(from, to func(*env) *testEndpoint) func(*env) []byte {
	return func(e *env) []byte {
		src, dst := from(e), to(e)
		return ping6(src.mac, dst.mac, src.ll(), dst.ll())
	}
}

// allNodesPing is a link-local ping6 from an endpoint to all nodes.
func allNodesPing(from func(*env) *testEndpoint) func(*env) []byte {
	return func(e *env) []byte {
		src := from(e)
		return ping6(src.mac, allNodesHW, src.ll(), allNodes6)
	}
}

func epA(e *env) *testEndpoint { return e.a }
func epB(e *env) *testEndpoint { return e.b }
func epC(e *env) *testEndpoint { return e.c }
