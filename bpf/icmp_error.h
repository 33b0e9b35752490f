/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ICMP errors about masqueraded flows. A router on the path that cannot
 * deliver a translated packet (too big for its next hop, TTL exceeded, no
 * route) answers the uplink address and quotes the packet as it saw it:
 * from the uplink address and NAT port. Unless the error is translated back,
 * the container never learns the path MTU (TCP connections over a smaller
 * MTU hang) and traceroute shows nothing.
 *
 * Translated, like Linux NAT does (nf_nat_icmp_reply_translation):
 *   - the outer destination becomes the container's address (IPv4 header
 *     checksum; for ICMPv6 the pseudo-header part of its checksum);
 *   - the quoted source address and port (or echo identifier) become the
 *     container's; the quoted IPv4 header checksum and the quoted L4
 *     checksum follow when the quote includes them (an ICMPv4 error quotes
 *     only 8 bytes of L4 header: a TCP checksum is usually cut off, a UDP
 *     one is there);
 *   - the ICMP checksum follows every quoted byte that changed.
 *
 * Errors translated: IPv4 destination unreachable (every code, including
 * fragmentation needed) and time exceeded; ICMPv6 destination unreachable,
 * packet too big and time exceeded. The quoted packet must be TCP, UDP or an
 * echo request directly behind its IP header (no IPv6 extension headers). */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "conntrack.h"
#include "csum.h"
#include "drop.h"
#include "nat.h"
#include "parse.h"

/* Whether pkt is an ICMP error we translate. */
static __always_inline int icmp_is_error(struct __sk_buff *skb, const struct pkt *pkt)
{
	__u8 type;

	if (!(pkt->flags & PKT_F_L4))
		return 0;
	if (pkt->family == 6)
		return pkt->ip_proto == IPPROTO_ICMPV6 &&
		       (pkt->icmp6_type == ICMPV6_DEST_UNREACH ||
			pkt->icmp6_type == ICMPV6_PKT_TOOBIG ||
			pkt->icmp6_type == ICMPV6_TIME_EXCEED);
	if (pkt->family != 4 || pkt->ip_proto != IPPROTO_ICMP)
		return 0;
	if (bpf_skb_load_bytes(skb, pkt->l4_off, &type, sizeof(type)))
		return 0;
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED;
}

/* The packet an ICMP error quotes, as far as the NAT cares. */
struct icmp_quote {
	union addr saddr; /* from the outside: the uplink address; from a container: the remote */
	union addr daddr;
	__u32 saddr_off;  /* offsets in the skb */
	__u32 daddr_off;
	__u32 check_off;  /* IPv4 header checksum; 0 for IPv6 */
	__u32 l4_off;
	struct nat_l4 l4; /* sport is the NAT port, or echo identifier;
			   * csum_off is 0 when the quote cuts it off */
	__sum16 check;    /* the quoted IPv4 header checksum */
	__u8 proto;
	__u8 pad;
};

/* Read the quoted IP header behind the 8-byte ICMP header. Returns 0 when
 * there is no usable quote. */
static __always_inline int icmp_quote_ip(struct __sk_buff *skb, const struct pkt *pkt, __u32 end,
					 struct icmp_quote *q)
{
	__u32 off = pkt->l4_off + 8;

	if (pkt->family == 4) {
		struct iphdr ip;

		if (off + sizeof(ip) > end || bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)))
			return 0;
		/* A non-first fragment quotes no L4 header. */
		if (ip.version != 4 || ip.ihl < 5 || (ip.frag_off & bpf_htons(IPV4_FRAG_OFFSET)))
			return 0;
		q->saddr.v4 = ip.saddr;
		q->daddr.v4 = ip.daddr;
		q->saddr_off = off + offsetof(struct iphdr, saddr);
		q->daddr_off = off + offsetof(struct iphdr, daddr);
		q->check_off = off + offsetof(struct iphdr, check);
		q->check = ip.check;
		q->proto = ip.protocol;
		q->l4_off = off + ip.ihl * 4;
	} else {
		struct ipv6hdr ip6;

		if (off + sizeof(ip6) > end || bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
			return 0;
		if (ip6.version != 6)
			return 0;
		addr_copy(q->saddr.b, &ip6.saddr);
		addr_copy(q->daddr.b, &ip6.daddr);
		q->saddr_off = off + offsetof(struct ipv6hdr, saddr);
		q->daddr_off = off + offsetof(struct ipv6hdr, daddr);
		q->check_off = 0;
		q->proto = ip6.nexthdr;
		q->l4_off = off + sizeof(ip6);
	}
	return 1;
}

