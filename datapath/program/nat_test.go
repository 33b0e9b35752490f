package program_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// Masquerade tests: uplink_egress and uplink_ingress run on the fourth
// ifindex of the test namespace, which stands for an uplink. Network 1
// (endpoints a and b) masquerades, network 2 (c) does not.

type natEnv struct {
	*env
	uplink uint32
}

// newNATEnv is newEnv with the uplink's addresses, network 1 masqueraded
// and network 1's exclusions: its subnets and excluded4.
func newNATEnv(t testing.TB) *natEnv {
	t.Helper()
	n := &natEnv{env: newEnv(t)}
	n.uplink = n.noEP
	n.setUplink(t, n.uplink, true, true)
	if err := n.objs.NatNetworks.Put(uint32(1), program.BpfbridgeNatNetwork{Flags: uint32(program.BpfbridgeNatNetworkFlagsNAT_F_MASQUERADE)}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"10.0.0.0/24", "fd00::/64", excluded4.String()} {
		n.exclude(t, 1, netip.MustParsePrefix(p))
	}
	return n
}

func (n *natEnv) setUplink(t testing.TB, ifindex uint32, has4, has6 bool) {
	t.Helper()
	var u program.BpfbridgeNatUplink
	var a4, a6 netip.Addr
	if has4 {
		a4 = uplink4
	}
	if has6 {
		a6 = uplink6
	}
	u.SetAddrs(a4, a6)
	if err := n.objs.NatUplinks.Put(ifindex, u); err != nil {
		t.Fatal(err)
	}
}

func (n *natEnv) exclude(t testing.TB, network uint32, p netip.Prefix) {
	t.Helper()
	if err := n.objs.NatExclude.Put(program.NATExcludeKeyOf(network, p), uint8(1)); err != nil {
		t.Fatal(err)
	}
}

func (n *natEnv) setConfig(t *testing.T, c program.BpfbridgeNatConfig) {
	t.Helper()
	if err := n.objs.NatConfig.Put(uint32(0), c); err != nil {
		t.Fatal(err)
	}
}

// xlate runs prog on frame on the uplink and returns the verdict and the
// frame as the program left it.
func (n *natEnv) xlate(t *testing.T, prog *ebpf.Program, frame []byte) (uint32, []byte) {
	t.Helper()
	return n.runOut(t, prog, n.uplink, frame)
}

// runOut runs prog on frame on ifindex and returns the verdict and the
// frame as the program left it.
func (e *env) runOut(t *testing.T, prog *ebpf.Program, ifindex uint32, frame []byte) (uint32, []byte) {
	t.Helper()
	var ret uint32
	out := make([]byte, len(frame)+256)
	err := e.ns.Do(func() error {
		opts := ebpf.RunOptions{Data: frame, DataOut: out, Context: skbContext{Ifindex: ifindex}}
		var err error
		ret, err = prog.Run(&opts)
		out = opts.DataOut
		return err
	})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return ret, out
}

func (n *natEnv) egress(t *testing.T, frame []byte) (uint32, []byte) {
	t.Helper()
	return n.xlate(t, n.objs.UplinkEgress, frame)
}

func (n *natEnv) ingress(t *testing.T, frame []byte) (uint32, []byte) {
	t.Helper()
	return n.xlate(t, n.objs.UplinkIngress, frame)
}

// table dumps nat_out or nat_in.
func table(t *testing.T, m *ebpf.Map) map[program.BpfbridgeNatTuple]program.BpfbridgeNatEntry {
	t.Helper()
	res := map[program.BpfbridgeNatTuple]program.BpfbridgeNatEntry{}
	var k program.BpfbridgeNatTuple
	var v program.BpfbridgeNatEntry
	it := m.Iterate()
	for it.Next(&k, &v) {
		res[k] = v
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return res
}

// checkPairs checks that nat_out and nat_in hold whole pairs only: every
// entry's partner exists and points back. Returns the number of pairs.
func (n *natEnv) checkPairs(t *testing.T) int {
	t.Helper()
	outs, ins := table(t, n.objs.NatOut), table(t, n.objs.NatIn)
	if len(outs) != len(ins) {
		t.Errorf("nat_out has %d entries, nat_in %d", len(outs), len(ins))
	}
	for ok, ov := range outs {
		ik := ok.Reply(&ov)
		iv, found := ins[ik]
		if !found {
			t.Errorf("nat_out %+v has no nat_in partner %+v", ok, ik)
			continue
		}
		if iv.Addr != ok.Src || iv.Port != ok.Sport || iv.State != ov.State {
			t.Errorf("nat_in %+v = %+v does not point back to nat_out %+v = %+v", ik, iv, ok, ov)
		}
	}
	return len(outs)
}

func tuple(src, dst netip.Addr, sport, dport uint16, proto uint8) program.BpfbridgeNatTuple {
	return program.NATTupleOf(proto, netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport))
}

func monotonicNow(t *testing.T) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// A decoded IP packet, for checking what the programs wrote.
type ipPacket struct {
	v6       bool
	src, dst netip.Addr
	proto    uint8
	hdr      []byte // the IP header
	seg      []byte // what follows it, up to the packet's length (or the data's end)
}

// decodeIP decodes an IP packet (no IPv6 extension headers) and checks the
// IPv4 header checksum.
func decodeIP(t *testing.T, b []byte) ipPacket {
	t.Helper()
	if len(b) < 20 {
		t.Fatalf("IP packet of %d bytes", len(b))
	}
	var p ipPacket
	switch b[0] >> 4 {
	case 4:
		ihl := int(b[0]&0xf) * 4
		p.src = netip.AddrFrom4([4]byte(b[12:16]))
		p.dst = netip.AddrFrom4([4]byte(b[16:20]))
		p.proto = b[9]
		p.hdr = b[:ihl]
		end := min(int(binary.BigEndian.Uint16(b[2:])), len(b))
		p.seg = b[ihl:end]
		if c := checksum(p.hdr, 0); c != 0 {
			t.Errorf("IPv4 header checksum of %v -> %v is wrong (residue %#04x)", p.src, p.dst, c)
		}
	case 6:
		p.v6 = true
		p.src = netip.AddrFrom16([16]byte(b[8:24]))
		p.dst = netip.AddrFrom16([16]byte(b[24:40]))
		p.proto = b[6]
		p.hdr = b[:40]
		end := min(40+int(binary.BigEndian.Uint16(b[4:])), len(b))
		p.seg = b[40:end]
	default:
		t.Fatalf("not an IP packet: %x", b)
	}
	return p
}

func decodeFrame(t *testing.T, frame []byte) ipPacket {
	t.Helper()
	return decodeIP(t, frame[14:])
}

// checkL4 recomputes the L4 checksum of a complete packet.
func checkL4(t *testing.T, p ipPacket, what string) {
	t.Helper()
	var c uint16
	switch p.proto {
	case protoICMP:
		c = checksum(p.seg, 0)
	case protoUDP:
		if !p.v6 && binary.BigEndian.Uint16(p.seg[6:]) == 0 {
			return // no checksum
		}
		c = checksum(p.seg, pseudoSum(p.src, p.dst, p.proto, len(p.seg)))
	default:
		c = checksum(p.seg, pseudoSum(p.src, p.dst, p.proto, len(p.seg)))
	}
	if c != 0 {
		t.Errorf("%s: L4 (proto %d) checksum %v -> %v is wrong (residue %#04x)", what, p.proto, p.src, p.dst, c)
	}
}

// ports returns the source and destination port, or for echo the
// identifier and 0.
func (p ipPacket) ports() (uint16, uint16) {
	if p.proto == protoICMP || p.proto == protoICMPv6 {
		return binary.BigEndian.Uint16(p.seg[4:]), 0
	}
	return binary.BigEndian.Uint16(p.seg[0:]), binary.BigEndian.Uint16(p.seg[2:])
}

// A masqueraded protocol: the container's packet, and the remote's reply to
// the translated address and port.
type natProto struct {
	name   string
	src    netip.Addr // the container's
	remote netip.Addr
	nat    netip.Addr // the uplink's
	proto  uint8
	state  program.BpfbridgeCtState // after the first packet
	out    func(sport uint16) []byte
	reply  func(natPort uint16) []byte
}

// natSegment builds a masqueraded protocol's segment from src to dst: the
// container's packet (out) from its port p, or the reply to the NAT port p
// (for echo, p is the identifier both ways).
type natSegment func(src, dst netip.Addr, p uint16, out bool) []byte

