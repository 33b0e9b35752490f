package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// Limits of the bandwidth tests, in bits per second (bursts in bits).
const (
	bwEgress   = 8_000_000  // from the container
	bwIngress  = 16_000_000 // to the container
	bwBurst    = 400_000
	bwHostPort = 18080
)

// TestChainedBandwidthAndPortmap: bpfbridge chained with the reference
// portmap and bandwidth plugins, with egress and ingress limits: ADD works,
// the limits hold (within 20 %, measured against the node over 4 s each
// way), the hostPort answers from outside and from another container, and
// DEL leaves nothing. With limits from the runtime (runtimeConfig, as
// kubelet passes pod annotations) bpfbridge needs no datapath setting: the
// limited endpoint is attached with tcx, the others keep the default; with
// limits written into the bandwidth plugin's own config, the network sets
// datapath.attach tcx.
func TestChainedBandwidthAndPortmap(t *testing.T) {
	ports := []map[string]any{{"hostPort": bwHostPort, "containerPort": 8080, "protocol": "tcp"}}
	limits := map[string]any{"egressRate": bwEgress, "egressBurst": bwBurst, "ingressRate": bwIngress, "ingressBurst": bwBurst}
	t.Run("limits from the runtime, default settings", func(t *testing.T) {
		sb := sandbox.ForTest(t)
		dataDir := t.TempDir()
		n := newChainedNetwork(t, sb, chainedConf("chain", "br-chain", dataDir, "10.152.0.0/24"), dataDir)
		checkBandwidthChain(t, sb, n, map[string]any{"bandwidth": limits, "portMappings": ports}, "tcx", defaultAttachMode())
	})
	t.Run("limits in the bandwidth config, datapath.attach tcx", func(t *testing.T) {
		sb := sandbox.ForTest(t)
		dataDir := t.TempDir()
		limitsJSON, _ := json.Marshal(limits)
		conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "chain", "plugins": [
			{"type": "bridge", "bridge": "br-chain", "isGateway": true, "isDefaultGateway": true, "ipMasq": true, "hairpinMode": true,
			 "datapath": {"attach": "tcx", "bpffs": %q},
			 "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.152.0.0/24"}]]}},
			{"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
			%s]}`, sb.BPFFS, dataDir, strings.Replace(string(limitsJSON), "{", `{"type": "bandwidth", `, 1))
		n := newChainedNetwork(t, sb, conf, dataDir)
		checkBandwidthChain(t, sb, n, map[string]any{"portMappings": ports}, "tcx", "tcx")
	})
}

// checkBandwidthChain attaches a limited container A (capability arguments
// capA) and a container B, and checks A's limits, its hostPort, the attach
// modes and the teardown.
func checkBandwidthChain(t *testing.T, sb *sandbox.Sandbox, n *network, capA map[string]any, modeA, modeB string) {
	t.Helper()
	nsA := newContainer(t, sb, "bw-a")
	nsB := newContainer(t, sb, "bw-b")
	res, err := n.addWith(nsA, "bw-a", capA)
	if err != nil {
		t.Fatalf("ADD with bandwidth limits and a port mapping: %v", err)
	}
	if _, err := n.addWith(nsB, "bw-b", nil); err != nil {
		t.Fatalf("ADD of a second container: %v", err)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil || len(cur.IPs) == 0 || cur.IPs[0].Gateway == nil {
		t.Fatalf("result %v: %v", res, err)
	}
	ipA, _ := netip.AddrFromSlice(cur.IPs[0].Address.IP.To4())
	gateway, _ := netip.AddrFromSlice(cur.IPs[0].Gateway.To4())

	eps := endpointsByID(t, sb)
	if eps["bw-a"].AttachMode != modeA || eps["bw-b"].AttachMode != modeB {
		t.Errorf("attach modes: limited %q, other %q; want %s and %s", eps["bw-a"].AttachMode, eps["bw-b"].AttachMode, modeA, modeB)
	}

	ctx := context.Background()
	for _, m := range []struct {
		what           string
		client, server *sandbox.NetNS
		addr           netip.Addr
		want           float64
	}{
		{"egress (from the limited container to the node)", nsA, sb.Node, gateway, bwEgress},
		{"ingress (from the node to the limited container)", sb.Node, nsA, ipA, bwIngress},
	} {
		rate, err := sandbox.TCPStream(ctx, m.client, m.server, m.addr, 4*time.Second)
		if err != nil {
			t.Errorf("%s: %v", m.what, err)
			continue
		}
		if rate < 0.8*m.want || rate > 1.2*m.want {
			t.Errorf("%s: measured %.2f Mbit/s, want %.2f ± 20%%", m.what, rate/1e6, m.want/1e6)
		} else {
			t.Logf("%s: measured %.2f Mbit/s, limit %.2f", m.what, rate/1e6, m.want/1e6)
		}
	}

	_, stop, err := sandbox.ServeTCPEcho(nsA, netip.AddrPortFrom(netip.IPv4Unspecified(), 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	hostPortAddr := netip.AddrPortFrom(sb.NodeUplink4.Addr(), bwHostPort)
	for name, from := range map[string]*sandbox.NetNS{"outside": sb.External, "another container": nsB} {
		if err := sandbox.TCPEcho(from, hostPortAddr, []byte("through the host port from "+name), 3*time.Second); err != nil {
			t.Errorf("hostPort %s from %s: %v", hostPortAddr, name, err)
		}
	}
	assertOnlyPortmapRules(t, sb)

	if err := n.delWith(nsA, "bw-a", capA); err != nil {
		t.Fatalf("DEL of the limited container: %v", err)
	}
	if err := n.delWith(nsB, "bw-b", nil); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if v := nodeVeths(t, sb); len(v) != 0 {
		t.Errorf("veths left after DEL: %v", v)
	}
	if ifb := nodeLinksOfType(t, sb, "ifb"); len(ifb) != 0 {
		t.Errorf("ifb devices left after DEL: %v", ifb)
	}
	if eps := endpointsByID(t, sb); len(eps) != 0 {
		t.Errorf("endpoints left after DEL: %v", eps)
	}
	n.assertStoreEmpty()
}

// defaultAttachMode is the attach mode of endpoints without an egress
// limit in this run: legacy, unless the suite runs with BPFBRIDGE_ATTACH.
func defaultAttachMode() string {
	if m := os.Getenv("BPFBRIDGE_ATTACH"); m != "" {
		return m
	}
	return "legacy"
}