/* Read the quoted L4 header: ports, or the identifier of an echo of the
 * given types (a request the container sent, a reply it received), and
 * where its checksum is if the quote includes it. */
static __always_inline int icmp_quote_l4(struct __sk_buff *skb, const struct pkt *pkt, __u32 end,
					 __u8 echo4, __u8 echo6, struct icmp_quote *q)
{
	__u32 off = q->l4_off;
	__u8 hdr[8];

	/* Every error quotes at least 8 bytes of it (RFC 792, RFC 4443). */
	if (off + sizeof(hdr) > end || bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)))
		return 0;
	if (!nat_l4_ports(hdr, off, q->proto, pkt->family, echo4, echo6, &q->l4))
		return 0;
	/* The quote may end before the checksum: an ICMPv4 error need quote
	 * only 8 bytes of L4 header, which cuts a TCP checksum off. */
	if (q->l4.csum_off + 2 > end)
		q->l4.csum_off = 0;
	return 1;
}

/* icmp_error_nat's working set, per CPU, off the stack it shares with the
 * program that calls it (as nat_scratch). */
struct icmp_scratch {
	struct icmp_quote q;
	struct nat_tuple t;
	union addr to, from;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct icmp_scratch);
} icmp_scratch SEC(".maps");

/* icmp_error_nat directions */
#define ICMP_ERR_FROM_OUTSIDE 0 /* uplink ingress: about a packet a container sent */
#define ICMP_ERR_FROM_CONTAINER 1 /* uplink egress: about a packet a container received */

/* Translate an ICMP error (icmp_is_error) about a masqueraded flow, in the
 * packet whose parse is the CPU's uplink_pkt() (a global function takes no
 * pointer to the stack). From the outside, the error is about a packet
 * the container sent: its outer destination and the quoted source (the NAT
 * address and port) go back to the container's. From a container, about a
 * packet it received (port unreachable, say): the outer source and the
 * quoted destination become the NAT address and port, so that no trace of
 * the container's address leaves. Returns 1 when translated, 0 when the
 * error is about no flow of ours, or -DROP_MALFORMED when the kernel refused
 * a rewrite (the packet may be half rewritten). A global function,
 * verified once for both programs. */
