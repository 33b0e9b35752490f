package datapath

import (
	"errors"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// Translation states of nat_entry.state; mirror CT_* in bpf/nat.h.
const (
	ctSynSent     = 1
	ctEstablished = 2
	ctClosing     = 3
	ctUDP         = 4
	ctICMP        = 5
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

// expired tells whether an entry outlived its state's timeout.
func expired(e *program.BpfbridgeNatEntry, cfg *program.BpfbridgeNatConfig, now uint64) bool {
	return e.LastSeenNs+uint64(time.Duration(timeouts(cfg)[e.State])*time.Second) < now
}

// timeouts maps a translation state to its timeout in seconds.
func timeouts(cfg *program.BpfbridgeNatConfig) map[uint8]uint32 {
	return map[uint8]uint32{
		ctSynSent:     cfg.TimeoutTcpSynS,
		ctEstablished: cfg.TimeoutTcpS,
		ctClosing:     cfg.TimeoutTcpClosingS,
		ctUDP:         cfg.TimeoutUdpS,
		ctICMP:        cfg.TimeoutIcmpS,
	}
}
