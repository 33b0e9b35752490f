package e2e

import (
	"fmt"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// TestExistingBridgeMACPinned: a gateway network on a bridge created
// beforehand pins the bridge's MAC, as the reference does: it does not
// follow the lowest port MAC as containers come and go, so the containers'
// gateway neighbour entries stay valid.
func TestExistingBridgeMACPinned(t *testing.T) {
	sb := sandbox.ForTest(t)
	const bridge = "br-pin"
	var before string
	err := sb.InNode(func() error {
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridge}}); err != nil {
			return err
		}
		l, err := netlink.LinkByName(bridge)
		if err != nil {
			return err
		}
		before = l.Attrs().HardwareAddr.String()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "pin", "type": "bridge", "bridge": %q, "isGateway": true,
		"ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.151.0.0/24"}]]}}`, bridge, t.TempDir())
	n := newNetwork(t, sb, conf, bins.PluginDir())
	var ctrs []container
	for i := range 4 {
		ctrs = append(ctrs, n.attach(fmt.Sprintf("pin%d", i)))
		if got := linkIn(t, sb.Node, bridge).Attrs().HardwareAddr.String(); got != before {
			t.Fatalf("after ADD %d the bridge MAC is %s, was %s before: it follows its ports", i, got, before)
		}
	}
	for _, c := range ctrs[:2] {
		if err := n.del(c.ns, c.id, "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	if got := linkIn(t, sb.Node, bridge).Attrs().HardwareAddr.String(); got != before {
		t.Errorf("after DELs the bridge MAC is %s, was %s", got, before)
	}
	if !reaches(ctrs[3].ns, ctrs[2].ip) {
		t.Errorf("%s does not reach %s", ctrs[3].id, ctrs[2].ip)
	}
}
