package hostlocal

import (
	"errors"
	"io/fs"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/bpfbridge/bpfbridge/ipam/store"
)

// allocation is one reserved address and the range it came from.
type allocation struct {
	ip    netip.Addr
	where *ipRange
}

// allocate reserves one address per range set for att in the locked store:
// requested[i] if valid, else the next free address of set i in round-robin
// order. Nothing is written unless every set succeeds.
func allocate(st *store.Store, c *config, att store.Attachment, requested []netip.Addr) ([]allocation, error) {
	prior := st.Indexed(att)
	for _, ip := range prior {
		if c.setOf(ip) >= 0 {
			return nil, newError(ErrDuplicateAllocation, "container %s ifname %s already holds %s on network %s",
				att.ContainerID, att.IfName, ip, c.name)
		}
	}
	allocs := make([]allocation, len(c.sets))
	rs := make([]store.Reservation, len(c.sets))
	for i := range c.sets {
		set := &c.sets[i]
		var err error
		if requested[i].IsValid() {
			allocs[i], err = takeRequested(st, set, requested[i])
		} else {
			allocs[i], err = takeNext(st, set, i)
		}
		if err != nil {
			return nil, err
		}
		rs[i] = store.Reservation{IP: allocs[i].ip, RangeSet: i}
	}
	if err := st.Reserve(att, rs, prior); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Only a writer ignoring the lock can get here; retrying picks
			// another address.
			return nil, newError(types.ErrTryAgainLater, "network %s: an address was taken concurrently: %v", c.name, err)
		}
		return nil, newError(types.ErrIOFailure, "network %s: reserving addresses: %v", c.name, err)
	}
	return allocs, nil
}

func takeRequested(st *store.Store, set *rangeSet, ip netip.Addr) (allocation, error) {
	free, err := st.Free(ip)
	if err != nil {
		return allocation{}, newError(types.ErrIOFailure, "%s: checking requested address %s: %v", set.key, ip, err)
	}
	if !free {
		return allocation{}, newError(ErrAddressInUse, "requested address %s in %s (%s) is already allocated", ip, set.key, set.subnets())
	}
	return allocation{ip: ip, where: set.find(ip)}, nil
}

func takeNext(st *store.Store, set *rangeSet, index int) (allocation, error) {
	for ip, r := range set.candidates(st.LastReserved(index)) {
		free, err := st.Free(ip)
		if err != nil {
			return allocation{}, newError(types.ErrIOFailure, "%s: checking address %s: %v", set.key, ip, err)
		}
		if free {
			return allocation{ip: ip, where: r}, nil
		}
	}
	return allocation{}, newError(ErrAddressExhausted, "no free address in %s (%s)", set.key, set.subnets())
}
