package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/bpfbridge/bpfbridge/ipam"
)

// cmdStatus reports whether the network can serve an ADD now; the IPAM
// answers for its address pool and store.
func cmdStatus(conf *NetConf, args *skel.CmdArgs) error {
	if conf.IPAM.Type == "" {
		return nil
	}
	return ipam.Status(conf.IPAM.Type, args)
}
