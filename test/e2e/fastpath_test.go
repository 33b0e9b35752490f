package e2e

import (
	"encoding/binary"
	"fmt"
	"net/netip"
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
			bound, stop, err := sandbox.ServeTCPEcho(server.ns, netip.AddrPortFrom(server.ip, 0))
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			// Resolve the neighbours first: ARP takes the bridge in any case.
			if !reaches(client.ns, server.ip) {
				t.Fatal("the containers do not reach each other")
			}
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
