/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Packet parsing: Ethernet, VLAN, ARP, IPv4, IPv6 (with extension headers),
 * ICMPv6 and TCP/UDP ports, into one struct pkt on the stack that the policy
 * code (antispoof.h, isolation.h) and the drop events (drop.h) read.
 *
 * Fixed-offset headers (Ethernet, and the ARP/IPv4/IPv6 header right behind
 * it) are read by direct packet access after a bounds check, pulling them
 * into the linear area first when the skb is not linear there. Everything at
 * a variable offset (IPv4 options, IPv6 extension headers, L4, ICMPv6, NDP
 * options) is read with bpf_skb_load_bytes: it works on non-linear skbs,
 * fails cleanly past the end of the packet, and keeps the verifier out of
 * variable-offset packet pointer arithmetic. */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "drop.h"
#include "subprog.h"

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* IPv6 extension headers we step over (RFC 8200 section 4). */
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_NONE 59
#define NEXTHDR_DEST 60

/* How many IPv6 extension headers we walk before giving up. Real traffic has
 * at most a hop-by-hop header (MLD) or a fragment header; Cilium uses 4. */
#define IPV6_MAX_EXT_HEADERS 4

/* The fragment offset bits and the more-fragments flag of iphdr.frag_off
 * (host order); not in UAPI. */
#define IPV4_FRAG_OFFSET 0x1fff
#define IPV4_MF 0x2000

/* NDP message types (RFC 4861); the kernel keeps these out of UAPI. MLD
 * reports are ICMPV6_MGM_REPORT and ICMPV6_MLD2_REPORT from linux/icmpv6.h. */
#define NDISC_ROUTER_SOLICITATION 133
#define NDISC_ROUTER_ADVERTISEMENT 134
#define NDISC_NEIGHBOUR_SOLICITATION 135
#define NDISC_NEIGHBOUR_ADVERTISEMENT 136
#define NDISC_REDIRECT 137

/* Address fields of keys and values (struct ip_key, nat_tuple, …) are 4-byte
 * aligned, declared so where nothing else in their struct makes them: clang
 * copies or clears a field it cannot prove aligned byte by byte, 32
 * instructions for a 16-byte copy instead of 8, at run time and for the
 * verifier, which walks each of them in every state it reaches them in. */
#define ADDR_ALIGNED __attribute__((aligned(4)))

/* An IPv4 or IPv6 address. IPv4 lives in the first 4 bytes, the rest zero,
 * the same convention as struct ip_key and struct drop_event. */
union addr {
	__u8 b[16];
	__u32 w[4];
	__be32 v4;
};

/* pkt.flags */
#define PKT_F_TAGGED (1 << 0)  /* 802.1Q/802.1ad, in the frame or in skb metadata */
#define PKT_F_L4 (1 << 1)      /* l4_off points at the upper-layer header */
#define PKT_F_EXT_DEEP (1 << 2) /* IPv6 header chain longer than we walk */
#define PKT_F_ETH (1 << 3)      /* the Ethernet header was read */
#define PKT_F_FRAG (1 << 4)     /* a fragment (first or not): frag_id is set */
#define PKT_F_XLATED (1 << 5)   /* port mapping rewrote the packet: the fields describe it as it was */
#define PKT_F_REDIRECT (1 << 6) /* port mapping redirected it (TC_ACT_REDIRECT) */

/* What the parser learnt about a packet. All multi-byte integers are in host
 * byte order except the addresses, which stay in network byte order. */
struct pkt {
	__u8 dst_mac[6];
	__u8 src_mac[6];
	__u16 eth_proto; /* EtherType of the untagged frame */
	__u8 family;     /* 4 or 6 when the frame is IPv4/IPv6, else 0 */
	__u8 ip_proto;   /* upper-layer protocol (after IPv6 extension headers) */
	__u8 flags;      /* PKT_F_* */
	__u8 icmp6_type; /* valid when ip_proto is ICMPv6 and PKT_F_L4 is set */
	__u16 sport;     /* TCP/UDP, 0 otherwise */
	__u16 dport;
	__u32 l4_off;    /* offset of the upper-layer header, if PKT_F_L4 */
	__u32 l3_end;    /* end of the IP packet, by its header (excludes Ethernet padding) */
	__u32 frag_id;   /* PKT_F_FRAG: IPv4 identification, or IPv6 fragment header's (network order) */
	union addr saddr; /* ARP: sender protocol address */
	union addr daddr; /* ARP: target protocol address */
	__u8 arp_sha[6];  /* ARP sender hardware address */
	__u16 arp_op;
};

