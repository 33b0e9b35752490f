package program

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// This file encodes Go values into the generated map keys and values and
// decodes them back: addresses, ports, C strings, per-CPU sums. It is the
// one place that knows how a C field is laid out (byte order, family tags,
// NUL-terminated strings), so that datapath and the tests never repeat it.

// The family tag of address keys and tuples (ip_key.family,
// nat_tuple.family): the IP version, not AF_*.
const (
	family4 = 4
	family6 = 6
)

// familyOf is the family tag of a, which must be unmapped.
func familyOf(a netip.Addr) uint8 {
	if a.Is4() {
		return family4
	}
	return family6
}

// addr16 is a as a 16-byte address field: IPv4 in the first four bytes.
func addr16(a netip.Addr) (b [16]byte) {
	if a.Is4() {
		v := a.As4()
		copy(b[:], v[:])
		return b
	}
	return a.As16()
}

// AddrOf reads a 16-byte address field tagged with family (4 or 6).
func AddrOf(family uint8, b [16]uint8) netip.Addr {
	if family == family4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// Be32 is an IPv4 address as a __be32 field: the in-memory bytes, which
// cilium/ebpf writes in native order, must be the address bytes.
func Be32(a netip.Addr) uint32 { return binary.NativeEndian.Uint32(a.AsSlice()) }

// FromBe32 is the inverse of Be32.
func FromBe32(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// Be16 is a port as a __be16 field (see Be32).
func Be16(port uint16) uint16 {
	return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, port))
}

// FromBe16 is the inverse of Be16.
func FromBe16(v uint16) uint16 {
	return binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, v))
}

// CString reads a NUL-terminated C string from a char array.
func CString(b []int8) string {
	s := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

// SetCString writes s into a char array, truncated to leave the NUL.
func SetCString(dst []int8, s string) {
	clear(dst)
	for i := 0; i < len(s) && i < len(dst)-1; i++ {
		dst[i] = int8(s[i])
	}
}

// LinkLocal is the EUI-64 IPv6 link-local address the kernel derives from
// mac, which a container uses for neighbour discovery.
func LinkLocal(mac net.HardwareAddr) netip.Addr {
	return netip.AddrFrom16([16]byte{0xfe, 0x80, 8: mac[0] ^ 0x02, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]})
}

// IPKeyOf is the ip_owners key of ip.
func IPKeyOf(ip netip.Addr) BpfbridgeIpKey {
	ip = ip.Unmap()
	return BpfbridgeIpKey{Family: familyOf(ip), Addr: addr16(ip)}
}

// IP is the address of the key.
func (k *BpfbridgeIpKey) IP() netip.Addr { return AddrOf(k.Family, k.Addr) }

// Limits of struct endpoint (MAX_IPV4, MAX_IPV6 in bpf/endpoint.h): the
// lengths of its address arrays.
const (
	maxIPv4 = len(BpfbridgeEndpoint{}.Ipv4)
	maxIPv6 = len(BpfbridgeEndpoint{}.Ipv6)
)

// SetAddrs writes the container's MAC, addresses and the link-local
// address derived from the MAC into the endpoint.
func (e *BpfbridgeEndpoint) SetAddrs(mac net.HardwareAddr, ips []netip.Addr) error {
	if len(mac) != len(e.Mac) {
		return fmt.Errorf("endpoint MAC %q is not an Ethernet address", mac)
	}
	copy(e.Mac[:], mac)
	e.N_ipv4, e.N_ipv6 = 0, 0
	for _, ip := range ips {
		ip = ip.Unmap()
		switch {
		case ip.Is4() && int(e.N_ipv4) < maxIPv4:
			e.Ipv4[e.N_ipv4] = Be32(ip)
			e.N_ipv4++
		case ip.Is6() && int(e.N_ipv6) < maxIPv6:
			e.Ipv6[e.N_ipv6] = ip.As16()
			e.N_ipv6++
		default:
			return fmt.Errorf("endpoint has more than %d IPv4 or %d IPv6 addresses", maxIPv4, maxIPv6)
		}
	}
	e.Ipv6Ll = LinkLocal(mac).As16()
	return nil
}

// IPs lists the endpoint's addresses, IPv4 first; empty, not nil, when it
// has none.
func (e *BpfbridgeEndpoint) IPs() []netip.Addr {
	ips := []netip.Addr{}
	for _, v4 := range e.Ipv4[:min(int(e.N_ipv4), maxIPv4)] {
		ips = append(ips, FromBe32(v4))
	}
	for _, v6 := range e.Ipv6[:min(int(e.N_ipv6), maxIPv6)] {
		ips = append(ips, netip.AddrFrom16(v6))
	}
	return ips
}

