package program_test

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// Port mapping (bpf/portmap.h) on crafted frames: endpoint a publishes 8080
// (TCP and UDP, both families) to its port 80, and 9090 on uplink4 only;
// the uplink and gateway addresses are node addresses.

type pmEnv struct {
	*natEnv
}

func newPMEnv(t *testing.T) *pmEnv {
	t.Helper()
	p := &pmEnv{natEnv: newNATEnv(t)}
	for _, a := range []netip.Addr{uplink4, uplink6, gw4, gw6} {
		if err := p.objs.PortmapNodeAddrs.Put(program.IPKeyOf(a), uint8(1)); err != nil {
			t.Fatal(err)
		}
	}
	for _, proto := range []uint8{protoTCP, protoUDP} {
		p.publish(t, proto, netip.Addr{}, 8080, p.a, 80)
		p.publish(t, proto, uplink4, 9090, p.a, 90)
	}
	if err := p.objs.PortmapConfig.Put(uint32(0), program.BpfbridgePortmapConfig{Enabled: 1}); err != nil {
		t.Fatal(err)
	}
	return p
}

// publish maps proto hostPort on host (invalid: every node address) to
// ep's first address of each family (of host's family only when bound).
func (p *pmEnv) publish(t *testing.T, proto uint8, host netip.Addr, hostPort uint16, ep *testEndpoint, port uint16) {
	t.Helper()
	for _, c := range []struct {
		family  uint8
		addr    netip.Addr
		hairpin netip.Addr
	}{{4, ep.v4(), gw4}, {6, ep.v6(), gw6}} {
		if host.IsValid() && (host.Is4() != (c.family == 4)) {
			continue
		}
		k := program.PortmapKeyOf(c.family, proto, host, hostPort)
		v := program.PortmapValueOf(c.addr, port, ep.ifindex, c.hairpin, [32]byte{1})
		if err := p.objs.PortMaps.Put(k, v); err != nil {
			t.Fatal(err)
		}
	}
}

// pmFrame is a TCP SYN or a UDP datagram from src to dst.
func pmFrame(proto uint8, srcMAC, dstMAC []byte, src, dst netip.AddrPort) []byte {
	var msg []byte
	if proto == protoTCP {
		msg = tcp(src.Addr(), dst.Addr(), src.Port(), dst.Port())
	} else {
		msg = udp(src.Addr(), dst.Addr(), src.Port(), dst.Port(), []byte("ping"))
	}
	if src.Addr().Is4() {
		return ipv4Frame(srcMAC, dstMAC, src.Addr(), dst.Addr(), proto, msg)
	}
	return ipv6Frame(srcMAC, dstMAC, src.Addr(), dst.Addr(), proto, msg)
}

// expectXlate runs prog and wants the verdict want and the packet as src ->
// dst, with correct checksums.
func (p *pmEnv) expectXlate(t *testing.T, what string, prog *ebpf.Program, ifindex uint32, frame []byte, want uint32, src, dst netip.AddrPort) []byte {
	t.Helper()
	verdict, out := p.runOut(t, prog, ifindex, frame)
	if verdict != want {
		t.Fatalf("%s: verdict %#x, want %#x", what, verdict, want)
	}
	pk := decodeFrame(t, out)
	checkL4(t, pk, what)
	sp, dp := pk.ports()
	if got := [2]netip.AddrPort{netip.AddrPortFrom(pk.src, sp), netip.AddrPortFrom(pk.dst, dp)}; got != [2]netip.AddrPort{src, dst} {
		t.Errorf("%s: %v -> %v, want %v -> %v", what, got[0], got[1], src, dst)
	}
	return out
}

// checkMACs wants frame from src to dst.
func checkMACs(t *testing.T, what string, frame, dst, src []byte) {
	t.Helper()
	if !bytes.Equal(frame[:6], dst) || !bytes.Equal(frame[6:12], src) {
		t.Errorf("%s: Ethernet %x -> %x, want %x -> %x", what, frame[6:12], frame[:6], src, dst)
	}
}

type pmCase struct {
	name   string
	proto  uint8
	remote netip.Addr // outside
	host   netip.Addr // the uplink's
	gw     netip.Addr
	ctr    func(*testEndpoint) netip.Addr
}