// natProtos are the masqueraded protocols, in an order the tests index.
func natProtos(a *testEndpoint) []natProto {
	tcp := func(port uint16) natSegment {
		return func(src, dst netip.Addr, p uint16, out bool) []byte {
			if out {
				return tcpFlags(src, dst, p, port, tcpSYN)
			}
			return tcpFlags(src, dst, port, p, tcpSYN|tcpACK)
		}
	}
	// udpTo sends query and gets answer back, through seg (with or without
	// a checksum).
	udpTo := func(query, answer string, seg func(src, dst netip.Addr, sport, dport uint16, data []byte) []byte) natSegment {
		return func(src, dst netip.Addr, p uint16, out bool) []byte {
			if out {
				return seg(src, dst, p, 53, []byte(query))
			}
			return seg(src, dst, 53, p, []byte(answer))
		}
	}
	noCsum := func(_, _ netip.Addr, sport, dport uint16, data []byte) []byte { return udpNoCsum(sport, dport, data) }
	echo4 := func(_, _ netip.Addr, id uint16, out bool) []byte {
		return icmp4EchoMsg(map[bool]uint8{true: icmp4EchoRequest, false: icmp4EchoReply}[out], id, 1)
	}
	echo6 := func(src, dst netip.Addr, id uint16, out bool) []byte {
		return icmp6EchoMsg(src, dst, map[bool]uint8{true: icmp6EchoRequest, false: icmp6EchoReply}[out], id, 1)
	}
	// row is the protocol over IPv6 with v6, else IPv4; pad pads its frames.
	row := func(name string, v6 bool, proto uint8, state program.BpfbridgeCtState, seg natSegment, pad bool) natProto {
		src, remote, nat, frame := a.v4(), remote4, uplink4, ipv4Frame
		if v6 {
			src, remote, nat, frame = a.v6(), remote6, uplink6, ipv6Frame
		}
		padded := func(f []byte) []byte {
			if pad {
				return padFrame(f)
			}
			return f
		}
		return natProto{name: name, src: src, remote: remote, nat: nat, proto: proto, state: state,
			out: func(p uint16) []byte {
				return padded(frame(a.mac, gwMAC, src, remote, proto, seg(src, remote, p, true)))
			},
			reply: func(p uint16) []byte {
				return padded(frame(routerMAC, uplinkMAC, remote, nat, proto, seg(remote, nat, p, false)))
			}}
	}
	return []natProto{
		row("tcp4", false, protoTCP, program.BpfbridgeCtStateCT_SYN_SENT, tcp(80), false),
		row("udp4", false, protoUDP, program.BpfbridgeCtStateCT_UDP, udpTo("query", "answer", udp), false),
		row("udp4 without checksum", false, protoUDP, program.BpfbridgeCtStateCT_UDP, udpTo("query", "answer", noCsum), false),
		row("icmp4 echo", false, protoICMP, program.BpfbridgeCtStateCT_ICMP, echo4, false),
		row("tcp6", true, protoTCP, program.BpfbridgeCtStateCT_SYN_SENT, tcp(443), false),
		row("udp6", true, protoUDP, program.BpfbridgeCtStateCT_UDP, udpTo("query", "answer", udp), false),
		row("icmp6 echo", true, protoICMPv6, program.BpfbridgeCtStateCT_ICMP, echo6, false),
		// Short packets in minimum-size (60-byte) Ethernet frames: the
		// padding is no part of the IP packet, and must not be taken for
		// one by the translation or its checksums.
		row("udp4 padded", false, protoUDP, program.BpfbridgeCtStateCT_UDP, udpTo("q", "a", udp), true),
		row("tcp4 padded", false, protoTCP, program.BpfbridgeCtStateCT_SYN_SENT, tcp(80), true),
	}
}

// padFrame pads an Ethernet frame to the 60-byte minimum with 0xee bytes, as
// a NIC or a switch may; the IP header's length excludes them.
func padFrame(frame []byte) []byte {
	for len(frame) < 60 {
		frame = append(frame, 0xee)
	}
	return frame
}

// checkPadding checks that a translation left what follows the IP packet
// (Ethernet padding) alone.
func checkPadding(t *testing.T, in, out []byte) {
	t.Helper()
	end := 14 + len(decodeFrame(t, in).hdr) + len(decodeFrame(t, in).seg)
	if !bytes.Equal(in[end:], out[end:]) {
		t.Errorf("padding %x became %x", in[end:], out[end:])
	}
}

// checkRewritten checks the packet a program made of frame (translated
// out, or restored in): the padding kept, the layer 4 checksum right, the
// addresses src -> dst. It returns the packet.
func checkRewritten(t *testing.T, what string, frame, out []byte, src, dst netip.Addr) ipPacket {
	t.Helper()
	checkPadding(t, frame, out)
	p := decodeFrame(t, out)
	checkL4(t, p, what)
	if p.src != src || p.dst != dst {
		t.Errorf("%s %v -> %v, want %v -> %v", what, p.src, p.dst, src, dst)
	}
	return p
}

// masquerade sends c's packet from port sport through uplink_egress and
// checks the translation; returns the translated frame and the NAT port.
func (n *natEnv) masquerade(t *testing.T, c natProto, sport uint16) ([]byte, uint16) {
	t.Helper()
	frame := c.out(sport)
	verdict, out := n.egress(t, frame)
	if verdict != verdictPass {
		t.Fatalf("egress verdict %#x, want pass", verdict)
	}
	if len(out) != len(frame) {
		t.Fatalf("egress changed the length: %d -> %d", len(frame), len(out))
	}
	if !bytes.Equal(out[:14], frame[:14]) {
		t.Errorf("egress changed the Ethernet header")
	}
	p := checkRewritten(t, "translated", frame, out, c.nat, c.remote)
	natPort, dport := p.ports()
	if natPort < uint16(program.BpfbridgeNatPortDefaultNAT_PORT_MIN_DEFAULT) || natPort > uint16(program.BpfbridgeNatPortDefaultNAT_PORT_MAX_DEFAULT) {
		t.Errorf("NAT port %d outside the default range", natPort)
	}
	orig := decodeFrame(t, frame)
	if _, od := orig.ports(); dport != od {
		t.Errorf("destination port changed: %d -> %d", od, dport)
	}
	if c.name == "udp4 without checksum" && binary.BigEndian.Uint16(p.seg[6:]) != 0 {
		t.Errorf("UDP checksum 0 became %#04x", binary.BigEndian.Uint16(p.seg[6:]))
	}
	return out, natPort
}

func TestMasqueradeRoundTrip(t *testing.T) {
	n := newNATEnv(t)
	for i, c := range natProtos(n.a) {
		t.Run(c.name, func(t *testing.T) {
			sport := uint16(40000 + i)
			_, natPort := n.masquerade(t, c, sport)

			_, od := decodeFrame(t, c.out(sport)).ports()
			okey := tuple(c.src, c.remote, sport, od, c.proto)
			var oe, ie program.BpfbridgeNatEntry
			if err := n.objs.NatOut.Lookup(okey, &oe); err != nil {
				t.Fatalf("nat_out %+v: %v", okey, err)
			}
			if oe.AddrPort(okey.Family) != netip.AddrPortFrom(c.nat, natPort) || program.BpfbridgeCtState(oe.State) != c.state ||
				oe.Uplink != n.uplink || oe.Packets != 1 || oe.Bytes == 0 || oe.CreatedNs == 0 {
				t.Errorf("nat_out entry %+v", oe)
			}
			ikey := okey.Reply(&oe)
			if err := n.objs.NatIn.Lookup(ikey, &ie); err != nil {
				t.Fatalf("nat_in %+v: %v", ikey, err)
			}
			if ie.AddrPort(ikey.Family) != netip.AddrPortFrom(c.src, sport) || program.BpfbridgeCtState(ie.State) != c.state || ie.Packets != 0 {
				t.Errorf("nat_in entry %+v", ie)
			}

			// A second packet uses the same mapping.
			if _, again := n.masquerade(t, c, sport); again != natPort {
				t.Errorf("second packet got NAT port %d, first %d", again, natPort)
			}

			// The reply goes back to the container.
			reply := c.reply(natPort)
			verdict, back := n.ingress(t, reply)
			if verdict != verdictPass {
				t.Fatalf("ingress verdict %#x", verdict)
			}
			p := checkRewritten(t, "restored", reply, back, c.remote, c.src)
			rs, rd := p.ports()
			if c.proto == protoICMP || c.proto == protoICMPv6 {
				rd = rs // the identifier
			}
			if rd != sport {
				t.Errorf("restored port %d, want %d", rd, sport)
			}
			if c.name == "udp4 without checksum" && binary.BigEndian.Uint16(p.seg[6:]) != 0 {
				t.Errorf("UDP checksum 0 became %#04x on the way back", binary.BigEndian.Uint16(p.seg[6:]))
			}

			want := c.state
			if c.proto == protoTCP {
				want = program.BpfbridgeCtStateCT_ESTABLISHED // SYN-ACK in SYN_SENT
			}
			if err := n.objs.NatIn.Lookup(ikey, &ie); err != nil {
				t.Fatal(err)
			}
			if err := n.objs.NatOut.Lookup(okey, &oe); err != nil {
				t.Fatal(err)
			}
			if program.BpfbridgeCtState(ie.State) != want || program.BpfbridgeCtState(oe.State) != want {
				t.Errorf("state after reply: nat_out %d, nat_in %d, want %d", oe.State, ie.State, want)
			}
			if ie.Packets != 1 || oe.Packets != 2 {
				t.Errorf("packets: nat_out %d, nat_in %d, want 2 and 1", oe.Packets, ie.Packets)
			}
		})
	}
	if pairs := n.checkPairs(t); pairs != len(natProtos(n.a)) {
		t.Errorf("%d pairs, want %d", pairs, len(natProtos(n.a)))
	}
	if tot := n.totals(t); tot != [program.NumDropReasons]uint64{} {
		t.Errorf("drops: %v", tot)
	}
}