/* An Ethernet/IPv4 ARP packet (RFC 826). Declared here rather than taken
 * from <linux/if_arp.h>: that header drags in <linux/netdevice.h> and, through
 * <linux/if.h>, glibc's <sys/socket.h>, which does not build for BPF. */
#define ARPHRD_ETHER 1

struct arp_eth {
	__be16 ar_hrd; /* hardware type: ARPHRD_ETHER */
	__be16 ar_pro; /* protocol type: ETH_P_IP */
	__u8 ar_hln;   /* hardware address length: 6 */
	__u8 ar_pln;   /* protocol address length: 4 */
	__be16 ar_op;
	__u8 ar_sha[ETH_ALEN];
	__u8 ar_sip[4];
	__u8 ar_tha[ETH_ALEN];
	__u8 ar_tip[4];
} __attribute__((packed));

/* The len bytes of the packet at off, a fixed-offset header, readable by
 * direct packet access; NULL when the packet is shorter. Headers normally
 * sit in the linear area already; when they do not (GRO frag lists, skbs
 * built by other programs) they are pulled in first, as Cilium's
 * revalidate_data_pull does. The pull moves the data, so the pointers are
 * loaded after it; the bounds check here is what the verifier tracks for
 * the caller's reads (off and len are constants once inlined). */
static __always_inline void *pkt_header(struct __sk_buff *skb, __u32 off, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (data + off + len > data_end) {
		if (off + len > skb->len || bpf_skb_pull_data(skb, off + len))
			return NULL;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (data + off + len > data_end)
			return NULL;
	}
	return data + off;
}

/* Whether the frame carries a VLAN tag. On a veth the tag of a frame sent
 * from a VLAN sub-interface usually travels in skb metadata (hardware VLAN
 * offload; the receive path also moves an in-band tag there before tc
 * ingress runs), and the frame data then shows the inner EtherType: looking
 * at the EtherType alone would treat a tagged frame as untagged. */
static __always_inline int pkt_vlan_tagged(const struct __sk_buff *skb, __u16 eth_proto)
{
	return skb->vlan_present || eth_proto == ETH_P_8021Q || eth_proto == ETH_P_8021AD;
}

/* How far into a packet the ports are read in place; past it, which takes a
 * long IPv6 header chain, they are copied out. */
#define L4_DIRECT_MAX 128

static __always_inline void parse_l4_ports(struct __sk_buff *skb, struct pkt *pkt)
{
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
	__u32 off = pkt->l4_off;
	__be16 ports[2], *p;

	if (!(pkt->flags & PKT_F_L4))
		return;
	if (pkt->ip_proto != IPPROTO_TCP && pkt->ip_proto != IPPROTO_UDP)
		return;
	/* Source and destination port are the first 4 bytes of both: read
	 * in place when the linear area holds them (the headers the parser
	 * read before them are there, normally), saving a helper call on
	 * every packet; copied out otherwise. */
	p = data + off;
	if (off <= L4_DIRECT_MAX && (void *)(p + 2) <= data_end) {
		ports[0] = p[0];
		ports[1] = p[1];
	} else if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports))) {
		return;
	}
	pkt->sport = bpf_ntohs(ports[0]);
	pkt->dport = bpf_ntohs(ports[1]);
}

static __always_inline __u8 parse_arp(struct __sk_buff *skb, struct pkt *pkt)
{
	struct arp_eth *arp = pkt_header(skb, ETH_HLEN, sizeof(*arp));

	if (!arp)
		return DROP_MALFORMED;

	pkt->arp_op = bpf_ntohs(arp->ar_op);
	/* Only Ethernet/IPv4 ARP means anything on this bridge; anything else
	 * could still confuse a neighbour table, so it is malformed. */
	if (arp->ar_hrd != bpf_htons(ARPHRD_ETHER) || arp->ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->ar_hln != ETH_ALEN || arp->ar_pln != 4)
		return DROP_MALFORMED;

	__builtin_memcpy(pkt->arp_sha, arp->ar_sha, ETH_ALEN);
	__builtin_memcpy(&pkt->saddr.v4, arp->ar_sip, 4);
	__builtin_memcpy(&pkt->daddr.v4, arp->ar_tip, 4);
	return DROP_NONE;
}