func pmCases() []pmCase {
	v4 := func(e *testEndpoint) netip.Addr { return e.v4() }
	v6 := func(e *testEndpoint) netip.Addr { return e.v6() }
	return []pmCase{
		{"tcp4", protoTCP, remote4, uplink4, gw4, v4},
		{"udp4", protoUDP, remote4, uplink4, gw4, v4},
		{"tcp6", protoTCP, remote6, uplink6, gw6, v6},
		{"udp6", protoUDP, remote6, uplink6, gw6, v6},
	}
}

// TestPortmapFromOutside: uplink ingress translates to the container, the
// container's reply leaves its veth translated back, and the uplink's
// egress leaves it alone (no node flow tracked for its tuple).
func TestPortmapFromOutside(t *testing.T) {
	p := newPMEnv(t)
	for _, c := range pmCases() {
		t.Run(c.name, func(t *testing.T) {
			remote := netip.AddrPortFrom(c.remote, 40000)
			host := netip.AddrPortFrom(c.host, 8080)
			ctr := netip.AddrPortFrom(c.ctr(p.a), 80)
			for i := range 2 { // the second packet finds the pair
				p.expectXlate(t, "request", p.objs.UplinkIngress, p.uplink, pmFrame(c.proto, routerMAC, uplinkMAC, remote, host), verdictPass, remote, ctr)
				reply := p.expectXlate(t, "reply", p.objs.FromContainer, p.a.ifindex, pmFrame(c.proto, p.a.mac, gwMAC, ctr, remote), verdictPass, host, remote)
				p.expectXlate(t, "reply leaving", p.objs.UplinkEgress, p.uplink, reply, verdictPass, host, remote)
				var e program.BpfbridgeNatEntry
				key := program.NATTupleOf(c.proto, ctr, remote)
				if err := p.objs.NatOut.Lookup(key, &e); err != nil {
					t.Fatalf("round %d: no nat_out entry for the reply: %v", i, err)
				}
				if e.Uplink&uint32(program.BpfbridgePortmapFlowFlagsPORTMAP_FLOW_F) == 0 || e.AddrPort(key.Family) != host {
					t.Errorf("round %d: nat_out entry %+v", i, e)
				}
			}
			// Not published: untouched.
			other := netip.AddrPortFrom(c.host, 8081)
			p.expectXlate(t, "unpublished port", p.objs.UplinkIngress, p.uplink, pmFrame(c.proto, routerMAC, uplinkMAC, remote, other), verdictPass, remote, other)
		})
	}
	p.checkPairs(t)
}

// TestPortmapHostIP: a mapping bound to an address answers only there.
func TestPortmapHostIP(t *testing.T) {
	p := newPMEnv(t)
	remote := netip.AddrPortFrom(remote4, 40001)
	bound := netip.AddrPortFrom(uplink4, 9090)
	p.expectXlate(t, "on its address", p.objs.UplinkIngress, p.uplink, pmFrame(protoTCP, routerMAC, uplinkMAC, remote, bound), verdictPass,
		remote, netip.AddrPortFrom(p.a.v4(), 90))
	gw := netip.AddrPortFrom(gw4, 9090)
	p.expectXlate(t, "on another node address", p.objs.FromContainer, p.b.ifindex,
		pmFrame(protoTCP, p.b.mac, gwMAC, netip.AddrPortFrom(p.b.v4(), 40001), gw), verdictPass, netip.AddrPortFrom(p.b.v4(), 40001), gw)
}