func TestMasqueradeTCPStates(t *testing.T) {
	n := newNATEnv(t)
	a := n.a
	send := func(flags uint8) {
		t.Helper()
		f := ipv4Frame(a.mac, gwMAC, a.v4(), remote4, protoTCP, tcpFlags(a.v4(), remote4, 40000, 80, flags))
		if v, _ := n.egress(t, f); v != verdictPass {
			t.Fatalf("verdict %#x", v)
		}
	}
	state := func() program.BpfbridgeCtState {
		t.Helper()
		var e program.BpfbridgeNatEntry
		if err := n.objs.NatOut.Lookup(tuple(a.v4(), remote4, 40000, 80, protoTCP), &e); err != nil {
			t.Fatal(err)
		}
		return program.BpfbridgeCtState(e.State)
	}
	send(tcpACK) // picked up mid-stream, with the short timeout of a SYN
	if s := state(); s != program.BpfbridgeCtStateCT_SYN_SENT {
		t.Errorf("bare ACK: state %d, want syn-sent (not established)", s)
	}
	send(tcpFIN | tcpACK)
	if s := state(); s != program.BpfbridgeCtStateCT_CLOSING {
		t.Errorf("after FIN: state %d", s)
	}
	send(tcpSYN) // the port reused for a new connection
	if s := state(); s != program.BpfbridgeCtStateCT_SYN_SENT {
		t.Errorf("after a new SYN: state %d", s)
	}
	send(tcpRST)
	if s := state(); s != program.BpfbridgeCtStateCT_CLOSING {
		t.Errorf("after RST: state %d", s)
	}
	n.checkPairs(t)
}

func TestMasqueradeNotTranslated(t *testing.T) {
	n := newNATEnv(t)
	a, c := n.a, n.c
	mdns4, mdns6 := ip("224.0.0.251"), ip("ff02::fb")
	for _, tc := range []struct {
		name  string
		frame []byte
	}{
		{"own subnet", a.tcp4(a.v4(), ip("10.0.0.99"))},
		{"own subnet ipv6", a.tcp6(a.v6(), ip("fd00::99"))},
		{"excluded destination", a.tcp4(a.v4(), ip("192.0.2.5"))},
		{"network without masquerade", c.tcp4(c.v4(), remote4)},
		{"network without masquerade ipv6", c.tcp6(c.v6(), remote6)},
		{"multicast", ipv4Frame(a.mac, gwMAC, a.v4(), mdns4, protoUDP, udp(a.v4(), mdns4, 5353, 5353, nil))},
		{"limited broadcast", ipv4Frame(a.mac, broadcastMAC, a.v4(), ip("255.255.255.255"), protoUDP, udp(a.v4(), ip("255.255.255.255"), 68, 67, nil))},
		{"multicast ipv6", ipv6Frame(a.mac, gwMAC, a.v6(), mdns6, protoUDP, udp(a.v6(), mdns6, 5353, 5353, nil))},
		{"routed traffic", ipv4Frame(uplinkMAC, routerMAC, ip("192.0.2.77"), remote4, protoTCP, tcpFlags(ip("192.0.2.77"), remote4, 40000, 80, tcpSYN))},
		{"arp", arpFrame(a.mac, broadcastMAC, arp(1, a.mac, a.v4(), make([]byte, 6), gw4))},
		// The IP header ends the packet 12 bytes into its TCP header: the
		// padding that fills the frame up is no TCP header.
		{"tcp header cut short before padding", padFrame(ipv4Frame(a.mac, gwMAC, a.v4(), remote4, protoTCP, tcpFlags(a.v4(), remote4, 40000, 80, tcpSYN)[:12]))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			verdict, out := n.egress(t, tc.frame)
			if verdict != verdictPass {
				t.Errorf("verdict %#x, want pass", verdict)
			}
			if !bytes.Equal(out, tc.frame) {
				t.Errorf("frame changed")
			}
		})
	}
	if pairs := n.checkPairs(t); pairs != 0 {
		t.Errorf("%d NAT entries created", pairs)
	}
	if tot := n.totals(t); tot != [program.NumDropReasons]uint64{} {
		t.Errorf("drops: %v", tot)
	}

	// Replies nobody asked for pass untouched.
	for _, c := range natProtos(a) {
		f := c.reply(61000)
		if verdict, out := n.ingress(t, f); verdict != verdictPass || !bytes.Equal(out, f) {
			t.Errorf("%s: unsolicited reply: verdict %#x, changed %v", c.name, verdict, !bytes.Equal(out, f))
		}
	}
}

// expectDrop runs frame through uplink_egress and checks it is dropped for
// want, counted in total and for endpoint ep.
func (n *natEnv) expectDrop(t *testing.T, ep *testEndpoint, frame []byte, want program.DropReason) {
	t.Helper()
	before, _ := n.stats(t, ep.ifindex)
	totals := n.totals(t)
	verdict, _ := n.egress(t, frame)
	if verdict != verdictDrop {
		t.Fatalf("verdict %#x, want drop (%v)", verdict, want)
	}
	after, _ := n.stats(t, ep.ifindex)
	got := n.totals(t)
	for r := range program.NumDropReasons {
		var d uint64
		if program.DropReason(r) == want {
			d = 1
		}
		if got[r]-totals[r] != d {
			t.Errorf("drop_totals[%v] grew by %d, want %d", program.DropReason(r), got[r]-totals[r], d)
		}
		if after.Drops[r]-before.Drops[r] != d {
			t.Errorf("endpoint drops[%v] grew by %d, want %d", program.DropReason(r), after.Drops[r]-before.Drops[r], d)
		}
	}
}

func TestMasqueradeNoAddress(t *testing.T) {
	n := newNATEnv(t)
	a := n.a
	n.setUplink(t, n.uplink, true, false)
	n.expectDrop(t, a, a.tcp6(a.v6(), remote6), program.BpfbridgeDropReasonDROP_NAT_NO_ADDRESS)
	// IPv4 still works.
	n.masquerade(t, natProtos(a)[0], 40000)

	// An uplink without entry: nothing is sent with a container's address.
	if err := n.objs.NatUplinks.Delete(n.uplink); err != nil {
		t.Fatal(err)
	}
	n.expectDrop(t, a, a.tcp4(a.v4(), remote4), program.BpfbridgeDropReasonDROP_NAT_NO_ADDRESS)
	// Traffic that is not masqueraded is not affected.
	if verdict, _ := n.egress(t, a.tcp4(a.v4(), ip("10.0.0.99"))); verdict != verdictPass {
		t.Errorf("excluded destination: verdict %#x", verdict)
	}
	n.checkPairs(t)
}