__subprog int icmp_error_nat(struct __sk_buff *skb, __u32 dir)
{
	struct icmp_scratch *s;
	struct nat_entry *e;
	const struct pkt *pkt;
	__u32 end, icmp_csum_off, addr_diff, acc, zero = 0, outer_off, quoted_off, port_off;
	__be16 to_port, from_port;
	int ret;

	s = bpf_map_lookup_elem(&icmp_scratch, &zero);
	pkt = uplink_pkt();
	if (!s || !pkt)
		return 0;
	__builtin_memset(&s->q, 0, sizeof(s->q));
	__builtin_memset(&s->to, 0, sizeof(s->to));
	if (pkt->family != 4 && pkt->family != 6)
		return 0;
	end = pkt->l3_end;
	icmp_csum_off = pkt->l4_off + 2;
	if (!icmp_quote_ip(skb, pkt, end, &s->q))
		return 0;
	if (dir == ICMP_ERR_FROM_OUTSIDE) {
		if (!icmp_quote_l4(skb, pkt, end, ICMP_ECHO, ICMPV6_ECHO_REQUEST, &s->q))
			return 0;
		/* We sent the quoted packet: from the address the error
		 * comes to. It went out translated (from the NAT address
		 * and port), so its flow's nat_in key is that of its reply. */
		if (!addr16_equal(s->q.saddr.b, pkt->daddr.b))
			return 0;
		nat_tuple_init(&s->t, &s->q.saddr, &s->q.daddr, s->q.l4.sport, s->q.l4.dport, s->q.proto, pkt->family);
		nat_in_key(&s->t, &s->t, s->q.saddr.b, s->q.l4.sport);
		e = bpf_map_lookup_elem(&nat_in, &s->t);
		s->from = s->q.saddr;
		from_port = s->q.l4.sport;
		outer_off = nat_daddr_off(pkt);
		quoted_off = s->q.saddr_off;
		port_off = s->q.l4.sport_off;
	} else {
		if (!icmp_quote_l4(skb, pkt, end, ICMP_ECHOREPLY, ICMPV6_ECHO_REPLY, &s->q))
			return 0;
		/* The container received the quoted packet: the reply of
		 * its flow, which the nat_out key is the reverse of. */
		if (!addr16_equal(s->q.daddr.b, pkt->saddr.b))
			return 0;
		if (nat_proto_is_echo(s->q.proto))
			nat_tuple_init(&s->t, &s->q.daddr, &s->q.saddr, s->q.l4.sport, 0, s->q.proto, pkt->family);
		else
			nat_tuple_init(&s->t, &s->q.daddr, &s->q.saddr, s->q.l4.dport, s->q.l4.sport, s->q.proto, pkt->family);
		e = bpf_map_lookup_elem(&nat_out, &s->t);
		s->from = s->q.daddr;
		from_port = nat_proto_is_echo(s->q.proto) ? s->q.l4.sport : s->q.l4.dport;
		outer_off = nat_saddr_off(pkt);
		quoted_off = s->q.daddr_off;
		port_off = s->q.l4.dport_off;
	}
	if (!e || ct_expired(e, nat_config_get(), bpf_ktime_get_ns()) ||
	    nat_stale(e, pkt->family, dir == ICMP_ERR_FROM_OUTSIDE ? e->addr : s->t.src))
		return 0;
	/* An error neither refreshes the flow nor changes its state: a
	 * stream of errors must not keep a dead flow alive. */
	addr_copy(s->to.b, e->addr);
	to_port = e->port;
	if (addr16_equal(s->from.b, s->to.b) && from_port == to_port)
		return 1; /* the node's own flow, as it is */

	/* The outer address (the same as the quoted one). */
	if (pkt->family == 4) {
		addr_diff = csum_diff32(s->from.v4, s->to.v4);
		ret = bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), s->from.v4,
					  s->to.v4, 4);
		if (!ret)
			/* ICMPv4 has no pseudo-header. */
			ret = bpf_skb_store_bytes(skb, outer_off, &s->to.v4, 4, 0);
	} else {
		addr_diff = bpf_csum_diff((__be32 *)s->from.b, 16, (__be32 *)s->to.b, 16, 0);
		ret = csum_l4_replace_ipv6_addr(skb, icmp_csum_off, outer_off, s->to.b, addr_diff, 0);
	}
	if (ret)
		return -DROP_MALFORMED;

	/* The quoted address, and the quoted IPv4 header checksum. acc sums
	 * what changed inside the ICMP message. */
	ret = bpf_skb_store_bytes(skb, quoted_off, s->to.b, pkt->family == 4 ? 4 : 16, 0);
	if (ret)
		return -DROP_MALFORMED;
	acc = addr_diff;
	if (pkt->family == 4) {
		__sum16 check = csum_update(s->q.check, addr_diff);

		if (bpf_skb_store_bytes(skb, s->q.check_off, &check, sizeof(check), 0))
			return -DROP_MALFORMED;
		acc = csum_add(acc, csum_diff16(s->q.check, check));
	}

	/* The quoted port or echo identifier. */
	if (bpf_skb_store_bytes(skb, port_off, &to_port, sizeof(to_port), 0))
		return -DROP_MALFORMED;
	acc = csum_add(acc, csum_diff16(from_port, to_port));

	/* The quoted L4 checksum, when quoted: it covers the port, and for
	 * all but ICMPv4 the pseudo-header with the source address. */
	if (s->q.l4.csum_off) {
		__sum16 old, new;
		__u32 diff = csum_diff16(from_port, to_port);

		if (bpf_skb_load_bytes(skb, s->q.l4.csum_off, &old, sizeof(old)))
			return -DROP_MALFORMED;
		if (s->q.proto != IPPROTO_ICMP)
			diff = csum_add(diff, addr_diff);
		/* A UDP checksum of 0 is none (IPv4): leave it. */
		if (!(s->q.proto == IPPROTO_UDP && old == 0)) {
			new = csum_update(old, diff);
			if (s->q.proto == IPPROTO_UDP && new == 0)
				new = 0xffff;
			if (bpf_skb_store_bytes(skb, s->q.l4.csum_off, &new, sizeof(new), 0))
				return -DROP_MALFORMED;
			acc = csum_add(acc, csum_diff16(old, new));
		}
	}

	/* The ICMP checksum, for the quoted bytes: a plain data change, no
	 * pseudo-header, so skb->csum needs no update either. */
	if (bpf_l4_csum_replace(skb, icmp_csum_off, 0, acc, 0))
		return -DROP_MALFORMED;
	return 1;
}
