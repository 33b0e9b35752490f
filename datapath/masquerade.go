package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// Masquerade is a network's source NAT: traffic from its containers to
// destinations outside its subnets and the exclusions leaves the node's
// uplinks with the uplink's address, translated by the uplink programs.
type Masquerade struct {
	Network string
	// Subnets are the network's own subnets, never masqueraded.
	Subnets []netip.Prefix
	// Exclude lists more destinations that are never masqueraded.
	Exclude []netip.Prefix
	// Uplinks names the uplinks; empty means the interfaces of the node's
	// default routes (see findUplinks).
	Uplinks []string
	// Address chooses, per family, the source address among the uplinks'
	// addresses; empty means each uplink's primary address.
	Address []netip.Addr
	// PortMin and PortMax bound the translated source ports (node-wide).
	PortMin, PortMax uint16
	// FlowsPerContainer is each container's guaranteed share of the NAT
	// table (node-wide); 0 is DefaultNATFlowsPerContainer.
	FlowsPerContainer uint32
	Timeouts          NATTimeouts
}

// NATTimeouts are how long idle translations live, per state (node-wide).
type NATTimeouts struct {
	TCP, TCPSyn, TCPClosing, UDP, ICMP time.Duration
}

// Defaults of the masquerade options: enum nat_port_default in bpf/nat.h,
// every unprivileged port. Nothing is reserved in the node's sysctls: the
// uplink programs track the node's own flows from the uplink address in the
// same table as the containers', so a translation never takes a tuple the
// node uses, nor the node one a translation uses.
const (
	DefaultNATPortMin = uint16(program.BpfbridgeNatPortDefaultNAT_PORT_MIN_DEFAULT)
	DefaultNATPortMax = uint16(program.BpfbridgeNatPortDefaultNAT_PORT_MAX_DEFAULT)
)

// The per-container budget (enum nat_quota_default in bpf/nat.h): each
// container is guaranteed DefaultNATFlowsPerContainer translations, and may
// use more while the table holds fewer than MaxNATFlowsPerContainer, which
// also bounds the guaranteed share.
const (
	DefaultNATFlowsPerContainer = int(program.BpfbridgeNatQuotaDefaultNAT_QUOTA_GUARANTEED_DEFAULT)
	MaxNATFlowsPerContainer     = int(program.BpfbridgeNatQuotaDefaultNAT_QUOTA_SHARED_DEFAULT)
)

// MaxNATExcludes is how many exclusions (a network's subnets included) the
// node's nat_exclude map holds, for all masquerading networks together.
const MaxNATExcludes = int(program.BpfbridgeNatLimitsNAT_MAX_EXCLUDES)

// DefaultNATTimeouts are the programs' defaults (enum ct_timeout_default in
// bpf/conntrack.h), which follow the kernel's conntrack defaults, rounded.
var DefaultNATTimeouts = func() NATTimeouts {
	none := &program.BpfbridgeNatConfig{}
	return NATTimeouts{
		TCP:        ctTimeout(none, program.BpfbridgeCtStateCT_ESTABLISHED),
		TCPSyn:     ctTimeout(none, program.BpfbridgeCtStateCT_SYN_SENT),
		TCPClosing: ctTimeout(none, program.BpfbridgeCtStateCT_CLOSING),
		UDP:        ctTimeout(none, program.BpfbridgeCtStateCT_UDP),
		ICMP:       ctTimeout(none, program.BpfbridgeCtStateCT_ICMP),
	}
}()

// uplinkHooks: the uplink's egress translates containers' packets, its
// ingress translates replies (and ICMP errors about them) back.
var uplinkHooks = []hook{
	{"uplink-egress", ebpf.AttachTCXEgress, netlink.HANDLE_MIN_EGRESS, "bpfbridge_snat",
		func(p *program.BpfbridgePrograms) *ebpf.Program { return p.UplinkEgress }},
	{"uplink-ingress", ebpf.AttachTCXIngress, netlink.HANDLE_MIN_INGRESS, "bpfbridge_rnat",
		func(p *program.BpfbridgePrograms) *ebpf.Program { return p.UplinkIngress }},
}