func TestMasqueradeExhausted(t *testing.T) {
	n := newNATEnv(t)
	a := n.a
	n.setConfig(t, program.BpfbridgeNatConfig{PortMin: 61000, PortMax: 61001})
	tcp := natProtos(a)[0]
	used := map[uint16]bool{}
	for _, sp := range []uint16{40000, 40001} {
		_, np := n.masquerade(t, tcp, sp)
		if np != 61000 && np != 61001 {
			t.Errorf("NAT port %d outside 61000-61001", np)
		}
		used[np] = true
	}
	if len(used) != 2 {
		t.Errorf("two flows share a NAT port: %v", used)
	}
	n.expectDrop(t, a, tcp.out(40002), program.BpfbridgeDropReasonDROP_NAT_EXHAUSTED)
	if pairs := n.checkPairs(t); pairs != 2 {
		t.Errorf("%d pairs after the exhaustion drop, want 2 (no orphan)", pairs)
	}

	// Ports are per remote: another destination has the range to itself.
	other := ip("198.51.100.8")
	f := ipv4Frame(a.mac, gwMAC, a.v4(), other, protoTCP, tcpFlags(a.v4(), other, 40002, 80, tcpSYN))
	if verdict, _ := n.egress(t, f); verdict != verdictPass {
		t.Errorf("other remote: verdict %#x", verdict)
	}
	// And a single-port range.
	n.setConfig(t, program.BpfbridgeNatConfig{PortMin: 62000, PortMax: 62000})
	udp4 := natProtos(a)[1]
	if _, np := n.masquerade(t, udp4, 40000); np != 62000 {
		t.Errorf("single-port range: NAT port %d", np)
	}
	n.expectDrop(t, a, udp4.out(40001), program.BpfbridgeDropReasonDROP_NAT_EXHAUSTED)
	if pairs := n.checkPairs(t); pairs != 4 {
		t.Errorf("%d pairs, want 4", pairs)
	}
}

func TestMasqueradeReclaimExpired(t *testing.T) {
	n := newNATEnv(t)
	a := n.a
	n.setConfig(t, program.BpfbridgeNatConfig{PortMin: 61000, PortMax: 61000,
		TimeoutTcpS: 1, TimeoutTcpSynS: 1, TimeoutTcpClosingS: 1, TimeoutUdpS: 1, TimeoutIcmpS: 1})
	for _, c := range []natProto{natProtos(a)[1], natProtos(a)[6]} { // udp4, icmp6 echo
		t.Run(c.name, func(t *testing.T) {
			_, np := n.masquerade(t, c, 40000)
			if np != 61000 {
				t.Fatalf("NAT port %d", np)
			}
			// Still live: the port is taken.
			n.expectDrop(t, a, c.out(40001), program.BpfbridgeDropReasonDROP_NAT_EXHAUSTED)

			// Age the first flow's pair past its timeout.
			_, od := decodeFrame(t, c.out(40000)).ports()
			okey := tuple(c.src, c.remote, 40000, od, c.proto)
			var oe, ie program.BpfbridgeNatEntry
			if err := n.objs.NatOut.Lookup(okey, &oe); err != nil {
				t.Fatal(err)
			}
			ikey := okey.Reply(&oe)
			if err := n.objs.NatIn.Lookup(ikey, &ie); err != nil {
				t.Fatal(err)
			}
			past := monotonicNow(t) - 10e9
			oe.LastSeenNs, ie.LastSeenNs = past, past
			if err := n.objs.NatOut.Put(okey, oe); err != nil {
				t.Fatal(err)
			}
			if err := n.objs.NatIn.Put(ikey, ie); err != nil {
				t.Fatal(err)
			}

			// An expired entry translates no reply.
			reply := c.reply(61000)
			if _, out := n.ingress(t, reply); !bytes.Equal(out, reply) {
				t.Errorf("a reply to an expired flow was translated")
			}

			// The second flow reclaims the port.
			if _, np := n.masquerade(t, c, 40001); np != 61000 {
				t.Errorf("reclaimed NAT port %d", np)
			}
			if err := n.objs.NatIn.Lookup(ikey, &ie); err != nil {
				t.Fatal(err)
			}
			if ie.Port != program.Be16(40001) || ie.LastSeenNs <= past {
				t.Errorf("nat_in after reclaim: %+v", ie)
			}
			if err := n.objs.NatOut.Lookup(okey, &oe); !errors.Is(err, ebpf.ErrKeyNotExist) {
				t.Errorf("the expired flow's nat_out entry is still there: %v", err)
			}
			if pairs := n.checkPairs(t); pairs != 1 {
				t.Errorf("%d pairs, want 1", pairs)
			}
			// Clean up for the next protocol: this test owns the tables.
			for k := range table(t, n.objs.NatOut) {
				_ = n.objs.NatOut.Delete(k)
			}
			for k := range table(t, n.objs.NatIn) {
				_ = n.objs.NatIn.Delete(k)
			}
		})
	}

	// A flow whose own entries expired starts over, and gets its port
	// back (same hash, port free).
	c := natProtos(a)[0]
	n.masquerade(t, c, 40000)
	for _, m := range []*ebpf.Map{n.objs.NatOut, n.objs.NatIn} {
		for k, v := range table(t, m) {
			v.LastSeenNs = monotonicNow(t) - 10e9
			v.State = uint8(program.BpfbridgeCtStateCT_ESTABLISHED)
			if err := m.Put(k, v); err != nil {
				t.Fatal(err)
			}
		}
	}
	n.masquerade(t, c, 40000)
	for _, v := range table(t, n.objs.NatOut) {
		if program.BpfbridgeCtState(v.State) != program.BpfbridgeCtStateCT_SYN_SENT || v.Packets != 1 {
			t.Errorf("restarted flow: %+v", v)
		}
	}
	n.checkPairs(t)
}

// A nat_out entry without its nat_in half is repaired, not used.
func TestMasqueradeHalfPair(t *testing.T) {
	n := newNATEnv(t)
	c := natProtos(n.a)[1]
	_, np := n.masquerade(t, c, 40000)
	for k := range table(t, n.objs.NatIn) {
		if err := n.objs.NatIn.Delete(k); err != nil {
			t.Fatal(err)
		}
	}
	if _, again := n.masquerade(t, c, 40000); again != np {
		t.Logf("new NAT port %d (was %d)", again, np)
	}
	if pairs := n.checkPairs(t); pairs != 1 {
		t.Errorf("%d pairs, want 1", pairs)
	}
	// And the other way round: a nat_in half without nat_out is adopted.
	for k := range table(t, n.objs.NatOut) {
		if err := n.objs.NatOut.Delete(k); err != nil {
			t.Fatal(err)
		}
	}
	n.masquerade(t, c, 40000)
	if pairs := n.checkPairs(t); pairs != 1 {
		t.Errorf("%d pairs, want 1", pairs)
	}
}

// checkICMPError checks a translated ICMP error: the outer destination and
// every checksum, and the quoted packet's source back to the container's.
// fullQuote says whether the quote holds the whole quoted packet, so that
// its L4 checksum can be recomputed.
func checkICMPError(t *testing.T, out []byte, c natProto, sport uint16, fullQuote bool) {
	t.Helper()
	p := decodeFrame(t, out)
	checkL4(t, p, "ICMP error") // ICMPv4 without, ICMPv6 with pseudo-header
	if p.dst != c.src {
		t.Errorf("outer destination %v, want %v", p.dst, c.src)
	}
	q := decodeIP(t, p.seg[8:]) // checks the quoted IPv4 header checksum
	if q.src != c.src || q.dst != c.remote {
		t.Errorf("quoted %v -> %v, want %v -> %v", q.src, q.dst, c.src, c.remote)
	}
	if qs, _ := q.ports(); qs != sport {
		t.Errorf("quoted source port %d, want %d", qs, sport)
	}
	if fullQuote {
		checkL4(t, q, "quoted packet")
	}
}

// icmp4ErrorFrom builds an ICMPv4 error from src to the uplink that quotes
// a packet; rest is the header's second word (the MTU of "fragmentation
// needed").
func icmp4ErrorFrom(src netip.Addr, typ, code uint8, rest uint32) func(quote []byte) []byte {
	return func(quote []byte) []byte {
		return ipv4Frame(routerMAC, uplinkMAC, src, uplink4, protoICMP, icmp4Error(typ, code, rest, quote))
	}
}

// icmp6ErrorFrom is icmp4ErrorFrom for ICMPv6 (rest is the MTU of "packet
// too big").
func icmp6ErrorFrom(src netip.Addr, typ, code uint8, rest uint32) func(quote []byte) []byte {
	return func(quote []byte) []byte {
		return ipv6Frame(routerMAC, uplinkMAC, src, uplink6, protoICMPv6, icmp6(src, uplink6, typ, code, append(be32(nil, rest), quote...)))
	}
}

