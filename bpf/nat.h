/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Masquerade (ipMasq): source NAT of container traffic on the node's uplinks.
 *
 *   uplink_egress   tc egress of an uplink: a TCP, UDP or ICMP echo packet
 *                   from a container of a masqueraded network to a
 *                   destination outside the network's exclusions leaves
 *                   with the uplink's address and a NAT port (snat_egress).
 *   uplink_ingress  tc ingress of the uplink: replies get the container's
 *                   address and port back (rnat_ingress); ICMP errors about
 *                   a translated flow are translated too (icmp_error.h).
 *
 * The control plane fills nat_uplinks, nat_networks, nat_exclude and
 * nat_config; the programs own nat_out and nat_in (conntrack.h), which the
 * control plane only reads and garbage collects. */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/errno.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "conntrack.h"
#include "csum.h"
#include "drop.h"
#include "endpoint.h"
#include "parse.h"

/* How many NAT ports a new flow tries before it is dropped with
 * DROP_NAT_EXHAUSTED. Each try is a hash map insert; 32 keeps the worst case
 * cheap and the verifier's walk short, and with ports picked by hash a
 * table needs to be nearly full for 32 in a row to be taken. */
#define NAT_PORT_TRIES 32

/* Defaults for the zero port range of nat_config: every unprivileged port.
 * The node's own flows from the uplink address are tracked in the same
 * table as the containers' (snat_egress), so a container flow never takes
 * a 5-tuple the node uses, and a node flow that finds its tuple taken by a
 * container is itself moved to a free port: nothing needs reserving. */
enum nat_port_default {
	NAT_PORT_MIN_DEFAULT = 1024,
	NAT_PORT_MAX_DEFAULT = 65535,
};

/* nat_source_policy results besides 0 (none of ours) and -reason. */
#define NAT_SRC_CONTAINER 1
#define NAT_SRC_NODE 2 /* the node's own flow from the uplink address */

/* Capacities of the maps the control plane fills; the configuration is
 * checked against them before anything is written. */
enum nat_limits {
	NAT_MAX_UPLINKS = 64,
	NAT_MAX_NETWORKS = 4096,
	NAT_MAX_EXCLUDES = 4096,
};

/* ICMP message types we translate (RFC 792, RFC 4443). */
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PKT_TOOBIG 2
#define ICMPV6_TIME_EXCEED 3
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129

/* The node's address on an uplink: the source masqueraded packets leave
 * with. Keyed by the uplink's ifindex. */
struct nat_uplink {
	__u8 has_ipv4;
	__u8 has_ipv6;
	__u8 pad[2];
	__be32 ipv4;
	__u8 ipv6[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NAT_MAX_UPLINKS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); /* ifindex of the uplink */
	__type(value, struct nat_uplink);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_uplinks SEC(".maps");

/* nat_network.flags */
enum nat_network_flags {
	NAT_F_MASQUERADE = 1 << 0,
};

struct nat_network {
	__u32 flags; /* NAT_F_* */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NAT_MAX_NETWORKS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); /* network id, as struct endpoint.network */
	__type(value, struct nat_network);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_networks SEC(".maps");

/* Destinations a network never masquerades to: its own subnets and the
 * configured exclusions. prefixlen counts the bits after itself: 64 for
 * network, family and pad, which must match exactly, plus the address
 * prefix length. */
struct nat_exclude_key {
	__u32 prefixlen;
	__u32 network;
	__u8 family; /* 4 or 6 */
	__u8 pad[3];
	__u8 addr[16]; /* IPv4 in the first 4 bytes */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, NAT_MAX_EXCLUDES);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* required for LPM tries */
	__type(key, struct nat_exclude_key);
	__type(value, __u8); /* 1 */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_exclude SEC(".maps");

/* What the NAT needs of an L4 header, from struct pkt plus a few loads. */
struct nat_l4 {
	__u32 csum_off; /* the L4 checksum */
	__u32 sport_off; /* source port, or the echo identifier */
	__u32 dport_off; /* destination port, or the echo identifier */
	__be16 sport;   /* echo: the identifier */
	__be16 dport;   /* echo: 0 */
	__u8 tcp_flags;
	__u8 tcp_doff;  /* TCP header length, bytes */
	__u16 tcp_win;  /* host order, unscaled */
	__u32 tcp_seq;  /* host order */
	__u32 tcp_ack;
};

/* Per-CPU scratch space for a packet's NAT: the flow, its nat_in key and
 * the address it is translated to. Off the stack, which is 512 bytes for a
 * whole call chain, and the way to hand them to nat_create, a global
 * function (see there). A tc program runs to its end before the next one
 * runs on the CPU (packets it lets through are processed after it
 * returned), so one slot per CPU is enough. Not pinned: nothing outside a
 * program run reads it. */
struct nat_scratch {
	struct nat_tuple ot; /* the flow as the container sent it */
	struct nat_tuple it; /* its nat_in key; scratch for nat_create */
	union addr nat_addr; /* the uplink's address */
	struct nat_tuple rot; /* nat_reclaim's: the pair looked at; nat_create's:
			       * the nat_out key of the holder it reclaimed */
	struct nat_tuple rit;
	struct nat_l4 l4;     /* snat_egress's packet */
	struct nat_entry v;   /* nat_create's: the entry it inserts */
	__u8 reclaimed;       /* nat_create reclaimed a holder (rot) */
	__u8 pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nat_scratch);
} nat_scratch SEC(".maps");

/* Reclaim in the datapath. Every new pair's nat_out key is appended to
 * nat_ring, and every new flow first looks at NAT_RECLAIM_PER_CREATE slots
 * at its tail: a pair found reclaimable (ct_reclaimable) is deleted, both
 * halves, a live one goes back to the head, a deleted one is dropped from
 * the ring. The ring therefore follows the table oldest first, the work
 * per packet is bounded, and the table is kept clean by the flows that
 * need the room: no periodic sweep is needed. When an insert still finds
 * the table full, NAT_RECLAIM_ON_FULL more slots are looked at and the
 * insert tried again. Slots and positions are written without locks: a
 * torn key finds no entry and is skipped. */
#define NAT_RING_SLOTS NAT_MAX_ENTRIES
#define NAT_RECLAIM_PER_CREATE 2
#define NAT_RECLAIM_ON_FULL 8

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NAT_RING_SLOTS);
	__type(key, __u32);
	__type(value, struct nat_tuple);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_ring SEC(".maps");

struct nat_ring_pos {
	__u64 head; /* slots ever appended */
	__u64 tail; /* slots ever looked at */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nat_ring_pos);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_ring_pos SEC(".maps");

/* Per-container budget. Each container is guaranteed nat_quota.guaranteed
 * pairs; beyond that it may use the shared pool while the whole table holds
 * fewer than nat_quota.shared pairs. The defaults keep half the table for
 * guaranteed shares of 100 containers, so that one container flooding the
 * table leaves every other one room; a container over its budget is
 * dropped as DROP_NAT_QUOTA. The node's own flows have no budget. */
enum nat_quota_default {
	NAT_QUOTA_GUARANTEED_DEFAULT = NAT_MAX_ENTRIES / 2 / 100,
	NAT_QUOTA_SHARED_DEFAULT = NAT_MAX_ENTRIES / 2,
};

