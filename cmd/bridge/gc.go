package main

import (
	"errors"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/ipam"
)

// cmdGC releases the state of every attachment of this network that is not
// in cni.dev/valid-attachments: datapath entries, masquerade translations
// (and expired ones), the network's masquerade state once no endpoint is
// left, and addresses. Links need
// no collection: a veth disappears with its container's namespace.
func cmdGC(conf *NetConf, args *skel.CmdArgs) error {
	valid := make(map[datapath.EndpointKey]bool, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid[datapath.KeyOf(a.ContainerID, a.IfName)] = true
	}
	dp, err := datapath.OpenExisting(conf.datapathOptions())
	switch {
	case errors.Is(err, datapath.ErrNoState):
	case err != nil:
		return datapathError(err)
	default:
		err = dp.GC(conf.Name, valid)
		if err == nil && conf.IPMasq {
			err = errors.Join(dp.SweepFlows(), dp.ReleaseMasquerade(conf.Name, "", ""))
		}
		dp.Close()
		if err != nil {
			return datapathError(err)
		}
	}
	if conf.IPAM.Type == "" {
		return nil
	}
	return ipam.GC(conf.IPAM.Type, args)
}