func TestICMPErrorTranslation(t *testing.T) {
	n := newNATEnv(t)
	protos := natProtos(n.a)
	for _, tc := range []struct {
		name  string
		proto natProto
		sport uint16
		// error builds the error about the translated packet, quoting it
		// whole (fullQuote) or its header and first 8 bytes.
		error     func(quote []byte) []byte
		fullQuote bool
	}{
		{name: "fragmentation needed, tcp4, whole packet quoted", proto: protos[0], sport: 41000, fullQuote: true,
			error: icmp4ErrorFrom(router4, icmp4DestUnreach, icmp4FragNeeded, 1400)},
		{name: "fragmentation needed, tcp4, 8 bytes quoted", proto: protos[0], sport: 41001,
			error: icmp4ErrorFrom(router4, icmp4DestUnreach, icmp4FragNeeded, 1400)},
		{name: "time exceeded, udp4", proto: protos[1], sport: 41002, fullQuote: true, error: icmp4ErrorFrom(router4, 11, 0, 0)},
		{name: "port unreachable, udp4 without checksum", proto: protos[2], sport: 41003, fullQuote: true,
			error: icmp4ErrorFrom(remote4, icmp4DestUnreach, 3, 0)},
		{name: "time exceeded, icmp4 echo (traceroute)", proto: protos[3], sport: 41004, fullQuote: true,
			error: icmp4ErrorFrom(router4, 11, 0, 0)},
		{name: "packet too big, tcp6", proto: protos[4], sport: 41005, fullQuote: true,
			error: icmp6ErrorFrom(router6, icmp6PacketTooBig, 0, 1280)},
		{name: "time exceeded, udp6", proto: protos[5], sport: 41006, fullQuote: true, error: icmp6ErrorFrom(router6, 3, 0, 0)},
		{name: "destination unreachable, icmp6 echo", proto: protos[6], sport: 41007, fullQuote: true,
			error: icmp6ErrorFrom(router6, 1, 0, 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			translated, _ := n.masquerade(t, tc.proto, tc.sport)
			tp := decodeFrame(t, translated)
			seg := tp.seg
			if !tc.fullQuote {
				seg = seg[:8]
			}
			errFrame := tc.error(append(append([]byte{}, tp.hdr...), seg...))
			checkL4(t, decodeFrame(t, errFrame), "crafted error") // the test's own frame is right
			verdict, out := n.ingress(t, errFrame)
			if verdict != verdictPass {
				t.Fatalf("verdict %#x", verdict)
			}
			if len(out) != len(errFrame) {
				t.Fatalf("length changed")
			}
			checkICMPError(t, out, tc.proto, tc.sport, tc.fullQuote)
		})
	}

	// An error about a flow that is not ours passes untouched.
	stranger := ipv4(uplink4, remote4, protoTCP, tcpFlags(uplink4, remote4, 50000, 80, tcpSYN))
	f := ipv4Frame(routerMAC, uplinkMAC, router4, uplink4, protoICMP, icmp4Error(icmp4DestUnreach, icmp4FragNeeded, 1400, stranger))
	if verdict, out := n.ingress(t, f); verdict != verdictPass || !bytes.Equal(out, f) {
		t.Errorf("error about a foreign flow: verdict %#x, changed %v", verdict, !bytes.Equal(out, f))
	}
	if tot := n.totals(t); tot != [program.NumDropReasons]uint64{} {
		t.Errorf("drops: %v", tot)
	}
}

// TestVerifierComplexity loads each program on its own and bounds what the
// verifier walks: NAT port allocation loops, and a program that costs the
// verifier hundreds of thousands of instructions loads slowly at every CNI
// ADD and is one refactoring away from the 1M limit.
func TestVerifierComplexity(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loading BPF programs needs root")
	}
	spec, err := program.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	for name := range spec.Programs {
		one := spec.Copy()
		for other := range one.Programs {
			if other != name {
				delete(one.Programs, other)
			}
		}
		coll, err := ebpf.NewCollection(one)
		if err != nil {
			var ve *ebpf.VerifierError
			if errors.As(err, &ve) {
				t.Fatalf("%s: verifier: %+v", name, ve)
			}
			t.Fatalf("%s: %v", name, err)
		}
		info, err := coll.Programs[name].Info()
		if err != nil {
			t.Fatal(err)
		}
		n, ok := info.VerifiedInstructions()
		coll.Close()
		if !ok {
			t.Skip("kernel does not report verified instructions")
		}
		t.Logf("%s: %d instructions verified", name, n)
		if n > 200000 {
			t.Errorf("%s: verifier walked %d instructions, budget 200000", name, n)
		}
	}
}

// The container's source port is kept when the translated tuple is free,
// and moved when another flow holds it.
func TestMasqueradePortPreservation(t *testing.T) {
	n := newNATEnv(t)
	a, b := n.a, n.b
	for _, i := range []int{0, 1, 3, 4} { // tcp4, udp4, icmp4 echo, tcp6
		c, other := natProtos(a)[i], natProtos(b)[i]
		t.Run(c.name, func(t *testing.T) {
			if _, np := n.masquerade(t, c, 45000); np != 45000 {
				t.Errorf("free tuple: NAT port %d, want the container's own 45000", np)
			}
			// Container b sends from the same port to the same remote:
			// the tuple is a's, so b's flow moves.
			if _, np := n.masquerade(t, other, 45000); np == 45000 {
				t.Errorf("taken tuple: NAT port %d kept", np)
			}
		})
	}
	// Outside the range the port moves into it.
	n.setConfig(t, program.BpfbridgeNatConfig{PortMin: 50000, PortMax: 50100})
	_, np := n.masquerade(t, natProtos(a)[1], 2000)
	if np < 50000 || np > 50100 {
		t.Errorf("port outside the range: NAT port %d", np)
	}
	n.checkPairs(t)
}

// The node's own flows from the uplink address share the table: a
// container never takes their tuple, and a node flow that finds its tuple
// taken moves to another port, its replies restored.
func TestMasqueradeNodeFlows(t *testing.T) {
	n := newNATEnv(t)
	a := n.a
	node := func(sp uint16) []byte {
		return ipv4Frame(uplinkMAC, routerMAC, uplink4, remote4, protoTCP, tcpFlags(uplink4, remote4, sp, 80, tcpSYN))
	}
	f := node(40000)
	if v, out := n.egress(t, f); v != verdictPass || !bytes.Equal(out, f) {
		t.Fatalf("node flow: verdict %#x, changed %v", v, !bytes.Equal(out, f))
	}
	if pairs := n.checkPairs(t); pairs != 1 {
		t.Fatalf("node flow: %d pairs, want 1 (tracked)", pairs)
	}
	// Its reply passes as it is.
	reply := ipv4Frame(routerMAC, uplinkMAC, remote4, uplink4, protoTCP, tcpFlags(remote4, uplink4, 80, 40000, tcpSYN|tcpACK))
	if v, out := n.ingress(t, reply); v != verdictPass || !bytes.Equal(out, reply) {
		t.Errorf("node flow's reply: verdict %#x, changed %v", v, !bytes.Equal(out, reply))
	}
	// A container from the same port to the same remote:port moves.
	if _, np := n.masquerade(t, natProtos(a)[0], 40000); np == 40000 {
		t.Errorf("container flow took the node's tuple")
	}
	// The container holds 41000 first: the node's flow from 41000 moves.
	if _, np := n.masquerade(t, natProtos(a)[0], 41000); np != 41000 {
		t.Fatalf("container flow: NAT port %d, want 41000", np)
	}
	v, out := n.egress(t, node(41000))
	if v != verdictPass {
		t.Fatalf("verdict %#x", v)
	}
	p := decodeFrame(t, out)
	checkL4(t, p, "moved node flow")
	moved, _ := p.ports()
	if p.src != uplink4 || moved == 41000 {
		t.Fatalf("node flow over a taken tuple left as %v:%d", p.src, moved)
	}
	reply = ipv4Frame(routerMAC, uplinkMAC, remote4, uplink4, protoTCP, tcpFlags(remote4, uplink4, 80, moved, tcpSYN|tcpACK))
	_, back := n.ingress(t, reply)
	bp := decodeFrame(t, back)
	checkL4(t, bp, "restored node reply")
	if _, d := bp.ports(); bp.dst != uplink4 || d != 41000 {
		t.Errorf("node reply restored to %v:%d, want %v:41000", bp.dst, d, uplink4)
	}
	if pairs := n.checkPairs(t); pairs != 4 {
		t.Errorf("%d pairs, want 4", pairs)
	}
	if tot := n.totals(t); tot != [program.NumDropReasons]uint64{} {
		t.Errorf("drops: %v", tot)
	}
}