/* Written by the control plane; zero fields mean the defaults. */
struct nat_quota {
	__u32 guaranteed; /* pairs per container, always */
	__u32 shared;     /* total pairs below which a container may exceed it */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nat_quota);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_quota SEC(".maps");

/* How many pairs each container holds, keyed by its host veth's ifindex;
 * NAT_USAGE_TOTAL (no veth has ifindex 0) counts every container's. The
 * programs count what they create and delete, the control plane what it
 * deletes, and DEL removes the container's counter. */
enum nat_usage_key {
	NAT_USAGE_TOTAL = 0,
};

struct nat_usage {
	__s32 pairs; /* may dip below 0 after a counter was reset: read as 0 */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS + 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct nat_usage);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_usage SEC(".maps");

/* The usage counter of key, created at 0 if missing; NULL when the map is
 * full. */
static __always_inline struct nat_usage *nat_usage_get(__u32 key)
{
	struct nat_usage zero = {}, *u;

	u = bpf_map_lookup_elem(&nat_usage, &key);
	if (u)
		return u;
	bpf_map_update_elem(&nat_usage, &key, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&nat_usage, &key);
}

/* Count a pair of the container at ifindex in or out (delta 1 or -1).
 * Not inlined, as the helpers below: their keys get a frame of their own,
 * off the stack of the path that creates flows. */
__subprog int nat_usage_add(__u32 ifindex, __s32 delta)
{
	struct nat_usage *u = nat_usage_get(ifindex);

	if (u)
		__sync_fetch_and_add(&u->pairs, delta);
	u = nat_usage_get(NAT_USAGE_TOTAL);
	if (u)
		__sync_fetch_and_add(&u->pairs, delta);
	return 0;
}

/* Whether the container at ifindex may create another pair. */
__subprog int nat_quota_allows(__u32 ifindex)
{
	const struct nat_quota *q;
	const struct nat_usage *mine, *all;
	__u32 zero = 0, guaranteed, shared, total = NAT_USAGE_TOTAL;

	q = bpf_map_lookup_elem(&nat_quota, &zero);
	guaranteed = ct_or_default(q ? q->guaranteed : 0, NAT_QUOTA_GUARANTEED_DEFAULT);
	shared = ct_or_default(q ? q->shared : 0, NAT_QUOTA_SHARED_DEFAULT);
	mine = bpf_map_lookup_elem(&nat_usage, &ifindex);
	if (!mine || mine->pairs < (__s32)guaranteed)
		return 1;
	all = bpf_map_lookup_elem(&nat_usage, &total);
	return !all || all->pairs < (__s32)shared;
}

/* Count the deletion of a pair whose container address is addr. */
static __always_inline void nat_usage_forget(__u8 family, const __u8 *addr)
{
	const struct ip_owner *owner;

	/* The tuple's and entry's addresses are 4-byte aligned, as union addr. */
	owner = ip_owner_lookup(family, (const union addr *)addr);
	if (owner)
		nat_usage_add(owner->ifindex, -1);
}

/* The uplink programs parse a packet here rather than on the stack: the
 * frames of the NAT's call chains need the room (the BPF stack is 512
 * bytes for a whole chain). One per CPU, as nat_scratch. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pkt);
} uplink_pkts SEC(".maps");

/* This CPU's packet slot, zeroed for parse_packet; NULL cannot happen. */
static __always_inline struct pkt *uplink_pkt_fresh(void)
{
	__u32 zero = 0;
	struct pkt *pkt = bpf_map_lookup_elem(&uplink_pkts, &zero);

	if (pkt)
		__builtin_memset(pkt, 0, sizeof(*pkt));
	return pkt;
}

/* This CPU's packet as parsed by the running program. */
static __always_inline struct pkt *uplink_pkt(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&uplink_pkts, &zero);
}

/* Generations of container addresses (CT_GEN_* in conntrack.h): DEL bumps
 * the generation of each address of the container that goes, which makes
 * all its flows dead at once, in O(its addresses); the programs treat a
 * flow of another generation as expired (replies are not translated to the
 * address's next holder) and reclaim it as any expired pair. An address
 * without entry is of generation 0. */
struct nat_gen_key {
	__u8 addr[16] ADDR_ALIGNED; /* IPv4 in the first 4 bytes */
	__u8 family;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS * (MAX_IPV4 + MAX_IPV6));
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct nat_gen_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_gen SEC(".maps");

/* Per-CPU room for nat_gen_of's key: it is called deep in call chains. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nat_gen_key);
} nat_gen_scratch SEC(".maps");

/* The generation of container address addr, in CT_GEN_MASK bits. */
static __always_inline __u8 nat_gen_of(__u8 family, const __u8 *addr)
{
	struct nat_gen_key *k;
	const __u32 *g;
	__u32 zero = 0;

	k = bpf_map_lookup_elem(&nat_gen_scratch, &zero);
	if (!k)
		return 0;
	addr_copy(k->addr, addr);
	k->family = family;
	g = bpf_map_lookup_elem(&nat_gen, k);
	return g ? (__u8)(*g & CT_GEN_MASK) : 0;
}

/* Whether e, a half of a flow of the container address container, is of
 * an older generation of that address: its container went. */
static __always_inline int nat_stale(const struct nat_entry *e, __u8 family, const __u8 *container)
{
	return (e->flags >> CT_GEN_SHIFT) != nat_gen_of(family, container);
}

/* Whether a flow of proto is an ICMP echo, identified by one identifier
 * (sport) rather than two ports. */
static __always_inline int nat_proto_is_echo(__u8 proto)
{
	return proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6;
}

/* The fields of a tuple but its addresses; the padding is zeroed, it is
 * hashed with the rest. */
static __always_inline void nat_tuple_ports(struct nat_tuple *t, __be16 sport, __be16 dport,
					    __u8 proto, __u8 family)
{
	t->sport = sport;
	t->dport = dport;
	t->proto = proto;
	t->family = family;
	t->pad[0] = 0;
	t->pad[1] = 0;
}

/* The flow of a packet from src:sport to dst:dport; for ICMP echo sport is
 * the identifier and dport 0. */
static __always_inline void nat_tuple_init(struct nat_tuple *t, const union addr *src,
					   const union addr *dst, __be16 sport, __be16 dport,
					   __u8 proto, __u8 family)
{
	addr_copy(t->src, src->b);
	addr_copy(t->dst, dst->b);
	nat_tuple_ports(t, sport, dport, proto, family);
}

/* What the NAT needs of an L4 header at off whose first 8 bytes are hdr:
 * the ports of TCP and UDP, the identifier of an ICMP echo of type echo4
 * (IPv4) or echo6 (IPv6), and where they and the checksum are. Returns 0
 * for anything else. Both the packets the NAT translates and the packets
 * ICMP errors quote are read with it. */
