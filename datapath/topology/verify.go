package topology

import (
	"fmt"

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
