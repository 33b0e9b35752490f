package main

import (
	"fmt"
	"net"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ip"
	cniipam "github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/datapath/topology"
	"github.com/bpfbridge/bpfbridge/ipam"
)

// portUpTimeout bounds the wait for the new bridge port to come up.
const portUpTimeout = 5 * time.Second

// Indexes of the interfaces in the result this plugin builds.
const (
	bridgeIfIndex = iota
	hostIfIndex
	containerIfIndex
)

// cmdAdd attaches a container: addresses from IPAM, the bridge, a veth pair
// into the container, addresses and routes inside it and the gateway on the
// bridge. Whatever it did is undone when a later step fails.
func cmdAdd(args *skel.CmdArgs) (err error) {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	if err := conf.validateForAdd(); err != nil {
		return err
	}
	mac, err := conf.containerMAC(args.Args)
	if err != nil {
		return err
	}
	prev, err := conf.prevResult()
	if err != nil {
		return err
	}
	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("CNI_NETNS %q: %v", args.Netns, err), "")
	}
	defer netns.Close()
	if err := ensureIfnameFree(netns, args.IfName); err != nil {
		return err
	}

	var undo rollback
	defer func() {
		if err != nil {
			undo.run()
		}
	}()

	result := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	if conf.IPAM.Type != "" {
		ipamResult, err := ipam.Add(conf.IPAM.Type, args)
		if err != nil {
			return err
		}
		undo.push(func() { _ = ipam.Del(conf.IPAM.Type, args) })
		if len(ipamResult.IPs) == 0 {
			return fmt.Errorf("IPAM plugin %q returned no addresses", conf.IPAM.Type)
		}
		result.IPs, result.Routes, result.DNS = ipamResult.IPs, ipamResult.Routes, ipamResult.DNS
	}

	br, err := topology.EnsureBridge(conf.bridgeConfig())
	if err != nil {
		return hostError(err)
	}
	veth, err := topology.CreateVeth(netns, args.IfName, conf.MTU, mac, br, conf.portConfig())
	if err != nil {
		return err
	}
	undo.push(func() { _ = netlink.LinkDel(veth.Host) })

	gateways := completeRoutes(conf, result)
	if err := configureContainer(conf, netns, args.IfName, veth, result); err != nil {
		return err
	}
	if err := setupGateways(conf, br, gateways); err != nil {
		return err
	}
	if !conf.DisableContainerInterface {
		if err := topology.WaitOperUp(veth.Host.Attrs().Index, portUpTimeout); err != nil {
			return err
		}
	}
	// The bridge's MAC is final only once it has a port.
	if br, err = topology.LookupBridge(conf.Bridge); err != nil {
		return err
	}
	result.Interfaces = []*current.Interface{
		{Name: br.Name, Mac: br.HardwareAddr.String()},
		{Name: veth.Host.Attrs().Name, Mac: veth.Host.Attrs().HardwareAddr.String()},
		{Name: veth.Container.Name, Mac: veth.Container.HardwareAddr.String(), Sandbox: args.Netns},
	}
	if conf.DNS.Nameservers != nil || conf.DNS.Search != nil || conf.DNS.Options != nil || conf.DNS.Domain != "" {
		result.DNS = conf.DNS
	}
	return types.PrintResult(chain(prev, result), conf.CNIVersion)
}

// ensureIfnameFree fails when CNI_IFNAME already exists in the container, as
// the spec asks, before anything is allocated.
func ensureIfnameFree(netns ns.NetNS, ifName string) error {
	return netns.Do(func(ns.NetNS) error {
		if _, err := netlinksafe.LinkByName(ifName); err == nil {
			return types.NewError(types.ErrInvalidEnvironmentVariables,
				fmt.Sprintf("CNI_IFNAME %q already exists in %s", ifName, netns.Path()), "")
		}
		return nil
	})
}