static __always_inline int nat_l4_ports(const __u8 *hdr, __u32 off, __u8 proto, __u8 family,
					__u8 echo4, __u8 echo6, struct nat_l4 *l4)
{
	switch (proto) {
	case IPPROTO_TCP:
		l4->csum_off = off + 16;
		break;
	case IPPROTO_UDP:
		l4->csum_off = off + 6;
		break;
	case IPPROTO_ICMP:
		if (family != 4 || hdr[0] != echo4)
			return 0;
		goto echo;
	case IPPROTO_ICMPV6:
		if (family != 6 || hdr[0] != echo6)
			return 0;
	echo:
		/* type, code, checksum, identifier, sequence */
		l4->csum_off = off + 2;
		l4->sport_off = off + 4;
		l4->dport_off = off + 4;
		__builtin_memcpy(&l4->sport, &hdr[4], 2);
		l4->dport = 0;
		return 1;
	default:
		return 0;
	}
	l4->sport_off = off;
	l4->dport_off = off + 2;
	__builtin_memcpy(&l4->sport, &hdr[0], 2);
	__builtin_memcpy(&l4->dport, &hdr[2], 2);
	return 1;
}

/* What the NAT needs of pkt's L4 header, into l4. Returns NAT_L4_PORTS for
 * TCP, UDP and ICMP echo of the given types (request leaving, reply
 * arriving); NAT_L4_ADDRESS for every other protocol, translated by address
 * alone (ports 0; csum_off the L4 checksum that covers the addresses, or 0
 * for none); NAT_L4_NONE for a header of the former cut short, and for
 * packets without an L4 header (non-first fragments, nat_frag). */
#define NAT_L4_NONE 0
#define NAT_L4_PORTS 1
#define NAT_L4_ADDRESS 2

#ifndef IPPROTO_UDPLITE
#define IPPROTO_UDPLITE 136
#endif
#ifndef IPPROTO_DCCP
#define IPPROTO_DCCP 33
#endif

__subprog int nat_parse_l4(struct __sk_buff *skb, const struct pkt *pkt __arg_nonnull, __u8 echo4, __u8 echo6,
			   struct nat_l4 *l4 __arg_nonnull)
{
	__u32 off = pkt->l4_off, end = pkt->l3_end;
	__u8 hdr[8];

	if ((pkt->family != 4 && pkt->family != 6) || !(pkt->flags & PKT_F_L4))
		return NAT_L4_NONE;
	if (off + sizeof(hdr) > end || bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr))) {
		switch (pkt->ip_proto) {
		case IPPROTO_TCP:
		case IPPROTO_UDP:
		case IPPROTO_ICMP:
		case IPPROTO_ICMPV6:
			return NAT_L4_NONE; /* cut short */
		}
		return NAT_L4_ADDRESS; /* whatever it is, it has no checksum we know */
	}
	if (!nat_l4_ports(hdr, off, pkt->ip_proto, pkt->family, echo4, echo6, l4)) {
		/* Checksums over a pseudo-header with the addresses. */
		switch (pkt->ip_proto) {
		case IPPROTO_ICMPV6:
			l4->csum_off = off + 2;
			break;
		case IPPROTO_UDPLITE:
		case IPPROTO_DCCP:
			l4->csum_off = off + 6;
			break;
		}
		return NAT_L4_ADDRESS;
	}
	if (pkt->ip_proto == IPPROTO_TCP) {
		/* sequence, acknowledgment, data offset, flags, window */
		__u8 tcp[12];

		if (off + 20 > end || bpf_skb_load_bytes(skb, off + 4, tcp, sizeof(tcp)))
			return NAT_L4_NONE;
		l4->tcp_seq = bpf_ntohl(*(__be32 *)&tcp[0]);
		l4->tcp_ack = bpf_ntohl(*(__be32 *)&tcp[4]);
		l4->tcp_doff = (tcp[8] >> 4) * 4;
		l4->tcp_flags = tcp[9];
		l4->tcp_win = ((__u16)tcp[10] << 8) | tcp[11];
	}
	return NAT_L4_PORTS;
}

/* A walk of a TCP SYN's options for the window scale option, one option a
 * step (nat_wscale_step). */
struct nat_wscale_walk {
	__u8 opts[64];
	__u32 len; /* of the options, at most 40 */
	__u32 i;   /* where the next option starts, kept to 0-63 */
	int wscale;
};

/* One option of w: stops (1) at the end of the list, at a malformed
 * option or at the window scale, which it records. A bpf_loop step, so
 * that the verifier checks it once: written as a loop, it walked each of
 * the 40 iterations, a quarter of uplink_egress's verification. */
static long nat_wscale_step(__u64 n, void *ctx)
{
	struct nat_wscale_walk *w = ctx;
	__u32 i = w->i & 63;
	__u8 kind, olen;

	if (i >= w->len)
		return 1;
	kind = w->opts[i];
	if (kind == 0) /* end of options */
		return 1;
	olen = kind == 1 ? 1 : w->opts[(i + 1) & 63]; /* no-op: one byte */
	if (kind == 3 && olen == 3) {
		w->wscale = w->opts[(i + 2) & 63];
		return 1;
	}
	if (!olen || (olen < 2 && kind != 1))
		return 1;
	w->i = (i + olen) & 63;
	return 0;
}

/* The window scale option of a TCP SYN whose header (doff bytes, options
 * included) is at off: 0 when it has none, which means the sender's
 * windows are unscaled (RFC 7323). Not inlined: the option buffer gets a
 * frame of its own. At most 40 bytes of options, each at least one. */
__subprog int nat_tcp_wscale(struct __sk_buff *skb, __u32 off, __u32 doff, __u32 end)
{
	struct nat_wscale_walk w = {};

	if (doff <= 20 || doff > 60 || off + doff > end)
		return 0;
	w.len = (doff - 20) & 63; /* bounds the verifier sees */
	if (!w.len || w.len > 40 || bpf_skb_load_bytes(skb, off + 20, w.opts, w.len))
		return 0;
	bpf_loop(40, nat_wscale_step, &w, 0);
	return w.wscale;
}

/* Multicast and broadcast are link-local business, never masqueraded. A
 * subnet's directed broadcast is in the network's exclusions. */
static __always_inline int nat_dst_is_group(const struct pkt *pkt)
{
	if (pkt->family == 4)
		return (pkt->daddr.b[0] & 0xf0) == 0xe0 || pkt->daddr.v4 == 0xffffffff;
	return pkt->daddr.b[0] == 0xff;
}

static __always_inline int nat_excluded(__u32 network, const struct pkt *pkt)
{
	struct nat_exclude_key key;

	__builtin_memset(&key, 0, sizeof(key));
	key.prefixlen = 64 + (pkt->family == 4 ? 32 : 128);
	key.network = network;
	key.family = pkt->family;
	addr_copy(key.addr, pkt->daddr.b);
	return bpf_map_lookup_elem(&nat_exclude, &key) != NULL;
}

/* The key of a flow's nat_in half from its nat_out key and entry: the reply
 * comes from the remote to the NAT address and port. it may be ot
 * (rewritten in place): every field of ot is read before it is written. */
static __always_inline void nat_in_key(struct nat_tuple *it, const struct nat_tuple *ot,
				       const __u8 *nat_addr, __be16 nat_port)
{
	int echo = nat_proto_is_echo(ot->proto);

	addr_copy(it->src, ot->dst);
	addr_copy(it->dst, nat_addr);
	nat_tuple_ports(it, echo ? nat_port : ot->dport, echo ? 0 : nat_port, ot->proto, ot->family);
}