static __always_inline __u8 parse_ipv4(struct __sk_buff *skb, struct pkt *pkt)
{
	struct iphdr *ip = pkt_header(skb, ETH_HLEN, sizeof(*ip));
	__u32 hlen, tot_len;

	if (!ip)
		return DROP_MALFORMED;

	pkt->family = 4;
	pkt->ip_proto = ip->protocol;
	pkt->saddr.v4 = ip->saddr;
	pkt->daddr.v4 = ip->daddr;
	/* The IPv4 header says where the packet ends: Ethernet padding
	 * behind it (a frame is at least 60 bytes) is no header. tot_len 0
	 * is a BIG TCP GSO packet, whose length is the skb's; a tot_len past
	 * the skb is bounded by it (the stack drops such a packet, the
	 * policy does not need to). */
	tot_len = bpf_ntohs(ip->tot_len);
	pkt->l3_end = ETH_HLEN + tot_len;
	if (!tot_len || pkt->l3_end > skb->len)
		pkt->l3_end = skb->len;

	hlen = ip->ihl * 4;
	if (ip->version != 4 || hlen < sizeof(*ip) || ETH_HLEN + hlen > skb->len)
		return DROP_MALFORMED;
	if (ip->frag_off & bpf_htons(IPV4_MF | IPV4_FRAG_OFFSET)) {
		pkt->flags |= PKT_F_FRAG;
		pkt->frag_id = ip->id;
	}
	/* Only the first fragment carries the upper-layer header. */
	if (!(ip->frag_off & bpf_htons(IPV4_FRAG_OFFSET))) {
		pkt->l4_off = ETH_HLEN + hlen;
		pkt->flags |= PKT_F_L4;
	}
	return DROP_NONE;
}

/* Whether nexthdr is an IPv6 extension header we step over. */
static __always_inline int ipv6_is_ext(__u8 nexthdr)
{
	switch (nexthdr) {
	case NEXTHDR_HOP:
	case NEXTHDR_ROUTING:
	case NEXTHDR_DEST:
	case NEXTHDR_AUTH:
	case NEXTHDR_FRAGMENT:
		return 1;
	default:
		return 0;
	}
}

/* Step over IPv6 extension headers to the upper-layer header, with
 * bpf_skb_load_bytes since every offset depends on the previous header.
 * Sets PKT_F_L4 when the upper-layer header of this packet is at l4_off,
 * PKT_F_EXT_DEEP when the chain is longer than we look. */
static __always_inline __u8 ipv6_skip_ext(struct __sk_buff *skb, struct pkt *pkt, __u8 nexthdr)
{
	__u32 off = ETH_HLEN + sizeof(struct ipv6hdr);
	int i;

	for (i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
		__u8 hdr[4]; /* next header, length, and for fragments the offset */
		__u32 len;

		if (!ipv6_is_ext(nexthdr))
			break; /* an upper-layer protocol (or NEXTHDR_NONE, ESP) */
		if (off + sizeof(hdr) > pkt->l3_end ||
		    bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)))
			return DROP_MALFORMED;

		if (nexthdr == NEXTHDR_FRAGMENT) {
			/* The identification follows the first 4 bytes. */
			if (off + 8 > pkt->l3_end ||
			    bpf_skb_load_bytes(skb, off + 4, &pkt->frag_id, sizeof(pkt->frag_id)))
				return DROP_MALFORMED;
			pkt->flags |= PKT_F_FRAG;
			/* Fragment offset: the upper 13 bits of bytes 2-3. A
			 * non-first fragment carries no upper-layer header;
			 * the first one must carry the whole chain (RFC 7112). */
			if (((hdr[2] << 8) | hdr[3]) & 0xfff8) {
				pkt->ip_proto = hdr[0];
				return DROP_NONE;
			}
			len = 8;
		} else if (nexthdr == NEXTHDR_AUTH) {
			len = ((__u32)hdr[1] + 2) * 4; /* RFC 4302: 4-octet units, minus 2 */
		} else {
			len = ((__u32)hdr[1] + 1) * 8;
		}
		nexthdr = hdr[0];
		off += len;
	}

	pkt->ip_proto = nexthdr;
	if (ipv6_is_ext(nexthdr)) {
		pkt->flags |= PKT_F_EXT_DEEP;
		return DROP_NONE;
	}
	pkt->l4_off = off;
	pkt->flags |= PKT_F_L4;
	return DROP_NONE;
}

