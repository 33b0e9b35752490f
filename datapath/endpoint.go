package datapath

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// Isolation is how a network's containers are isolated from other
// containers on the node.
type Isolation uint8

// Isolation modes: enum isolation_mode in bpf/endpoint.h.
const (
	// IsolationNone: anti-spoofing only.
	IsolationNone = Isolation(program.BpfbridgeIsolationModeISOLATION_NONE)
	// IsolationNetwork: no traffic to or from containers of other networks.
	IsolationNetwork = Isolation(program.BpfbridgeIsolationModeISOLATION_NETWORK)
	// IsolationContainer: additionally none between containers of the
	// network; the gateway, the node and the outside stay reachable.
	IsolationContainer = Isolation(program.BpfbridgeIsolationModeISOLATION_CONTAINER)
)

var isolationNames = map[string]Isolation{"none": IsolationNone, "network": IsolationNetwork, "container": IsolationContainer}

// ParseIsolation parses the config value of "isolation".
func ParseIsolation(s string) (Isolation, bool) {
	i, ok := isolationNames[s]
	return i, ok
}

func (i Isolation) String() string {
	for name, v := range isolationNames {
		if v == i {
			return name
		}
	}
	return fmt.Sprintf("isolation(%d)", uint8(i))
}

// Limits of struct endpoint (enum endpoint_limits in bpf/endpoint.h).
const (
	maxIPv4 = uint8(program.BpfbridgeEndpointLimitsMAX_IPV4)
	maxIPv6 = uint8(program.BpfbridgeEndpointLimitsMAX_IPV6)
)

// Endpoint is a container attachment as the datapath sees it.
type Endpoint struct {
	ContainerID, IfName string
	Network             string
	Netns               string
	HostIfindex         int
	HostIfName          string
	MAC                 net.HardwareAddr // of the container interface
	IPs                 []netip.Addr
	Isolation           Isolation
	// TaggedOK lets VLAN-tagged frames through (the port is a VLAN trunk).
	TaggedOK bool
}

// NetworkID is the id the programs compare to tell networks apart.
func NetworkID(name string) uint32 {
	sum := sha256.Sum256([]byte(name))
	return binary.LittleEndian.Uint32(sum[:4])
}

// entry is the endpoint's struct endpoint.
func (ep *Endpoint) entry() (program.BpfbridgeEndpoint, error) {
	var e program.BpfbridgeEndpoint
	if len(ep.MAC) != 6 {
		return e, fmt.Errorf("endpoint MAC %q is not an Ethernet address", ep.MAC)
	}
	copy(e.Mac[:], ep.MAC)
	e.Isolation = uint8(ep.Isolation)
	if ep.TaggedOK {
		e.Flags |= uint8(program.BpfbridgeEndpointFlagsEP_F_TAGGED_OK)
	}
	e.Network = NetworkID(ep.Network)
	for _, ip := range ep.IPs {
		ip = ip.Unmap()
		switch {
		case ip.Is4() && e.N_ipv4 < maxIPv4:
			e.Ipv4[e.N_ipv4] = be32(ip)
			e.N_ipv4++
		case ip.Is6() && e.N_ipv6 < maxIPv6:
			e.Ipv6[e.N_ipv6] = ip.As16()
			e.N_ipv6++
		default:
			return e, fmt.Errorf("endpoint has more than %d IPv4 or %d IPv6 addresses", maxIPv4, maxIPv6)
		}
	}
	e.Ipv6Ll = linkLocal(ep.MAC)
	return e, nil
}

// be32 is an IPv4 address as a __be32 field: the in-memory bytes, which
// cilium/ebpf writes in native order, must be the address bytes.
func be32(a netip.Addr) uint32 { return binary.NativeEndian.Uint32(a.AsSlice()) }

// fromBe32 is the inverse of be32.
func fromBe32(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// linkLocal is the EUI-64 IPv6 link-local address the kernel derives from
// mac, which a container uses for neighbour discovery.
func linkLocal(mac net.HardwareAddr) [16]byte {
	return [16]byte{0xfe, 0x80, 8: mac[0] ^ 0x02, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]}
}

func ipKey(ip netip.Addr) program.BpfbridgeIpKey {
	ip = ip.Unmap()
	k := program.BpfbridgeIpKey{Family: 6}
	if ip.Is4() {
		k.Family = 4
		a := ip.As4()
		copy(k.Addr[:], a[:])
	} else {
		k.Addr = ip.As16()
	}
	return k
}