// tcpSeg is a payload-free TCP segment with the given numbers, window and
// options (padded to 4 bytes with end-of-options).
func tcpSeg(src, dst netip.Addr, sport, dport uint16, flags uint8, seq, ack uint32, win uint16, opts []byte) []byte {
	for len(opts)%4 != 0 {
		opts = append(opts, 0)
	}
	seg := be16(nil, sport)
	seg = be16(seg, dport)
	seg = be32(seg, seq)
	seg = be32(seg, ack)
	seg = append(seg, byte((20+len(opts))/4)<<4, flags)
	seg = be16(seg, win)
	seg = append(seg, 0, 0, 0, 0)
	seg = append(seg, opts...)
	return l4(src, dst, protoTCP, seg, 16)
}

// A RST or FIN from the remote changes a flow's state only when its
// sequence number lies in the window the container last advertised
// (scaled as its SYN said); blind ones neither close nor refresh it.
func TestMasqueradeTCPWindow(t *testing.T) {
	// Linux's SYN options: MSS, SACK permitted, timestamps, NOP, window scale 7.
	linuxOpts := []byte{2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7}
	for _, tc := range []struct {
		name  string
		opts  []byte
		scale uint
	}{
		{"window scale 7", linuxOpts, 7},
		{"no window scale", []byte{2, 4, 0x05, 0xb4}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNATEnv(t)
			a := n.a
			const sport, cseq, rseq, win = 42000, 1000, 5000, 100
			out := func(flags uint8, seq, ack uint32, opts []byte) {
				t.Helper()
				f := ipv4Frame(a.mac, gwMAC, a.v4(), remote4, protoTCP, tcpSeg(a.v4(), remote4, sport, 80, flags, seq, ack, win, opts))
				if v, _ := n.egress(t, f); v != verdictPass {
					t.Fatalf("egress verdict %#x", v)
				}
			}
			in := func(flags uint8, seq uint32) {
				t.Helper()
				f := ipv4Frame(routerMAC, uplinkMAC, remote4, uplink4, protoTCP, tcpSeg(remote4, uplink4, 80, sport, flags, seq, cseq+1, 1000, nil))
				v, back := n.ingress(t, f)
				if v != verdictPass {
					t.Fatalf("ingress verdict %#x", v)
				}
				// Translated all the same: the container's TCP judges it too.
				if p := decodeFrame(t, back); p.dst != a.v4() {
					t.Errorf("segment from the remote not translated: to %v", p.dst)
				}
			}
			okey := tuple(a.v4(), remote4, sport, 80, protoTCP)
			entry := func() program.BpfbridgeNatEntry {
				t.Helper()
				var e program.BpfbridgeNatEntry
				if err := n.objs.NatOut.Lookup(okey, &e); err != nil {
					t.Fatal(err)
				}
				return e
			}
			out(tcpSYN, cseq, 0, tc.opts)
			in(tcpSYN|tcpACK, rseq)
			out(tcpACK, cseq+1, rseq+1, nil)
			if s := program.BpfbridgeCtState(entry().State); s != program.BpfbridgeCtStateCT_ESTABLISHED {
				t.Fatalf("state %v, want established", s)
			}
			span := uint32(win) << tc.scale
			seen := entry().LastSeenNs
			// Blind: every sequence number outside the window.
			for i := range uint32(5000) {
				flags := uint8(tcpRST)
				if i%2 == 1 {
					flags = tcpFIN | tcpACK
				}
				in(flags, rseq+1+span+1+i*811_000)
			}
			if e := entry(); program.BpfbridgeCtState(e.State) != program.BpfbridgeCtStateCT_ESTABLISHED || e.LastSeenNs != seen {
				t.Errorf("after 5000 out-of-window RST/FIN: state %v, refreshed %v", program.BpfbridgeCtState(e.State), e.LastSeenNs != seen)
			}
			// Before the last acknowledgment: out of window too.
			in(tcpRST, rseq)
			if s := program.BpfbridgeCtState(entry().State); s != program.BpfbridgeCtStateCT_ESTABLISHED {
				t.Errorf("RST before the window: state %v", s)
			}
			// At the window's far edge: in.
			in(tcpRST, rseq+1+span)
			if s := program.BpfbridgeCtState(entry().State); s != program.BpfbridgeCtStateCT_CLOSING {
				t.Errorf("RST in window: state %v, want closing", s)
			}
			n.checkPairs(t)
		})
	}
}

// usage reads a container's (or NAT_USAGE_TOTAL's) pair count.
func (n *natEnv) usage(t *testing.T, key uint32) int32 {
	t.Helper()
	var u program.BpfbridgeNatUsage
	if err := n.objs.NatUsage.Lookup(key, &u); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatal(err)
	}
	return u.Pairs
}

// udpTo is container ep's UDP datagram from sport to remote:53.
func udpTo(ep *testEndpoint, remote netip.Addr, sport uint16) []byte {
	return ipv4Frame(ep.mac, gwMAC, ep.v4(), remote, protoUDP, udp(ep.v4(), remote, sport, 53, []byte("q")))
}