/* The key of a flow's nat_out half from its nat_in key and entry. ot may
 * be it (rewritten in place): every field of it is read before written. */
static __always_inline void nat_out_key(struct nat_tuple *ot, const struct nat_tuple *it,
					const struct nat_entry *in)
{
	__be16 remote_port = nat_proto_is_echo(it->proto) ? 0 : it->sport;

	addr_copy(ot->dst, it->src);
	addr_copy(ot->src, in->addr);
	/* proto and family are the same in both halves. */
	nat_tuple_ports(ot, in->port, remote_port, it->proto, it->family);
}

/* The NAT port of a nat_in key. */
static __always_inline __be16 nat_in_port(const struct nat_tuple *it)
{
	return nat_proto_is_echo(it->proto) ? it->sport : it->dport;
}

/* Whether a nat_in entry is the other half of the flow ot. */
static __always_inline int nat_in_belongs(const struct nat_entry *in, const struct nat_tuple *ot)
{
	return in->port == ot->sport && addr16_equal(in->addr, ot->src);
}

/* Whether a nat_out entry is the other half of the nat_in key it. */
static __always_inline int nat_out_belongs(const struct nat_entry *out, const struct nat_tuple *it)
{
	return out->port == nat_in_port(it) && addr16_equal(out->addr, it->dst);
}

/* Picks where a flow starts looking for a port: the same flow gets the same
 * candidates every time (a flow whose entries expired gets its port back if
 * still free), different flows spread over the range. */
static __always_inline __u32 nat_hash(const struct nat_tuple *t)
{
	const __u32 *w = (const __u32 *)t;
	__u32 h = 0x9e3779b9;
	int i;

#pragma unroll
	for (i = 0; i < (int)(sizeof(*t) / 4); i++) {
		h ^= w[i];
		h *= 0x01000193;
		h ^= h >> 15;
	}
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	return h;
}

/* Whether the holder of a taken NAT port may be replaced: its flow expired
 * or is closing and idle (ct_reclaimable), its container went (nat_stale),
 * or it is this very flow's nat_in half whose nat_out half went missing
 * (adopted rather than leaked). */
static __always_inline int nat_in_replaceable(const struct nat_entry *in,
					      const struct nat_tuple *ot,
					      const struct nat_config *cfg, __u64 now)
{
	return ct_reclaimable(in, cfg, now) || nat_in_belongs(in, ot) ||
	       nat_stale(in, ot->family, in->addr);
}

/* Free the NAT port of nat_in key it for flow ot, if its holder is
 * replaceable: delete the holder's pair. it is clobbered (it becomes the
 * holder's nat_out key, to save stack): the caller rebuilds it. The nat_out
 * half is only deleted if it still points at this port (nat_addr, port): it
 * may have moved on. In the moment between the two deletes a late reply of
 * the old flow passes untranslated, and a packet of it finds a nat_out
 * without partner and starts over: the flow expired anyway. Returns whether
 * the port is free now (another CPU may still be faster). */
static __always_inline int nat_port_reclaim(struct nat_tuple *it, const struct nat_tuple *ot,
					    const union addr *nat_addr, __be16 port,
					    const struct nat_config *cfg, __u64 now, __u8 *reclaimed)
{
	struct nat_entry *in, *out;
	int counted;

	in = bpf_map_lookup_elem(&nat_in, it);
	if (!in)
		return 1; /* deleted meanwhile */
	if (!nat_in_replaceable(in, ot, cfg, now))
		return 0;
	/* A dead container's pair was uncounted by its DEL. */
	counted = !nat_stale(in, ot->family, in->addr);
	bpf_map_delete_elem(&nat_in, it);
	/* in stays readable until the end of the program (RCU). */
	nat_out_key(it, it, in);
	out = bpf_map_lookup_elem(&nat_out, it);
	if (out && out->port == port && addr16_equal(out->addr, nat_addr->b) &&
	    !bpf_map_delete_elem(&nat_out, it) && counted)
		*reclaimed = 1; /* it is the holder's nat_out key: the caller counts it */
	return 1;
}

/* nat_create results */
#define NAT_CREATED 0
#define NAT_EXISTS 1    /* another CPU created the flow meanwhile */
#define NAT_EXHAUSTED 2 /* no port free among the tries */
#define NAT_FULL 3      /* the table is full */

/* Append a new pair's nat_out key to the ring. */
static __always_inline void nat_ring_append(const struct nat_tuple *ot)
{
	struct nat_ring_pos *pos;
	struct nat_tuple *slot;
	__u32 zero = 0, i;

	pos = bpf_map_lookup_elem(&nat_ring_pos, &zero);
	if (!pos)
		return;
	i = (__u32)(__sync_fetch_and_add(&pos->head, 1) % NAT_RING_SLOTS);
	slot = bpf_map_lookup_elem(&nat_ring, &i);
	if (slot)
		__builtin_memcpy(slot, ot, sizeof(*slot));
}

/* Look at the slot at the ring's tail (see nat_ring): delete the pair it
 * names if reclaimable, put it back at the head if live. Returns 0, or 1
 * when the ring has nothing more to look at. A global function: checked
 * once, not in every iteration of nat_reclaim's loop. */
__subprog int nat_reclaim_one(void)
{
	const struct nat_config *cfg = nat_config_get();
	struct nat_ring_pos *pos;
	struct nat_scratch *s;
	struct nat_tuple *slot;
	struct nat_entry *out, *in;
	__u32 zero = 0, i;
	int stale;

	pos = bpf_map_lookup_elem(&nat_ring_pos, &zero);
	s = bpf_map_lookup_elem(&nat_scratch, &zero);
	/* Nothing appended since the last look: done. */
	if (!pos || !s || pos->tail >= pos->head)
		return 1;
	i = (__u32)(__sync_fetch_and_add(&pos->tail, 1) % NAT_RING_SLOTS);
	slot = bpf_map_lookup_elem(&nat_ring, &i);
	if (!slot)
		return 1;
	__builtin_memcpy(&s->rot, slot, sizeof(s->rot));
	out = bpf_map_lookup_elem(&nat_out, &s->rot);
	if (!out)
		return 0; /* deleted since: the slot is done */
	stale = nat_stale(out, s->rot.family, s->rot.src);
	if (!stale && !ct_reclaimable(out, cfg, bpf_ktime_get_ns())) {
		nat_ring_append(&s->rot);
		return 0;
	}
	nat_in_key(&s->rit, &s->rot, out->addr, out->port);
	in = bpf_map_lookup_elem(&nat_in, &s->rit);
	if (in && nat_in_belongs(in, &s->rot))
		bpf_map_delete_elem(&nat_in, &s->rit);
	/* A dead container's pairs were uncounted by its DEL. */
	if (!bpf_map_delete_elem(&nat_out, &s->rot) && !stale)
		nat_usage_forget(s->rot.family, s->rot.src);
	return 0;
}

/* Look at up to budget slots at the ring's tail (nat_reclaim_one). It runs
 * before nat_create (whose scratch tuples it leaves alone) rather than
 * inside it: their frames would not fit the stack together. Returns 0. */
__subprog int nat_reclaim(__u32 budget)
{
	__u32 n;

	for (n = 0; n < NAT_RECLAIM_ON_FULL; n++)
		if (n >= budget || nat_reclaim_one())
			break;
	return 0;
}

