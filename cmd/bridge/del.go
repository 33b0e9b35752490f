package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/bpfbridge/bpfbridge/datapath/topology"
	"github.com/bpfbridge/bpfbridge/ipam"
)

// cmdDel detaches a container. It is idempotent and best effort: the
// container's namespace or interface may already be gone, and after a node
// reboot CNI_NETNS is empty, yet the addresses must still be released.
func cmdDel(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	if args.Netns != "" {
		err := ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
			return topology.DeleteLink(args.IfName)
		})
		if err != nil && !netnsGone(err) {
			return err
		}
	}
	if err := detachDatapath(conf, args); err != nil {
		return err
	}
	// Release the addresses only after the interface holding them is gone,
	// so they are never handed to a new container while still in use.
	if conf.IPAM.Type != "" {
		return ipam.Del(conf.IPAM.Type, args)
	}
	return nil
}

// netnsGone reports whether err says the network namespace no longer exists
// (deleted, or its bind mount already removed).
func netnsGone(err error) bool {
	switch err.(type) {
	case ns.NSPathNotExistErr, ns.NSPathNotNSErr:
		return true
	}
	return false
}