// A container over its budget is dropped as nat-quota; others, and the
// node, are not; expired pairs of its own give it room again.
func TestMasqueradeQuota(t *testing.T) {
	n := newNATEnv(t)
	a, b := n.a, n.b
	if err := n.objs.NatQuota.Put(uint32(0), program.BpfbridgeNatQuota{Guaranteed: 2, Shared: 3}); err != nil {
		t.Fatal(err)
	}
	for sp := uint16(1); sp <= 3; sp++ { // 2 guaranteed, then 1 from the shared pool
		if v, _ := n.egress(t, udpTo(a, remote4, 40000+sp)); v != verdictPass {
			t.Fatalf("flow %d within the budget: verdict %#x", sp, v)
		}
	}
	n.expectDrop(t, a, udpTo(a, remote4, 40004), program.BpfbridgeDropReasonDROP_NAT_QUOTA)
	// b still has its guaranteed share; the node has no budget.
	if v, _ := n.egress(t, udpTo(b, remote4, 40000)); v != verdictPass {
		t.Errorf("another container: verdict %#x", v)
	}
	node := ipv4Frame(uplinkMAC, routerMAC, uplink4, remote4, protoUDP, udp(uplink4, remote4, 40000, 53, nil))
	if v, _ := n.egress(t, node); v != verdictPass {
		t.Errorf("the node: verdict %#x", v)
	}
	if ua, ub, all := n.usage(t, a.ifindex), n.usage(t, b.ifindex), n.usage(t, 0); ua != 3 || ub != 1 || all != 4 {
		t.Errorf("usage a %d, b %d, total %d; want 3, 1, 4", ua, ub, all)
	}
	// Existing flows of a are untouched by the quota.
	if v, _ := n.egress(t, udpTo(a, remote4, 40001)); v != verdictPass {
		t.Errorf("existing flow over the budget: verdict %#x", v)
	}
	// a's flows expire: the next flow reclaims them from the ring, on the spot.
	for _, m := range []*ebpf.Map{n.objs.NatOut, n.objs.NatIn} {
		for k, v := range table(t, m) {
			if program.AddrOf(k.Family, k.Src) == a.v4() || program.AddrOf(k.Family, v.Addr) == a.v4() {
				v.LastSeenNs = monotonicNow(t) - 100e9
				if err := m.Put(k, v); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if v, _ := n.egress(t, udpTo(a, remote4, 40005)); v != verdictPass {
		t.Errorf("after a's flows expired: verdict %#x", v)
	}
	if ua := n.usage(t, a.ifindex); ua >= 3 {
		t.Errorf("usage of a %d after reclaim", ua)
	}
	n.checkPairs(t)
}

// A full table whose pairs expired admits a new flow at once: the new
// flow reclaims expired pairs itself, both halves, with no sweep.
func TestMasqueradeFullTable(t *testing.T) {
	n := newNATEnv(t)
	a, b := n.a, n.b
	size := int(n.objs.NatIn.MaxEntries())
	past := monotonicNow(t) - 1000e9
	outs := make([]program.BpfbridgeNatTuple, size)
	ins := make([]program.BpfbridgeNatTuple, size)
	outV := make([]program.BpfbridgeNatEntry, size)
	inV := make([]program.BpfbridgeNatEntry, size)
	slots := make([]uint32, size)
	for i := range size {
		remote := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		sport := uint16(1024 + i>>16)
		outs[i] = tuple(a.v4(), remote, sport, 53, protoUDP)
		outV[i] = program.BpfbridgeNatEntry{Port: program.Be16(sport), State: uint8(program.BpfbridgeCtStateCT_UDP), Uplink: n.uplink, CreatedNs: past, LastSeenNs: past}
		outV[i].Addr = tuple(uplink4, remote, 0, 0, protoUDP).Src
		ins[i] = outs[i].Reply(&outV[i])
		inV[i] = outV[i]
		inV[i].Addr, inV[i].Port = outs[i].Src, outs[i].Sport
		slots[i] = uint32(i)
	}
	for _, w := range []struct {
		m    *ebpf.Map
		k, v any
	}{{n.objs.NatOut, outs, outV}, {n.objs.NatIn, ins, inV}, {n.objs.NatRing, slots, outs}} {
		if _, err := w.m.BatchUpdate(w.k, w.v, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.objs.NatRingPos.Put(uint32(0), program.BpfbridgeNatRingPos{Head: uint64(size)}); err != nil {
		t.Fatal(err)
	}
	// Full: a plain insert fails.
	extra := tuple(b.v4(), remote4, 1, 1, protoUDP)
	if err := n.objs.NatIn.Update(extra, inV[0], ebpf.UpdateNoExist); err == nil {
		t.Fatal("nat_in is not full")
	} else if err := n.objs.NatIn.Delete(extra); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatal(err)
	}
	if _, np := n.masquerade(t, natProtos(b)[1], 40000); np != 40000 {
		t.Errorf("new flow in a full table: NAT port %d", np)
	}
	pairs := n.checkPairs(t)
	// At most NAT_RECLAIM_PER_CREATE + NAT_RECLAIM_ON_FULL (2 + 8) reclaimed.
	if pairs >= size || pairs < size-10 {
		t.Errorf("%d pairs after the new flow, want %d minus the few (up to 10) it reclaimed", pairs, size)
	}
}

// ipv4Fragment is an IPv4 packet carrying the fragment of payload at
// offset (a multiple of 8) of a datagram with identification id.
func ipv4Fragment(src, dst netip.Addr, proto uint8, id uint16, offset int, more bool, payload []byte) []byte {
	h := []byte{0x45, 0}
	h = be16(h, uint16(20+len(payload)))
	h = be16(h, id)
	fo := uint16(offset / 8)
	if more {
		fo |= 0x2000
	}
	h = be16(h, fo)
	h = append(h, 64, proto, 0, 0)
	h = append(h, src.AsSlice()...)
	h = append(h, dst.AsSlice()...)
	binary.BigEndian.PutUint16(h[10:], checksum(h, 0))
	return append(h, payload...)
}

// ipv6Fragment is the IPv6 counterpart: a fragment header before payload.
func ipv6Fragment(src, dst netip.Addr, proto uint8, id uint32, offset int, more bool, payload []byte) []byte {
	fo := uint16(offset)
	if more {
		fo |= 1
	}
	fh := append([]byte{proto, 0}, be16(nil, fo)...)
	fh = be32(fh, id)
	return ipv6(src, dst, 44, 64, append(fh, payload...))
}

// fragments splits an IP datagram's payload (its L4 segment) into three
// fragments, first, middle and last, of a datagram with identification id.
func fragments(v6 bool, src, dst netip.Addr, proto uint8, id uint32, seg []byte) [][]byte {
	var out [][]byte
	for i, cut := range [][2]int{{0, 16}, {16, 32}, {32, len(seg)}} {
		more := i < 2
		if v6 {
			out = append(out, ipv6Fragment(src, dst, proto, id, cut[0], more, seg[cut[0]:cut[1]]))
		} else {
			out = append(out, ipv4Fragment(src, dst, proto, uint16(id), cut[0], more, seg[cut[0]:cut[1]]))
		}
	}
	return out
}

func ethOf(v6 bool, src, dst net.HardwareAddr, ip []byte) []byte {
	if v6 {
		return eth(dst, src, 0x86dd, ip)
	}
	return eth(dst, src, 0x0800, ip)
}

// Every fragment of a container's datagram leaves with the translated
// source, and every fragment of the reply reaches the container; a later
// fragment whose first was never seen is dropped, not sent as it is.
func TestMasqueradeFragments(t *testing.T) {
	n := newNATEnv(t)
	a := n.a
	for _, v6 := range []bool{false, true} {
		src, remote, nat := a.v4(), remote4, uplink4
		if v6 {
			src, remote, nat = a.v6(), remote6, uplink6
		}
		t.Run(fmt.Sprintf("ipv6=%v", v6), func(t *testing.T) {
			seg := udp(src, remote, 45000, 53, bytes.Repeat([]byte("x"), 40))
			whole := ipPacket{v6: v6, src: nat, dst: remote, proto: protoUDP}
			for i, f := range fragments(v6, src, remote, protoUDP, 77, seg) {
				frame := ethOf(v6, a.mac, gwMAC, f)
				v, out := n.egress(t, frame)
				if v != verdictPass {
					t.Fatalf("fragment %d: verdict %#x", i, v)
				}
				p := decodeFrame(t, out)
				if p.src != nat || p.dst != remote {
					t.Errorf("fragment %d left as %v -> %v, want %v -> %v", i, p.src, p.dst, nat, remote)
				}
				if v6 {
					p.seg = p.seg[8:] // the fragment header
				}
				whole.seg = append(whole.seg, p.seg...)
			}
			// Reassembled, the datagram's checksum fits its new source.
			checkL4(t, whole, "reassembled datagram")
			// The reply, fragmented too.
			rseg := udp(remote, nat, 53, 45000, bytes.Repeat([]byte("y"), 40))
			for i, f := range fragments(v6, remote, nat, protoUDP, 99, rseg) {
				v, back := n.ingress(t, ethOf(v6, routerMAC, uplinkMAC, f))
				if v != verdictPass {
					t.Fatalf("reply fragment %d: verdict %#x", i, v)
				}
				if p := decodeFrame(t, back); p.dst != src {
					t.Errorf("reply fragment %d to %v, want %v", i, p.dst, src)
				}
			}
			// A later fragment of an unknown datagram: dropped.
			orphan := fragments(v6, src, remote, protoUDP, 1234, seg)[1]
			n.expectDrop(t, a, ethOf(v6, a.mac, gwMAC, orphan), program.BpfbridgeDropReasonDROP_NAT_UNTRACKED)
		})
	}
	// The node's own later fragments pass.
	nodeFrag := fragments(false, uplink4, remote4, protoUDP, 555, udp(uplink4, remote4, 1, 2, make([]byte, 40)))[2]
	if v, _ := n.egress(t, ethOf(false, uplinkMAC, routerMAC, nodeFrag)); v != verdictPass {
		t.Errorf("node's fragment: verdict %#x", v)
	}
}

// Protocols without ports are translated by address, one flow per
// (container, remote, protocol): never passed with the container's
// address.
func TestMasqueradeOtherProtocols(t *testing.T) {
	n := newNATEnv(t)
	a, b := n.a, n.b
	gre := append([]byte{0, 0, 0x08, 0}, make([]byte, 20)...)
	for _, tc := range []struct {
		name   string
		v6     bool
		proto  uint8
		msg    func(src, dst netip.Addr) []byte
		reply  func(src, dst netip.Addr) []byte
		l4csum bool
	}{
		{name: "gre", proto: 47, msg: func(_, _ netip.Addr) []byte { return gre }},
		{name: "sctp", proto: 132, msg: func(_, _ netip.Addr) []byte { return make([]byte, 28) }},
		{name: "unknown protocol", proto: 253, msg: func(_, _ netip.Addr) []byte { return []byte("payload") }},
		{name: "icmp timestamp", proto: protoICMP,
			msg:   func(_, _ netip.Addr) []byte { return icmp4Msg(13, make([]byte, 16)) },
			reply: func(_, _ netip.Addr) []byte { return icmp4Msg(14, make([]byte, 16)) }},
		{name: "icmp echo reply", proto: protoICMP, msg: func(_, _ netip.Addr) []byte { return icmp4EchoMsg(icmp4EchoReply, 7, 1) },
			reply: func(_, _ netip.Addr) []byte { return icmp4Msg(14, make([]byte, 16)) }},
		{name: "gre6", v6: true, proto: 47, msg: func(_, _ netip.Addr) []byte { return gre }},
		{name: "icmp6 node information", v6: true, proto: protoICMPv6, l4csum: true,
			msg: func(s, d netip.Addr) []byte { return icmp6(s, d, 139, 0, make([]byte, 12)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, remote, nat, other := a.v4(), remote4, uplink4, b.v4()
			if tc.v6 {
				src, remote, nat, other = a.v6(), remote6, uplink6, b.v6()
			}
			frame := ethOf(tc.v6, a.mac, gwMAC, ipOf(tc.v6, src, remote, tc.proto, tc.msg(src, remote)))
			v, out := n.egress(t, frame)
			if v != verdictPass {
				t.Fatalf("verdict %#x", v)
			}
			p := decodeFrame(t, out)
			if p.src != nat || p.dst != remote {
				t.Errorf("left as %v -> %v, want %v -> %v", p.src, p.dst, nat, remote)
			}
			if tc.l4csum || p.proto == protoICMP {
				checkL4(t, p, "translated")
			}
			reply := tc.msg
			if tc.reply != nil {
				reply = tc.reply
			}
			back := ethOf(tc.v6, routerMAC, uplinkMAC, ipOf(tc.v6, remote, nat, tc.proto, reply(remote, nat)))
			if v, in := n.ingress(t, back); v != verdictPass {
				t.Errorf("reply verdict %#x", v)
			} else if p := decodeFrame(t, in); p.dst != src {
				t.Errorf("reply to %v, want %v", p.dst, src)
			} else if tc.l4csum || p.proto == protoICMP {
				checkL4(t, p, "restored")
			}
			// Another container to the same remote and protocol: the
			// one address is taken, so it is dropped.
			bf := ethOf(tc.v6, b.mac, gwMAC, ipOf(tc.v6, other, remote, tc.proto, tc.msg(other, remote)))
			n.expectDrop(t, b, bf, program.BpfbridgeDropReasonDROP_NAT_EXHAUSTED)
		})
	}
	n.checkPairs(t)
}

func ipOf(v6 bool, src, dst netip.Addr, proto uint8, msg []byte) []byte {
	if v6 {
		return ipv6(src, dst, proto, 64, msg)
	}
	return ipv4(src, dst, proto, msg)
}

// icmp4Msg is an ICMPv4 message of type typ (code 0) with its checksum.
func icmp4Msg(typ uint8, body []byte) []byte {
	m := append([]byte{typ, 0, 0, 0}, body...)
	binary.BigEndian.PutUint16(m[2:], checksum(m, 0))
	return m
}

// An ICMP error a container sends about a packet of a translated flow it
// received leaves translated whole: the outer source and the quoted
// destination become the NAT address and port, every checksum right.
func TestICMPErrorFromContainer(t *testing.T) {
	n := newNATEnv(t)
	a := n.a
	for _, c := range []natProto{natProtos(a)[1], natProtos(a)[5]} { // udp4, udp6
		t.Run(c.name, func(t *testing.T) {
			// Taken by b first: a's flow moves, so the quote must change.
			n.masquerade(t, natProtos(n.b)[map[bool]int{false: 1, true: 5}[c.src.Is6()]], 46000)
			_, natPort := n.masquerade(t, c, 46000)
			if natPort == 46000 {
				t.Fatal("the flow kept its port: nothing to translate in the quote")
			}
			// The reply, as the container received it.
			_, back := n.ingress(t, c.reply(natPort))
			rp := decodeFrame(t, back)
			quote := append(append([]byte{}, rp.hdr...), rp.seg...)
			var f []byte
			if c.src.Is6() {
				body := append(be32(nil, 0), quote...)
				f = ipv6Frame(a.mac, gwMAC, c.src, c.remote, protoICMPv6, icmp6(c.src, c.remote, 1, 4, body))
			} else {
				f = ipv4Frame(a.mac, gwMAC, c.src, c.remote, protoICMP, icmp4Error(icmp4DestUnreach, 3, 0, quote))
			}
			v, out := n.egress(t, f)
			if v != verdictPass {
				t.Fatalf("verdict %#x", v)
			}
			p := decodeFrame(t, out)
			checkL4(t, p, "ICMP error")
			if p.src != c.nat || p.dst != c.remote {
				t.Errorf("error left as %v -> %v, want %v -> %v", p.src, p.dst, c.nat, c.remote)
			}
			off := 8
			q := decodeIP(t, p.seg[off:])
			checkL4(t, q, "quoted packet")
			if _, qd := q.ports(); q.src != c.remote || q.dst != c.nat || qd != natPort {
				t.Errorf("quoted %v -> %v:%d, want %v -> %v:%d", q.src, q.dst, qd, c.remote, c.nat, natPort)
			}
		})
	}
	if tot := n.totals(t); tot != [program.NumDropReasons]uint64{} {
		t.Errorf("drops: %v", tot)
	}
}

// A DEL bumps the container address's generation: the container's flows
// are dead at once. Their replies are not translated (the address may
// have a new holder), the address's next flows start over, and their
// ports go to whoever needs them.
func TestMasqueradeDeadContainer(t *testing.T) {
	n := newNATEnv(t)
	a, b := n.a, n.b
	n.setConfig(t, program.BpfbridgeNatConfig{PortMin: 62000, PortMax: 62000})
	udp4 := natProtos(a)[1]
	if _, np := n.masquerade(t, udp4, 47000); np != 62000 {
		t.Fatalf("NAT port %d", np)
	}
	// b cannot have the one port while a's flow lives.
	n.expectDrop(t, b, natProtos(b)[1].out(47001), program.BpfbridgeDropReasonDROP_NAT_EXHAUSTED)

	// a's DEL.
	if err := n.objs.NatGen.Put(program.NATGenKeyOf(a.v4()), uint32(1)); err != nil {
		t.Fatal(err)
	}
	reply := udp4.reply(62000)
	if v, out := n.ingress(t, reply); v != verdictPass || !bytes.Equal(out, reply) {
		t.Errorf("a reply to a dead flow: verdict %#x, translated %v", v, !bytes.Equal(out, reply))
	}
	// The dead flow's port goes to b.
	if _, np := n.masquerade(t, natProtos(b)[1], 47001); np != 62000 {
		t.Errorf("b's NAT port %d, want the dead flow's 62000", np)
	}
	// The address's next holder starts afresh, in the new generation.
	n.setConfig(t, program.BpfbridgeNatConfig{})
	n.masquerade(t, udp4, 47000)
	var e program.BpfbridgeNatEntry
	if err := n.objs.NatOut.Lookup(tuple(a.v4(), remote4, 47000, 53, protoUDP), &e); err != nil {
		t.Fatal(err)
	}
	if e.Generation() != 1 || e.Packets != 1 {
		t.Errorf("the address's new flow: generation %d, %d packets; want 1, 1", e.Generation(), e.Packets)
	}
	n.checkPairs(t)
}

// BenchmarkMasqueradeEgress: what uplink_egress costs a container's TCP
// segment, by BPF_PROG_TEST_RUN and the kernel's run-time statistics
// (nanoseconds per run): a segment of a flow the table holds, and a SYN
// that creates one (from a new source port each run, so that the ring and
// the table fill as under a stream of new connections).
func BenchmarkMasqueradeEgress(b *testing.B) {
	const runs = 20000
	n := newNATEnv(b)
	a := n.a
	segment := func(sport uint16, flags uint8) []byte {
		return ipv4Frame(a.mac, gwMAC, a.v4(), remote4, protoTCP, tcpFlags(a.v4(), remote4, sport, 80, flags))
	}
	n.run(b, n.objs.UplinkEgress, n.uplink, segment(40000, tcpSYN), 1)
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		b.Fatalf("enable BPF run-time statistics: %v", err)
	}
	defer stats.Close()
	for _, c := range []struct {
		name  string
		frame func(i int) []byte
	}{
		{"established", func(int) []byte { return segment(40000, tcpACK) }},
		{"new flow", func(i int) []byte { return segment(uint16(1024+i%60000), tcpSYN) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			next := 0
			for b.Loop() {
				before, err := n.objs.UplinkEgress.Stats()
				if err != nil {
					b.Fatal(err)
				}
				for range runs {
					if got := n.run(b, n.objs.UplinkEgress, n.uplink, c.frame(next), 1); got != verdictPass {
						b.Fatalf("verdict %d, want pass", got)
					}
					next++
				}
				after, err := n.objs.UplinkEgress.Stats()
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(after.Runtime-before.Runtime)/float64(after.RunCount-before.RunCount), "ns/run")
			}
		})
	}
}
