package main

import (
	"errors"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/datapath/topology"
	"github.com/bpfbridge/bpfbridge/datapath/trace"
	"github.com/bpfbridge/bpfbridge/ipam"
)

// cmdDel detaches a container. It is idempotent and best effort: the
// container's namespace or interface may already be gone, or go while DEL
// runs (a runtime deletes namespaces in parallel with DELs), and after a node
// reboot CNI_NETNS is empty, yet the addresses must still be released. So
// every step runs whatever the steps before it answered, "already gone"
// counts as done, and DEL fails only for something still present that a step
// could not remove; the runtime then retries it.
func cmdDel(conf *NetConf, args *skel.CmdArgs, tr *trace.Tracer) error {
	tr.Mark("config")
	var errs []error
	if args.Netns != "" {
		errs = append(errs, topology.DeleteContainerLink(args.Netns, args.IfName))
		tr.Mark("veth")
	}
	// The interface goes first and the addresses last, so that a DEL that
	// succeeds never hands them to a new container while the old one may
	// still use them.
	detachErr := detachDatapath(conf, args)
	errs = append(errs, datapathError(detachErr))
	tr.Mark("datapath")
	// An endpoint whose veth could not be deleted still holds its
	// addresses: releasing them would give them to a second container.
	if conf.IPAM.Type != "" && !errors.Is(detachErr, datapath.ErrVethInUse) {
		errs = append(errs, ipam.Del(conf.IPAM.Type, args))
		tr.Mark("ipam")
	}
	return joinDelErrors(errs)
}

// joinDelErrors reports the failed steps of a DEL as one CNI error, with the
// code of the first step that has one.
func joinDelErrors(errs []error) error {
	var failed []error
	for _, err := range errs {
		if err != nil {
			failed = append(failed, err)
		}
	}
	switch len(failed) {
	case 0:
		return nil
	case 1:
		return failed[0]
	}
	code := uint(types.ErrInternal)
	msgs := make([]string, len(failed))
	for i, err := range failed {
		var cniErr *types.Error
		if errors.As(err, &cniErr) && code == types.ErrInternal {
			code = cniErr.Code
		}
		msgs[i] = err.Error()
	}
	return types.NewError(code, strings.Join(msgs, "; "), "")
}
