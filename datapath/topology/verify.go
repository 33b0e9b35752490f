package topology

import (
	"fmt"
	"net"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// VerifyVeth checks that ifName in netns is a veth, with the MAC address mac
// when mac is not empty, whose peer is a port of the bridge named bridge in
// the calling thread's namespace, and returns that peer.
func VerifyVeth(netns ns.NetNS, ifName, mac, bridge string) (netlink.Link, error) {
	br, err := LookupBridge(bridge)
	if err != nil {
		return nil, fmt.Errorf("bridge %q: %w", bridge, err)
	}
	var peerIndex int
	err = netns.Do(func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("interface %q not found in %s: %w", ifName, netns.Path(), err)
		}
		veth, ok := link.(*netlink.Veth)
		if !ok {
			return fmt.Errorf("interface %q in %s is a %s, not a veth", ifName, netns.Path(), link.Type())
		}
		if have := link.Attrs().HardwareAddr.String(); mac != "" && have != mac {
			return fmt.Errorf("interface %q in %s has MAC %s, not %s", ifName, netns.Path(), have, mac)
		}
		peerIndex, err = netlink.VethPeerIndex(veth)
		return err
	})
	if err != nil {
		return nil, err
	}
	host, err := netlink.LinkByIndex(peerIndex)
	if err != nil {
		return nil, fmt.Errorf("peer of %q (ifindex %d) not found on the node: %w", ifName, peerIndex, err)
	}
	if host.Attrs().MasterIndex != br.Index {
		return nil, fmt.Errorf("peer %q of %q is not a port of bridge %q", host.Attrs().Name, ifName, bridge)
	}
	return host, nil
}

// VerifyAddresses checks, in the calling thread's namespace, that ifName
// holds every address of ips with its prefix length, and that the route to
// each address's subnet exists.
func VerifyAddresses(ifName string, ips []*current.IPConfig) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("interface %q not found: %w", ifName, err)
	}
	have, err := netlinksafe.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %q: %w", ifName, err)
	}
	for _, ipc := range ips {
		want := netlink.Addr{IPNet: &ipc.Address}
		if !slices.ContainsFunc(have, want.Equal) {
			return fmt.Errorf("address %s is missing on %q", &ipc.Address, ifName)
		}
		subnet := &net.IPNet{IP: ipc.Address.IP.Mask(ipc.Address.Mask), Mask: ipc.Address.Mask}
		routes, err := netlinksafe.RouteListFiltered(familyOf(ipc.Address.IP), &netlink.Route{Dst: subnet}, netlink.RT_FILTER_DST)
		if err != nil || len(routes) == 0 {
			return fmt.Errorf("no route to %s on %q (%v)", subnet, ifName, err)
		}
	}
	return nil
}

// VerifyRoutes checks, in the calling thread's namespace, that every route
// exists, with its gateway when it has one.
func VerifyRoutes(routes []*types.Route) error {
	for _, r := range routes {
		find := &netlink.Route{Dst: &r.Dst, Gw: r.GW}
		filter := netlink.RT_FILTER_DST
		if r.GW != nil {
			filter |= netlink.RT_FILTER_GW
		}
		if ones, _ := r.Dst.Mask.Size(); ones == 0 {
			// The kernel reports a default route without a destination.
			find.Dst = nil
		}
		found, err := netlinksafe.RouteListFiltered(familyOf(r.Dst.IP), find, filter)
		if err != nil || len(found) == 0 {
			return fmt.Errorf("route %s via %v is missing (%v)", &r.Dst, r.GW, err)
		}
	}
	return nil
}

func familyOf(ip net.IP) int {
	if ip.To4() != nil {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}
