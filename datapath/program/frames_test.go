package program_test

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// Frame builders for the BPF_PROG_TEST_RUN tests. Byte by byte, with real
// checksums although the programs do not verify them, so that a frame looks
// like what a container sends.

const (
	etherTypeIPv4  = 0x0800
	etherTypeARP   = 0x0806
	etherTypeIPv6  = 0x86dd
	etherType8021Q = 0x8100
	etherTypeLLDP  = 0x88cc

	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
	protoHop    = 0

	icmp6EchoRequest = 128
	icmp6MLD2Report  = 143
	icmp6RS          = 133
	icmp6RA          = 134
	icmp6NS          = 135
	icmp6NA          = 136
	icmp6Redirect    = 137

	ndOptSourceLL = 1
	ndOptTargetLL = 2
)

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

var broadcastMAC = mac("ff:ff:ff:ff:ff:ff")

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func be16(b []byte, v uint16) []byte { return binary.BigEndian.AppendUint16(b, v) }
func be32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }

func eth(dst, src net.HardwareAddr, etherType uint16, payload []byte) []byte {
	b := append([]byte{}, dst...)
	b = append(b, src...)
	b = be16(b, etherType)
	return append(b, payload...)
}

// vlan returns an 802.1Q tag (TPID is the outer EtherType) and inner type.
func vlan(id uint16, inner uint16, payload []byte) []byte {
	b := be16(nil, id&0x0fff)
	b = be16(b, inner)
	return append(b, payload...)
}

