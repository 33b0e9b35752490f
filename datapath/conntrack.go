package datapath

import (
	"errors"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// ForgetFlows ends every translation of the container addresses ips, in
// O(len(ips)) whatever the size of the table: it bumps each address's
// generation (nat_gen, bpf/nat.h), which makes every flow of the container
// dead at once; the programs translate no reply of a dead flow (its
// address may go to the next container) and reclaim its pair as they meet
// it, and GC deletes what is left. It also removes the container's usage
// counter.
func (d *Datapath) ForgetFlows(ips []netip.Addr) error {
	gens, err := d.writableMap(program.BpfbridgeMapNatGen)
	if err != nil {
		return err
	}
	defer gens.Close()
	var (
		owners []uint32
		errs   []error
	)
	for _, ip := range ips {
		var owner program.BpfbridgeIpOwner
		if d.maps.ipOwners.Lookup(program.IPKeyOf(ip), &owner) == nil {
			owners = append(owners, owner.Ifindex)
		}
		key := program.NATGenKeyOf(ip)
		var gen uint32 // no entry: generation 0
		if err := gens.Lookup(&key, &gen); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, gens.Update(&key, gen+1, ebpf.UpdateAny))
	}
	return errors.Join(append(errs, d.uncount(nil, owners))...)
}

// SweepFlows removes translations that expired, are dead (their container's
// DEL came: ForgetFlows), or whose container address no endpoint on the
// node owns any more (its DEL never came). GC calls it.
func (d *Datapath) SweepFlows() error {
	deleted, err := d.sweepFlows(func(container netip.Addr) bool {
		var owner program.BpfbridgeIpOwner
		return d.maps.ipOwners.Lookup(program.IPKeyOf(container), &owner) != nil
	})
	return errors.Join(err, d.uncount(deleted, nil))
}

// generations reads container addresses' current generations (nat_gen),
// each once.
func (d *Datapath) generations() (genOf func(netip.Addr) uint8, closeFn func(), err error) {
	gens, err := d.pinnedMap(program.BpfbridgeMapNatGen)
	if err != nil {
		return nil, nil, err
	}
	cache := map[netip.Addr]uint8{}
	return func(a netip.Addr) uint8 {
		g, ok := cache[a]
		if !ok {
			var v uint32
			_ = gens.Lookup(program.NATGenKeyOf(a), &v) // no entry: 0
			g = uint8(v & uint32(program.BpfbridgeCtGenCT_GEN_MASK))
			cache[a] = g
		}
		return g
	}, func() { gens.Close() }, nil
}

// sweepFlows deletes the translations for whose container address drop
// returns true, and the expired and dead ones. nat_out is keyed by the container's
// original tuple, nat_in holds the container address in its value: each
// half is judged on its own, so orphaned halves go too. It returns how
// many live pairs (nat_out entries) it deleted per container address.
func (d *Datapath) sweepFlows(drop func(container netip.Addr) bool) (map[netip.Addr]int32, error) {
	var cfg program.BpfbridgeNatConfig
	if err := d.maps.natConfig.Lookup(uint32(0), &cfg); err != nil {
		return nil, err
	}
	now := monotonicNow()
	genOf, closeGens, err := d.generations()
	if err != nil {
		return nil, err
	}
	defer closeGens()
	var (
		errs    []error
		deleted = map[netip.Addr]int32{}
	)
	for _, half := range []struct {
		m         *ebpf.Map
		container func(*program.BpfbridgeNatTuple, *program.BpfbridgeNatEntry) netip.Addr
		counts    bool
	}{
		{d.maps.natOut, func(t *program.BpfbridgeNatTuple, _ *program.BpfbridgeNatEntry) netip.Addr { return t.Source().Addr() }, true},
		{d.maps.natIn, func(t *program.BpfbridgeNatTuple, e *program.BpfbridgeNatEntry) netip.Addr {
			return e.AddrPort(t.Family).Addr()
		}, false},
	} {
		var stale []program.BpfbridgeNatTuple
		dead := map[program.BpfbridgeNatTuple]bool{} // uncounted by their DEL already
		errs = append(errs, eachFlow(half.m, func(t *program.BpfbridgeNatTuple, e *program.BpfbridgeNatEntry) {
			container := half.container(t, e)
			isDead := e.Generation() != genOf(container)
			if expired(e, &cfg, now) || isDead || drop(container) {
				stale = append(stale, *t)
				if isDead {
					dead[*t] = true
				}
			}
		}))
		for _, k := range stale {
			err := half.m.Delete(&k)
			if err == nil && half.counts && !dead[k] {
				deleted[k.Source().Addr()]++
			}
			errs = append(errs, ignoreMissing(err))
		}
	}
	return deleted, errors.Join(errs...)
}

