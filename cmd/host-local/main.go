// Command host-local is the standalone host-local IPAM plugin, a drop-in
// replacement for the reference one that shares its on-disk store; the work
// is done by package hostlocal, which the bridge plugin runs in-process.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/types/create"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/bpfbridge/bpfbridge/ipam/hostlocal"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cmdAdd,
		Del:    hostlocal.Del,
		Check:  hostlocal.Check,
		GC:     hostlocal.GC,
		Status: hostlocal.Status,
	}, version.All, "bpfbridge host-local")
}

// cmdAdd prints the result in the config's cniVersion, 0.1.0 when the key is
// missing or empty (libcni passes "" for configs without one).
func cmdAdd(args *skel.CmdArgs) error {
	result, err := hostlocal.Add(args)
	if err != nil {
		return err
	}
	cniVersion, err := create.DecodeVersion(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	return types.PrintResult(result, cniVersion)
}
