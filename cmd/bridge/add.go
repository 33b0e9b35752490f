package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/datapath/topology"
	"github.com/bpfbridge/bpfbridge/ipam"
)

// portUpTimeout bounds the wait for the new bridge port to come up.
const portUpTimeout = 5 * time.Second

// containerIfIndex is the container interface's index in the result, which
// lists the bridge, the host veth and the container interface.
const containerIfIndex = 2

// cmdAdd attaches a container: the bridge, a veth pair into the container,
// addresses from IPAM, addresses and routes inside the container and the
// gateway on the bridge. Whatever it did is undone when a later step fails.
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
	if mac == "" {
		// Chosen here rather than by the kernel, so that the datapath knows
		// the container's MAC before the container's interface comes up.
		mac = topology.RandomMAC().String()
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

	var undo rollback
	defer func() {
		if err != nil {
			undo.run()
		}
	}()

	br, err := topology.EnsureBridge(conf.bridgeConfig())
	if err != nil {
		return hostError(err)
	}
	// The veth comes first: it fails when CNI_IFNAME exists, before any
	// address is allocated.
	hostVeth, err := topology.CreateVeth(netns, args.IfName, conf.MTU, mac, br, conf.portConfig())
	var taken *topology.IfnameTakenError
	if errors.As(err, &taken) {
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_IFNAME %q: %v", args.IfName, err), "")
	}
	if err != nil {
		return err
	}
	undo.push(func() { _ = netlink.LinkDel(hostVeth) })

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

	// The programs are attached while the container's interface is still
	// down: it never sends a packet they have not seen.
	dp, err := openDatapath(conf)
	if err != nil {
		return err
	}
	defer dp.Close()
	ep := endpointOf(conf, args, hostVeth, mac, result.IPs)
	if err := dp.Attach(ep); err != nil {
		return datapathError(err)
	}
	undo.push(func() { _ = dp.Detach(args.ContainerID, args.IfName) })
	if conf.IPMasq {
		m := conf.masq
		m.Network, m.Subnets = conf.Name, subnets(result.IPs)
		if err := dp.EnableMasquerade(m); err != nil {
			return datapathError(err)
		}
	}

	gateways := completeRoutes(conf, result)
	contIf, err := topology.ConfigureContainer(netns, topology.ContainerConfig{
		IfName:    args.IfName,
		IPs:       result.IPs,
		Routes:    result.Routes,
		EnableDAD: conf.EnableDad,
		LeaveDown: conf.DisableContainerInterface,
	})
	if err != nil {
		return err
	}
	for _, ipc := range result.IPs {
		ipc.Interface = current.Int(containerIfIndex)
	}
	if err := setupGateways(conf, br, gateways); err != nil {
		return err
	}
	if !conf.DisableContainerInterface {
		if err := topology.WaitOperUp(hostVeth.Attrs().Index, portUpTimeout); err != nil {
			return err
		}
	}
	// The bridge's MAC is final only once it has a port.
	if br, err = topology.LookupBridge(conf.Bridge); err != nil {
		return err
	}
	result.Interfaces = []*current.Interface{
		{Name: br.Name, Mac: br.HardwareAddr.String()},
		{Name: hostVeth.Attrs().Name, Mac: hostVeth.Attrs().HardwareAddr.String()},
		contIf,
	}
	if conf.DNS.Nameservers != nil || conf.DNS.Search != nil || conf.DNS.Options != nil || conf.DNS.Domain != "" {
		result.DNS = conf.DNS
	}
	return types.PrintResult(chain(prev, result), conf.CNIVersion)
}

// subnets are the networks of the attachment's addresses.
func subnets(ips []*current.IPConfig) []netip.Prefix {
	var out []netip.Prefix
	for _, ipc := range ips {
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		ones, _ := ipc.Address.Mask.Size()
		out = append(out, netip.PrefixFrom(a.Unmap(), ones).Masked())
	}
	return out
}

// completeRoutes fills in gateways for a gateway network and, with isDefaultGateway, adds a
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
		if !conf.IsGateway {
			continue
		}
		if ipc.Gateway == nil {
			subnet, _ := netip.AddrFromSlice(ipc.Address.IP.Mask(ipc.Address.Mask))
			ipc.Gateway = subnet.Unmap().Next().AsSlice()
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
		if err := topology.EnableForwarding(gateways[i].IP); err != nil {
			return err
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
