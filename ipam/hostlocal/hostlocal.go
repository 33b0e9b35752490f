// Package hostlocal is the host-local IPAM, run in-process by the bridge
// plugin and by cmd/host-local. It reads the reference host-local config
// (ipam.ranges, or the legacy ipam.subnet/rangeStart/rangeEnd/gateway,
// ipam.routes, ipam.dataDir, ipam.resolvConf; static requests in CNI_ARGS
// IP, args.cni.ips and runtimeConfig.ips; runtimeConfig.ipRanges) and keeps
// its allocations in the reference's on-disk layout (package store), so both
// plugins can serve one network.
//
// Every verb returns a *types.Error. Besides the spec's codes (3 missing
// container ID; 4 invalid CNI_ARGS, container ID or ifname; 5 store I/O;
// 6 undecodable config; 7 invalid config; 11 an address taken behind the
// lock's back) it uses:
//
//   - 50 ErrNotAvailable: STATUS found a range set full or the store unusable;
//   - 100 ErrAddressExhausted: a range set has no free address;
//   - 101 ErrDuplicateAllocation: the attachment already holds an address;
//   - 102 ErrAddressInUse: a requested address belongs to someone else;
//   - 103 ErrAddressNotReserved: CHECK found an address no longer reserved.
package hostlocal

import (
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/bpfbridge/bpfbridge/ipam/store"
)

// Add allocates one address per range set for the attachment and returns
// them with the configured routes and the DNS of ipam.resolvConf. The
// interfaces of the addresses are left for the calling plugin to set.
func Add(args *skel.CmdArgs) (*current.Result, error) {
	c, att, err := load(args)
	if err != nil {
		return nil, err
	}
	requested, err := c.assign()
	if err != nil {
		return nil, err
	}
	result := &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: c.routes}
	if c.resolvConf != "" {
		if result.DNS, err = parseResolvConf(c.resolvConf); err != nil {
			return nil, newError(types.ErrIOFailure, "ipam.resolvConf %q: %v", c.resolvConf, err)
		}
	}
	var allocs []allocation
	if err := locked(c, func(st *store.Store) (err error) {
		allocs, err = allocate(st, c, att, requested)
		return err
	}); err != nil {
		return nil, err
	}
	for _, a := range allocs {
		result.IPs = append(result.IPs, &current.IPConfig{
			Address: net.IPNet{IP: a.ip.AsSlice(), Mask: net.CIDRMask(a.where.subnet.Bits(), a.ip.BitLen())},
			Gateway: a.where.gateway.AsSlice(),
		})
	}
	return result, nil
}

// Del releases every address of the attachment. Releasing nothing is not an
// error, so DEL may be repeated.
func Del(args *skel.CmdArgs) error {
	c, att, err := load(args)
	if err != nil {
		return err
	}
	return locked(c, func(st *store.Store) error {
		if _, err := st.Release(att); err != nil {
			return newError(types.ErrIOFailure, "network %s: releasing container %s ifname %s: %v", c.name, att.ContainerID, att.IfName, err)
		}
		return nil
	})
}

// Check verifies that every address of prevResult in the network's ranges,
// and some address in each range set, is still reserved for the attachment.
func Check(args *skel.CmdArgs) error {
	c, att, err := load(args)
	if err != nil {
		return err
	}
	prev, err := c.parsePrevResult()
	if err != nil {
		return err
	}
	var addrs []netip.Addr
	if err := locked(c, func(st *store.Store) (err error) {
		if addrs, err = st.Held(att); err != nil {
			return newError(types.ErrIOFailure, "network %s: reading store: %v", c.name, err)
		}
		return nil
	}); err != nil {
		return err
	}
	held := map[netip.Addr]bool{}
	for _, ip := range addrs {
		held[ip] = true
	}
	if prev != nil {
		for _, ipc := range prev.IPs {
			ip, _ := netip.AddrFromSlice(ipc.Address.IP)
			ip = ip.Unmap()
			// Addresses from other IPAM ranges are not ours to check.
			if c.setOf(ip) >= 0 && !held[ip] {
				return newError(ErrAddressNotReserved, "%s is not reserved for container %s ifname %s on network %s",
					ip, att.ContainerID, att.IfName, c.name)
			}
		}
	}
	for i := range c.sets {
		if !holdsIn(&c.sets[i], addrs) {
			return newError(ErrAddressNotReserved, "no address in %s (%s) is reserved for container %s ifname %s on network %s",
				c.sets[i].key, c.sets[i].subnets(), att.ContainerID, att.IfName, c.name)
		}
	}
	return nil
}