// MetaNames are the C strings of an endpoint_meta record.
type MetaNames struct {
	ContainerID, IfName, HostIfName, Network, Netns, ProgTag string
}

// Names decodes the record's C strings.
func (m *BpfbridgeEndpointMeta) Names() MetaNames {
	return MetaNames{
		ContainerID: CString(m.ContainerId[:]),
		IfName:      CString(m.Ifname[:]),
		HostIfName:  CString(m.HostIfname[:]),
		Network:     CString(m.Network[:]),
		Netns:       CString(m.Netns[:]),
		ProgTag:     CString(m.ProgTag[:]),
	}
}

// SetNames writes the record's C strings, each truncated to its array.
func (m *BpfbridgeEndpointMeta) SetNames(n MetaNames) {
	SetCString(m.ContainerId[:], n.ContainerID)
	SetCString(m.Ifname[:], n.IfName)
	SetCString(m.HostIfname[:], n.HostIfName)
	SetCString(m.Network[:], n.Network)
	SetCString(m.Netns[:], n.Netns)
	SetCString(m.ProgTag[:], n.ProgTag)
}

// Add accumulates o into s: summing a per-CPU value.
func (s *BpfbridgeEndpointStats) Add(o *BpfbridgeEndpointStats) {
	s.FromPackets += o.FromPackets
	s.FromBytes += o.FromBytes
	s.ToPackets += o.ToPackets
	s.ToBytes += o.ToBytes
	for r, n := range o.Drops {
		s.Drops[r] += n
	}
}

// Add accumulates o into b. Windows are per CPU: the sum keeps the latest
// start.
func (b *BpfbridgeEventBudget) Add(o *BpfbridgeEventBudget) {
	b.WindowStartNs = max(b.WindowStartNs, o.WindowStartNs)
	b.Used += o.Used
	b.Suppressed += o.Suppressed
}

// Summable is a per-CPU value type whose pointer adds another value in.
type Summable[V any] interface {
	*V
	Add(*V)
}

// Sum adds up the CPUs' values of a per-CPU map entry.
func Sum[V any, P Summable[V]](perCPU []V) V {
	var sum V
	for i := range perCPU {
		P(&sum).Add(&perCPU[i])
	}
	return sum
}

// SumUint64 adds up the CPUs' values of a per-CPU counter.
func SumUint64(perCPU []uint64) uint64 {
	var sum uint64
	for _, n := range perCPU {
		sum += n
	}
	return sum
}

// NATTupleOf is the nat tuple of a connection from src to dst; for ICMP
// echo, src's port is the identifier and dst's is zero.
func NATTupleOf(proto uint8, src, dst netip.AddrPort) BpfbridgeNatTuple {
	s, d := src.Addr().Unmap(), dst.Addr().Unmap()
	return BpfbridgeNatTuple{Src: addr16(s), Dst: addr16(d), Sport: Be16(src.Port()), Dport: Be16(dst.Port()),
		Proto: proto, Family: familyOf(s)}
}

// NATGenKeyOf is the nat_gen key of container address a.
func NATGenKeyOf(a netip.Addr) BpfbridgeNatGenKey {
	a = a.Unmap()
	return BpfbridgeNatGenKey{Addr: addr16(a), Family: familyOf(a)}
}

// Generation is the container address generation an entry was created in
// (nat_gen, CT_GEN_* in bpf/conntrack.h).
func (e *BpfbridgeNatEntry) Generation() uint8 { return e.Flags >> uint8(BpfbridgeCtGenCT_GEN_SHIFT) }

// Source is the tuple's source address and port.
func (t *BpfbridgeNatTuple) Source() netip.AddrPort {
	return netip.AddrPortFrom(AddrOf(t.Family, t.Src), FromBe16(t.Sport))
}

// Dest is the tuple's destination address and port.
func (t *BpfbridgeNatTuple) Dest() netip.AddrPort {
	return netip.AddrPortFrom(AddrOf(t.Family, t.Dst), FromBe16(t.Dport))
}