// Attach makes ep's veth enforce ep: it records the endpoint, fills the
// maps the programs read, and attaches the programs. On error it leaves
// nothing behind.
func (d *Datapath) Attach(ep Endpoint) (err error) {
	if d.progs == nil {
		return errors.New("attach needs the programs: open the datapath with Open")
	}
	entry, err := ep.entry()
	if err != nil {
		return err
	}
	key := KeyOf(ep.ContainerID, ep.IfName)
	meta := program.BpfbridgeEndpointMeta{
		Ifindex:   uint32(ep.HostIfindex),
		CreatedNs: uint64(time.Now().UnixNano()),
		Ep:        entry,
	}
	setCString(meta.ContainerId[:], ep.ContainerID)
	setCString(meta.Ifname[:], ep.IfName)
	setCString(meta.HostIfname[:], ep.HostIfName)
	setCString(meta.Network[:], ep.Network)
	setCString(meta.Netns[:], ep.Netns)
	setCString(meta.ProgTag[:], program.Tag())

	// State left under this key is stale: its DEL never came (a crash, or a
	// runtime that lost track). The caller just created the veth, so the
	// old attachment's interface is gone.
	if err := d.Detach(ep.ContainerID, ep.IfName); err != nil {
		return fmt.Errorf("clear stale state of %s/%s: %w", ep.ContainerID, ep.IfName, err)
	}
	defer func() {
		if err != nil {
			_ = d.Detach(ep.ContainerID, ep.IfName)
		}
	}()
	// The record goes first, so that a failure at any later step, even a
	// crash, leaves something DEL and GC can find.
	if err := d.maps.meta.Update(key, &meta, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("record endpoint: %w", err)
	}
	ifindex := uint32(ep.HostIfindex)
	zero := make([]program.BpfbridgeEndpointStats, ebpf.MustPossibleCPU())
	if err := d.maps.stats.Update(ifindex, zero, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("reset counters: %w", err)
	}
	owner := program.BpfbridgeIpOwner{Ifindex: ifindex, Network: entry.Network}
	for _, ip := range ep.IPs {
		if err := d.maps.ipOwners.Update(ipKey(ip), &owner, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("record owner of %s: %w", ip, err)
		}
	}
	// Entries before programs: a packet must never meet a program that
	// does not know its endpoint.
	if err := d.maps.endpoints.Update(ifindex, &entry, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write endpoint: %w", err)
	}
	mode, err := d.attach(key, ep.HostIfindex)
	if err != nil {
		return err
	}
	meta.Attach = uint32(mode)
	return d.maps.meta.Update(key, &meta, ebpf.UpdateExist)
}

// Detach removes everything the datapath holds for the attachment
// (containerID, ifname): programs or tcx links, map entries and the record.
// It works whether or not the veth still exists, and an unknown attachment
// is not an error, so DEL may repeat it.
func (d *Datapath) Detach(containerID, ifname string) error {
	key := KeyOf(containerID, ifname)
	var meta program.BpfbridgeEndpointMeta
	err := d.maps.meta.Lookup(key, &meta)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		// No record; a crash between pinning links and recording is not
		// possible (the record comes first), but unpin defensively.
		return d.detachPrograms(key, nil)
	}
	if err != nil {
		return fmt.Errorf("look up endpoint: %w", err)
	}
	errs := []error{d.detachPrograms(key, &meta), d.deleteEntries(&meta)}
	if err := d.maps.meta.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// deleteEntries deletes the endpoint's map entries. Ifindexes and addresses
// are reused, so an entry is deleted only while it still describes this
// endpoint: a newer endpoint that reuses the ifindex keeps its entries.
func (d *Datapath) deleteEntries(m *program.BpfbridgeEndpointMeta) error {
	var current program.BpfbridgeEndpoint
	err := d.maps.endpoints.Lookup(m.Ifindex, &current)
	switch {
	case errors.Is(err, ebpf.ErrKeyNotExist):
	case err != nil:
		return err
	case current != m.Ep:
		return nil // the ifindex belongs to another endpoint now
	}
	var errs []error
	for _, ip := range endpointIPs(&m.Ep) {
		var owner program.BpfbridgeIpOwner
		if d.maps.ipOwners.Lookup(ipKey(ip), &owner) == nil && owner.Ifindex == m.Ifindex {
			errs = append(errs, ignoreMissing(d.maps.ipOwners.Delete(ipKey(ip))))
		}
	}
	errs = append(errs,
		ignoreMissing(d.maps.endpoints.Delete(m.Ifindex)),
		ignoreMissing(d.maps.stats.Delete(m.Ifindex)))
	return errors.Join(errs...)
}