/* What nat_port_try found at a candidate port. */
#define NAT_TRY_CLAIMED 0     /* the flow's nat_in half is in: the port is its */
#define NAT_TRY_TAKEN 1       /* a live flow holds it (or it was freed meanwhile) */
#define NAT_TRY_REPLACEABLE 2 /* its holder may be reclaimed (nat_in_replaceable) */
#define NAT_TRY_FULL 3        /* nat_in is full */

/* Claim port (network order) on the uplink's address for the flow in this
 * CPU's nat_scratch (ot, nat_addr, v): insert its nat_in half (key left in
 * s->it) with BPF_NOEXIST, atomic against other CPUs, or adopt this flow's
 * own orphaned nat_in half (refreshed) rather than leak it and take a
 * second port. A global function: checked once, not for every state of
 * nat_create's walk. */
__subprog int nat_port_try(__u32 port)
{
	const struct nat_config *cfg = nat_config_get();
	struct nat_scratch *s;
	struct nat_entry *in;
	__u32 zero = 0;
	int ret;

	s = bpf_map_lookup_elem(&nat_scratch, &zero);
	if (!s)
		return NAT_TRY_FULL; /* cannot happen: an array */
	nat_in_key(&s->it, &s->ot, s->nat_addr.b, (__be16)port);
	ret = bpf_map_update_elem(&nat_in, &s->it, &s->v, BPF_NOEXIST);
	if (!ret)
		return NAT_TRY_CLAIMED;
	if (ret != -EEXIST)
		return NAT_TRY_FULL;
	in = bpf_map_lookup_elem(&nat_in, &s->it);
	if (!in)
		return NAT_TRY_TAKEN; /* freed meanwhile: leave it to the next try */
	if (nat_in_belongs(in, &s->ot))
		return bpf_map_update_elem(&nat_in, &s->it, &s->v, BPF_EXIST) ? NAT_TRY_TAKEN : NAT_TRY_CLAIMED;
	if (ct_reclaimable(in, cfg, bpf_ktime_get_ns()) || nat_stale(in, s->ot.family, in->addr))
		return NAT_TRY_REPLACEABLE;
	return NAT_TRY_TAKEN;
}

/* nat_create's walk over candidate ports, one bpf_loop step each: the
 * verifier checks a step once, whatever the number of tries. */
struct nat_port_search {
	__u32 pmin, range, start; /* the range, and the first candidate's offset */
	int result;               /* NAT_TRY_CLAIMED or NAT_TRY_FULL end the walk */
	__be16 port;              /* the port claimed */
	__be16 reclaim;           /* the first port whose holder may be reclaimed, or 0 */
};

/* Step i: the first candidate is the flow's own port, or its hash (a flow
 * whose entries expired gets its port back). A range of up to
 * NAT_PORT_TRIES ports is then walked whole; in a larger one the others
 * are random: walking consecutive ports would run through the runs of
 * taken ports that form long before the range is full, and report
 * exhaustion with most ports free (measured: at 60%). Returns 1 to stop. */
static long nat_port_search_step(__u64 i, void *ctx)
{
	struct nat_port_search *c = ctx;
	__u32 offset = (i && c->range > NAT_PORT_TRIES) ? bpf_get_prandom_u32() : c->start + (__u32)i;
	__be16 port;

	if (!c->range)
		return 1;
	port = bpf_htons((__u16)(c->pmin + offset % c->range));
	c->result = nat_port_try(port);
	if (c->result == NAT_TRY_CLAIMED || c->result == NAT_TRY_FULL) {
		c->port = port;
		return 1;
	}
	if (c->result == NAT_TRY_REPLACEABLE && !c->reclaim)
		c->reclaim = port;
	return 0;
}

/* Create the pair for the new flow in this CPU's nat_scratch (ot, nat_addr),
 * with state as its first state, on uplink, of generation gen of the
 * container's address; addr_only for a protocol translated by address
 * alone (port 0). The port is claimed by
 * inserting the nat_in half with BPF_NOEXIST, which is atomic against other
 * CPUs; the nat_out half follows, and if it cannot be inserted the claim is
 * rolled back, so a pair exists whole or not at all. A holder it reclaimed
 * is left in s->rot (s->reclaimed) for the caller to count; the caller also
 * indexes the new pair (nat_ring) and counts it.
 *
 * The first candidate is the flow's own port (or comes from hashing the
 * flow), the others are random. The loop
 * inserts, adopts this flow's own orphaned nat_in half, and remembers the
 * first candidate whose holder expired; the costlier reclaim of that one
 * runs at most once, after the loop, and only if no port was free.
 *
 * A global function: the verifier checks it once, on its own, instead of
 * once for every state its caller reaches the call in (which, through
 * NAT_PORT_TRIES iterations, cost hundreds of thousands of instructions).
 * Global functions take scalars only on older kernels, hence the scratch
 * map. Returns NAT_CREATED, NAT_EXISTS, NAT_EXHAUSTED or NAT_FULL; the caller looks
 * the nat_out entry up. */
__subprog int nat_create(__u32 uplink, __u32 state, __u32 addr_only, __u32 gen)
{
	const struct nat_config *cfg = nat_config_get();
	struct nat_port_search search = {};
	struct nat_scratch *s;
	__u32 pmin, pmax, range, start, tries, own, zero = 0;
	__u64 now = bpf_ktime_get_ns();
	__be16 port, reclaim = 0;
	int ret;

	s = bpf_map_lookup_elem(&nat_scratch, &zero);
	if (!s)
		return NAT_EXHAUSTED; /* cannot happen: an array */
	s->reclaimed = 0;
	__builtin_memset(&s->v, 0, sizeof(s->v));
	pmin = ct_or_default(cfg ? cfg->port_min : 0, NAT_PORT_MIN_DEFAULT);
	pmax = ct_or_default(cfg ? cfg->port_max : 0, NAT_PORT_MAX_DEFAULT);
	if (pmin > pmax) {
		/* A config no control plane writes on purpose: better
		 * the defaults than no masquerade at all. */
		pmin = NAT_PORT_MIN_DEFAULT;
		pmax = NAT_PORT_MAX_DEFAULT;
	}
	if (addr_only)
		/* A protocol without ports: its one "port" is 0. */
		pmin = pmax = 0;
	range = pmax - pmin + 1;
	tries = range < NAT_PORT_TRIES ? range : NAT_PORT_TRIES;
	/* Port preservation, as netfilter does: the flow keeps its own port
	 * (echo: identifier) when it is in the range and the translated
	 * 5-tuple is free. Otherwise a hash of the flow picks the start. */
	own = bpf_ntohs(s->ot.sport);
	if (own >= pmin && own <= pmax)
		start = own - pmin;
	else
		start = nat_hash(&s->ot) % range;

	/* v is the nat_in value while claiming, the nat_out value after. */
	addr_copy(s->v.addr, s->ot.src);
	s->v.port = s->ot.sport;
	s->v.state = (__u8)state;
	s->v.uplink = uplink;
	s->v.created_ns = now;
	s->v.last_seen_ns = now;
	s->v.flags = (__u8)((gen & CT_GEN_MASK) << CT_GEN_SHIFT);

	search.pmin = pmin;
	search.range = range;
	search.start = start;
	search.result = NAT_TRY_TAKEN;
	bpf_loop(tries, nat_port_search_step, &search, 0);
	port = search.port;
	if (search.result == NAT_TRY_CLAIMED)
		goto claimed;
	if (search.result == NAT_TRY_FULL)
		return NAT_FULL; /* no other port does better */
	reclaim = search.reclaim;
	if (!reclaim)
		return NAT_EXHAUSTED;
	port = reclaim;
	nat_in_key(&s->it, &s->ot, s->nat_addr.b, port);
	if (!nat_port_reclaim(&s->it, &s->ot, &s->nat_addr, port, cfg, now, &s->reclaimed))
		return NAT_EXHAUSTED; /* refreshed meanwhile */
	if (s->reclaimed)
		__builtin_memcpy(&s->rot, &s->it, sizeof(s->rot));
	nat_in_key(&s->it, &s->ot, s->nat_addr.b, port);
	if (bpf_map_update_elem(&nat_in, &s->it, &s->v, BPF_NOEXIST))
		return NAT_EXHAUSTED; /* another CPU took it */

claimed:
	addr_copy(s->v.addr, s->nat_addr.b);
	s->v.port = port;
	ret = bpf_map_update_elem(&nat_out, &s->ot, &s->v, BPF_NOEXIST);
	if (!ret)
		return NAT_CREATED;
	/* Roll back: never leave half a pair. */
	bpf_map_delete_elem(&nat_in, &s->it);
	return ret == -EEXIST ? NAT_EXISTS : NAT_FULL;
}

