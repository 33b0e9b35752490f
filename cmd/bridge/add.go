package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	cnins "github.com/containernetworking/cni/pkg/ns"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/datapath/topology"
	"github.com/bpfbridge/bpfbridge/datapath/trace"
	"github.com/bpfbridge/bpfbridge/ipam"
)

// portUpTimeout bounds the wait for the new bridge port to come up.
const portUpTimeout = 5 * time.Second

// containerIfIndex is the container interface's index in the result, which
// lists the bridge, the host veth and the container interface.
const containerIfIndex = 2

// cmdAdd attaches a container: the bridge, a veth pair into the container,
// addresses from IPAM, addresses and routes inside the container and the
// gateway on the bridge. Everything it can check is checked before it
// creates anything; whatever it did is undone when a later step fails.
func cmdAdd(conf *NetConf, args *skel.CmdArgs, tr *trace.Tracer) (err error) {
	if err := conf.validateForAdd(); err != nil {
		return err
	}
	if why := badLinkName(args.IfName); why != "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_IFNAME %q: %s", args.IfName, why), "")
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
	if err := conf.validateIPAM(args); err != nil {
		return err
	}
	netns, err := openNetNS(args)
	if err != nil {
		return err
	}
	defer netns.Close()
	// On a node without this build's programs, what loading them needs
	// of Go's CPU is done beside the setup below.
	datapath.Prefetch(conf.openOptions(tr))

	// The datapath is closed after the rollback, which needs its maps.
	var dp *datapath.Datapath
	defer func() {
		if dp != nil {
			dp.Close()
		}
	}()
	var undo rollback
	defer func() {
		if err != nil {
			err = undo.run(err)
		}
	}()

	tr.Mark("config")
	br, err := topology.EnsureBridge(conf.bridgeConfig())
	if err != nil {
		return conf.bridgeError(err)
	}
	tr.Mark("bridge")
	// The veth comes first: it fails when CNI_IFNAME exists, before any
	// address is allocated.
	hostVeth, err := topology.CreateVeth(netns, args.IfName, conf.MTU, mac, br, conf.portConfig())
	var taken *topology.IfnameTakenError
	if errors.As(err, &taken) {
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_IFNAME %q: %v", args.IfName, err), "")
	}
	if err != nil {
		return conf.bridgeError(err)
	}
	undo.push("delete veth "+hostVeth.Attrs().Name, func() error { return ignoreGone(netlink.LinkDel(hostVeth)) })
	if err := failAfter("veth"); err != nil {
		return err
	}
	tr.Mark("veth")

	result := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	if conf.IPAM.Type != "" {
		ipamResult, err := ipam.Add(conf.IPAM.Type, args)
		if err != nil {
			return err
		}
		undo.push("release addresses", func() error { return ipam.Del(conf.IPAM.Type, args) })
		if len(ipamResult.IPs) == 0 {
			return fmt.Errorf("IPAM plugin %q returned no addresses", conf.IPAM.Type)
		}
		if err := conf.checkAddresses(ipamResult.IPs); err != nil {
			return err
		}
		result.IPs, result.Routes, result.DNS = ipamResult.IPs, ipamResult.Routes, ipamResult.DNS
		if err := failAfter("ipam"); err != nil {
			return err
		}
		tr.Mark("ipam")
	}

	// The programs are attached while the container's interface is still
	// down: it never sends a packet they have not seen.
	if dp, err = openDatapath(conf, tr); err != nil {
		return err
	}
	ep := endpointOf(conf, args, hostVeth, mac, result.IPs)
	ep.NodeMulticast = !topology.Snoops(br)
	if err := dp.Attach(ep); err != nil {
		return datapathError(err)
	}
	undo.push("detach from the datapath", func() error { return dp.Detach(args.ContainerID, args.IfName) })
	if err := failAfter("attach"); err != nil {
		return err
	}
	tr.Mark("record")
	if conf.IPMasq {
		m := conf.masq
		m.Network, m.Subnets = conf.Name, subnets(result.IPs)
		undo.push("release masquerade", func() error { return dp.ReleaseMasquerade(conf.Name, args.ContainerID, args.IfName) })
		if err := dp.EnableMasquerade(m); err != nil {
			return datapathError(err)
		}
		if err := failAfter("masquerade"); err != nil {
			return err
		}
		tr.Mark("masquerade")
	}

	gateways := completeRoutes(conf, result)
	if len(conf.ports) > 0 {
		// Undone with the attachment: Detach unpublishes its ports.
		if err := dp.PublishPorts(portsOf(conf, args, ep, gatewayAddrs(gateways))); err != nil {
			return portsError(err)
		}
		if err := failAfter("portmap"); err != nil {
			return err
		}
		tr.Mark("portmap")
	}
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
	if err := failAfter("container"); err != nil {
		return err
	}
	tr.Mark("container")
	for _, ipc := range result.IPs {
		ipc.Interface = current.Int(containerIfIndex)
	}
	if err := setupGateways(conf, br, gateways); err != nil {
		return err
	}
	if err := failAfter("gateway"); err != nil {
		return err
	}
	tr.Mark("gateway")
	if !conf.DisableContainerInterface {
		if err := topology.WaitOperUp(hostVeth.Attrs().Index, portUpTimeout); err != nil {
			return err
		}
	}
	if err := failAfter("wait"); err != nil {
		return err
	}
	tr.Mark("wait")
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

