package e2e

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// TestFastPathSkipsTheBridge: TCP between two containers of one bridge
// takes the fast path (bpf_redirect_peer): none of the client's frames
// leaves the bridge through the server's host veth, the way every bridged
// frame reaches its port (a capture on the bridge device itself sees no
// port-to-port traffic at all), and both endpoints' counters still match
// what the containers' interfaces sent and received. With
// `datapath.fastPath: false` the same frames cross the bridge (control).
func TestFastPathSkipsTheBridge(t *testing.T) {
	for _, fast := range []bool{true, false} {
		t.Run(fmt.Sprintf("fastPath=%v", fast), func(t *testing.T) {
			sb := sandbox.ForTest(t)
			conf := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "fast", "type": "bridge", "bridge": "br-fast",
				"isGateway": true, "datapath": {"bpffs": %q, "fastPath": %v},
				"ipam": {"type": "host-local", "subnet": "10.193.0.0/24", "dataDir": %q}}`, sb.BPFFS, fast, t.TempDir())
			n := newNetwork(t, sb, conf, bins.PluginDir())
			client, server := n.attach("fast0"), n.attach("fast1")
			bound := echoServerFor(t, client.ns, server.ns, server.ip)
			dp := openDatapath(t, sb)
			before := map[string]endpointTraffic{}
			for _, c := range []container{client, server} {
				before[c.id] = settledTraffic(t, dp, c)
			}

			seen := captureTCP(t, sb, hostVeth(t, sb, server), client.ip, server.ip, func() {
				payload := []byte(strings.Repeat("fast path ", 20000))
				if err := sandbox.TCPEcho(client.ns, bound, payload, 10*time.Second); err != nil {
					t.Fatalf("TCP between the containers: %v", err)
				}
			})
			if fast && seen != 0 {
				t.Errorf("%d of the client's frames crossed the bridge, want none (fast path)", seen)
			}
			if !fast && seen == 0 {
				t.Error("none of the client's frames crossed the bridge without the fast path: the capture sees nothing")
			}

			for _, c := range []container{client, server} {
				d := settledTraffic(t, dp, c).minus(before[c.id])
				if d.sent != d.txEth0 || d.delivered != d.rxEth0 {
					t.Errorf("%s: counted %d sent and %d delivered, its eth0 sent %d and received %d",
						c.id, d.sent, d.delivered, d.txEth0, d.rxEth0)
				}
				if fast && d.fastPath == 0 {
					t.Errorf("%s: no packet counted as sent by the fast path", c.id)
				}
				if !fast && d.fastPath != 0 {
					t.Errorf("%s: %d packets counted as sent by the fast path while it is off", c.id, d.fastPath)
				}
			}
			rec, err := dp.Endpoint(client.id, "eth0")
			if err != nil {
				t.Fatal(err)
			}
			if rec.Endpoint.FastPath != fast {
				t.Errorf("inspect says fast path %v, want %v", rec.Endpoint.FastPath, fast)
			}
		})
	}
}

// echoServerFor serves TCP echo on addr inside server for the rest of the
// test, and has client reach addr first: resolving the neighbours (ARP)
// takes the bridge in any case, and the captures that follow must not see
// it.
func echoServerFor(t *testing.T, client, server *sandbox.NetNS, addr netip.Addr) netip.AddrPort {
	t.Helper()
	bound, stop, err := sandbox.ServeTCPEcho(server, netip.AddrPortFrom(addr, 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	if !reaches(client, addr) {
		t.Fatalf("%s does not reach %s", client.Name, addr)
	}
	return bound
}

// endpointTraffic is an endpoint's packet counters as the datapath and the
// container's own eth0 count them.
type endpointTraffic struct {
	sent, delivered, fastPath uint64
	txEth0, rxEth0            uint64
}

func (a endpointTraffic) minus(b endpointTraffic) endpointTraffic {
	return endpointTraffic{a.sent - b.sent, a.delivered - b.delivered, a.fastPath - b.fastPath, a.txEth0 - b.txEth0, a.rxEth0 - b.rxEth0}
}

// settledTraffic is trafficOf once two readings 100 ms apart agree (at
// most 3 s): the datapath's and eth0's counters cannot be read at one
// instant, and the flow's last segments may still be on their way.
func settledTraffic(t *testing.T, dp *datapath.Datapath, c container) endpointTraffic {
	t.Helper()
	last := trafficOf(t, dp, c)
	for range 30 {
		time.Sleep(100 * time.Millisecond)
		now := trafficOf(t, dp, c)
		if now == last {
			break
		}
		last = now
	}
	return last
}

func trafficOf(t *testing.T, dp *datapath.Datapath, c container) endpointTraffic {
	t.Helper()
	cnt, err := dp.Counters(c.id, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	var tx, rx uint64
	if err := c.ns.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err == nil {
			tx, rx = l.Attrs().Statistics.TxPackets, l.Attrs().Statistics.RxPackets
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return endpointTraffic{cnt.FromContainer.Packets, cnt.ToContainer.Packets, cnt.FastPathPackets, tx, rx}
}

// captureTCP counts the IPv4 TCP frames from a to b that the node's link
// ifname sends or receives while fn runs.
func captureTCP(t *testing.T, sb *sandbox.Sandbox, ifname string, a, b netip.Addr, fn func()) int {
	t.Helper()
	var seen atomic.Int64
	startCapture(t, sb.Node, ifname, func(f []byte) {
		if len(f) < 14+20 || binary.BigEndian.Uint16(f[12:14]) != unix.ETH_P_IP || f[14+9] != unix.IPPROTO_TCP {
			return
		}
		if netip.AddrFrom4([4]byte(f[14+12:14+16])) == a && netip.AddrFrom4([4]byte(f[14+16:14+20])) == b {
			seen.Add(1)
		}
	})
	fn()
	return int(seen.Load())
}

// TestFastPathRoutedSkipsTheBridge: a masqueraded TCP connection from a
// container to the outside takes the routed fast path both ways
// (bpf_redirect_neigh to the uplink, bpf_redirect_peer from it): a capture
// on the bridge device, which the node's routing receives every routed
// frame on and sends every routed reply from, sees only the SYN (a
// connection's start always takes the stack, so that netfilter judges it)
// and nothing of the replies, and the endpoint's counters still match what
// its eth0 sent and received. With `datapath.fastPath: false` every segment
// crosses the bridge (control).
func TestFastPathRoutedSkipsTheBridge(t *testing.T) {
	for _, fast := range []bool{true, false} {
		t.Run(fmt.Sprintf("fastPath=%v", fast), func(t *testing.T) {
			sb := sandbox.ForTest(t)
			watchLeaks(t, sb, masqSubnet4)
			conf := masqConf("masq", "br-masq", t.TempDir(), masqRanges4,
				fmt.Sprintf(`"datapath": {"bpffs": %q, "fastPath": %v}`, sb.BPFFS, fast))
			n := newNetwork(t, sb, conf, bins.PluginDir())
			c := n.attach("r0")
			bound := echoServerFor(t, c.ns, sb.External, sb.Internet4)
			dp := openDatapath(t, sb)
			before := settledTraffic(t, dp, c)
			var back int
			out := captureTCP(t, sb, "br-masq", c.ip, sb.Internet4, func() {
				back = captureTCP(t, sb, "br-masq", sb.Internet4, c.ip, func() {
					payload := []byte(strings.Repeat("routed fast path ", 20000))
					if err := sandbox.TCPEcho(c.ns, bound, payload, 10*time.Second); err != nil {
						t.Fatalf("TCP to the outside: %v", err)
					}
					// The captures read behind the traffic.
					time.Sleep(500 * time.Millisecond)
				})
			})
			d := settledTraffic(t, dp, c).minus(before)
			t.Logf("bridge saw %d segments out and %d back; the container sent %d, %d by the fast path",
				out, back, d.sent, d.fastPath)
			if fast {
				if out > 1 || back > 0 {
					t.Errorf("the bridge saw %d segments out and %d back, want the SYN only", out, back)
				}
				// The counters count all the container sent: allow
				// for a neighbour probe or an IPv6 report meanwhile.
				if d.fastPath+uint64(out)+2 < d.sent {
					t.Errorf("%d packets sent by the fast path, %d over the bridge, of %d sent", d.fastPath, out, d.sent)
				}
			} else {
				if out < 3 || back < 3 {
					t.Errorf("the bridge saw %d segments out and %d back without the fast path: the capture sees nothing", out, back)
				}
				if d.fastPath != 0 {
					t.Errorf("%d packets counted as sent by the fast path while it is off", d.fastPath)
				}
			}
			if d.sent != d.txEth0 || d.delivered != d.rxEth0 {
				t.Errorf("counted %d sent and %d delivered, its eth0 sent %d and received %d",
					d.sent, d.delivered, d.txEth0, d.rxEth0)
			}
		})
	}
}

// TestFastPathTTLExpiry: traceroute through the masquerade. A datagram of
// a flow the fast path carries, sent with TTL 1, is the node's to answer
// (time exceeded from the gateway); with TTL 2 the next router (External,
// in front of a far host) answers, and its error comes back translated.
// Both reach the container's socket (IP_RECVERR), fast path on or off.
func TestFastPathTTLExpiry(t *testing.T) {
	for _, fast := range []bool{true, false} {
		t.Run(fmt.Sprintf("fastPath=%v", fast), func(t *testing.T) {
			sb := sandbox.ForTest(t)
			conf := masqConf("masq", "br-masq", t.TempDir(), masqRanges4,
				fmt.Sprintf(`"datapath": {"bpffs": %q, "fastPath": %v}`, sb.BPFFS, fast))
			n := newNetwork(t, sb, conf, bins.PluginDir())
			c := n.attach("ttl0")
			far, farAddr := addFarHost(t, sb, 1500)
			bound, stop, err := sandbox.ServeUDPEcho(far, netip.AddrPortFrom(farAddr, 0))
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			gateway := netip.MustParseAddr("10.150.0.1")
			for _, tc := range []struct {
				ttl      int
				offender netip.Addr
			}{{1, gateway}, {2, sb.External4.Addr()}} {
				var got netip.Addr
				var typ uint8
				if err := c.ns.Do(func() error {
					got, typ, err = udpTTLError(bound, tc.ttl)
					return err
				}); err != nil {
					t.Fatalf("TTL %d: %v", tc.ttl, err)
				}
				if typ != 11 || got != tc.offender {
					t.Errorf("TTL %d: ICMP type %d from %s, want time exceeded (11) from %s", tc.ttl, typ, got, tc.offender)
				}
			}
		})
	}
}

// udpTTLError sends a datagram to dst with the default TTL and waits for its
// echo (the flow exists then: the masquerade holds it, the fast path may
// carry it), then one with ttl, and returns the sender and type of the ICMP
// error the socket's error queue receives (IP_RECVERR), within 3 s.
func udpTTLError(dst netip.AddrPort, ttl int) (netip.Addr, uint8, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return netip.Addr{}, 0, err
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(3 * time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return netip.Addr{}, 0, err
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1); err != nil {
		return netip.Addr{}, 0, err
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())}); err != nil {
		return netip.Addr{}, 0, err
	}
	buf := make([]byte, 64)
	if _, err := unix.Write(fd, []byte("hello")); err != nil {
		return netip.Addr{}, 0, err
	}
	if _, err := unix.Read(fd, buf); err != nil {
		return netip.Addr{}, 0, fmt.Errorf("no echo: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, ttl); err != nil {
		return netip.Addr{}, 0, err
	}
	if _, err := unix.Write(fd, []byte("expire")); err != nil {
		return netip.Addr{}, 0, err
	}
	oob := make([]byte, 512)
	for range 60 {
		_, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if err != nil {
			return netip.Addr{}, 0, err
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return netip.Addr{}, 0, err
		}
		for _, m := range msgs {
			// struct sock_extended_err (16 bytes), then the offender's
			// struct sockaddr_in.
			if m.Header.Level != unix.IPPROTO_IP || m.Header.Type != unix.IP_RECVERR || len(m.Data) < 16+8 {
				continue
			}
			if m.Data[4] != unix.SO_EE_ORIGIN_ICMP {
				return netip.Addr{}, 0, fmt.Errorf("error of origin %d, not ICMP", m.Data[4])
			}
			if binary.LittleEndian.Uint16(m.Data[16:18]) != unix.AF_INET {
				return netip.Addr{}, 0, fmt.Errorf("no offender address in the error")
			}
			return netip.AddrFrom4([4]byte(m.Data[20:24])), m.Data[5], nil
		}
	}
	return netip.Addr{}, 0, fmt.Errorf("no ICMP error within 3 s")
}

// TestFastPathPortmap: the reference portmap plugin chained after ours
// (its iptables DNAT of a hostPort, which the node's conntrack tracks)
// keeps working with the fast path on. A large exchange from the external
// namespace to the hostPort echoes whole, and none of the container's
// answers took the fast path: its flow is conntrack's (bpf_skb_ct_lookup
// finds it), so all of it stays in the stack, whose conntrack undoes the
// DNAT. Sent by the fast path, the answers would leave with the container's
// port instead of the hostPort and the connection would stall.
func TestFastPathPortmap(t *testing.T) {
	sb := sandbox.ForTest(t)
	const hostPort = 18080
	list := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "pm", "plugins": [
		{"type": "bridge", "bridge": "br-pm", "isGateway": true, "isDefaultGateway": true, "ipMasq": true,
		 "datapath": {"bpffs": %q, "fastPath": true},
		 "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.151.0.0/24"}]]}},
		{"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}]}`, sb.BPFFS, t.TempDir())
	n := newChainedNetwork(t, sb, list, t.TempDir())
	ns, err := sb.NewContainer("pm0")
	if err != nil {
		t.Fatal(err)
	}
	ports := map[string]any{"portMappings": []map[string]any{{"hostPort": hostPort, "containerPort": 8080, "protocol": "tcp"}}}
	if _, err := n.addWith(ns, "pm0", ports); err != nil {
		t.Fatalf("ADD with a port mapping: %v", err)
	}
	t.Cleanup(func() { _ = n.delWith(ns, "pm0", ports) })
	// IPv6 off in the container: its router solicitations and MLD reports
	// go to the node by the fast path (fast_path_node_mcast), and one
	// during the exchange would count as a packet of it.
	if err := ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", []byte("1"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	_, stop, err := sandbox.ServeTCPEcho(ns, netip.AddrPortFrom(netip.IPv4Unspecified(), 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	dp := openDatapath(t, sb)
	c := container{id: "pm0", ns: ns}
	before := settledTraffic(t, dp, c)
	payload := []byte(strings.Repeat("through the host port ", 20000))
	if err := sandbox.TCPEcho(sb.External, netip.AddrPortFrom(sb.NodeUplink4.Addr(), hostPort), payload, 10*time.Second); err != nil {
		t.Fatalf("hostPort from the outside with the fast path on: %v", err)
	}
	d := settledTraffic(t, dp, c).minus(before)
	if d.sent == 0 || d.fastPath != 0 {
		t.Errorf("the container sent %d packets, %d of them by the fast path; want all by the stack (conntrack's flow)", d.sent, d.fastPath)
	}
}