// flowBatch is how many entries eachFlow reads per system call.
const flowBatch = 4096

// eachFlow calls fn for every entry of nat_out or nat_in, reading them in
// batches (a full table is 262,144 entries: one lookup per entry would be
// as many system calls), or one by one where the kernel has no batch
// lookup.
func eachFlow(m *ebpf.Map, fn func(*program.BpfbridgeNatTuple, *program.BpfbridgeNatEntry)) error {
	keys := make([]program.BpfbridgeNatTuple, flowBatch)
	values := make([]program.BpfbridgeNatEntry, flowBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, values, nil)
		for i := range n {
			fn(&keys[i], &values[i])
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil // the end
		case errors.Is(err, ebpf.ErrNotSupported):
			var (
				k program.BpfbridgeNatTuple
				v program.BpfbridgeNatEntry
			)
			it := m.Iterate()
			for it.Next(&k, &v) {
				fn(&k, &v)
			}
			return it.Err()
		case err != nil:
			return err
		}
	}
}

// uncount takes deleted pairs (per container address, as sweepFlows
// returns them) off the usage counters of nat_usage (bpf/nat.h), and
// removes the counters of the endpoints reset.
func (d *Datapath) uncount(deleted map[netip.Addr]int32, reset []uint32) error {
	usage, err := d.writableMap(program.BpfbridgeMapNatUsage)
	if err != nil {
		return err
	}
	defer usage.Close()
	var errs []error
	sub := func(key uint32, n int32) {
		var u program.BpfbridgeNatUsage
		if usage.Lookup(key, &u) != nil {
			return
		}
		u.Pairs = max(u.Pairs-n, 0)
		errs = append(errs, usage.Update(key, &u, ebpf.UpdateExist))
	}
	for container, n := range deleted {
		var owner program.BpfbridgeIpOwner
		if d.maps.ipOwners.Lookup(program.IPKeyOf(container), &owner) != nil {
			continue // the node's own flows, or an endpoint gone: not counted
		}
		sub(owner.Ifindex, n)
		sub(uint32(program.BpfbridgeNatUsageKeyNAT_USAGE_TOTAL), n)
	}
	for _, ifindex := range reset {
		errs = append(errs, ignoreMissing(usage.Delete(ifindex)))
	}
	return errors.Join(errs...)
}

// indexFlows rebuilds the NAT ring and the usage counters (bpf/nat.h) from
// the translations in nat_out, for flows that came over from a layout
// without them: every pair in the ring once, every container's pairs
// counted.
func (d *Datapath) indexFlows() error {
	var ring, pos, usage *ebpf.Map
	for _, m := range []struct {
		name string
		dst  **ebpf.Map
	}{{program.BpfbridgeMapNatRing, &ring}, {program.BpfbridgeMapNatRingPos, &pos}, {program.BpfbridgeMapNatUsage, &usage}} {
		var err error
		if *m.dst, err = d.writableMap(m.name); err != nil {
			return err
		}
		defer (*m.dst).Close()
	}
	var (
		tuple  program.BpfbridgeNatTuple
		entry  program.BpfbridgeNatEntry
		slot   uint32
		counts = map[uint32]int32{}
		errs   []error
	)
	it := d.maps.natOut.Iterate()
	for it.Next(&tuple, &entry) && slot < ring.MaxEntries() {
		errs = append(errs, ring.Update(slot, &tuple, ebpf.UpdateAny))
		slot++
		var owner program.BpfbridgeIpOwner
		if d.maps.ipOwners.Lookup(program.IPKeyOf(tuple.Source().Addr()), &owner) == nil {
			counts[owner.Ifindex]++
			counts[uint32(program.BpfbridgeNatUsageKeyNAT_USAGE_TOTAL)]++
		}
	}
	errs = append(errs, it.Err(), pos.Update(uint32(0), &program.BpfbridgeNatRingPos{Head: uint64(slot)}, ebpf.UpdateAny))
	for ifindex, n := range counts {
		errs = append(errs, usage.Update(ifindex, &program.BpfbridgeNatUsage{Pairs: n}, ebpf.UpdateAny))
	}
	return errors.Join(errs...)
}

// writableMap opens one of this layout's pinned maps by name for writing,
// for the maps only masquerade's housekeeping touches.
func (d *Datapath) writableMap(name string) (*ebpf.Map, error) {
	return ebpf.LoadPinnedMap(filepath.Join(d.state.mapsDir(), name), nil)
}

// writeConfig writes v into the only slot of the pinned array map name: a
// setting the programs read.
func (d *Datapath) writeConfig(name string, v any) error {
	m, err := d.writableMap(name)
	if err != nil {
		return err
	}
	defer m.Close()
	return m.Update(uint32(0), v, ebpf.UpdateAny)
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