func checksum(data []byte, initial uint32) uint16 {
	sum := initial
	for i := 0; i+1 < len(data); i += 2 {
		sum += uint32(data[i])<<8 | uint32(data[i+1])
	}
	if len(data)%2 == 1 {
		sum += uint32(data[len(data)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// pseudoSum is the unfolded sum of an L4 pseudo-header.
func pseudoSum(src, dst netip.Addr, proto uint8, length int) uint32 {
	var b []byte
	b = append(b, src.AsSlice()...)
	b = append(b, dst.AsSlice()...)
	b = be32(b, uint32(length))
	b = be32(b, uint32(proto))
	var sum uint32
	for i := 0; i < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	return sum
}

// l4 fills in the checksum at csumOff of an upper-layer header.
func l4(src, dst netip.Addr, proto uint8, seg []byte, csumOff int) []byte {
	seg = append([]byte{}, seg...)
	c := checksum(seg, pseudoSum(src, dst, proto, len(seg)))
	if proto == protoUDP && c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(seg[csumOff:], c)
	return seg
}

func ipv4(src, dst netip.Addr, proto uint8, payload []byte) []byte {
	h := []byte{0x45, 0}
	h = be16(h, uint16(20+len(payload)))
	h = append(h, 0, 1, 0x40, 0) // id 1, don't fragment
	h = append(h, 64, proto, 0, 0)
	h = append(h, src.AsSlice()...)
	h = append(h, dst.AsSlice()...)
	binary.BigEndian.PutUint16(h[10:], checksum(h, 0))
	return append(h, payload...)
}

// ipv6 builds an IPv6 header; nexthdr names the first header of payload.
func ipv6(src, dst netip.Addr, nexthdr uint8, hopLimit uint8, payload []byte) []byte {
	h := []byte{0x60, 0, 0, 0}
	h = be16(h, uint16(len(payload)))
	h = append(h, nexthdr, hopLimit)
	h = append(h, src.AsSlice()...)
	h = append(h, dst.AsSlice()...)
	return append(h, payload...)
}

func tcp(src, dst netip.Addr, sport, dport uint16) []byte {
	seg := be16(nil, sport)
	seg = be16(seg, dport)
	seg = be32(seg, 1)            // seq
	seg = be32(seg, 0)            // ack
	seg = append(seg, 5<<4, 0x02) // data offset 5, SYN
	seg = be16(seg, 64240)        // window
	seg = append(seg, 0, 0, 0, 0)
	return l4(src, dst, protoTCP, seg, 16)
}

func udp(src, dst netip.Addr, sport, dport uint16, data []byte) []byte {
	seg := be16(nil, sport)
	seg = be16(seg, dport)
	seg = be16(seg, uint16(8+len(data)))
	seg = append(seg, 0, 0)
	seg = append(seg, data...)
	return l4(src, dst, protoUDP, seg, 6)
}

func icmp4Echo() []byte {
	m := []byte{8, 0, 0, 0, 0, 1, 0, 1}
	binary.BigEndian.PutUint16(m[2:], checksum(m, 0))
	return m
}

// icmp6 builds an ICMPv6 message: type, code, checksum, then body.
func icmp6(src, dst netip.Addr, typ, code uint8, body []byte) []byte {
	m := append([]byte{typ, code, 0, 0}, body...)
	return l4(src, dst, protoICMPv6, m, 2)
}

// ndOpt is a link-layer address option (RFC 4861 4.6.1).
func ndOpt(typ uint8, hw net.HardwareAddr) []byte {
	return append([]byte{typ, 1}, hw...)
}

func ns(src, dst, target netip.Addr, opts ...[]byte) []byte {
	body := append([]byte{0, 0, 0, 0}, target.AsSlice()...)
	for _, o := range opts {
		body = append(body, o...)
	}
	return icmp6(src, dst, icmp6NS, 0, body)
}

func na(src, dst, target netip.Addr, opts ...[]byte) []byte {
	body := append([]byte{0x60, 0, 0, 0}, target.AsSlice()...) // solicited, override
	for _, o := range opts {
		body = append(body, o...)
	}
	return icmp6(src, dst, icmp6NA, 0, body)
}

func rs(src, dst netip.Addr, opts ...[]byte) []byte {
	body := []byte{0, 0, 0, 0}
	for _, o := range opts {
		body = append(body, o...)
	}
	return icmp6(src, dst, icmp6RS, 0, body)
}

func ra(src, dst netip.Addr, opts ...[]byte) []byte {
	body := []byte{64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0} // hop limit, flags, lifetime 1800, reachable, retrans
	for _, o := range opts {
		body = append(body, o...)
	}
	return icmp6(src, dst, icmp6RA, 0, body)
}

func redirect(src, dst, target, dest netip.Addr) []byte {
	body := append([]byte{0, 0, 0, 0}, target.AsSlice()...)
	body = append(body, dest.AsSlice()...)
	return icmp6(src, dst, icmp6Redirect, 0, body)
}

// mld2Report is an MLDv2 report behind the hop-by-hop header with a router
// alert that RFC 3810 requires; returns the IPv6 payload (nexthdr 0).
func mld2Report(src, dst netip.Addr, group netip.Addr) []byte {
	rec := []byte{4, 0, 0, 0} // CHANGE_TO_EXCLUDE, no aux data, no sources
	rec = append(rec, group.AsSlice()...)
	body := append([]byte{0, 0, 0, 1}, rec...) // reserved, 1 record
	msg := icmp6(src, dst, icmp6MLD2Report, 0, body)
	hbh := []byte{protoICMPv6, 0, 5, 2, 0, 0, 1, 0} // router alert (MLD), PadN
	return append(hbh, msg...)
}

func arp(op uint16, sha net.HardwareAddr, sip netip.Addr, tha net.HardwareAddr, tip netip.Addr) []byte {
	b := be16(nil, 1)          // Ethernet
	b = be16(b, etherTypeIPv4) // IPv4
	b = append(b, 6, 4)
	b = be16(b, op)
	b = append(b, sha...)
	b = append(b, sip.AsSlice()...)
	b = append(b, tha...)
	b = append(b, tip.AsSlice()...)
	return b
}

// solicitedNode returns the solicited-node multicast group of a.
func solicitedNode(a netip.Addr) netip.Addr {
	b := a.As16()
	return netip.AddrFrom16([16]byte{0xff, 0x02, 11: 1, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
}

// multicastMAC is the Ethernet group address of an IPv6 multicast address.
func multicastMAC(a netip.Addr) net.HardwareAddr {
	b := a.As16()
	return net.HardwareAddr{0x33, 0x33, b[12], b[13], b[14], b[15]}
}

// linkLocal derives the EUI-64 link-local address of hw, as the kernel does.
func linkLocal(hw net.HardwareAddr) netip.Addr {
	return netip.AddrFrom16([16]byte{0xfe, 0x80, 8: hw[0] ^ 0x02, 9: hw[1], 10: hw[2], 11: 0xff, 12: 0xfe, 13: hw[3], 14: hw[4], 15: hw[5]})
}

// Frames for the masquerade tests.

const (
	icmp4EchoReply    = 0
	icmp4DestUnreach  = 3
	icmp4EchoRequest  = 8
	icmp4FragNeeded   = 4 // code of icmp4DestUnreach
	icmp6PacketTooBig = 2
	icmp6EchoReply    = 129

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// tcpFlags is tcp with the given flags and a payload-free segment.
func tcpFlags(src, dst netip.Addr, sport, dport uint16, flags uint8) []byte {
	seg := be16(nil, sport)
	seg = be16(seg, dport)
	seg = be32(seg, 1000) // seq
	seg = be32(seg, 2000) // ack
	seg = append(seg, 5<<4, flags)
	seg = be16(seg, 64240)
	seg = append(seg, 0, 0, 0, 0)
	return l4(src, dst, protoTCP, seg, 16)
}

// udpNoCsum is a UDP datagram without checksum (0: allowed over IPv4).
func udpNoCsum(sport, dport uint16, data []byte) []byte {
	seg := be16(nil, sport)
	seg = be16(seg, dport)
	seg = be16(seg, uint16(8+len(data)))
	seg = append(seg, 0, 0)
	return append(seg, data...)
}

// icmp4EchoMsg is an ICMPv4 echo request or reply with identifier id.
func icmp4EchoMsg(typ uint8, id, seq uint16) []byte {
	m := []byte{typ, 0, 0, 0}
	m = be16(m, id)
	m = be16(m, seq)
	m = append(m, "ping"...)
	binary.BigEndian.PutUint16(m[2:], checksum(m, 0))
	return m
}

// icmp6EchoMsg is an ICMPv6 echo request or reply with identifier id.
func icmp6EchoMsg(src, dst netip.Addr, typ uint8, id, seq uint16) []byte {
	body := be16(nil, id)
	body = be16(body, seq)
	body = append(body, "ping"...)
	return icmp6(src, dst, typ, 0, body)
}

// icmp4Error is an ICMPv4 error (type, code, 4 bytes of rest-of-header
// such as the next-hop MTU) quoting quote, the start of an IP packet.
func icmp4Error(typ, code uint8, rest uint32, quote []byte) []byte {
	m := []byte{typ, code, 0, 0}
	m = be32(m, rest)
	m = append(m, quote...)
	binary.BigEndian.PutUint16(m[2:], checksum(m, 0))
	return m
}

// ipv4Frame and ipv6Frame wrap an L4 message into an Ethernet frame.
func ipv4Frame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, proto uint8, msg []byte) []byte {
	return eth(dstMAC, srcMAC, etherTypeIPv4, ipv4(src, dst, proto, msg))
}

func ipv6Frame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, proto uint8, msg []byte) []byte {
	return eth(dstMAC, srcMAC, etherTypeIPv6, ipv6(src, dst, proto, 64, msg))
}