// TestPortmapFromContainers: another container of the network, a container
// of another (isolated) network, and the publisher itself (hairpin, whose
// source becomes the gateway).
func TestPortmapFromContainers(t *testing.T) {
	p := newPMEnv(t)
	for _, c := range pmCases() {
		t.Run(c.name, func(t *testing.T) {
			ctr := netip.AddrPortFrom(c.ctr(p.a), 80)
			for _, dst := range []netip.Addr{c.host, c.gw} {
				for _, from := range []*testEndpoint{p.b, p.c} {
					cli := netip.AddrPortFrom(c.ctr(from), 41000)
					host := netip.AddrPortFrom(dst, 8080)
					req := p.expectXlate(t, "request from "+from.name, p.objs.FromContainer, from.ifindex, pmFrame(c.proto, from.mac, gwMAC, cli, host), verdictPass, cli, ctr)
					// Delivered to a: isolation lets the published port's flow in.
					if v, _ := p.runOut(t, p.objs.ToContainer, p.a.ifindex, req); v != verdictPass {
						t.Errorf("request from %s to a: verdict %#x, want pass", from.name, v)
					}
					// Routed (to the gateway's MAC), it goes straight to the
					// client's veth, from the gateway's MAC to the client's.
					reply := p.expectXlate(t, "reply to "+from.name, p.objs.FromContainer, p.a.ifindex, pmFrame(c.proto, p.a.mac, gwMAC, ctr, cli), verdictRedirect, host, cli)
					checkMACs(t, "reply to "+from.name, reply, from.mac, gwMAC)
					if v, _ := p.runOut(t, p.objs.ToContainer, from.ifindex, reply); v != verdictPass {
						t.Errorf("reply to %s: verdict %#x, want pass", from.name, v)
					}
				}
			}
			// Hairpin.
			self := netip.AddrPortFrom(c.ctr(p.a), 42000)
			host := netip.AddrPortFrom(c.host, 8080)
			viaGW := netip.AddrPortFrom(c.gw, 42000)
			out := p.expectXlate(t, "hairpin", p.objs.FromContainer, p.a.ifindex, pmFrame(c.proto, p.a.mac, gwMAC, self, host), verdictRedirect, viaGW, ctr)
			checkMACs(t, "hairpin", out, p.a.mac, gwMAC)
			out = p.expectXlate(t, "hairpin reply", p.objs.FromContainer, p.a.ifindex, pmFrame(c.proto, p.a.mac, gwMAC, ctr, viaGW), verdictRedirect, host, self)
			checkMACs(t, "hairpin reply", out, p.a.mac, gwMAC)
		})
	}
	// Isolation still holds for the container's own address.
	d := pmFrame(protoTCP, p.c.mac, gwMAC, netip.AddrPortFrom(p.c.v4(), 41001), netip.AddrPortFrom(p.a.v4(), 80))
	if v, _ := p.runOut(t, p.objs.ToContainer, p.a.ifindex, d); v != verdictDrop {
		t.Errorf("direct from c to a: verdict %#x, want drop (cross-network)", v)
	}
}

// TestPortmapNewMapping: after the publisher's DEL (its address's
// generation bumped) the same host port published by b gets the very same
// UDP 5-tuple: no stale translation shadows it.
func TestPortmapNewMapping(t *testing.T) {
	p := newPMEnv(t)
	remote := netip.AddrPortFrom(remote4, 40002)
	host := netip.AddrPortFrom(uplink4, 8080)
	frame := pmFrame(protoUDP, routerMAC, uplinkMAC, remote, host)
	p.expectXlate(t, "to a", p.objs.UplinkIngress, p.uplink, frame, verdictPass, remote, netip.AddrPortFrom(p.a.v4(), 80))
	if err := p.objs.NatGen.Put(program.NATGenKeyOf(p.a.v4()), uint32(1)); err != nil {
		t.Fatal(err)
	}
	p.publish(t, protoUDP, netip.Addr{}, 8080, p.b, 80)
	p.expectXlate(t, "to b", p.objs.UplinkIngress, p.uplink, frame, verdictPass, remote, netip.AddrPortFrom(p.b.v4(), 80))
	// Even without the generation bump (a mapping replaced in place).
	p.publish(t, protoUDP, netip.Addr{}, 8080, p.a, 80)
	if err := p.objs.NatGen.Put(program.NATGenKeyOf(p.a.v4()), uint32(0)); err != nil {
		t.Fatal(err)
	}
	p.expectXlate(t, "back to a", p.objs.UplinkIngress, p.uplink, frame, verdictPass, remote, netip.AddrPortFrom(p.a.v4(), 80))
	p.checkPairs(t)
}

// TestPortmapMasqueradeFirst: a masqueraded flow's reply whose tuple is
// the host port is the masquerade's (conntrack first, as netfilter).
func TestPortmapMasqueradeFirst(t *testing.T) {
	p := newPMEnv(t)
	// b (masqueraded network 1) opens a flow from port 8080 to remote.
	src := netip.AddrPortFrom(p.b.v4(), 8080)
	remote := netip.AddrPortFrom(remote4, 53)
	p.expectXlate(t, "masqueraded", p.objs.UplinkEgress, p.uplink, pmFrame(protoUDP, p.b.mac, routerMAC, src, remote), verdictPass,
		netip.AddrPortFrom(uplink4, 8080), remote)
	p.expectXlate(t, "its reply", p.objs.UplinkIngress, p.uplink, pmFrame(protoUDP, routerMAC, uplinkMAC, remote, netip.AddrPortFrom(uplink4, 8080)),
		verdictPass, remote, src)
}