func holdsIn(set *rangeSet, addrs []netip.Addr) bool {
	for _, ip := range addrs {
		if set.find(ip) != nil {
			return true
		}
	}
	return false
}

// GC releases every allocation of the network whose attachment is not in
// cni.dev/valid-attachments.
func GC(args *skel.CmdArgs) error {
	c, err := loadConfig(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	return locked(c, func(st *store.Store) error {
		if _, err := st.GC(c.valid); err != nil {
			return newError(types.ErrIOFailure, "network %s: garbage collection: %v", c.name, err)
		}
		return nil
	})
}

// Status succeeds when an ADD could be served: the store is usable and no
// range set is full.
func Status(args *skel.CmdArgs) error {
	c, err := loadConfig(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	st, err := store.Lock(c.dataDir, c.name)
	if err != nil {
		return newError(ErrNotAvailable, "network %s: store in %s is unusable: %v", c.name, c.dataDir, err)
	}
	defer st.Unlock()
	allocated, err := st.Addresses()
	if err != nil {
		return newError(ErrNotAvailable, "network %s: store in %s is unreadable: %v", c.name, c.dataDir, err)
	}
	for i := range c.sets {
		if c.sets[i].full(allocated) {
			return newError(ErrNotAvailable, "network %s: %s (%s) is full: every address is allocated",
				c.name, c.sets[i].key, c.sets[i].subnets())
		}
	}
	return nil
}

// load reads the config and the attachment of a per-attachment verb.
func load(args *skel.CmdArgs) (*config, store.Attachment, error) {
	att := store.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	c, err := loadConfig(args.StdinData, args.Args)
	if err != nil {
		return nil, att, err
	}
	// skel validates these for a binary; in-process callers may not have,
	// and both end up in file contents and index names.
	if e := utils.ValidateContainerID(att.ContainerID); e != nil {
		return nil, att, newError(e.Code, "CNI_CONTAINERID %q: %s", att.ContainerID, e.Msg)
	}
	if e := utils.ValidateInterfaceName(att.IfName); e != nil {
		return nil, att, newError(e.Code, "CNI_IFNAME %q: %s", att.IfName, e.Msg)
	}
	return c, att, nil
}

// locked runs fn with the network's store locked, and unlocks it.
func locked(c *config, fn func(st *store.Store) error) error {
	st, err := store.Lock(c.dataDir, c.name)
	if err != nil {
		return newError(types.ErrIOFailure, "network %s: locking store in %s: %v", c.name, c.dataDir, err)
	}
	defer st.Unlock()
	return fn(st)
}

// parsePrevResult converts the config's prevResult, if any, to a current
// result.
func (c *config) parsePrevResult() (*current.Result, error) {
	if c.prevResult == nil {
		return nil, nil
	}
	pc := types.PluginConf{CNIVersion: c.cniVersion, RawPrevResult: c.prevResult}
	if err := version.ParsePrevResult(&pc); err != nil {
		return nil, newError(types.ErrDecodingFailure, "prevResult: %v", err)
	}
	prev, err := current.NewResultFromResult(pc.PrevResult)
	if err != nil {
		return nil, newError(types.ErrDecodingFailure, "prevResult: %v", err)
	}
	return prev, nil
}