// openNetNS opens CNI_NETNS, which must be a container's network
// namespace. ns.GetNS accepts any namespace file (/proc/self/ns/mnt), on
// which setns fails only once the bridge exists, and skel refuses the
// plugin's own namespace only after ADD, when the veth exists.
func openNetNS(args *skel.CmdArgs) (ns.NetNS, error) {
	fail := func(err error) (ns.NetNS, error) {
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("CNI_NETNS %q: %v", args.Netns, err), "")
	}
	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return fail(err)
	}
	kind, err := unix.IoctlRetInt(int(netns.Fd()), unix.NS_GET_NSTYPE)
	if err == nil && kind != unix.CLONE_NEWNET {
		err = errors.New("not a network namespace")
	}
	if override := strings.ToLower(args.NetnsOverride); err == nil && override != "true" && override != "1" {
		if own, cerr := cnins.CheckNetNS(args.Netns); cerr != nil {
			err = cerr
		} else if own {
			err = errors.New("it is the plugin's own network namespace, not a container's")
		}
	}
	if err != nil {
		netns.Close()
		return fail(err)
	}
	return netns, nil
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

// gatewayAddrs are the addresses of gateways.
func gatewayAddrs(gateways []net.IPNet) []netip.Addr {
	var out []netip.Addr
	for _, g := range gateways {
		if a, ok := netip.AddrFromSlice(g.IP); ok {
			out = append(out, a.Unmap())
		}
	}
	return out
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
type rollback []undoStep

// undoStep undoes one step of ADD; what names it in error messages.
type undoStep struct {
	what string
	undo func() error
}

func (r *rollback) push(what string, undo func() error) { *r = append(*r, undoStep{what, undo}) }

// run undoes every step, newest first, even when one fails, and returns
// the ADD's error cause with the outcome added to its message: the runtime
// learns whether the node was left clean.
func (r rollback) run(cause error) error {
	var failed []string
	for i := len(r) - 1; i >= 0; i-- {
		if err := r[i].undo(); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", r[i].what, err))
		}
	}
	if len(r) == 0 {
		return cause
	}
	outcome := fmt.Sprintf("undid %d step(s)", len(r))
	if len(failed) > 0 {
		outcome = fmt.Sprintf("could not undo %d of %d step(s), state is left on the node: %s",
			len(failed), len(r), strings.Join(failed, "; "))
	}
	var cniErr *types.Error
	if errors.As(cause, &cniErr) {
		return types.NewError(cniErr.Code, cniErr.Msg+" (ADD "+outcome+")", cniErr.Details)
	}
	return fmt.Errorf("%w (ADD %s)", cause, outcome)
}

// ignoreGone treats a link that is already gone as deleted.
func ignoreGone(err error) error {
	if errors.As(err, new(netlink.LinkNotFoundError)) || errors.Is(err, unix.ENODEV) {
		return nil
	}
	return err
}
