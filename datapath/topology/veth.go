package topology

import (
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// PortConfig is how a host-side veth joins the bridge.
type PortConfig struct {
	Hairpin  bool
	Isolated bool
	// Vlan tags the port's untagged traffic (PVID); 0 means no VLAN.
	Vlan int
	// Trunk lists VLAN IDs the port carries tagged.
	Trunk []int
	// PreserveDefaultVlan keeps VLAN 1 on a VLAN or trunk port.
	PreserveDefaultVlan bool
}

// VethPair is a container's veth pair after CreateVeth.
type VethPair struct {
	// Host is the bridge port, in the calling thread's network namespace.
	Host netlink.Link
	// Container is the end inside the container's network namespace.
	Container net.Interface
}

// CreateVeth creates a veth pair whose end named ifName (with mtu and, when
// not empty, the MAC address mac) lives in netns and whose other end, named
// "veth" plus random hex like the reference plugin's, joins br in the calling
// thread's namespace with the port settings. Both ends are up on return. On
// error nothing is left behind.
func CreateVeth(netns ns.NetNS, ifName string, mtu int, mac string, br *netlink.Bridge, port PortConfig) (*VethPair, error) {
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return nil, fmt.Errorf("open node network namespace: %w", err)
	}
	defer hostNS.Close()

	var hostIf, contIf net.Interface
	err = netns.Do(func(ns.NetNS) error {
		var err error
		hostIf, contIf, err = ip.SetupVeth(ifName, mtu, mac, hostNS)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create veth %q in %s: %w", ifName, netns.Path(), err)
	}
	// The host end was created in this namespace, so its name is enough to
	// find it; deleting it removes the container end too.
	host, err := netlinksafe.LinkByName(hostIf.Name)
	if err == nil {
		err = joinBridge(host, br, port)
		if err != nil {
			_ = netlink.LinkDel(host)
		}
	}
	if err != nil {
		return nil, err
	}
	return &VethPair{Host: host, Container: contIf}, nil
}

// joinBridge enslaves port to br and applies the port settings. Settings
// that equal a new port's defaults are skipped: each costs a netlink round
// trip on the ADD path.
func joinBridge(port netlink.Link, br *netlink.Bridge, cfg PortConfig) error {
	name := port.Attrs().Name
	if err := netlink.LinkSetMaster(port, br); err != nil {
		return fmt.Errorf("attach %q to bridge %q: %w", name, br.Name, err)
	}
	if cfg.Hairpin {
		if err := netlink.LinkSetHairpin(port, true); err != nil {
			return fmt.Errorf("set hairpin mode on %q: %w", name, err)
		}
	}
	if cfg.Isolated {
		if err := netlink.LinkSetIsolated(port, true); err != nil {
			return fmt.Errorf("set port isolation on %q: %w", name, err)
		}
	}
	return setPortVlans(port, cfg)
}

// setPortVlans mirrors the reference plugin's VLAN handling: the PVID is
// untagged, trunk VLANs are tagged, and a trunk without a PVID keeps VLAN 1
// as its native VLAN.
func setPortVlans(port netlink.Link, cfg PortConfig) error {
	if cfg.Vlan == 0 && len(cfg.Trunk) == 0 {
		return nil
	}
	name := port.Attrs().Name
	if !cfg.PreserveDefaultVlan {
		// A new port carries only the bridge's default VLAN 1.
		if err := netlink.BridgeVlanDel(port, 1, true, true, false, true); err != nil {
			return fmt.Errorf("remove default vlan from %q: %w", name, err)
		}
	}
	pvid := cfg.Vlan
	if pvid == 0 {
		pvid = 1
	}
	if err := netlink.BridgeVlanAdd(port, uint16(pvid), true, true, false, true); err != nil {
		return fmt.Errorf("set vlan %d on %q: %w", pvid, name, err)
	}
	for _, vid := range cfg.Trunk {
		if err := netlink.BridgeVlanAdd(port, uint16(vid), false, false, false, true); err != nil {
			return fmt.Errorf("add trunk vlan %d to %q: %w", vid, name, err)
		}
	}
	return nil
}

// DeleteLink deletes the link named name in the calling thread's namespace.
// A missing link is not an error: DEL is idempotent.
func DeleteLink(name string) error {
	if err := ip.DelLinkByName(name); err != nil && err != ip.ErrLinkNotFound {
		return err
	}
	return nil
}

// EnsureVlanGateway returns the link "<bridge>.<vlan>" that holds the gateway
// address of a VLAN network, creating it when missing as the reference plugin
// does: a veth pair in the node's namespace whose peer is a port of br with
// vlan as its PVID.
func EnsureVlanGateway(br *netlink.Bridge, vlan int, preserveDefaultVlan bool) (netlink.Link, error) {
	name := fmt.Sprintf("%s.%d", br.Name, vlan)
	link, err := netlinksafe.LinkByName(name)
	if !errors.As(err, new(netlink.LinkNotFoundError)) {
		return link, err
	}
	nodeNS, err := ns.GetCurrentNS()
	if err != nil {
		return nil, fmt.Errorf("open node network namespace: %w", err)
	}
	defer nodeNS.Close()
	port := PortConfig{Vlan: vlan, PreserveDefaultVlan: preserveDefaultVlan}
	if _, err := CreateVeth(nodeNS, name, br.MTU, "", br, port); err != nil {
		return nil, fmt.Errorf("create vlan gateway link %q: %w", name, err)
	}
	return netlinksafe.LinkByName(name)
}
