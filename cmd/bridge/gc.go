package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/bpfbridge/bpfbridge/ipam"
)

// cmdGC releases the state of every attachment of this network that is not
// in cni.dev/valid-attachments. Links need no collection: a veth disappears
// with its container's namespace.
func cmdGC(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.IPAM.Type == "" {
		return nil
	}
	return ipam.GC(conf.IPAM.Type, args)
}
