package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
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
	// Uplinks names the uplinks; empty means the interfaces the node's
	// routes to non-local destinations use.
	Uplinks []string
	// PortMin and PortMax bound the translated source ports (node-wide).
	PortMin, PortMax uint16
	Timeouts         NATTimeouts
}

// NATTimeouts are how long idle translations live, per state (node-wide).
type NATTimeouts struct {
	TCP, TCPSyn, TCPClosing, UDP, ICMP time.Duration
}

// Defaults of the masquerade options: enum nat_port_default in bpf/nat.h.
// The port range lies above Linux's ephemeral range (32768-60999) and is
// reserved with net.ipv4.ip_local_reserved_ports, so the node's own
// connections never pick a port a translation uses.
const (
	DefaultNATPortMin = uint16(program.BpfbridgeNatPortDefaultNAT_PORT_MIN_DEFAULT)
	DefaultNATPortMax = uint16(program.BpfbridgeNatPortDefaultNAT_PORT_MAX_DEFAULT)
)

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

// uplink is an interface masqueraded traffic leaves by, with the addresses
// the kernel uses as source on it.
type uplink struct {
	index      int
	name       string
	ipv4, ipv6 netip.Addr
}

// EnableMasquerade makes m's network masqueraded on every uplink: the
// uplinks' programs and addresses, the network's flag and exclusions, the
// node's port range and timeouts. ADD calls it for every attachment of a
// masquerading network, which also re-checks the uplinks as the node's
// routes and addresses change. Every step is idempotent.
func (d *Datapath) EnableMasquerade(m Masquerade) error {
	uplinks, err := findUplinks(m.Uplinks)
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
	if err := reservePorts(cfg.PortMin, cfg.PortMax); err != nil {
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

// findUplinks returns the uplinks named in override, or else the
// interfaces of the node's routes to non-local destinations, each with the
// source address the kernel picks on it. It asks the kernel's FIB for a
// route to a documentation address per family: a lookup, no traffic. A node
// without such a route has no uplink (yet): nothing leaves it to be
// masqueraded, and the next ADD of a masquerading network looks again.
func findUplinks(override []string) ([]uplink, error) {
	probes := []net.IP{net.ParseIP("192.0.2.1"), net.ParseIP("2001:db8::1")}
	byIndex := map[int]*uplink{}
	var order []int
	add := func(index int, src net.IP) {
		u, ok := byIndex[index]
		if !ok {
			u = &uplink{index: index}
			byIndex[index] = u
			order = append(order, index)
		}
		if a, ok := netip.AddrFromSlice(src); ok {
			if a = a.Unmap(); a.Is4() {
				u.ipv4 = a
			} else {
				u.ipv6 = a
			}
		}
	}
	for _, probe := range probes {
		if len(override) == 0 {
			routes, err := netlink.RouteGet(probe)
			if err != nil {
				continue // no route for this family: nothing to masquerade to
			}
			add(routes[0].LinkIndex, routes[0].Src)
			continue
		}
		for _, name := range override {
			routes, err := netlink.RouteGetWithOptions(probe, &netlink.RouteGetOptions{Oif: name})
			if err != nil {
				l, lerr := netlink.LinkByName(name)
				if lerr != nil {
					return nil, fmt.Errorf("masquerade uplink %q: %w", name, lerr)
				}
				add(l.Attrs().Index, nil) // no route of this family through it
				continue
			}
			add(routes[0].LinkIndex, routes[0].Src)
		}
	}
	uplinks := make([]uplink, 0, len(order))
	for _, i := range order {
		l, err := netlink.LinkByIndex(i)
		if err != nil {
			return nil, err
		}
		byIndex[i].name = l.Attrs().Name
		uplinks = append(uplinks, *byIndex[i])
	}
	return uplinks, nil
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
		errs = append(errs, replaceLegacy(int(ifindex), d.progs, uplinkHooks))
	}
	return errors.Join(append(errs, it.Err())...)
}

// reservePorts adds [min, max] to net.ipv4.ip_local_reserved_ports (which
// covers IPv6 too) in the node's namespace, keeping what is there.
func reservePorts(min, max uint16) error {
	const path = "/proc/sys/net/ipv4/ip_local_reserved_ports"
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	current := strings.TrimSpace(string(data))
	want := fmt.Sprintf("%d-%d", min, max)
	for _, r := range strings.Split(current, ",") {
		lo, hi, _ := strings.Cut(r, "-")
		l, err1 := strconv.Atoi(lo)
		h, err2 := strconv.Atoi(hi)
		if err1 == nil && err2 == nil && l <= int(min) && h >= int(max) {
			return nil
		}
	}
	if current != "" {
		want = current + "," + want
	}
	if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
		return fmt.Errorf("reserve masquerade ports %d-%d: %w", min, max, err)
	}
	return nil
}

// monotonicNow is the time of bpf_ktime_get_ns: CLOCK_MONOTONIC.
func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}
