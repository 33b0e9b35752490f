package main

import (
	"errors"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

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
func cmdDel(args *skel.CmdArgs) (err error) {
	tr := trace.Start("DEL")
	defer func() { tr.Finish(err) }()
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	tr.Enable(conf.Trace)
	tr.Mark("config")
	var errs []error
	if args.Netns != "" {
		err := ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
			return topology.DeleteLink(args.IfName)
		})
		if !alreadyGone(err) {
			errs = append(errs, err)
		}
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

// alreadyGone reports whether err, from removing the container's interface,
// says there is nothing left to remove: the namespace was deleted (or its
// bind mount removed), or the link vanished before or while it was deleted.
func alreadyGone(err error) bool {
	switch err.(type) {
	case nil, ns.NSPathNotExistErr, ns.NSPathNotNSErr:
		return true
	}
	return errors.As(err, new(netlink.LinkNotFoundError)) ||
		errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
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