// Reply is the nat_in key of the translation (t, e) of nat_out: the reply
// as it arrives on the uplink (see bpf/nat.h; ICMP echo carries the
// identifier as sport).
func (t *BpfbridgeNatTuple) Reply(e *BpfbridgeNatEntry) BpfbridgeNatTuple {
	in := BpfbridgeNatTuple{Src: t.Dst, Dst: e.Addr, Proto: t.Proto, Family: t.Family}
	if t.Proto == unix.IPPROTO_ICMP || t.Proto == unix.IPPROTO_ICMPV6 {
		in.Sport = e.Port
	} else {
		in.Sport, in.Dport = t.Dport, e.Port
	}
	return in
}

// AddrPort is the entry's address and port (nat_out: the translated
// source; nat_in: the container's), in the family of its tuple.
func (e *BpfbridgeNatEntry) AddrPort(family uint8) netip.AddrPort {
	return netip.AddrPortFrom(AddrOf(family, e.Addr), FromBe16(e.Port))
}

// SetAddrs writes an uplink's addresses; an invalid Addr is none.
func (u *BpfbridgeNatUplink) SetAddrs(ipv4, ipv6 netip.Addr) {
	*u = BpfbridgeNatUplink{}
	if ipv4.IsValid() {
		u.HasIpv4, u.Ipv4 = 1, Be32(ipv4)
	}
	if ipv6.IsValid() {
		u.HasIpv6, u.Ipv6 = 1, ipv6.As16()
	}
}

// Addrs are the uplink's addresses; an invalid Addr is none.
func (u *BpfbridgeNatUplink) Addrs() (ipv4, ipv6 netip.Addr) {
	if u.HasIpv4 != 0 {
		ipv4 = FromBe32(u.Ipv4)
	}
	if u.HasIpv6 != 0 {
		ipv6 = netip.AddrFrom16(u.Ipv6)
	}
	return ipv4, ipv6
}

// excludePrefixBase is the length of the nat_exclude key's fields before
// the address (network and family), which the LPM prefix length counts.
const excludePrefixBase = 64

// NATExcludeKeyOf is the nat_exclude key of network's prefix p: the LPM
// prefix covers network, family and padding exactly, then p's own bits.
func NATExcludeKeyOf(network uint32, p netip.Prefix) BpfbridgeNatExcludeKey {
	p = p.Masked()
	return BpfbridgeNatExcludeKey{Prefixlen: excludePrefixBase + uint32(p.Bits()), Network: network,
		Family: familyOf(p.Addr()), Addr: addr16(p.Addr())}
}

// Prefix is the key's address prefix.
func (k *BpfbridgeNatExcludeKey) Prefix() netip.Prefix {
	return netip.PrefixFrom(AddrOf(k.Family, k.Addr), int(k.Prefixlen)-excludePrefixBase)
}

// MarshalText writes the reason's name (String), as JSON consumers of
// `bridge inspect` read it.
func (r DropReason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// MarshalText writes the direction's name.
func (d BpfbridgeDirection) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// PortmapKeyOf is the port_maps key of a published port: proto
// (IPPROTO_TCP, IPPROTO_UDP) and port on hostIP of family (4 or 6); an
// invalid or unspecified hostIP publishes on every node address.
func PortmapKeyOf(family, proto uint8, hostIP netip.Addr, port uint16) BpfbridgePortmapKey {
	k := BpfbridgePortmapKey{Family: family, Proto: proto, Port: Be16(port)}
	if hostIP.IsValid() && !hostIP.IsUnspecified() {
		k.Addr = addr16(hostIP.Unmap())
	}
	return k
}

// HostIP is the key's host address, invalid for every node address.
func (k *BpfbridgePortmapKey) HostIP() netip.Addr {
	if k.Addr == ([16]uint8{}) {
		return netip.Addr{}
	}
	return AddrOf(k.Family, k.Addr)
}

// PortmapValueOf is the port_maps value sending a published port to port
// on container (the host veth ifindex), owned by the attachment owner;
// hairpin is the gateway hairpin traffic is translated to (invalid: none).
func PortmapValueOf(container netip.Addr, port uint16, ifindex uint32, hairpin netip.Addr, owner [32]byte) BpfbridgePortmapValue {
	v := BpfbridgePortmapValue{Addr: addr16(container.Unmap()), Port: Be16(port), Ifindex: ifindex, Owner: owner}
	if hairpin.IsValid() {
		v.HairpinSrc = addr16(hairpin.Unmap())
	}
	return v
}

// Container is the value's container address, of the key's family.
func (v *BpfbridgePortmapValue) Container(family uint8) netip.AddrPort {
	return netip.AddrPortFrom(AddrOf(family, v.Addr), FromBe16(v.Port))
}
