package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// uplink is an interface masqueraded traffic leaves by, with the addresses
// its translations use as source.
type uplink struct {
	index      int
	name       string
	ipv4, ipv6 netip.Addr
}

// uplinkQuery is what the uplinks of a masquerading network depend on.
type uplinkQuery struct {
	// names overrides discovery: masquerade.uplinks.
	names []string
	// sources are the network's subnets: the sources policy routing rules
	// are matched against.
	sources []netip.Prefix
	// addresses choose the source address per family among an uplink's
	// addresses: masquerade.address.
	addresses []netip.Addr
}

// findUplinks returns the interfaces masqueraded traffic can leave by,
// each with the address its translations use per family.
//
// Without names, those are the interfaces of the default routes (and every
// nexthop of a multipath default route) of the main table and of every
// table an `ip rule` selects for the network's sources, per family. Only
// default routes count: a node with a route into some other network (a lab
// network, a VPN) or an address of its own in it does not send containers'
// Internet traffic there. A node without a default route has no uplink
// (yet): nothing leaves it to be masqueraded, and the next ADD of a
// masquerading network looks again.
//
// An uplink's address per family is the route's preferred source when the
// route names one, else the interface's primary address (see
// primaryAddress); masquerade.address replaces it on the uplink that has
// that address, and must be an address of one of them.
func findUplinks(q uplinkQuery) ([]uplink, error) {
	found := map[int]*uplink{}
	var order []int
	add := func(index int) *uplink {
		u, ok := found[index]
		if !ok {
			u = &uplink{index: index}
			found[index] = u
			order = append(order, index)
		}
		return u
	}
	if len(q.names) > 0 {
		for _, name := range q.names {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return nil, fmt.Errorf("masquerade uplink %q: %w", name, err)
			}
			add(l.Attrs().Index)
		}
	} else {
		for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
			routes, err := defaultRoutes(family, q.sources)
			if err != nil {
				return nil, err
			}
			for _, r := range routes {
				u := add(r.index)
				if r.src.IsValid() {
					u.setAddr(r.src, false)
				}
			}
		}
	}
	uplinks := make([]uplink, 0, len(order))
	for _, i := range order {
		u := found[i]
		l, err := netlink.LinkByIndex(i)
		if err != nil {
			return nil, fmt.Errorf("masquerade uplink ifindex %d: %w", i, err)
		}
		u.name = l.Attrs().Name
		addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("addresses of masquerade uplink %s: %w", u.name, err)
		}
		for _, a := range []netip.Addr{primaryAddress(addrs, unix.AF_INET), primaryAddress(addrs, unix.AF_INET6)} {
			if a.IsValid() {
				u.setAddr(a, false)
			}
		}
		uplinks = append(uplinks, *u)
	}
	return uplinks, chooseAddresses(uplinks, q.addresses)
}

// setAddr records a as u's address of its family; a route's preferred
// source, found first, wins over the interface's primary address unless
// replace is set.
func (u *uplink) setAddr(a netip.Addr, replace bool) {
	slot := &u.ipv6
	if a.Is4() {
		slot = &u.ipv4
	}
	if replace || !slot.IsValid() {
		*slot = a
	}
}

// chooseAddresses makes each of want the address of its family on the
// uplink that has it.
func chooseAddresses(uplinks []uplink, want []netip.Addr) error {
	for _, a := range want {
		owner := -1
		for i := range uplinks {
			l, err := netlink.LinkByIndex(uplinks[i].index)
			if err != nil {
				return err
			}
			addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_ALL)
			if err != nil {
				return err
			}
			if slices.ContainsFunc(addrs, func(x netlink.Addr) bool { return ipAddr(x.IP) == a }) {
				owner = i
				break
			}
		}
		if owner < 0 {
			names := make([]string, 0, len(uplinks))
			for _, u := range uplinks {
				names = append(names, u.name)
			}
			return fmt.Errorf("\"masquerade.address\": %s is not an address of the masquerade uplinks %v", a, names)
		}
		uplinks[owner].setAddr(a, true)
	}
	return nil
}