// EnableMasquerade makes m's network masqueraded on every uplink: the
// uplinks' programs and addresses, the network's flag and exclusions, the
// node's port range and timeouts. ADD calls it for every attachment of a
// masquerading network, which also re-checks the uplinks as the node's
// routes and addresses change. Every step is idempotent.
func (d *Datapath) EnableMasquerade(m Masquerade) error {
	uplinks, err := findUplinks(uplinkQuery{names: m.Uplinks, sources: m.Subnets, addresses: m.Address})
	if err != nil {
		return err
	}
	for _, u := range uplinks {
		var v program.BpfbridgeNatUplink
		v.SetAddrs(u.ipv4, u.ipv6)
		if err := d.maps.natUplinks.Update(uint32(u.index), &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("record uplink %s: %w", u.name, err)
		}
		if err := d.attachUplink(u.index); err != nil {
			return fmt.Errorf("uplink %s: %w", u.name, err)
		}
	}
	network, err := d.networkID(m.Network)
	if err != nil {
		return err
	}
	for _, p := range slices.Concat(m.Subnets, m.Exclude) {
		if err := d.maps.natExclude.Update(program.NATExcludeKeyOf(network, p), uint8(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("exclude %s from masquerade: %w", p, err)
		}
	}
	cfg := m.config()
	if err := d.maps.natConfig.Update(uint32(0), &cfg, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write masquerade config: %w", err)
	}
	if err := d.writeQuota(m.FlowsPerContainer); err != nil {
		return err
	}
	flags := program.BpfbridgeNatNetwork{Flags: uint32(program.BpfbridgeNatNetworkFlagsNAT_F_MASQUERADE)}
	return d.maps.natNetworks.Update(network, &flags, ebpf.UpdateAny)
}

// config is the nat_config value of m: its options, defaults filled in.
func (m Masquerade) config() program.BpfbridgeNatConfig {
	cfg := program.BpfbridgeNatConfig{PortMin: m.PortMin, PortMax: m.PortMax}
	if cfg.PortMin == 0 || cfg.PortMax == 0 {
		cfg.PortMin, cfg.PortMax = DefaultNATPortMin, DefaultNATPortMax
	}
	t := m.Timeouts
	seconds := func(d, def time.Duration) uint32 {
		if d <= 0 {
			d = def
		}
		return uint32(max(d/time.Second, 1))
	}
	def := DefaultNATTimeouts
	cfg.TimeoutTcpS = seconds(t.TCP, def.TCP)
	cfg.TimeoutTcpSynS = seconds(t.TCPSyn, def.TCPSyn)
	cfg.TimeoutTcpClosingS = seconds(t.TCPClosing, def.TCPClosing)
	cfg.TimeoutUdpS = seconds(t.UDP, def.UDP)
	cfg.TimeoutIcmpS = seconds(t.ICMP, def.ICMP)
	return cfg
}

// attachUplink attaches the uplink programs to ifindex unless this build's
// are already there. Uplinks use cls_bpf filters in every attach mode: they
// are attached once per node, not on the ADD path, and a filter replace
// upgrades them atomically.
func (d *Datapath) attachUplink(ifindex int) error {
	if err := d.loadUplinkPrograms(); err != nil {
		return err
	}
	if d.uplinkAttached(ifindex) {
		return nil
	}
	// Concurrent ADDs of a node's first masquerading networks all find the
	// uplink bare: one attaches, under the state lock, and the others find
	// it done (two replacing the clsact qdisc and its filters at once fail
	// with EINVAL).
	unlock, err := d.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if d.uplinkAttached(ifindex) {
		return nil
	}
	return d.attachLegacy(ifindex, uplinkHooks)
}

// uplinkAttached reports whether this build's uplink programs are attached
// to ifindex in both directions.
func (d *Datapath) uplinkAttached(ifindex int) bool {
	for _, h := range uplinkHooks {
		want, err := programID(h.prog(d.progs))
		if err != nil {
			return false
		}
		have, err := legacyProgramIDs(ifindex, h)
		if err != nil || !slices.Contains(have, want) {
			return false
		}
	}
	return true
}

// upgradeUplinks moves the masquerading uplinks onto this build's programs.
// An uplink may have none yet: an ADD killed between recording its uplink
// and attaching to it leaves it bare, so the qdisc is made sure of too (a
// no-op where it exists; the filters are replaced atomically).
func (d *Datapath) upgradeUplinks() error {
	var (
		ifindex uint32
		errs    []error
	)
	it := d.maps.natUplinks.Iterate()
	var v program.BpfbridgeNatUplink
	for it.Next(&ifindex, &v) {
		if _, err := netlink.LinkByIndex(int(ifindex)); err != nil {
			continue // gone; EnableMasquerade re-checks the uplinks
		}
		if err := d.loadUplinkPrograms(); err != nil {
			return err
		}
		errs = append(errs, d.attachLegacy(int(ifindex), uplinkHooks))
	}
	return errors.Join(append(errs, it.Err())...)
}

// monotonicNow is the time of bpf_ktime_get_ns: CLOCK_MONOTONIC.
func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// ReleaseMasquerade removes network's masquerade state, its flag and its
// exclusions (nat_exclude is keyed by network, so each network's entries
// are its own), once no endpoint of the network but the attachment
// (containerID, ifname) going away is left on the node. DEL calls it, and
// a failed ADD when undoing: the last endpoint of a network takes the
// network's entries with it. Idempotent.
func (d *Datapath) ReleaseMasquerade(network, containerID, ifname string) error {
	id, ok := d.lookupNetworkID(network)
	if !ok {
		return nil
	}
	var (
		key  program.BpfbridgeEndpointKey
		meta program.BpfbridgeEndpointMeta
	)
	it := d.maps.meta.Iterate()
	for it.Next(&key, &meta) {
		leaving := program.CString(meta.ContainerId[:]) == containerID && program.CString(meta.Ifname[:]) == ifname
		if meta.Ep.Network == id && !leaving {
			return nil // still in use
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	var (
		ex    program.BpfbridgeNatExcludeKey
		one   uint8
		stale []program.BpfbridgeNatExcludeKey
	)
	ei := d.maps.natExclude.Iterate()
	for ei.Next(&ex, &one) {
		if ex.Network == id {
			stale = append(stale, ex)
		}
	}
	errs := []error{ei.Err()}
	for _, k := range stale {
		errs = append(errs, ignoreMissing(d.maps.natExclude.Delete(&k)))
	}
	errs = append(errs, ignoreMissing(d.maps.natNetworks.Delete(id)))
	return errors.Join(errs...)
}

// writeQuota writes the per-container guaranteed share into nat_quota (0:
// the programs' default); the shared pool keeps its default.
func (d *Datapath) writeQuota(guaranteed uint32) error {
	if err := d.writeConfig(program.BpfbridgeMapNatQuota, &program.BpfbridgeNatQuota{Guaranteed: guaranteed}); err != nil {
		return fmt.Errorf("write masquerade budget: %w", err)
	}
	return nil
}
