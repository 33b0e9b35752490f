package e2e

import (
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// TestInspectFlagsStaleEndpoints: `endpoint list` and `show` flag an
// endpoint whose netns is gone or whose host veth is gone (its container
// exited without a DEL reaching bpfbridge) and not the live one; `nat list`
// on a masquerading network without traffic says there are no
// translations yet, not that no network masquerades.
func TestInspectFlagsStaleEndpoints(t *testing.T) {
	sb := sandbox.ForTest(t)
	n := newNetwork(t, sb, masqConf("stale", "br-stale", t.TempDir(), masqRanges4, ""), bins.PluginDir())
	live, nsGone, vethGone := n.attach("live"), n.attach("nsgone"), n.attach("vethgone")

	stdout, stderr, code := runInspect(t, sb, "nat", "list")
	if code != 0 || stdout != "no masquerade translations yet (a network has ipMasq, but none of its traffic has left the node)\n" {
		t.Errorf("nat list before any traffic: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}

	if err := nsGone.ns.Delete(); err != nil {
		t.Fatal(err)
	}
	var hostVeth string
	for _, e := range staleEndpoints(t, sb, "endpoint", "list") {
		if e.ContainerID == vethGone.id {
			hostVeth = e.HostIfName
		}
	}
	err := sb.InNode(func() error {
		l, err := netlink.LinkByName(hostVeth)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	})
	if err != nil {
		t.Fatalf("delete host veth %q: %v", hostVeth, err)
	}

	want := map[string][]string{live.id: {""}, nsGone.id: {"netns-gone", "veth-gone"}, vethGone.id: {"veth-gone"}}
	eps := staleEndpoints(t, sb, "endpoint", "list")
	if len(eps) != 3 {
		t.Fatalf("endpoint list: %d endpoints, want 3: %+v", len(eps), eps)
	}
	for _, e := range eps {
		ok := false
		for _, reason := range want[e.ContainerID] {
			ok = ok || (e.StaleReason == reason && e.Stale == (reason != ""))
		}
		if !ok {
			t.Errorf("endpoint list: %s is stale=%v (%q), want one of %q", e.ContainerID, e.Stale, e.StaleReason, want[e.ContainerID])
		}
	}
	if e := staleEndpoints(t, sb, "endpoint", "show", vethGone.id); len(e) != 1 || e[0].StaleReason != "veth-gone" {
		t.Errorf("endpoint show %s: %+v, want it flagged veth-gone", vethGone.id, e)
	}
	stdout, _, _ = runInspect(t, sb, "endpoint", "show", vethGone.id)
	mustContain(t, "endpoint show", stdout, "stale:", "veth-gone")
	stdout, _, _ = runInspect(t, sb, "endpoint", "list")
	mustContain(t, "endpoint list", stdout, "STALE", "veth-gone")
}

type staleEndpoint struct {
	ContainerID string `json:"container_id"`
	HostIfName  string `json:"host_ifname"`
	Stale       bool   `json:"stale"`
	StaleReason string `json:"stale_reason"`
}

func staleEndpoints(t *testing.T, sb *sandbox.Sandbox, args ...string) []staleEndpoint {
	t.Helper()
	var eps []staleEndpoint
	inspectJSON(t, sb, &eps, args...)
	return eps
}
