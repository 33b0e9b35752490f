package e2e

import (
	"context"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// TestChainedBandwidthAndPortmap: bpfbridge with default datapath settings,
// chained with the reference portmap and bandwidth plugins as Kubernetes
// chains them (limits and ports come as runtimeConfig): ADD works, the
// egress and ingress limits hold, the hostPort answers from outside and
// from another container, and DEL leaves nothing.
func TestChainedBandwidthAndPortmap(t *testing.T) {
	sb := sandbox.ForTest(t)
	dataDir := t.TempDir()
	n := newChainedNetwork(t, sb, gatewayConf("chain", "br-chain", dataDir, "10.152.0.0/24"), dataDir)

	const (
		egressBits  = 8_000_000  // from the container
		ingressBits = 16_000_000 // to the container
		burstBits   = 400_000
		hostPort    = 18080
	)
	limited := map[string]any{
		"bandwidth":    map[string]any{"egressRate": egressBits, "egressBurst": burstBits, "ingressRate": ingressBits, "ingressBurst": burstBits},
		"portMappings": []map[string]any{{"hostPort": hostPort, "containerPort": 8080, "protocol": "tcp"}},
	}
	nsA, err := sb.NewContainer("bw-a")
	if err != nil {
		t.Fatal(err)
	}
	nsB, err := sb.NewContainer("bw-b")
	if err != nil {
		t.Fatal(err)
	}
	res, err := n.addWith(nsA, "bw-a", limited)
	if err != nil {
		t.Fatalf("ADD with bandwidth limits and a port mapping: %v", err)
	}
	resB, err := n.addWith(nsB, "bw-b", nil)
	if err != nil {
		t.Fatalf("ADD without limits: %v", err)
	}
	ipA, ipB := firstIP(t, res), firstIP(t, resB)

	eps := endpointsByID(t, sb)
	if eps["bw-a"].AttachMode != "tcx" || eps["bw-b"].AttachMode != defaultAttachMode() {
		t.Errorf("attach modes: limited %q, unlimited %q; want tcx for the endpoint with an egress limit, %s otherwise",
			eps["bw-a"].AttachMode, eps["bw-b"].AttachMode, defaultAttachMode())
	}

	ctx := context.Background()
	for _, m := range []struct {
		what           string
		client, server *sandbox.NetNS
		addr           netip.Addr
		want           float64
	}{
		{"egress (from the limited container)", nsA, nsB, ipB, egressBits},
		{"ingress (to the limited container)", nsB, nsA, ipA, ingressBits},
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
	hostPortAddr := netip.AddrPortFrom(sb.NodeUplink4.Addr(), hostPort)
	for name, from := range map[string]*sandbox.NetNS{"outside": sb.External, "another container": nsB} {
		if err := sandbox.TCPEcho(from, hostPortAddr, []byte("through the host port from "+name), 3*time.Second); err != nil {
			t.Errorf("hostPort %s from %s: %v", hostPortAddr, name, err)
		}
	}
	assertOnlyPortmapRules(t, sb)

	if err := n.delWith(nsA, "bw-a", limited); err != nil {
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

// firstIP is the first address of an ADD result.
func firstIP(t *testing.T, res types.Result) netip.Addr {
	t.Helper()
	cur, err := current.NewResultFromResult(res)
	if err != nil || len(cur.IPs) == 0 {
		t.Fatalf("result %v: %v", res, err)
	}
	ip, _ := netip.AddrFromSlice(cur.IPs[0].Address.IP)
	return ip.Unmap()
}
