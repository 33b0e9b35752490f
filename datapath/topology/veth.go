package topology

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
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

// IfnameTakenError reports that the container already has an interface
// with the requested name.
type IfnameTakenError struct{ IfName, Netns string }

func (e *IfnameTakenError) Error() string {
	return fmt.Sprintf("interface %q already exists in %s", e.IfName, e.Netns)
}

// maxNameAttempts bounds the retries when a random host-side name is taken.
const maxNameAttempts = 4

// CreateVeth creates a container's veth pair without entering the
// container's namespace: the host end, named "veth" plus random hex like the
// reference plugin's, is created in the calling thread's namespace already
// enslaved to br and up, and its peer is created directly inside netns as
// ifName with mtu and, when not empty, the MAC address mac. The peer is left
// down for ConfigureContainer. One netlink request does all of this, which
// matters on the ADD path. An existing ifName in netns is an
// *IfnameTakenError; on any error nothing is left behind.
func CreateVeth(netns ns.NetNS, ifName string, mtu int, mac string, br *netlink.Bridge, port PortConfig) (netlink.Link, error) {
	var peerMAC net.HardwareAddr
	if mac != "" {
		var err error
		if peerMAC, err = net.ParseMAC(mac); err != nil {
			return nil, fmt.Errorf("container MAC %q: %w", mac, err)
		}
	}
	for range maxNameAttempts {
		name := randomVethName()
		host, err := addVeth(name, mtu, br.Index, ifName, peerMAC, int(netns.Fd()))
		if errors.Is(err, syscall.EEXIST) {
			if _, lookupErr := netlinksafe.LinkByName(name); lookupErr == nil {
				continue // the random host name is taken: draw another
			}
			return nil, &IfnameTakenError{IfName: ifName, Netns: netns.Path()}
		}
		if err != nil {
			return nil, fmt.Errorf("create veth %q in %s: %w", ifName, netns.Path(), err)
		}
		if err = configurePort(host, port); err != nil {
			_ = netlink.LinkDel(host)
		}
		if err != nil {
			return nil, err
		}
		return host, nil
	}
	return nil, fmt.Errorf("no free host-side veth name after %d attempts", maxNameAttempts)
}

// addVeth creates a veth pair in one RTM_NEWLINK: the host end name, up,
// with mtu (0: the kernel's default), already a port of the bridge master,
// and its peer peerName inside the namespace peerNS with mtu and, when not
// nil, peerMAC. It returns the host end as the kernel made it (index, MAC).
// vishvananda/netlink's LinkAdd takes three more netlink requests for this,
// each under the RTNL lock every ADD of the node queues on: it looks the new
// link up by name, then enslaves it with a second request (the kernel takes
// IFLA_MASTER at creation), and then the caller looked it up again. Here
// the kernel's answer to NLM_F_ECHO is the new link; a kernel that does not
// echo new links (before 6.3) gets it looked up.
func addVeth(name string, mtu, master int, peerName string, peerMAC net.HardwareAddr, peerNS int) (netlink.Link, error) {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK|unix.NLM_F_ECHO)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Flags, msg.Change = unix.IFF_UP, unix.IFF_UP
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	if mtu > 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(mtu))))
	}
	req.AddData(nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(master))))
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("veth"))
	peer := info.AddRtAttr(nl.IFLA_INFO_DATA, nil).AddRtAttr(nl.VETH_INFO_PEER, nil)
	nl.NewIfInfomsgChild(peer, unix.AF_UNSPEC)
	peer.AddRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(peerName))
	if mtu > 0 {
		peer.AddRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(mtu)))
	}
	if peerMAC != nil {
		peer.AddRtAttr(unix.IFLA_ADDRESS, []byte(peerMAC))
	}
	peer.AddRtAttr(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(peerNS)))
	req.AddData(info)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return nil, err
	}
	for _, m := range msgs {
		if l, err := netlink.LinkDeserialize(nil, m); err == nil && l.Attrs().Name == name {
			// The kernel echoes the link as it brought it up, before
			// enslaving it; the request succeeded, so it is a port now.
			l.Attrs().MasterIndex = master
			return l, nil
		}
	}
	return netlinksafe.LinkByName(name)
}

// configurePort applies the port settings to a new bridge port. Settings
// that equal a new port's defaults are skipped: each costs a netlink round
// trip on the ADD path.
func configurePort(port netlink.Link, cfg PortConfig) error {
	name := port.Attrs().Name
	disableIPv6(name)
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

// disableIPv6 turns IPv6 off on a bridge port. A port carries frames for
// the bridge and holds no address of its own (the gateway is on the
// bridge), but left on, every host veth gets a link-local address, sends
// duplicate address detection, MLD reports and router solicitations into
// its container, and adds three routes to the node's IPv6 tables. Those
// routes made the node's work per ADD grow with its containers: the kernel
// walks the whole IPv6 table on every state change of a port without
// carrier (the veth's alias, a link lookup that syncs its state), 3,000
// routes at 1,000 containers. Bridged IPv6 between containers is
// untouched: a port's frames go to the bridge before its own IPv6 sees
// them. Best effort: a node without IPv6 has no such setting, and a port
// that keeps IPv6 only costs time.
func disableIPv6(port string) {
	_ = os.WriteFile(filepath.Join("/proc/sys/net/ipv6/conf", port, "disable_ipv6"), []byte("1"), 0)
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
	link, err := netlinksafe.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err == nil {
		err = netlink.LinkDel(link)
	}
	if err != nil {
		return fmt.Errorf("delete %q: %w", name, err)
	}
	return nil
}

// DeleteContainerLink deletes the interface ifname of the container whose
// namespace is at netnsPath, for DEL. A namespace or link that is already
// gone counts as deleted, also when it goes while this runs (a runtime
// deletes namespaces in parallel with DELs).
func DeleteContainerLink(netnsPath, ifname string) error {
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error { return DeleteLink(ifname) })
	if alreadyGone(err) {
		return nil
	}
	return err
}

// alreadyGone reports whether err, from removing the container's interface,
// says there is nothing left to remove: the namespace was deleted (or its
// bind mount removed), or the link vanished before or while it was deleted.
func alreadyGone(err error) bool {
	switch err.(type) {
	case nil, ns.NSPathNotExistErr, ns.NSPathNotNSErr:
		return true
	}
	return errors.As(err, new(netlink.LinkNotFoundError)) ||
		errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
}

// randomVethName is a host-side veth name as the reference plugin makes
// them: "veth" and 8 random hex digits (NetworkManager ignores veth*).
func randomVethName() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b) // crypto/rand never fails
	return fmt.Sprintf("veth%x", b)
}

// EnsureVlanGateway returns the link "<bridge>.<vlan>" that holds the gateway
// address of a VLAN network, creating it when missing as the reference plugin
// does: a veth pair in the node's namespace whose peer is a port of br with
// vlan as its PVID.
func EnsureVlanGateway(br *netlink.Bridge, vlan int, preserveDefaultVlan bool) (netlink.Link, error) {
	name := VlanGatewayName(br.Name, vlan)
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
	link, err = netlinksafe.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetUp(link)
	}
	return link, err
}

// VlanGatewayName is the name of the link that holds the gateway
// addresses of VLAN vlan on bridge.
func VlanGatewayName(bridge string, vlan int) string {
	return fmt.Sprintf("%s.%d", bridge, vlan)
}

// RandomMAC returns a random locally administered unicast MAC address, as
// the kernel picks for a veth. Choosing it here lets the caller know the
// container's MAC before the container's interface exists.
func RandomMAC() net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	_, _ = rand.Read(mac) // crypto/rand never fails
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}
