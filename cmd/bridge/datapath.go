package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/datapath/trace"
)

// Environment variables that set the datapath options a config leaves
// out: configs such as DC/OS's cannot change, and tests run the same
// configs in both attach modes.
const (
	envBPFFS    = "BPFBRIDGE_BPFFS"
	envAttach   = "BPFBRIDGE_ATTACH"
	envFastPath = "BPFBRIDGE_FASTPATH"
)

// fastPath reports whether the network's endpoints take the fast path
// (bpf/fastpath.h), and whether it must leave what the node's netfilter
// tracks on the bridge: as the config key, else the environment ("true" or
// "false"), says; left unsaid, on. Said explicitly, "true" means no rule
// looks at bridged traffic between containers; left unsaid on a node whose
// netfilter sees bridged frames (br_netfilter's bridge-nf-call-iptables, as
// Docker and Kubernetes nodes set it), frames between containers of the
// bridge skip it only for flows netfilter does not track, past their
// start, as routed traffic always does. Never for ports the bridge must
// see: VLANs, port isolation.
func (c *NetConf) fastPath() (on, bridgeNF bool) {
	on, said := true, false
	switch os.Getenv(envFastPath) {
	case "true":
		on, said = true, true
	case "false":
		on, said = false, true
	}
	if c.Datapath.FastPath != nil {
		on, said = *c.Datapath.FastPath, true
	}
	on = on && c.Vlan == 0 && len(c.trunk) == 0 && !c.PortIsolation
	return on, on && !said && bridgeNetfilter()
}

// bridgeNetfilter reports whether the node's netfilter sees bridged
// traffic (br_netfilter loaded, calling iptables or ip6tables).
func bridgeNetfilter() bool {
	for _, f := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables"} {
		if v, err := os.ReadFile("/proc/sys/net/bridge/" + f); err == nil && strings.TrimSpace(string(v)) == "1" {
			return true
		}
	}
	return false
}

// datapathOptions locates the node's eBPF datapath: config keys first,
// then the environment, then the defaults.
// An attach mode that does not parse is the default here: parseConf
// rejects it first.
func (c *NetConf) datapathOptions() datapath.Options {
	opts := datapath.Options{BPFFS: c.Datapath.BPFFS}
	if opts.BPFFS == "" {
		opts.BPFFS = os.Getenv(envBPFFS)
	}
	opts.Attach, _ = datapath.ParseAttachMode(c.attachName())
	return opts
}

// attachName is the attach mode asked for: the config key, else the
// environment.
func (c *NetConf) attachName() string {
	if c.Datapath.Attach != "" {
		return c.Datapath.Attach
	}
	return os.Getenv(envAttach)
}

// openOptions are the options ADD and CHECK open the datapath with.
func (c *NetConf) openOptions(tr *trace.Tracer) datapath.Options {
	opts := c.datapathOptions()
	opts.Trace, opts.Masquerade = tr, c.IPMasq
	return opts
}

// openDatapath opens the node's datapath for ADD and CHECK. When this build's
// programs are new on the node, existing endpoints move onto them now: this
// is how a plugin upgrade reaches running containers.
func openDatapath(c *NetConf, tr *trace.Tracer) (*datapath.Datapath, error) {
	dp, err := datapath.Open(c.openOptions(tr))
	if err != nil {
		return nil, datapathError(err)
	}
	if dp.NeedsUpgrade() {
		if _, err := dp.Upgrade(); err != nil {
			dp.Close()
			return nil, datapathError(err)
		}
		tr.Mark("upgrade")
	}
	return dp, nil
}

// isolation is the network's isolation mode (validated by loadConf).
func (c *NetConf) isolation() datapath.Isolation {
	i, _ := datapath.ParseIsolation(c.Isolation)
	return i
}

// endpointOf describes the attachment to the datapath.
func endpointOf(conf *NetConf, args *skel.CmdArgs, hostVeth netlink.Link, mac string, ips []*current.IPConfig) datapath.Endpoint {
	hw, _ := net.ParseMAC(mac) // validated by containerMAC or generated
	ep := datapath.Endpoint{
		ContainerID: args.ContainerID,
		IfName:      args.IfName,
		Network:     conf.Name,
		Netns:       args.Netns,
		HostIfindex: hostVeth.Attrs().Index,
		HostIfName:  hostVeth.Attrs().Name,
		MAC:         datapath.MAC(hw),
		Isolation:   conf.isolation(),
		TaggedOK:    len(conf.trunk) > 0,
		Bridge:      hostVeth.Attrs().MasterIndex,
	}
	ep.FastPath, ep.BridgeNetfilter = conf.fastPath()
	for _, ipc := range ips {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			ep.IPs = append(ep.IPs, a.Unmap())
		}
	}
	return ep
}

// detachDatapath removes the attachment's eBPF state, found by container
// ID and ifname since the veth may be gone. A node without datapath state
// has nothing to remove. The error is the datapath's own, for the caller
// to inspect (datapath.ErrVethInUse) and wrap with datapathError. Forgetting the translations and detaching are
// independent: one failing does not keep the other from running.
func detachDatapath(conf *NetConf, args *skel.CmdArgs) error {
	dp, err := datapath.FindEndpoint(conf.datapathOptions(), args.ContainerID, args.IfName, args.Netns)
	if errors.Is(err, datapath.ErrNoState) {
		return nil
	}
	if err != nil {
		return err
	}
	defer dp.Close()
	var errs []error
	if conf.IPMasq {
		errs = append(errs, dp.ForgetFlows(dp.Addresses(args.ContainerID, args.IfName)))
	}
	errs = append(errs, dp.Detach(args.ContainerID, args.IfName))
	if conf.IPMasq {
		errs = append(errs, dp.ReleaseMasquerade(conf.Name, args.ContainerID, args.IfName))
	}
	return errors.Join(errs...)
}

// datapathError gives errors of the eBPF datapath their CNI code.
func datapathError(err error) error {
	if err == nil {
		return nil
	}
	return types.NewError(errDatapath, fmt.Sprintf("eBPF datapath: %v", err), "")
}
