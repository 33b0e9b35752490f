package datapath

import (
	"errors"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// ForgetFlows removes every translation of the container addresses ips,
// both halves, and every expired translation it passes on the way (DEL
// scans the tables anyway). A container's flows must not outlive it: its
// address may go to the next container.
func (d *Datapath) ForgetFlows(ips []netip.Addr) error {
	mine := map[netip.Addr]bool{}
	for _, ip := range ips {
		mine[ip.Unmap()] = true
	}
	return d.sweepFlows(func(container netip.Addr) bool { return mine[container] })
}

// SweepFlows removes translations that expired, or whose container address
// no endpoint on the node owns any more (its DEL never came). GC calls it.
func (d *Datapath) SweepFlows() error {
	return d.sweepFlows(func(container netip.Addr) bool {
		var owner program.BpfbridgeIpOwner
		return d.maps.ipOwners.Lookup(program.IPKeyOf(container), &owner) != nil
	})
}

// sweepFlows deletes the translations for whose container address drop
// returns true, and the expired ones. nat_out is keyed by the container's
// original tuple, nat_in holds the container address in its value: each
// half is judged on its own, so orphaned halves go too.
func (d *Datapath) sweepFlows(drop func(container netip.Addr) bool) error {
	var cfg program.BpfbridgeNatConfig
	if err := d.maps.natConfig.Lookup(uint32(0), &cfg); err != nil {
		return err
	}
	now := monotonicNow()
	var (
		tuple program.BpfbridgeNatTuple
		entry program.BpfbridgeNatEntry
		errs  []error
	)
	for _, half := range []struct {
		m         *ebpf.Map
		container func() netip.Addr
	}{
		{d.maps.natOut, func() netip.Addr { return tuple.Source().Addr() }},
		{d.maps.natIn, func() netip.Addr { return entry.AddrPort(tuple.Family).Addr() }},
	} {
		var stale []program.BpfbridgeNatTuple
		it := half.m.Iterate()
		for it.Next(&tuple, &entry) {
			if expired(&entry, &cfg, now) || drop(half.container()) {
				stale = append(stale, tuple)
			}
		}
		errs = append(errs, it.Err())
		for _, k := range stale {
			errs = append(errs, ignoreMissing(half.m.Delete(&k)))
		}
	}
	return errors.Join(errs...)
}

// expired tells whether an entry outlived its state's timeout, as
// ct_expired in bpf/conntrack.h decides it.
func expired(e *program.BpfbridgeNatEntry, cfg *program.BpfbridgeNatConfig, now uint64) bool {
	return e.LastSeenNs+uint64(ctTimeout(cfg, program.BpfbridgeCtState(e.State))) < now
}

// ctTimeout is how long a flow in state may idle: ct_timeout_ns in
// bpf/conntrack.h. A zero field of cfg means the state's default; a state
// this build does not know (written by a newer program) gets the ICMP
// timeout, the shortest sensible lifetime.
func ctTimeout(cfg *program.BpfbridgeNatConfig, state program.BpfbridgeCtState) time.Duration {
	orDefault := func(configured uint32, def program.BpfbridgeCtTimeoutDefault) time.Duration {
		if configured == 0 {
			configured = uint32(def)
		}
		return time.Duration(configured) * time.Second
	}
	switch state {
	case program.BpfbridgeCtStateCT_SYN_SENT:
		return orDefault(cfg.TimeoutTcpSynS, program.BpfbridgeCtTimeoutDefaultCT_TIMEOUT_TCP_SYN_DEFAULT_S)
	case program.BpfbridgeCtStateCT_ESTABLISHED:
		return orDefault(cfg.TimeoutTcpS, program.BpfbridgeCtTimeoutDefaultCT_TIMEOUT_TCP_DEFAULT_S)
	case program.BpfbridgeCtStateCT_CLOSING:
		return orDefault(cfg.TimeoutTcpClosingS, program.BpfbridgeCtTimeoutDefaultCT_TIMEOUT_TCP_CLOSING_DEFAULT_S)
	case program.BpfbridgeCtStateCT_UDP:
		return orDefault(cfg.TimeoutUdpS, program.BpfbridgeCtTimeoutDefaultCT_TIMEOUT_UDP_DEFAULT_S)
	default:
		return orDefault(cfg.TimeoutIcmpS, program.BpfbridgeCtTimeoutDefaultCT_TIMEOUT_ICMP_DEFAULT_S)
	}
}
