package main

import (
	"fmt"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/bpfbridge/bpfbridge/datapath/topology"
	"github.com/bpfbridge/bpfbridge/ipam"
)

// cmdCheck verifies that the attachment still looks as ADD left it, as
// described by prevResult: the address reservation, the veth pair on the
// bridge, the eBPF datapath's entries and programs, and the container's
// addresses and routes.
func cmdCheck(conf *NetConf, args *skel.CmdArgs) error {
	prev, err := conf.prevResult()
	if err != nil {
		return err
	}
	if prev == nil {
		return invalidConf("\"prevResult\" is required for CHECK")
	}
	contIdx := -1
	for i, intf := range prev.Interfaces {
		if intf.Name == args.IfName && intf.Sandbox == args.Netns {
			contIdx = i
		}
	}
	if contIdx < 0 {
		return checkFailed("prevResult lists no interface %q in %s", args.IfName, args.Netns)
	}
	if conf.IPAM.Type != "" {
		if err := ipam.Check(conf.IPAM.Type, args); err != nil {
			return err
		}
	}
	netns, err := openNetNS(args)
	if err != nil {
		return err
	}
	defer netns.Close()
	mac := prev.Interfaces[contIdx].Mac
	hostVeth, err := topology.VerifyVeth(netns, args.IfName, mac, conf.Bridge)
	if err != nil {
		return checkFailed("%v", err)
	}
	var ips []*current.IPConfig
	for _, ipc := range prev.IPs {
		if ipc.Interface != nil && *ipc.Interface == contIdx {
			ips = append(ips, ipc)
		}
	}
	dp, err := openDatapath(conf, nil)
	if err != nil {
		return err
	}
	defer dp.Close()
	ep := endpointOf(conf, args, hostVeth, mac, ips)
	if err := dp.Check(ep); err != nil {
		return checkFailed("datapath: %v", err)
	}
	var gateways []netip.Addr
	for _, ipc := range ips {
		if a, ok := netip.AddrFromSlice(ipc.Gateway); ok && conf.IsGateway {
			gateways = append(gateways, a.Unmap())
		}
	}
	if err := dp.CheckPorts(portsOf(conf, args, ep, gateways)); err != nil {
		return checkFailed("port mapping: %v", err)
	}
	return netns.Do(func(ns.NetNS) error {
		if err := topology.VerifyAddresses(args.IfName, ips); err != nil {
			return checkFailed("%v", err)
		}
		if err := topology.VerifyRoutes(prev.Routes); err != nil {
			return checkFailed("%v", err)
		}
		return nil
	})
}

func checkFailed(format string, args ...any) error {
	return types.NewError(errCheckFailed, "CHECK: "+fmt.Sprintf(format, args...), "")
}
