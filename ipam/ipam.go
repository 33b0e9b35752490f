// Package ipam runs the IPAM plugin named in a network config for the
// bridge plugin: host-local in this process (package hostlocal), any other
// type by executing it from CNI_PATH as the reference bridge does.
//
// Delegated plugins read CNI_CONTAINERID, CNI_IFNAME, CNI_ARGS and the other
// variables from this process's environment; only CNI_COMMAND is set per
// call.
package ipam

import (
	"context"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/bpfbridge/bpfbridge/ipam/hostlocal"
)

// HostLocal is the ipam type served in-process.
const HostLocal = "host-local"

// Add allocates addresses for the attachment described by args.
func Add(ipamType string, args *skel.CmdArgs) (*current.Result, error) {
	if ipamType == HostLocal {
		return hostlocal.Add(args)
	}
	r, err := invoke.DelegateAdd(context.TODO(), ipamType, args.StdinData, nil)
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(r)
}

// Del releases the addresses of the attachment described by args.
func Del(ipamType string, args *skel.CmdArgs) error {
	if ipamType == HostLocal {
		return hostlocal.Del(args)
	}
	return invoke.DelegateDel(context.TODO(), ipamType, args.StdinData, nil)
}

// Check verifies that the attachment's addresses are still allocated.
func Check(ipamType string, args *skel.CmdArgs) error {
	if ipamType == HostLocal {
		return hostlocal.Check(args)
	}
	return invoke.DelegateCheck(context.TODO(), ipamType, args.StdinData, nil)
}

// GC releases allocations of attachments missing from the config's
// cni.dev/valid-attachments.
func GC(ipamType string, args *skel.CmdArgs) error {
	if ipamType == HostLocal {
		return hostlocal.GC(args)
	}
	return invoke.DelegateGC(context.TODO(), ipamType, args.StdinData, nil)
}

// Status reports whether the IPAM plugin could serve an ADD.
func Status(ipamType string, args *skel.CmdArgs) error {
	if ipamType == HostLocal {
		return hostlocal.Status(args)
	}
	return invoke.DelegateStatus(context.TODO(), ipamType, args.StdinData, nil)
}