/* Rewrite one address and one port of the packet and fix the checksums:
 * the IPv4 header's, and the L4 checksum for the pseudo-header (not ICMPv4,
 * which has none) and the port; l4->csum_off 0 is no L4 checksum to fix
 * (address-only translation, later fragments). from/to are the address, old_port/new_port
 * the port (or echo identifier), all in network order. Returns 0 or a
 * negative error, after which the packet may be half rewritten. */
static __always_inline int nat_rewrite_at(struct __sk_buff *skb, const struct pkt *pkt,
					  const struct nat_l4 *l4, __u32 addr_off,
					  const union addr *from, const union addr *to, __u32 port_off,
					  __be16 old_port, __be16 new_port)
{
	/* A UDP checksum of 0 means "none" (IPv4) and must stay 0, and a
	 * computed 0 must be sent as 0xffff. */
	__u64 mangled = pkt->ip_proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	int ret;

	/* The node's own flows usually translate to themselves. */
	if (old_port == new_port && addr16_equal(from->b, to->b))
		return 0;

	if (pkt->family == 4) {
		ret = bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), from->v4,
					  to->v4, 4);
		if (ret)
			return ret;
		if (pkt->ip_proto != IPPROTO_ICMP && l4->csum_off) {
			ret = bpf_l4_csum_replace(skb, l4->csum_off, from->v4, to->v4,
						  BPF_F_PSEUDO_HDR | mangled | 4);
			if (ret)
				return ret;
		}
		ret = bpf_skb_store_bytes(skb, addr_off, &to->v4, 4, 0);
	} else if (l4->csum_off) {
		__u32 diff = bpf_csum_diff((__be32 *)from->b, 16, (__be32 *)to->b, 16, 0);

		ret = csum_l4_replace_ipv6_addr(skb, l4->csum_off, addr_off, to->b, diff, mangled);
	} else {
		/* No L4 checksum here (a later fragment, a protocol without
		 * one): only skb->csum follows the address. */
		ret = bpf_skb_store_bytes(skb, addr_off, to->b, 16, BPF_F_RECOMPUTE_CSUM);
	}
	if (ret)
		return ret;
	if (old_port == new_port)
		return 0;
	/* Not a pseudo-header field: with CHECKSUM_PARTIAL the helper
	 * rightly leaves the field alone, the device sums the port. */
	ret = bpf_l4_csum_replace(skb, l4->csum_off, old_port, new_port, mangled | 2);
	if (ret)
		return ret;
	return bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0);
}

static __always_inline __u32 nat_saddr_off(const struct pkt *pkt)
{
	return pkt->family == 4 ? ETH_HLEN + offsetof(struct iphdr, saddr) :
				  ETH_HLEN + offsetof(struct ipv6hdr, saddr);
}

static __always_inline __u32 nat_daddr_off(const struct pkt *pkt)
{
	return pkt->family == 4 ? ETH_HLEN + offsetof(struct iphdr, daddr) :
				  ETH_HLEN + offsetof(struct ipv6hdr, daddr);
}

/* The two ways the NAT rewrites a packet (nat_rewrite_at), as global
 * functions: the verifier checks each once rather than at each of the
 * callers' states. The source address becomes *to and the source port (or
 * echo identifier) new_port; or the destination address and port (an
 * echo's identifier, which both directions share). l4 is the packet's, as
 * nat_parse_l4 read it; new_port equal to the packet's leaves the port as
 * it is. Network order. Returns 0 or a negative error, after which the
 * packet may be half rewritten. */
__subprog int nat_rewrite_src(struct __sk_buff *skb, const struct pkt *pkt __arg_nonnull,
			      const struct nat_l4 *l4 __arg_nonnull, const union addr *to __arg_nonnull,
			      __u32 new_port)
{
	return nat_rewrite_at(skb, pkt, l4, nat_saddr_off(pkt), &pkt->saddr, to, l4->sport_off, l4->sport,
			      (__be16)new_port);
}

__subprog int nat_rewrite_dst(struct __sk_buff *skb, const struct pkt *pkt __arg_nonnull,
			      const struct nat_l4 *l4 __arg_nonnull, const union addr *to __arg_nonnull,
			      __u32 new_port)
{
	__be16 old = nat_proto_is_echo(pkt->ip_proto) ? l4->sport : l4->dport;

	return nat_rewrite_at(skb, pkt, l4, nat_daddr_off(pkt), &pkt->daddr, to, l4->dport_off, old,
			      (__be16)new_port);
}

/* The uplink's address of family into *addr; 0 when it has none. */
static __always_inline int nat_uplink_addr(const struct nat_uplink *up, __u8 family, union addr *addr)
{
	if (family == 4) {
		if (!up->has_ipv4)
			return 0;
		addr->v4 = up->ipv4;
		return 1;
	}
	if (!up->has_ipv6)
		return 0;
	addr_copy(addr->b, up->ipv6);
	return 1;
}

/* Whether a packet leaving on uplink is masqueraded: its source is a
 * container of a network with NAT_F_MASQUERADE, its destination neither a
 * group nor excluded for that network. Returns NAT_SRC_CONTAINER and the
 * address to translate to in *nat_addr; NAT_SRC_NODE for the node's own
 * packets from the uplink address (*nat_addr is that address); 0 when the
 * packet is none of ours; or minus the reason to drop it. *ep_ifindex is the container's veth once known.
 *
 * Not inlined: the keys of its lookups get a frame of their own, off the
 * stack of the path that creates flows (the BPF stack is 512 bytes for a
 * whole call chain). */
__subprog int nat_source_policy(const struct pkt *pkt __arg_nonnull, __u32 uplink,
				union addr *nat_addr __arg_nonnull, __u32 *ep_ifindex __arg_nonnull)
{
	const struct nat_uplink *up;
	const struct nat_network *net;
	const struct ip_owner *owner;
	__u32 network;

