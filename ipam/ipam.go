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
	return run(ipamType, args, hostlocal.Del, invoke.DelegateDel)
}

// Check verifies that the attachment's addresses are still allocated.
func Check(ipamType string, args *skel.CmdArgs) error {
	return run(ipamType, args, hostlocal.Check, invoke.DelegateCheck)
}

// GC releases allocations of attachments missing from the config's
// cni.dev/valid-attachments.
func GC(ipamType string, args *skel.CmdArgs) error {
	return run(ipamType, args, hostlocal.GC, invoke.DelegateGC)
}

// Status reports whether the IPAM plugin could serve an ADD.
func Status(ipamType string, args *skel.CmdArgs) error {
	return run(ipamType, args, hostlocal.Status, invoke.DelegateStatus)
}

// run serves a verb that returns no result: in process for host-local,
// through the delegate for any other type.
func run(ipamType string, args *skel.CmdArgs, local func(*skel.CmdArgs) error,
	delegate func(context.Context, string, []byte, invoke.Exec) error) error {
	if ipamType == HostLocal {
		return local(args)
	}
	return delegate(context.TODO(), ipamType, args.StdinData, nil)
}
