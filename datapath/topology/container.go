package topology

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	cniipam "github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
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

// ConfigureContainer configures the interface cfg.IfName inside netns in a
// single visit to that namespace: sysctls, addresses, routes and link state.
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
		setSysctls(cfg)
		// ConfigureIface matches addresses to interfaces by result index.
		res := &current.Result{Interfaces: []*current.Interface{iface}, IPs: cfg.IPs, Routes: cfg.Routes}
		for _, ipc := range res.IPs {
			ipc.Interface = current.Int(0)
		}
		return cniipam.ConfigureIface(cfg.IfName, res)
	})
	if err != nil {
		return nil, fmt.Errorf("configure %q in %s: %w", cfg.IfName, netns.Path(), err)
	}
	return iface, nil
}

// setSysctls prepares the interface before its addresses go up. Failures
// are ignored, as in the reference plugin: a kernel without IPv6 has no
// accept_dad, and neither setting is needed for connectivity.
func setSysctls(cfg ContainerConfig) {
	for _, ipc := range cfg.IPs {
		if ipc.Address.IP.To4() != nil {
			continue
		}
		dad := "0"
		if cfg.EnableDAD {
			dad = "1"
			_, _ = sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/enhanced_dad", cfg.IfName), "1")
		}
		_, _ = sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/accept_dad", cfg.IfName), dad)
		break
	}
	// Announce the address with a gratuitous ARP when the link comes up,
	// so that stale neighbour entries for a reused address are replaced.
	_, _ = sysctl.Sysctl(fmt.Sprintf("net/ipv4/conf/%s/arp_notify", cfg.IfName), "1")
}