	owner = ip_owner_lookup(pkt->family, &pkt->saddr);
	if (!owner) {
		/* The node's own traffic from the uplink address is tracked
		 * (NAT_SRC_NODE), translated to itself while its tuple is
		 * free; anything else (routed, other addresses) is not
		 * ours. */
		up = bpf_map_lookup_elem(&nat_uplinks, &uplink);
		if (!up || nat_dst_is_group(pkt) || !nat_uplink_addr(up, pkt->family, nat_addr) ||
		    !addr16_equal(nat_addr->b, pkt->saddr.b))
			return 0;
		return NAT_SRC_NODE;
	}
	network = owner->network;
	*ep_ifindex = owner->ifindex;
	net = bpf_map_lookup_elem(&nat_networks, &network);
	if (!net || !(net->flags & NAT_F_MASQUERADE))
		return 0;
	if (nat_dst_is_group(pkt) || nat_excluded(network, pkt))
		return 0;

	/* Past this point the packet must be translated or dropped: sent
	 * as it is, it would leak the container's address and its replies
	 * would not find their way back. A missing uplink entry is an
	 * uplink without address. */
	up = bpf_map_lookup_elem(&nat_uplinks, &uplink);
	if (!up || !nat_uplink_addr(up, pkt->family, nat_addr))
		return -DROP_NAT_NO_ADDRESS;
	return NAT_SRC_CONTAINER;
}

/* Fragments. Only the first fragment of a datagram carries its L4 header,
 * so only it finds the datagram's flow; it leaves the address it was
 * translated to in nat_frags under (source, destination, protocol, IP
 * identification) as it arrived, and the later fragments get the same.
 * Per direction: FRAG_EGRESS for what containers send (the source is
 * rewritten), FRAG_INGRESS for replies (the destination). An LRU: an entry
 * is one value, never half of anything, and fragments of a datagram follow
 * each other within milliseconds. A later fragment of a masqueraded
 * container without entry (reordered ahead of the first, or the first
 * dropped) is dropped as DROP_NAT_UNTRACKED, never sent with the
 * container's address. */
#define NAT_MAX_FRAGS 16384
#define FRAG_EGRESS 0
#define FRAG_INGRESS 1

struct nat_frag_key {
	__u8 src[16];
	__u8 dst[16];
	__be32 id;
	__u8 proto;
	__u8 family;
	__u8 dir; /* FRAG_* */
	__u8 pad;
};

struct nat_frag {
	__u8 addr[16] ADDR_ALIGNED; /* the address the fragments get */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NAT_MAX_FRAGS);
	__type(key, struct nat_frag_key);
	__type(value, struct nat_frag);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_frags SEC(".maps");

static __always_inline void nat_frag_key_of(struct nat_frag_key *k, const struct pkt *pkt, __u8 dir)
{
	addr_copy(k->src, pkt->saddr.b);
	addr_copy(k->dst, pkt->daddr.b);
	k->id = pkt->frag_id;
	k->proto = pkt->ip_proto;
	k->family = pkt->family;
	k->dir = dir;
	k->pad = 0;
}

/* The first fragment of a datagram was translated to addr: remember it for
 * the others. Not inlined, as nat_frag_translate. */
__subprog int nat_frag_record(const struct pkt *pkt __arg_nonnull, __u8 dir, const union addr *addr __arg_nonnull)
{
	struct nat_frag_key k;
	struct nat_frag v;

	if (!(pkt->flags & PKT_F_FRAG))
		return 0;
	nat_frag_key_of(&k, pkt, dir);
	addr_copy(v.addr, addr->b);
	bpf_map_update_elem(&nat_frags, &k, &v, BPF_ANY);
	return 0;
}

/* Translate a later fragment (no L4 header) like its first: its source
 * (FRAG_EGRESS) or destination (FRAG_INGRESS) address. Returns 1 when
 * translated, 0 when no first fragment was seen, -1 when the kernel refused
 * the rewrite. Not inlined: its key gets a frame of its own. */
__subprog int nat_frag_translate(struct __sk_buff *skb, const struct pkt *pkt __arg_nonnull, __u8 dir)
{
	struct nat_frag_key k;
	const struct nat_frag *f;
	struct nat_l4 none = {};
	union addr to;

	nat_frag_key_of(&k, pkt, dir);
	f = bpf_map_lookup_elem(&nat_frags, &k);
	if (!f)
		return 0;
	addr_copy(to.b, f->addr);
	if (dir == FRAG_EGRESS)
		return nat_rewrite_src(skb, pkt, &none, &to, 0) ? -1 : 1;
	return nat_rewrite_dst(skb, pkt, &none, &to, 0) ? -1 : 1;
}

/* Source NAT of a packet leaving on an uplink. Returns DROP_NONE (the packet
 * was translated, or is none of ours) or the reason to drop it;
 * *ep_ifindex is set to the sending container's veth once known, for its
 * drop counters. Not inlined: the program's own frame (the parsed packet)
 * and this one's add up to less than inlined, with nat_create's or
 * icmp_error_nat's behind them. */