// completeRoutes assigns the IPAM addresses to the container interface, fills
// in gateways for a gateway network and, with isDefaultGateway, adds a
// default route per family unless IPAM already gave one. It returns the
// gateway addresses the bridge must hold.
func completeRoutes(conf *NetConf, result *current.Result) []net.IPNet {
	var gateways []net.IPNet
	hasDefault := map[bool]bool{} // keyed by "is IPv4"
	for _, r := range result.Routes {
		if ones, _ := r.Dst.Mask.Size(); ones == 0 && r.GW != nil {
			hasDefault[r.Dst.IP.To4() != nil] = true
		}
	}
	for _, ipc := range result.IPs {
		ipc.Interface = current.Int(containerIfIndex)
		if !conf.IsGateway {
			continue
		}
		if ipc.Gateway == nil {
			ipc.Gateway = ip.NextIP(ipc.Address.IP.Mask(ipc.Address.Mask))
		}
		gateways = append(gateways, net.IPNet{IP: ipc.Gateway, Mask: ipc.Address.Mask})
		v4 := ipc.Address.IP.To4() != nil
		if conf.IsDefaultGateway && !hasDefault[v4] {
			dst := net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
			if v4 {
				dst = net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
			}
			result.Routes = append(result.Routes, &types.Route{Dst: dst, GW: ipc.Gateway})
			hasDefault[v4] = true
		}
	}
	return gateways
}

// configureContainer sets the container end's addresses and routes and
// brings it up; an L2-only attachment is just brought up, unless the config
// asks to leave the interface down.
func configureContainer(conf *NetConf, netns ns.NetNS, ifName string, veth *topology.VethPair, result *current.Result) error {
	if conf.DisableContainerInterface {
		return nil
	}
	return netns.Do(func(ns.NetNS) error {
		if len(result.IPs) == 0 {
			link, err := netlinksafe.LinkByName(ifName)
			if err != nil {
				return err
			}
			return netlink.LinkSetUp(link)
		}
		if hasIPv6(result.IPs) {
			dad := "0"
			if conf.EnableDad {
				dad = "1"
				_, _ = sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/enhanced_dad", ifName), "1")
			}
			_, _ = sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/accept_dad", ifName), dad)
		}
		// Announce the address with a gratuitous ARP when the link comes up,
		// so a reused IP's stale neighbour entries are replaced at once.
		_, _ = sysctl.Sysctl(fmt.Sprintf("net/ipv4/conf/%s/arp_notify", ifName), "1")
		// ConfigureIface matches addresses to interfaces by result index.
		configured := &current.Result{
			Interfaces: []*current.Interface{{}, {}, {Name: ifName, Mac: veth.Container.HardwareAddr.String()}},
			IPs:        result.IPs,
			Routes:     result.Routes,
		}
		if err := cniipam.ConfigureIface(ifName, configured); err != nil {
			return fmt.Errorf("configure %q in %s: %w", ifName, netns.Path(), err)
		}
		return nil
	})
}

// setupGateways puts the gateway addresses on the bridge (or on the VLAN's
// gateway link) and turns on forwarding for their families.
func setupGateways(conf *NetConf, br *netlink.Bridge, gateways []net.IPNet) error {
	if len(gateways) == 0 {
		return nil
	}
	var holder netlink.Link = br
	if conf.Vlan != 0 {
		var err error
		if holder, err = topology.EnsureVlanGateway(br, conf.Vlan, conf.PreserveDefaultVlan); err != nil {
			return err
		}
	}
	for i := range gateways {
		if err := topology.EnsureGatewayAddr(holder, &gateways[i], conf.ForceAddress); err != nil {
			return hostError(err)
		}
		enable := ip.EnableIP6Forward
		if gateways[i].IP.To4() != nil {
			enable = ip.EnableIP4Forward
		}
		if err := enable(); err != nil {
			return fmt.Errorf("enable forwarding: %w", err)
		}
	}
	return nil
}

// chain extends the previous plugin's result with this attachment, so the
// plugin can sit anywhere in a conflist.
func chain(prev, result *current.Result) *current.Result {
	if prev == nil {
		return result
	}
	offset := len(prev.Interfaces)
	for _, ipc := range result.IPs {
		ipc.Interface = current.Int(*ipc.Interface + offset)
	}
	prev.Interfaces = append(prev.Interfaces, result.Interfaces...)
	prev.IPs = append(prev.IPs, result.IPs...)
	prev.Routes = append(prev.Routes, result.Routes...)
	if len(result.DNS.Nameservers) > 0 || result.DNS.Domain != "" {
		prev.DNS = result.DNS
	}
	return prev
}

func hasIPv6(ips []*current.IPConfig) bool {
	for _, ipc := range ips {
		if ipc.Address.IP.To4() == nil {
			return true
		}
	}
	return false
}

// rollback collects the undo steps of an ADD and runs them newest first.
type rollback []func()

func (r *rollback) push(step func()) { *r = append(*r, step) }

func (r rollback) run() {
	for i := len(r) - 1; i >= 0; i-- {
		r[i]()
	}
	if len(r) > 0 {
		fmt.Fprintf(os.Stderr, "bpfbridge: ADD failed, undid %d step(s)\n", len(r))
	}
}
