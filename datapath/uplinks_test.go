package datapath

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestRuleApplies(t *testing.T) {
	sources := []netip.Prefix{netip.MustParsePrefix("10.88.0.0/16")}
	cidr := func(s string) *net.IPNet { _, n, _ := net.ParseCIDR(s); return n }
	rule := func(edit func(*netlink.Rule)) netlink.Rule {
		r := netlink.NewRule()
		r.Table = 100
		edit(r)
		return *r
	}
	for name, c := range map[string]struct {
		rule netlink.Rule
		want bool
	}{
		"from all":                    {rule(func(r *netlink.Rule) {}), true},
		"main table":                  {rule(func(r *netlink.Rule) { r.Table = unix.RT_TABLE_MAIN }), true},
		"local table":                 {rule(func(r *netlink.Rule) { r.Table = unix.RT_TABLE_LOCAL }), false},
		"from the containers' subnet": {rule(func(r *netlink.Rule) { r.Src = cidr("10.88.1.0/24") }), true},
		"from a covering prefix":      {rule(func(r *netlink.Rule) { r.Src = cidr("10.0.0.0/8") }), true},
		"from another subnet":         {rule(func(r *netlink.Rule) { r.Src = cidr("192.168.0.0/16") }), false},
		"to a prefix":                 {rule(func(r *netlink.Rule) { r.Dst = cidr("172.16.0.0/12") }), false},
		"fwmark":                      {rule(func(r *netlink.Rule) { r.Mark = 0x51820 }), false},
		"not fwmark (wg-quick)":       {rule(func(r *netlink.Rule) { r.Mark, r.Invert = 0x51820, true }), true},
		"suppress_prefixlength 0":     {rule(func(r *netlink.Rule) { r.SuppressPrefixlen = 0 }), false},
		"iif":                         {rule(func(r *netlink.Rule) { r.IifName = "eth1" }), false},
		"uid range":                   {rule(func(r *netlink.Rule) { r.UIDRange = netlink.NewRuleUIDRange(1000, 1000) }), false},
		"goto":                        {rule(func(r *netlink.Rule) { r.Goto = 200 }), false},
		"blackhole (no table)":        {rule(func(r *netlink.Rule) { r.Table = 0 }), false},
	} {
		if got := ruleApplies(c.rule, sources); got != c.want {
			t.Errorf("%s: ruleApplies = %v, want %v", name, got, c.want)
		}
	}
}

func TestPrimaryAddress(t *testing.T) {
	addr := func(cidr string, scope, flags int) netlink.Addr {
		a, err := netlink.ParseAddr(cidr)
		if err != nil {
			t.Fatal(err)
		}
		a.Scope, a.Flags, a.PreferedLft, a.ValidLft = scope, flags, 0xffffffff, 0xffffffff
		return *a
	}
	addrs := []netlink.Addr{
		addr("fe80::1/64", unix.RT_SCOPE_LINK, 0),
		addr("127.0.0.1/8", unix.RT_SCOPE_HOST, 0),
		addr("2001:db8::9/64", unix.RT_SCOPE_UNIVERSE, unix.IFA_F_TENTATIVE),
		addr("2001:db8::8/64", unix.RT_SCOPE_UNIVERSE, unix.IFA_F_DEPRECATED),
		addr("198.51.100.1/24", unix.RT_SCOPE_UNIVERSE, 0),
		addr("198.51.100.7/24", unix.RT_SCOPE_UNIVERSE, unix.IFA_F_SECONDARY),
		addr("2001:db8::1/64", unix.RT_SCOPE_UNIVERSE, 0),
	}
	if got := primaryAddress(addrs, unix.AF_INET); got != netip.MustParseAddr("198.51.100.1") {
		t.Errorf("IPv4 primary address %v, want 198.51.100.1", got)
	}
	if got := primaryAddress(addrs, unix.AF_INET6); got != netip.MustParseAddr("2001:db8::1") {
		t.Errorf("IPv6 primary address %v, want 2001:db8::1 (not the tentative or deprecated ones)", got)
	}
	if got := primaryAddress(addrs[:2], unix.AF_INET6); got.IsValid() {
		t.Errorf("IPv6 primary address of link-local only: %v, want none", got)
	}
}