__subprog int snat_egress(struct __sk_buff *skb, const struct pkt *pkt __arg_nonnull, __u32 *ep_ifindex __arg_nonnull)
{
	const struct nat_config *cfg;
	struct nat_scratch *s;
	struct nat_entry *out, *in;
	__u32 uplink = skb->ifindex, zero = 0, owner;
	__u8 state, fail, gen;
	__u64 now;
	int ret, kind, stale;

	s = bpf_map_lookup_elem(&nat_scratch, &zero);
	if (!s)
		return DROP_NONE; /* cannot happen: an array */
	__builtin_memset(&s->l4, 0, sizeof(s->l4));
	kind = nat_parse_l4(skb, pkt, ICMP_ECHO, ICMPV6_ECHO_REQUEST, &s->l4);
	if (kind == NAT_L4_NONE && !(pkt->flags & PKT_F_FRAG && !(pkt->flags & PKT_F_L4)))
		/* A header cut short: from_container dropped those of
		 * containers (malformed), what is left is the node's. */
		return DROP_NONE;
	__builtin_memset(&s->nat_addr, 0, sizeof(s->nat_addr));
	ret = nat_source_policy(pkt, uplink, &s->nat_addr, ep_ifindex);
	if (ret <= 0)
		return (__u8)-ret;
	if (kind == NAT_L4_NONE) {
		/* A later fragment: as its first went, or not at all. */
		ret = nat_frag_translate(skb, pkt, FRAG_EGRESS);
		if (ret > 0)
			return DROP_NONE;
		if (ret < 0)
			return DROP_MALFORMED;
		return ret == 0 && *ep_ifindex ? DROP_NAT_UNTRACKED : DROP_NONE;
	}
	/* The node's own flows are tracked so that no container takes their
	 * tuple; one that finds no room passes as it is (its address is no
	 * secret, and the node's traffic is never starved by containers). */
	fail = ret == NAT_SRC_NODE ? DROP_NONE : DROP_NAT_EXHAUSTED;

	nat_tuple_init(&s->ot, &pkt->saddr, &pkt->daddr, s->l4.sport, s->l4.dport, pkt->ip_proto,
		       pkt->family);

	cfg = nat_config_get();
	now = bpf_ktime_get_ns();

	out = bpf_map_lookup_elem(&nat_out, &s->ot);
	if (out) {
		nat_in_key(&s->it, &s->ot, out->addr, out->port);
		in = bpf_map_lookup_elem(&nat_in, &s->it);
		stale = nat_stale(out, s->ot.family, s->ot.src);
		if (in && nat_in_belongs(in, &s->ot) && !ct_expired(out, cfg, now) && !stale &&
		    addr16_equal(out->addr, s->nat_addr.b)) {
			state = ct_next_state(out->state, pkt->ip_proto, s->l4.tcp_flags, 1, 0);
			ct_touch(out, state, now, skb->len);
			ct_touch(in, state, now, 0);
			if (pkt->ip_proto == IPPROTO_TCP && (s->l4.tcp_flags & TCP_FLAG_ACK))
				ct_window_update(in, s->l4.tcp_ack, s->l4.tcp_win);
			goto rewrite;
		}
		/* Expired, half a pair, or made for an uplink address that
		 * changed since: start over. The nat_in half goes only if
		 * it is ours; if another flow reclaimed the port it is
		 * theirs now. */
		if (in && nat_in_belongs(in, &s->ot))
			bpf_map_delete_elem(&nat_in, &s->it);
		if (!bpf_map_delete_elem(&nat_out, &s->ot) && ret == NAT_SRC_CONTAINER && !stale)
			nat_usage_add(*ep_ifindex, -1);
	}

	state = ct_next_state(0, pkt->ip_proto, s->l4.tcp_flags, 1, 1);
	owner = ret == NAT_SRC_CONTAINER ? *ep_ifindex : 0;
	/* Every new flow first cleans a little of the table (nat_ring). */
	nat_reclaim(NAT_RECLAIM_PER_CREATE);
	if (owner && !nat_quota_allows(owner)) {
		/* Over budget: its own reclaimable pairs may be next. */
		nat_reclaim(NAT_RECLAIM_ON_FULL);
		if (!nat_quota_allows(owner))
			return DROP_NAT_QUOTA;
	}
	gen = nat_gen_of(s->ot.family, s->ot.src);
	ret = nat_create(uplink, state, kind == NAT_L4_ADDRESS, gen);
	if (ret == NAT_FULL) {
		/* Make room, then try once more. */
		nat_reclaim(NAT_RECLAIM_ON_FULL);
		ret = nat_create(uplink, state, kind == NAT_L4_ADDRESS, gen);
	}
	if (s->reclaimed)
		nat_usage_forget(s->rot.family, s->rot.src);
	if (ret == NAT_EXHAUSTED || ret == NAT_FULL)
		return fail;
	if (ret == NAT_CREATED) {
		nat_ring_append(&s->ot);
		if (owner)
			nat_usage_add(owner, 1);
	}
	/* Created, or created by another CPU meanwhile: either way the
	 * pair is whole now (should it be gone already, the next packet
	 * tries again). */
	out = bpf_map_lookup_elem(&nat_out, &s->ot);
	if (!out)
		return fail;
	__sync_fetch_and_add(&out->packets, 1);
	__sync_fetch_and_add(&out->bytes, skb->len);
	if (pkt->ip_proto == IPPROTO_TCP) {
		/* The container's window, for judging the remote's RST and
		 * FIN: its scale travels in its SYN only. */
		nat_in_key(&s->it, &s->ot, out->addr, out->port);
		in = bpf_map_lookup_elem(&nat_in, &s->it);
		if (in && nat_in_belongs(in, &s->ot)) {
			if (s->l4.tcp_flags & TCP_FLAG_SYN)
				ct_window_init(in, nat_tcp_wscale(skb, pkt->l4_off, s->l4.tcp_doff,
								  pkt->l3_end));
			if (s->l4.tcp_flags & TCP_FLAG_ACK)
				ct_window_update(in, s->l4.tcp_ack, s->l4.tcp_win);
		}
	}

rewrite:
	if (nat_rewrite_src(skb, pkt, &s->l4, &s->nat_addr, out->port))
		/* The kernel refused a write (a packet shorter than its
		 * headers, no memory to unclone): it may be half rewritten. */
		return DROP_MALFORMED;
	nat_frag_record(pkt, FRAG_EGRESS, &s->nat_addr);
	return DROP_NONE;
}

/* Reverse NAT of a reply arriving on an uplink: a packet matching a live
 * nat_in entry goes on to the container's address and port (*translated
 * set). Returns DROP_NONE, or DROP_MALFORMED when the kernel refused a
 * rewrite. */
static __always_inline __u8 rnat_ingress(struct __sk_buff *skb, const struct pkt *pkt, int *translated)
{
	const struct nat_config *cfg;
	struct nat_entry *in, *out;
	struct nat_tuple it, ot;
	struct nat_l4 l4 = {};
	union addr orig = {};
	__be16 orig_port;
	__u8 state;
	__u64 now;
	int kind;

	kind = nat_parse_l4(skb, pkt, ICMP_ECHOREPLY, ICMPV6_ECHO_REPLY, &l4);
	if (kind == NAT_L4_NONE) {
		if ((pkt->flags & PKT_F_FRAG) && !(pkt->flags & PKT_F_L4) &&
		    nat_frag_translate(skb, pkt, FRAG_INGRESS) < 0)
			return DROP_MALFORMED;
		return DROP_NONE;
	}

	nat_tuple_init(&it, &pkt->saddr, &pkt->daddr, l4.sport, l4.dport, pkt->ip_proto, pkt->family);

	in = bpf_map_lookup_elem(&nat_in, &it);
	if (!in)
		return DROP_NONE;
	cfg = nat_config_get();
	now = bpf_ktime_get_ns();
	if (ct_expired(in, cfg, now) || nat_stale(in, it.family, in->addr))
		/* Treated as absent: the host gets the packet as sent (a
		 * dead container's replies never reach its address's next
		 * holder). */
		return DROP_NONE;

	/* A RST or FIN outside the container's window is no business of the
	 * flow's (a blind attacker's, or stale): it neither closes nor
	 * refreshes it. It still goes on to the container, whose TCP judges
	 * it again (RFC 5961). */
	if (it.proto != IPPROTO_TCP || !(l4.tcp_flags & (TCP_FLAG_RST | TCP_FLAG_FIN)) ||
	    ct_in_window(in, l4.tcp_seq)) {
		state = ct_next_state(in->state, it.proto, l4.tcp_flags, 0, 0);
		ct_touch(in, state, now, skb->len);
		nat_out_key(&ot, &it, in);
		out = bpf_map_lookup_elem(&nat_out, &ot);
		if (out && nat_out_belongs(out, &it))
			ct_touch(out, state, now, 0);
	}

	addr_copy(orig.b, in->addr);
	orig_port = in->port;
	/* The NAT port is the destination port, or the echo identifier. */
	if (nat_rewrite_dst(skb, pkt, &l4, &orig, orig_port))
		return DROP_MALFORMED;
	nat_frag_record(pkt, FRAG_INGRESS, &orig);
	*translated = 1;
	return DROP_NONE;
}