func ignoreMissing(err error) error {
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}

// endpointIPs lists the addresses of a struct endpoint.
func endpointIPs(e *program.BpfbridgeEndpoint) []netip.Addr {
	var ips []netip.Addr
	for _, v4 := range e.Ipv4[:e.N_ipv4] {
		ips = append(ips, fromBe32(v4))
	}
	for _, v6 := range e.Ipv6[:e.N_ipv6] {
		ips = append(ips, netip.AddrFrom16(v6))
	}
	return ips
}

// Addresses returns the addresses recorded for the attachment
// (containerID, ifname), or none when there is no record.
func (d *Datapath) Addresses(containerID, ifname string) []netip.Addr {
	var meta program.BpfbridgeEndpointMeta
	if d.maps.meta.Lookup(KeyOf(containerID, ifname), &meta) != nil {
		return nil
	}
	return endpointIPs(&meta.Ep)
}

// Check verifies that the datapath enforces ep on its veth: the record, the
// endpoint and address entries, and this build's programs attached in both
// directions.
func (d *Datapath) Check(ep Endpoint) error {
	if d.progs == nil {
		return errors.New("check needs the programs: open the datapath with Open")
	}
	want, err := ep.entry()
	if err != nil {
		return err
	}
	var meta program.BpfbridgeEndpointMeta
	if err := d.maps.meta.Lookup(KeyOf(ep.ContainerID, ep.IfName), &meta); err != nil {
		return fmt.Errorf("no datapath record for %s/%s: %w", ep.ContainerID, ep.IfName, err)
	}
	if int(meta.Ifindex) != ep.HostIfindex {
		return fmt.Errorf("datapath record names ifindex %d, but the host veth is %d", meta.Ifindex, ep.HostIfindex)
	}
	var have program.BpfbridgeEndpoint
	if err := d.maps.endpoints.Lookup(meta.Ifindex, &have); err != nil {
		return fmt.Errorf("no endpoint entry for ifindex %d: %w", meta.Ifindex, err)
	}
	if have != want {
		return fmt.Errorf("endpoint entry of ifindex %d differs from the attachment (MAC, addresses or isolation)", meta.Ifindex)
	}
	for _, ip := range ep.IPs {
		var owner program.BpfbridgeIpOwner
		if err := d.maps.ipOwners.Lookup(ipKey(ip), &owner); err != nil || owner.Ifindex != meta.Ifindex {
			return fmt.Errorf("address %s is not recorded for ifindex %d", ip, meta.Ifindex)
		}
	}
	return d.attachedPrograms(&meta)
}

// GC detaches every endpoint of network whose attachment is not in valid.
func (d *Datapath) GC(network string, valid map[EndpointKey]bool) error {
	var stale []*program.BpfbridgeEndpointMeta
	err := d.eachEndpoint(func(key EndpointKey, m *program.BpfbridgeEndpointMeta) {
		if cString(m.Network[:]) == network && !valid[key] {
			stale = append(stale, m)
		}
	})
	var errs []error
	for _, m := range stale {
		errs = append(errs, d.Detach(cString(m.ContainerId[:]), cString(m.Ifname[:])))
	}
	return errors.Join(append(errs, err)...)
}

// eachEndpoint calls fn with every endpoint record; fn receives a copy.
func (d *Datapath) eachEndpoint(fn func(EndpointKey, *program.BpfbridgeEndpointMeta)) error {
	var (
		key  program.BpfbridgeEndpointKey
		meta program.BpfbridgeEndpointMeta
	)
	it := d.maps.meta.Iterate()
	for it.Next(&key, &meta) {
		m := meta
		fn(EndpointKey(key.Sha256), &m)
	}
	return it.Err()
}

// cString reads a NUL-terminated C string from a char array.
func cString(b []int8) string {
	s := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

// setCString writes s into a char array, truncated to leave the NUL.
func setCString(dst []int8, s string) {
	clear(dst)
	for i := 0; i < len(s) && i < len(dst)-1; i++ {
		dst[i] = int8(s[i])
	}
}
