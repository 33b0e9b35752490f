package program_test

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/datapath/program"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// The routed fast path (bpf/fastpath.h) asks the kernel's FIB, so its
// tests run in a namespace of their own that routes like a node: bridge
// br0 (gateway gwMAC, 10.0.0.1/24) with endpoint a's veth, bridge br1
// (gw1MAC, 10.0.1.1/24) with endpoint c's, the uplink up0 (203.0.113.1/24,
// the masquerade's uplink address) with a default route via a router whose
// neighbour entry is routerMAC, and a few destinations the FIB cannot
// decide for the fast path.
var (
	gw1MAC     = mac("02:00:00:00:01:01")
	otherMAC   = mac("02:00:00:00:02:02") // a neighbour behind a link that is no uplink
	notUplink4 = ip("192.0.2.50")         // via that link
	noNeigh4   = ip("198.18.0.7")         // via a router without neighbour entry
	noRoute4   = ip("100.64.0.7")         // unreachable
	routerHop4 = ip("203.0.113.254")
)

type routedEnv struct {
	*natEnv
	br0, br1, up0 uint32
	up0MAC        net.HardwareAddr
}

// newRoutedEnv is newNATEnv in a namespace of its own that routes, with
// endpoint a on br0 and c, of a's network now, on br1, both with the fast
// path; b is left out (on no bridge).
func newRoutedEnv(t *testing.T) *routedEnv {
	t.Helper()
	n := newNATEnv(t)
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	ns, err := sandbox.NewNetNS("bpfb-route-" + hex.EncodeToString(rnd[:]))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Delete() })
	r := &routedEnv{natEnv: n}
	err = ns.Do(func() error {
		// The first error is the answer; the steps after it fail too.
		var first error
		must := func(err error) {
			if first == nil && err != nil {
				first = err
			}
		}
		idx := func(name string) uint32 {
			l, err := netlink.LinkByName(name)
			if err != nil {
				must(err)
				return 0
			}
			return uint32(l.Attrs().Index)
		}
		for _, br := range []struct {
			name, port, peer, addr string
			hw                     net.HardwareAddr
		}{{"br0", "ha", "ca", "10.0.0.1/24", gwMAC}, {"br1", "hc", "cc", "10.0.1.1/24", gw1MAC}} {
			must(netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: br.name}}))
			if l, err := netlink.LinkByName(br.name); err == nil {
				must(netlink.LinkSetHardwareAddr(l, br.hw))
			}
			must(netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: br.port, MasterIndex: int(idx(br.name))}, PeerName: br.peer}))
			for _, l := range []string{br.name, br.port, br.peer} {
				must(linkUp(l))
			}
			must(addAddr(br.name, br.addr))
		}
		must(netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0", MTU: 1500}, PeerName: "up0p"}))
		// A link that is no uplink (this kernel has no dummy devices).
		must(netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "other0"}, PeerName: "other0p"}))
		for _, l := range []string{"up0", "up0p", "other0", "other0p"} {
			must(linkUp(l))
		}
		must(addAddr("up0", "203.0.113.1/24"))
		must(addAddr("other0", "192.0.2.1/24"))
		r.br0, r.br1, r.up0 = idx("br0"), idx("br1"), idx("up0")
		l, _ := netlink.LinkByName("up0")
		r.up0MAC = l.Attrs().HardwareAddr
		for _, nb := range []struct {
			dev  uint32
			addr netip.Addr
			hw   net.HardwareAddr
		}{{r.up0, routerHop4, routerMAC}, {idx("other0"), notUplink4, otherMAC},
			{r.br0, n.a.v4(), n.a.mac}, {r.br1, n.c.v4(), n.c.mac}} {
			must(netlink.NeighAdd(&netlink.Neigh{LinkIndex: int(nb.dev), State: netlink.NUD_PERMANENT,
				IP: nb.addr.AsSlice(), HardwareAddr: nb.hw}))
		}
		must(netlink.RouteAdd(&netlink.Route{LinkIndex: int(r.up0), Gw: routerHop4.AsSlice()}))
		must(netlink.RouteAdd(&netlink.Route{LinkIndex: int(r.up0), Dst: prefix("198.18.0.0/24"), Gw: ip("203.0.113.253").AsSlice()}))
		must(netlink.RouteAdd(&netlink.Route{Dst: prefix("100.64.0.0/16"), Type: unixRTNUnreachable}))
		return first
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	n.ns = ns
	n.uplink = r.up0
	n.setUplink(t, r.up0, true, true)
	err = ns.Do(func() error {
		l0, _ := netlink.LinkByName("ha")
		l1, _ := netlink.LinkByName("hc")
		n.a.ifindex, n.c.ifindex = uint32(l0.Attrs().Index), uint32(l1.Attrs().Index)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	fast := program.BpfbridgeEndpointFlagsEP_F_FAST_PATH
	n.a.flags |= fast
	n.a.bridge = r.br0
	n.c.flags |= fast
	n.c.bridge = r.br1
	n.c.network = 1
	n.putEndpoint(t, n.a)
	n.putEndpoint(t, n.c)
	for br, hw := range map[uint32]net.HardwareAddr{r.br0: gwMAC, r.br1: gw1MAC} {
		if err := n.objs.GatewayMacs.Put(br, program.BpfbridgeGatewayMac{Mac: [6]uint8(hw)}); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

const unixRTNUnreachable = 7 // RTN_UNREACHABLE

func prefix(s string) *net.IPNet {
	_, p, _ := net.ParseCIDR(s)
	return p
}

func linkUp(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

func addAddr(name, cidr string) error { return sandbox.AddAddr(name, netip.MustParsePrefix(cidr)) }

// runOn runs prog on frame as arriving on ifindex and returns the verdict
// and the frame as the program left it.
func (r *routedEnv) runOn(t *testing.T, prog *ebpf.Program, ifindex uint32, frame []byte) (uint32, []byte) {
	t.Helper()
	r.uplink = ifindex
	defer func() { r.uplink = r.up0 }()
	return r.xlate(t, prog, frame)
}

// withTTL is an IPv4 frame with its TTL set and the header checksum redone.
func withTTL(frame []byte, ttl uint8) []byte {
	f := append([]byte{}, frame...)
	f[14+8] = ttl
	f[14+10], f[14+11] = 0, 0
	c := checksum(f[14:14+20], 0)
	f[14+10], f[14+11] = byte(c>>8), byte(c)
	return f
}

// TestRoutedFastPath: what from_container routes itself (bpf_fib_lookup,
// then bpf_redirect_neigh to the uplink or bpf_redirect_peer into a
// container on another bridge), with what it rewrites (TTL, MACs, the IPv4
// header checksum, recomputed here), and what it leaves to the stack and
// why.
func TestRoutedFastPath(t *testing.T) {
	const ack, syn, synAck, rst = 0x10, 0x02, 0x12, 0x04
	type frameFn func(r *routedEnv) []byte
	tcpTo := func(dstMAC net.HardwareAddr, dst netip.Addr, flags uint8) frameFn {
		return func(r *routedEnv) []byte {
			return ipv4Frame(r.a.mac, dstMAC, r.a.v4(), dst, protoTCP, tcpSeg(r.a.v4(), dst, 40000, 80, flags, 1, 1, 1000, nil))
		}
	}
	udpOut := func(r *routedEnv) []byte { return udpTo(r.a, remote4, 40001) }
	cases := []struct {
		name    string
		setup   func(t *testing.T, r *routedEnv)
		frame   frameFn
		verdict uint32
		// for a redirect: the new MACs, and the receiver (0: the uplink)
		dmac, smac func(r *routedEnv) net.HardwareAddr
		toC        bool
	}{
		{"TCP to the outside through the gateway", nil, tcpTo(gwMAC, remote4, ack), verdictRedirect,
			func(*routedEnv) net.HardwareAddr { return routerMAC }, func(r *routedEnv) net.HardwareAddr { return r.up0MAC }, false},
		{"a SYN takes the stack (netfilter sees every new connection)", nil, tcpTo(gwMAC, remote4, syn), verdictPass, nil, nil, false},
		{"a SYN-ACK (a container accepting) takes the fast path", nil, tcpTo(gwMAC, remote4, synAck), verdictRedirect,
			func(*routedEnv) net.HardwareAddr { return routerMAC }, func(r *routedEnv) net.HardwareAddr { return r.up0MAC }, false},
		{"a RST takes the fast path", nil, tcpTo(gwMAC, remote4, rst), verdictRedirect,
			func(*routedEnv) net.HardwareAddr { return routerMAC }, func(r *routedEnv) net.HardwareAddr { return r.up0MAC }, false},
		{"UDP the masquerade does not hold yet takes the stack", nil, udpOut, verdictPass, nil, nil, false},
		{"UDP of a masqueraded flow", func(t *testing.T, r *routedEnv) {
			if v, _ := r.egress(t, udpTo(r.a, remote4, 40001)); v != verdictPass {
				t.Fatalf("uplink_egress: verdict %d", v)
			}
		}, udpOut, verdictRedirect,
			func(*routedEnv) net.HardwareAddr { return routerMAC }, func(r *routedEnv) net.HardwareAddr { return r.up0MAC }, false},
		{"ICMP takes the stack", nil, func(r *routedEnv) []byte {
			return ipv4Frame(r.a.mac, gwMAC, r.a.v4(), remote4, protoICMP, icmp4Msg(8, []byte{0, 1, 0, 1}))
		}, verdictPass, nil, nil, false},
		{"TTL 1 takes the stack (time exceeded)", nil, func(r *routedEnv) []byte {
			return withTTL(tcpTo(gwMAC, remote4, ack)(r), 1)
		}, verdictPass, nil, nil, false},
		{"TTL 2 is forwarded with TTL 1", nil, func(r *routedEnv) []byte {
			return withTTL(tcpTo(gwMAC, remote4, ack)(r), 2)
		}, verdictRedirect, func(*routedEnv) net.HardwareAddr { return routerMAC }, func(r *routedEnv) net.HardwareAddr { return r.up0MAC }, false},
		{"larger than the uplink's MTU takes the stack (fragmentation needed)", nil, func(r *routedEnv) []byte {
			seg := tcpSeg(r.a.v4(), remote4, 40000, 80, ack, 1, 1, 1000, make([]byte, 1600))
			return ipv4Frame(r.a.mac, gwMAC, r.a.v4(), remote4, protoTCP, seg)
		}, verdictPass, nil, nil, false},
		{"broadcast takes the bridge", nil, tcpTo(broadcast, remote4, ack), verdictPass, nil, nil, false},
		{"an unknown MAC takes the bridge", nil, tcpTo(evilMAC, remote4, ack), verdictPass, nil, nil, false},
		{"no route takes the stack (unreachable)", nil, tcpTo(gwMAC, noRoute4, ack), verdictPass, nil, nil, false},
		{"an unresolved neighbour takes the stack", nil, tcpTo(gwMAC, noNeigh4, ack), verdictPass, nil, nil, false},
		{"a link that is no uplink takes the stack", nil, tcpTo(gwMAC, notUplink4, ack), verdictPass, nil, nil, false},
		{"forwarding disabled takes the stack", func(t *testing.T, r *routedEnv) {
			if err := r.ns.SetSysctl("net.ipv4.conf.br0.forwarding", "0"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = r.ns.SetSysctl("net.ipv4.conf.br0.forwarding", "1") })
		}, tcpTo(gwMAC, remote4, ack), verdictPass, nil, nil, false},
		{"a sender without the fast path", func(t *testing.T, r *routedEnv) {
			r.a.flags &^= program.BpfbridgeEndpointFlagsEP_F_FAST_PATH
			r.putEndpoint(t, r.a)
		}, tcpTo(gwMAC, remote4, ack), verdictPass, nil, nil, false},
		{"to a container on another bridge", nil, tcpTo(gwMAC, ip("10.0.1.12"), ack), verdictRedirect,
			func(r *routedEnv) net.HardwareAddr { return r.c.mac }, func(*routedEnv) net.HardwareAddr { return gw1MAC }, true},
		{"to a container of another network: the sender's policy drops it", func(t *testing.T, r *routedEnv) {
			r.c.network = 2
			r.putEndpoint(t, r.c)
		}, tcpTo(gwMAC, ip("10.0.1.12"), ack), verdictDrop, nil, nil, false},
		{"to a container of another network from mode none: the receiver's policy drops it", func(t *testing.T, r *routedEnv) {
			r.c.network = 2
			r.putEndpoint(t, r.c)
			r.setIsolation(t, r.a, modeNone)
		}, tcpTo(gwMAC, ip("10.0.1.12"), ack), verdictDrop, nil, nil, false},
		{"to a container without the fast path", func(t *testing.T, r *routedEnv) {
			r.c.flags &^= program.BpfbridgeEndpointFlagsEP_F_FAST_PATH
			r.putEndpoint(t, r.c)
		}, tcpTo(gwMAC, ip("10.0.1.12"), ack), verdictPass, nil, nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRoutedEnv(t)
			if tc.setup != nil {
				tc.setup(t, r)
			}
			frame := tc.frame(r)
			rcvBefore, _ := r.stats(t, r.c.ifindex)
			got, out := r.runOn(t, r.objs.FromContainer, r.a.ifindex, frame)
			if got != tc.verdict {
				t.Fatalf("verdict %d, want %d", got, tc.verdict)
			}
			fastWant := uint64(0)
			if got == verdictRedirect {
				fastWant = 1
				checkForwarded(t, frame, out, tc.dmac(r), tc.smac(r))
			} else if got == verdictPass && string(out[:len(frame)]) != string(frame) {
				t.Errorf("a frame left to the stack was changed")
			}
			if n := r.fastPathPackets(t, r.a.ifindex); n != fastWant {
				t.Errorf("sender's fast path counter %d, want %d", n, fastWant)
			}
			rcvAfter, _ := r.stats(t, r.c.ifindex)
			if delivered := rcvAfter.ToPackets - rcvBefore.ToPackets; (delivered == 1) != tc.toC {
				t.Errorf("the container on br1 counted %d packets delivered", delivered)
			}
			if tc.verdict == verdictDrop {
				st, _ := r.stats(t, r.a.ifindex)
				if st.Drops[cross]+rcvAfter.Drops[cross] != 1 {
					t.Errorf("%d + %d cross-network drops counted, want 1", st.Drops[cross], rcvAfter.Drops[cross])
				}
			}
		})
	}
}

// checkForwarded: out is in forwarded once: new MACs, TTL one less, the
// same addresses and payload, every checksum right.
func checkForwarded(t *testing.T, in, out []byte, dmac, smac net.HardwareAddr) {
	t.Helper()
	if got := net.HardwareAddr(out[0:6]); got.String() != dmac.String() {
		t.Errorf("destination MAC %s, want %s", got, dmac)
	}
	if got := net.HardwareAddr(out[6:12]); got.String() != smac.String() {
		t.Errorf("source MAC %s, want %s", got, smac)
	}
	if out[14+8] != in[14+8]-1 {
		t.Errorf("TTL %d, want %d", out[14+8], in[14+8]-1)
	}
	p := decodeFrame(t, out[:len(in)])
	q := decodeFrame(t, in)
	if p.src != q.src || p.dst != q.dst || string(p.seg) != string(q.seg) {
		t.Errorf("forwarded %v -> %v changed beyond TTL and MACs", p.src, p.dst)
	}
	checkL4(t, p, "forwarded")
}

// TestRoutedFastPathIn: replies arriving on the uplink go, once the
// masquerade translated them back, straight into their container with
// bpf_redirect_peer (its counters and policy applied by uplink_ingress),
// and what the stack must see takes it.
func TestRoutedFastPathIn(t *testing.T) {
	const ack, syn, synAck, rst = 0x10, 0x02, 0x12, 0x04
	cases := []struct {
		name    string
		flags   uint8
		ttl     uint8
		untrack bool // a reply to no flow of the masquerade
		verdict uint32
	}{
		{"a reply of a masqueraded connection", ack, 64, false, verdictRedirect},
		{"a SYN-ACK (the connection's start went through the stack)", synAck, 64, false, verdictRedirect},
		{"a RST", rst, 64, false, verdictRedirect},
		{"a SYN (a simultaneous open) takes the stack", syn, 64, false, verdictPass},
		{"TTL 1 takes the stack", ack, 1, false, verdictPass},
		{"a packet the masquerade did not translate takes the stack", ack, 64, true, verdictPass},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRoutedEnv(t)
			syn := ipv4Frame(r.a.mac, gwMAC, r.a.v4(), remote4, protoTCP, tcpSeg(r.a.v4(), remote4, 40000, 80, 0x02, 1, 0, 1000, nil))
			v, out := r.egress(t, syn)
			if v != verdictPass {
				t.Fatalf("uplink_egress: verdict %d", v)
			}
			natPort, _ := decodeFrame(t, out[:len(syn)]).ports()
			if tc.untrack {
				natPort++
			}
			reply := withTTL(ipv4Frame(routerMAC, r.up0MAC, remote4, uplink4, protoTCP,
				tcpSeg(remote4, uplink4, 80, natPort, tc.flags, 7, 2, 1000, nil)), tc.ttl)
			before, _ := r.stats(t, r.a.ifindex)
			got, fwd := r.runOn(t, r.objs.UplinkIngress, r.up0, reply)
			if got != tc.verdict {
				t.Fatalf("verdict %d, want %d", got, tc.verdict)
			}
			after, _ := r.stats(t, r.a.ifindex)
			delivered := after.ToPackets - before.ToPackets
			if tc.verdict != verdictRedirect {
				if delivered != 0 {
					t.Errorf("the container counted %d packets delivered by the uplink's program", delivered)
				}
				return
			}
			if delivered != 1 {
				t.Errorf("the container counted %d packets delivered, want 1", delivered)
			}
			if got := net.HardwareAddr(fwd[0:6]); got.String() != r.a.mac.String() {
				t.Errorf("destination MAC %s, want the container's %s", got, r.a.mac)
			}
			if got := net.HardwareAddr(fwd[6:12]); got.String() != gwMAC.String() {
				t.Errorf("source MAC %s, want the gateway's %s", got, gwMAC)
			}
			if fwd[14+8] != tc.ttl-1 {
				t.Errorf("TTL %d, want %d", fwd[14+8], tc.ttl-1)
			}
			p := decodeFrame(t, fwd[:len(reply)])
			if _, dport := p.ports(); p.dst != r.a.v4() || dport != 40000 {
				t.Errorf("delivered to %v:%d, want %v:40000", p.dst, dport, r.a.v4())
			}
			checkL4(t, p, "translated and forwarded")
		})
	}
}