static __always_inline __u8 parse_ipv6(struct __sk_buff *skb, struct pkt *pkt)
{
	struct ipv6hdr *ip6 = pkt_header(skb, ETH_HLEN, sizeof(*ip6));
	__u32 plen;
	__u8 nexthdr, type, reason;

	if (!ip6)
		return DROP_MALFORMED;

	pkt->family = 6;
	__builtin_memcpy(pkt->saddr.b, &ip6->saddr, 16);
	__builtin_memcpy(pkt->daddr.b, &ip6->daddr, 16);
	nexthdr = ip6->nexthdr;
	pkt->ip_proto = nexthdr;
	plen = bpf_ntohs(ip6->payload_len);
	if (ip6->version != 6)
		return DROP_MALFORMED;

	/* payload_len 0 is a jumbogram or a BIG TCP GSO packet: the skb
	 * length is the truth then. Otherwise the IPv6 header says where the
	 * packet ends, and Ethernet padding behind it is no header. */
	if (plen == 0) {
		pkt->l3_end = skb->len;
	} else {
		pkt->l3_end = ETH_HLEN + sizeof(*ip6) + plen;
		if (pkt->l3_end > skb->len)
			return DROP_MALFORMED;
	}

	reason = ipv6_skip_ext(skb, pkt, nexthdr);
	if (reason != DROP_NONE)
		return reason;

	if (pkt->ip_proto == IPPROTO_ICMPV6 && (pkt->flags & PKT_F_L4)) {
		/* The ICMPv6 header is 4 bytes plus at least 4 of body. */
		if (pkt->l4_off + 8 > pkt->l3_end ||
		    bpf_skb_load_bytes(skb, pkt->l4_off, &type, sizeof(type)))
			return DROP_MALFORMED;
		pkt->icmp6_type = type;
	}
	return DROP_NONE;
}

/* Parse what the policy needs. Returns DROP_NONE, or DROP_MALFORMED when a
 * header of a protocol we inspect is truncated or inconsistent; pkt holds
 * whatever could be read before that, for the drop event. Unknown
 * EtherTypes and tagged frames parse fine with family 0: what to do with
 * them is policy. */
__subprog int parse_packet(struct __sk_buff *skb, struct pkt *pkt __arg_nonnull)
{
	struct ethhdr *eth = pkt_header(skb, 0, ETH_HLEN);
	__u8 reason = DROP_NONE;

	if (!eth)
		return DROP_MALFORMED;

	__builtin_memcpy(pkt->dst_mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(pkt->src_mac, eth->h_source, ETH_ALEN);
	pkt->eth_proto = bpf_ntohs(eth->h_proto);
	pkt->flags |= PKT_F_ETH;

	if (pkt_vlan_tagged(skb, pkt->eth_proto)) {
		/* Not looked into: whether tagged frames pass is policy. */
		pkt->flags |= PKT_F_TAGGED;
		return DROP_NONE;
	}

	switch (pkt->eth_proto) {
	case ETH_P_IP:
		reason = parse_ipv4(skb, pkt);
		break;
	case ETH_P_IPV6:
		reason = parse_ipv6(skb, pkt);
		break;
	case ETH_P_ARP:
		return parse_arp(skb, pkt);
	default:
		return DROP_NONE;
	}
	if (reason == DROP_NONE)
		parse_l4_ports(skb, pkt);
	return reason;
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	/* Byte-wise: neither side is guaranteed to be 2- or 4-byte aligned,
	 * and clang folds this into a few compares anyway. */
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] &&
	       a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

/* Whether two 16-byte addresses (IPv6, or IPv4 in the first 4 bytes) are
 * equal. Both must be 4-byte aligned, as every address here is: union addr,
 * and the address fields of map values and keys (ADDR_ALIGNED). */
static __always_inline int addr16_equal(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/* Copy a 16-byte address, both ends 4-byte aligned as for addr16_equal:
 * four word moves, where __builtin_memcpy through a __u8 pointer is sixteen
 * byte moves. Not for addresses in the packet, which are only 2-byte
 * aligned behind an Ethernet header. */
static __always_inline void addr_copy(void *dst, const void *src)
{
	__u32 *d = dst;
	const __u32 *s = src;

	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
	d[3] = s[3];
}

static __always_inline int ipv6_is_unspecified(const union addr *a)
{
	return !(a->w[0] | a->w[1] | a->w[2] | a->w[3]);
}