// primaryAddress is the address the kernel treats as the interface's own
// in family: the first global-scope address that is not secondary (IPv4),
// deprecated, tentative or a failed duplicate (IPv6), in the kernel's
// order. Invalid if there is none.
func primaryAddress(addrs []netlink.Addr, family int) netip.Addr {
	const unusable = unix.IFA_F_SECONDARY | unix.IFA_F_DEPRECATED | unix.IFA_F_TENTATIVE | unix.IFA_F_DADFAILED
	for _, a := range addrs {
		ip := ipAddr(a.IP)
		if !ip.IsValid() || ip.Is4() != (family == unix.AF_INET) {
			continue
		}
		if a.Scope != unix.RT_SCOPE_UNIVERSE || a.Flags&unusable != 0 {
			continue
		}
		// A zero preferred lifetime deprecates an address even when the
		// flag is not reported.
		if !ip.Is4() && a.PreferedLft == 0 && a.ValidLft != 0 {
			continue
		}
		return ip
	}
	return netip.Addr{}
}

// defaultRoute is one way out of a default route.
type defaultRoute struct {
	index int
	src   netip.Addr
}

// mainTable is RT_TABLE_MAIN.
const mainTable = unix.RT_TABLE_MAIN

// defaultRoutes returns the interfaces of family's default routes in the
// main table and in the tables policy routing selects for sources, in the
// order the rules consult them. One dump of the family's routes (every
// table: netlink filters tables on our side anyway) serves all tables.
func defaultRoutes(family int, sources []netip.Prefix) ([]defaultRoute, error) {
	tables, err := sourceTables(family, sources)
	if err != nil {
		return nil, err
	}
	byTable := map[int][]defaultRoute{}
	err = netlink.RouteListFilteredIter(family, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE, func(r netlink.Route) bool {
		// Blackhole, unreachable and prohibit defaults: nothing leaves.
		if (r.Dst != nil && !isDefault(r.Dst)) || r.Type != unix.RTN_UNICAST || !slices.Contains(tables, r.Table) {
			return true
		}
		src := ipAddr(r.Src)
		if r.LinkIndex > 0 {
			byTable[r.Table] = append(byTable[r.Table], defaultRoute{r.LinkIndex, src})
		}
		for _, nh := range r.MultiPath {
			byTable[r.Table] = append(byTable[r.Table], defaultRoute{nh.LinkIndex, src})
		}
		return true
	})
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var out []defaultRoute
	for _, t := range tables {
		out = append(out, byTable[t]...)
	}
	return out, nil
}

// sourceTables returns the routing tables the node's rules of family send
// packets from sources to, main included, in rule order. A rule counts when
// what it matches on is one of: any source, a source prefix overlapping
// sources, or "not fwmark" (forwarded packets carry no mark). Rules that
// select on anything else (destination, interfaces, marks, ports, tos) are
// not about the containers' default way out and are skipped, as are rules
// that suppress default routes (wg-quick's suppress_prefixlength 0).
func sourceTables(family int, sources []netip.Prefix) ([]int, error) {
	rules, err := netlink.RuleList(family)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list ip rules: %w", err)
	}
	slices.SortStableFunc(rules, func(a, b netlink.Rule) int { return a.Priority - b.Priority })
	var tables []int
	for _, r := range rules {
		if ruleApplies(r, sources) && !slices.Contains(tables, r.Table) {
			tables = append(tables, r.Table)
		}
	}
	if !slices.Contains(tables, mainTable) {
		tables = append(tables, mainTable)
	}
	return tables, nil
}

func ruleApplies(r netlink.Rule, sources []netip.Prefix) bool {
	if r.Table == 0 || r.Table == unix.RT_TABLE_LOCAL || r.Goto >= 0 || r.SuppressPrefixlen == 0 {
		return false
	}
	if r.Invert {
		// "not fwmark M": matches unmarked packets, ours.
		if r.Mark == 0 || r.Src != nil || r.Dst != nil {
			return false
		}
	} else if r.Mark != 0 {
		return false
	}
	if (r.Dst != nil && !isDefault(r.Dst)) || r.IifName != "" || r.OifName != "" || r.Tos != 0 ||
		r.Dport != nil || r.Sport != nil || r.IPProto != 0 || r.TunID != 0 {
		return false
	}
	if r.UIDRange != nil && (r.UIDRange.Start != 0 || r.UIDRange.End != ^uint32(0)) {
		return false
	}
	if r.Src == nil || isDefault(r.Src) {
		return true
	}
	src, ok := netipPrefix(r.Src)
	return ok && slices.ContainsFunc(sources, src.Overlaps)
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

func netipPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a := ipAddr(n.IP)
	ones, _ := n.Mask.Size()
	if !a.IsValid() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones).Masked(), true
}

// ipAddr converts a netlink address, invalid if absent.
func ipAddr(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}
