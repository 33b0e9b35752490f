package topology

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// ContainerConfig is how ConfigureContainer sets up the container's end of
// its veth pair.
type ContainerConfig struct {
	IfName string
	// IPs and Routes to configure; an L2-only attachment has none.
	IPs    []*current.IPConfig
	Routes []*types.Route
	// EnableDAD keeps IPv6 duplicate address detection on; by default it is
	// off so that addresses are usable at once, as in the reference plugin.
	EnableDAD bool
	// LeaveDown leaves the interface down (disableContainerInterface).
	LeaveDown bool
}

// dadTimeout bounds the wait for IPv6 addresses to leave the tentative
// state, when duplicate address detection is on.
const dadTimeout = 5 * time.Second

// ConfigureContainer configures the interface cfg.IfName inside netns in a
// single visit to that namespace: sysctls, addresses, link state and routes,
// as the reference plugin does (containernetworking/plugins' ConfigureIface).
// It returns the interface as a CNI result lists it.
func ConfigureContainer(netns ns.NetNS, cfg ContainerConfig) (*current.Interface, error) {
	iface := &current.Interface{Name: cfg.IfName, Sandbox: netns.Path()}
	err := netns.Do(func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(cfg.IfName)
		if err != nil {
			return err
		}
		iface.Mac = link.Attrs().HardwareAddr.String()
		switch {
		case cfg.LeaveDown:
			return nil
		case len(cfg.IPs) == 0:
			return netlink.LinkSetUp(link)
		}
		return configureAddresses(link, cfg)
	})
	if err != nil {
		return nil, fmt.Errorf("configure %q in %s: %w", cfg.IfName, netns.Path(), err)
	}
	return iface, nil
}

// configureAddresses adds the addresses, sets the link up and adds the
// routes; a route without a gateway goes via its family's gateway.
func configureAddresses(link netlink.Link, cfg ContainerConfig) error {
	var gateway4, gateway6 net.IP
	ipv6Prepared := false
	for _, ipc := range cfg.IPs {
		if ipc.Address.IP.To4() == nil && !ipv6Prepared {
			if err := enableIPv6(cfg); err != nil {
				return err
			}
			ipv6Prepared = true
		}
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: &ipc.Address}); err != nil {
			return fmt.Errorf("add address %s: %w", &ipc.Address, err)
		}
		switch {
		case ipc.Gateway == nil:
		case ipc.Gateway.To4() != nil && gateway4 == nil:
			gateway4 = ipc.Gateway
		case ipc.Gateway.To4() == nil && gateway6 == nil:
			gateway6 = ipc.Gateway
		}
	}
	// Announce the address with a gratuitous ARP when the link comes up,
	// so that stale neighbour entries for a reused address are replaced.
	_ = setARPNotify(link)
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %q up: %w", cfg.IfName, err)
	}
	if cfg.EnableDAD && gateway6 != nil {
		if err := settleAddresses(link); err != nil {
			return err
		}
	}
	for _, r := range cfg.Routes {
		gw := r.GW
		if gw == nil {
			gw = gateway6
			if r.Dst.IP.To4() != nil {
				gw = gateway4
			}
		}
		route := &netlink.Route{Dst: &r.Dst, LinkIndex: link.Attrs().Index, Gw: gw, Priority: r.Priority}
		if r.Table != nil {
			route.Table = *r.Table
		}
		if r.Scope != nil {
			route.Scope = netlink.Scope(*r.Scope)
		}
		if err := netlink.RouteAddEcmp(route); err != nil {
			return fmt.Errorf("add route %s via %v: %w", &r.Dst, gw, err)
		}
	}
	return nil
}

// enableIPv6 prepares the container for its IPv6 addresses: IPv6 on lo and
// the interface, addresses kept while the link is down, and duplicate
// address detection as configured.
func enableIPv6(cfg ContainerConfig) error {
	for _, name := range []string{"lo", cfg.IfName} {
		key := fmt.Sprintf("net/ipv6/conf/%s/disable_ipv6", name)
		if v, err := sysctl.Sysctl(key); err == nil && v != "0" {
			if _, err := sysctl.Sysctl(key, "0"); err != nil {
				return fmt.Errorf("enable IPv6 on %q: %w", name, err)
			}
		}
	}
	_, _ = sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/keep_addr_on_down", cfg.IfName), "1")
	dad := "0"
	if cfg.EnableDAD {
		dad = "1"
		_, _ = sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/enhanced_dad", cfg.IfName), "1")
	}
	_, _ = sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/accept_dad", cfg.IfName), dad)
	return nil
}

// settleAddresses waits, bounded by dadTimeout, until no IPv6 address of
// link is tentative (duplicate address detection is on): the kernel sends
// no event when DAD ends, so it polls.
func settleAddresses(link netlink.Link) error {
	deadline := time.Now().Add(dadTimeout)
	for {
		addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_V6)
		if err != nil {
			return fmt.Errorf("list addresses of %q: %w", link.Attrs().Name, err)
		}
		tentative := false
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_DADFAILED != 0 {
				return fmt.Errorf("address %s on %q failed duplicate address detection", a.IP, link.Attrs().Name)
			}
			tentative = tentative || a.Flags&unix.IFA_F_TENTATIVE != 0
		}
		if !tentative {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("IPv6 addresses still tentative after " + dadTimeout.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ipv4DevconfARPNotify is IPV4_DEVCONF_ARP_NOTIFY (linux/ip.h): arp_notify's
// index among an interface's IPv4 settings.
const ipv4DevconfARPNotify = 22

// setARPNotify sets the interface's net.ipv4.conf.<if>.arp_notify to 1, as
// the reference plugin does, through netlink (RTM_SETLINK with the setting
// in IFLA_AF_SPEC/AF_INET/IFLA_INET_CONF) rather than /proc/sys: the kernel
// looks a sysctl path up by name, and the dentries of every container's
// "eth0" share one hash chain, so writing /proc/sys/net/ipv4/conf/eth0/…
// cost time proportional to the node's containers (≈1.5 ms at 1,000).
func setARPNotify(link netlink.Link) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(link.Attrs().Index)
	req.AddData(msg)
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	conf := spec.AddRtAttr(unix.AF_INET, nil).AddRtAttr(unix.IFLA_INET_CONF, nil)
	conf.AddRtAttr(ipv4DevconfARPNotify, nl.Uint32Attr(1))
	req.AddData(spec)
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("set arp_notify on %q: %w", link.Attrs().Name, err)
	}
	return nil
}
