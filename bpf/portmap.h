/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Port mapping (CNI runtimeConfig.portMappings, Mesos port_mappings):
 * destination NAT of traffic to a node address and a published host port
 * to the container that publishes it, and back.
 *
 *   uplink_ingress   from outside the node: portmap_dnat, before the
 *                    masquerade's reverse NAT.
 *   from_container   from a container to a node address (hairpin to
 *                    itself included): portmap_dnat; and the published
 *                    container's replies: portmap_reverse.
 *   to_container     a published-port flow passes isolation
 *                    (portmap_flow_exempt): the port is public.
 *   uplink_egress    the translated replies leave untouched
 *                    (portmap_reply_leaving).
 *   cgroup sock_addr the node's own sockets (to a node address, 127.0.0.1,
 *                    ::1): portmap_sock_connect, portmap_sock_peer.
 *
 * Connection tracking is the masquerade's (conntrack.h): a published-port
 * flow is a pair in nat_in/nat_out shaped exactly like a masqueraded flow
 * seen from the other side, so the two kinds share one port allocator and
 * never take each other's tuples, and reclaim, generations and GC treat
 * both alike:
 *
 *   nat_in   key: the request as it arrives (remote -> host address, host port)
 *            value: the container's address and port
 *   nat_out  key: the reply as the container sends it (container -> remote)
 *            value: the host address and port the reply leaves with
 *
 * Both halves carry PORTMAP_FLOW_F in nat_entry.uplink. The forward
 * direction always translates by the current mapping (port_maps), and the
 * pair is re-created whenever it names another container than the
 * mapping: a new mapping is never shadowed by stale state for the same
 * port, UDP included. The DEL of a container bumps its addresses'
 * generations (nat_gen), which kills its pairs at once.
 *
 * Hairpin (a container to its own published port): the source is also
 * translated, to the gateway of its network (portmap_value.hairpin_src), as
 * the reference portmap plugin masquerades it: a packet from its own
 * address would be a martian to the container. The pair is then keyed by
 * the gateway address on the container's side, so it has the same shape as
 * the others. Not translated: IP fragments after the first, ICMP errors
 * about a published-port flow, SCTP (the config refuses it). */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "conntrack.h"
#include "csum.h"
#include "drop.h"
#include "endpoint.h"
#include "nat.h"
#include "parse.h"

enum portmap_limits {
	PORTMAP_MAX_ENTRIES = 16384,
	PORTMAP_MAX_NODE_ADDRS = 1024,
	PORTMAP_MAX_SOCK_REV = 65536,
};

/* nat_entry.uplink of both halves of a published-port flow: PORTMAP_FLOW_F,
 * PORTMAP_HAIRPIN_F when the source was translated too, and the ifindex of
 * the publishing container's host veth in the low bits. A masqueraded
 * flow holds its uplink's ifindex there, which never reaches these bits. */
enum portmap_flow_flags {
	PORTMAP_FLOW_F = 1 << 30,
	PORTMAP_HAIRPIN_F = 1 << 29,
	PORTMAP_IFINDEX_MASK = (1 << 29) - 1,
};

/* A published port. addr all zero: every node address (portmap_node_addrs),
 * else the mapping's hostIP only. Padding must be zero: it is hashed. */
struct portmap_key {
	__u8 family; /* 4 or 6 */
	__u8 proto;  /* IPPROTO_TCP, IPPROTO_UDP */
	__be16 port; /* the host port */
	__u8 addr[16] ADDR_ALIGNED;
};

struct portmap_value {
	__u8 addr[16];        /* the container's address */
	__be16 port;          /* the container's port */
	__u8 pad[2];
	__u32 ifindex;        /* the container's host veth */
	__u8 hairpin_src[16]; /* the gateway of its network; zero: no hairpin source NAT */
	__u8 owner[32];       /* the owning attachment's endpoint_key (control plane only) */
	__u64 packets;        /* packets translated to the container */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PORTMAP_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct portmap_key);
	__type(value, struct portmap_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} port_maps SEC(".maps");

/* The node's addresses that publish every mapping without a hostIP: the
 * uplinks' addresses and the bridges' gateway addresses. Written by the
 * control plane at each ADD with port mappings. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PORTMAP_MAX_NODE_ADDRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ip_key);
	__type(value, __u8); /* 1 */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} portmap_node_addrs SEC(".maps");

/* [0], written by the control plane. enabled is set at the node's first
 * port mapping and never cleared: until then no program looks further, so a
 * node without published ports pays one array lookup per packet. The
 * socket programs are attached to a cgroup, which spans network
 * namespaces: they act only in the one of netns_cookie, the node's. */
struct portmap_config {
	__u64 netns_cookie;
	__u32 enabled;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct portmap_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} portmap_config SEC(".maps");

static __always_inline const struct portmap_config *portmap_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&portmap_config, &zero);
}

/* Whether the node has ever had a port mapping. */
static __always_inline int portmap_enabled(void)
{
	const struct portmap_config *c = portmap_config_get();

	return c && c->enabled;
}

/* What a node socket sent or connected to, by the container address it went
 * to, so that recvmsg and getpeername report the address the application
 * used.
 * An LRU: a lost entry costs the presentation of a source address, not a
 * translation. */
struct portmap_sock_key {
	__u64 cookie;  /* the socket's */
	__u8 addr[16]; /* the container's */
	__be16 port;
	__u8 family;
	__u8 pad[5];
};

struct portmap_sock_orig {
	__u8 addr[16] ADDR_ALIGNED; /* what the socket sent to */
	__be16 port;
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PORTMAP_MAX_SOCK_REV);
	__type(key, struct portmap_sock_key);
	__type(value, struct portmap_sock_orig);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} portmap_sock_rev SEC(".maps");

/* Per-CPU room for a packet's tuples, off the 512-byte stack (as
 * nat_scratch, which the uplink programs' call chains already fill). */
struct portmap_scratch {
	struct portmap_key k;
	struct nat_tuple it;
	struct nat_tuple ot;
	struct nat_l4 l4;
	struct nat_entry v;
	union addr src; /* the source on the container's side of the pair */
	union addr to;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct portmap_scratch);
} portmap_scratch SEC(".maps");

/* Results of portmap_dnat and portmap_reverse besides -reason. */
#define PORTMAP_NONE 0 /* none of ours: the packet goes on as it was */
#define PORTMAP_DONE 1 /* translated */
#define PORTMAP_REDIRECT 2 /* translated and redirected (portmap_route): return TC_ACT_REDIRECT */
#define PORTMAP_HAIRPIN 3  /* translated, back to the container it came from (portmap_hairpin) */

static __always_inline int portmap_is_node_addr(__u8 family, const union addr *a)
{
	struct ip_key key;

	__builtin_memset(&key, 0, sizeof(key));
	key.family = family;
	addr_copy(key.addr, a->b);
	return bpf_map_lookup_elem(&portmap_node_addrs, &key) != NULL;
}

static __always_inline int portmap_is_loopback(__u8 family, const union addr *a)
{
	if (family == 4)
		return a->b[0] == 127;
	return !a->w[0] && !a->w[1] && !a->w[2] && a->w[3] == bpf_htonl(1);
}

/* The mapping of family/proto/port to daddr: the one bound to daddr, else
 * the one on every node address when daddr is one (any_ok: the caller
 * already knows it is). k is scratch. */
static __always_inline struct portmap_value *portmap_find(struct portmap_key *k, __u8 family, __u8 proto,
							 __be16 port, const union addr *daddr, int any_ok)
{
	struct portmap_value *m;

	__builtin_memset(k, 0, sizeof(*k));
	k->family = family;
	k->proto = proto;
	k->port = port;
	addr_copy(k->addr, daddr->b);
	m = bpf_map_lookup_elem(&port_maps, k);
	if (m || !(any_ok || portmap_is_node_addr(family, daddr)))
		return m;
	__builtin_memset(k->addr, 0, 16);
	return bpf_map_lookup_elem(&port_maps, k);
}

/* Whether a 4-byte aligned address is all zero. */
static __always_inline int addr16_zero(const __u8 *b)
{
	const __u32 *w = (const __u32 *)b;

	return !(w[0] | w[1] | w[2] | w[3]);
}

static __always_inline int portmap_flow(const struct nat_entry *e)
{
	return (e->uplink & PORTMAP_FLOW_F) != 0;
}

/* Whether a live pair in nat_in still says what mapping m says. */
static __always_inline int portmap_pair_current(const struct nat_entry *in, const struct portmap_value *m,
						__u32 mark)
{
	return in->uplink == mark && in->port == m->port && addr16_equal(in->addr, m->addr);
}

/* This CPU's scratch for a packet port mapping may translate (TCP or UDP
 * with its header), else NULL. */
static __always_inline struct portmap_scratch *portmap_scratch_for(const struct pkt *pkt)
{
	__u32 zero = 0;

	if ((pkt->ip_proto != IPPROTO_TCP && pkt->ip_proto != IPPROTO_UDP) || !(pkt->flags & PKT_F_L4))
		return NULL;
	return bpf_map_lookup_elem(&portmap_scratch, &zero);
}

/* Write the pair of a new published-port flow from s (it, ot, v filled but
 * for the halves' own address and port): nat_in first, then nat_out; a
 * pair is whole or absent. Replaces what the keys held (dead pairs, or a
 * pair of an older mapping). Returns DROP_NONE or DROP_NAT_EXHAUSTED (the
 * table is full). Inlined: as a call of its own it would make
 * from_container's deepest chain of frames (from_container, portmap_dnat,
 * this, nat_usage_add) pass the verifier's 512 bytes. */
static __always_inline __u8 portmap_pair_create(struct portmap_scratch *s, const struct portmap_value *m,
					   const union addr *host, __be16 host_port)
{
	addr_copy(s->v.addr, m->addr);
	s->v.port = m->port;
	if (bpf_map_update_elem(&nat_in, &s->it, &s->v, BPF_ANY))
		return DROP_NAT_EXHAUSTED;
	addr_copy(s->v.addr, host->b);
	s->v.port = host_port;
	if (bpf_map_update_elem(&nat_out, &s->ot, &s->v, BPF_ANY)) {
		bpf_map_delete_elem(&nat_in, &s->it);
		return DROP_NAT_EXHAUSTED;
	}
	nat_ring_append(&s->ot);
	nat_usage_add(m->ifindex, 1);
	return DROP_NONE;
}

/* Destination NAT of a TCP or UDP packet to a published port, on the uplink
 * (from_ifindex 0) or from the container at from_ifindex. Returns
 * PORTMAP_DONE, PORTMAP_HAIRPIN (translated, to be sent back by
 * portmap_hairpin), PORTMAP_NONE (no mapping, or the tuple is a masqueraded
 * flow's reply, which conntrack owns first, as in netfilter) or -reason. */
__subprog int portmap_dnat(struct __sk_buff *skb, const struct pkt *pkt __arg_nonnull, __u32 from_ifindex)
{
	const struct nat_config *cfg;
	struct portmap_scratch *s;
	struct portmap_value *m;
	struct nat_entry *in, *out;
	__u32 mark;
	__u8 state, reason;
	__u64 now;
	int hairpin, live;

	s = portmap_scratch_for(pkt);
	if (!s)
		return PORTMAP_NONE;
	m = portmap_find(&s->k, pkt->family, pkt->ip_proto, bpf_htons(pkt->dport), &pkt->daddr, 0);
	if (!m)
		return PORTMAP_NONE;
	__builtin_memset(&s->l4, 0, sizeof(s->l4));
	if (nat_parse_l4(skb, pkt, ICMP_ECHO, ICMPV6_ECHO_REQUEST, &s->l4) != NAT_L4_PORTS)
		return -DROP_MALFORMED;

	hairpin = from_ifindex && from_ifindex == m->ifindex && !addr16_zero(m->hairpin_src);
	addr_copy(s->src.b, hairpin ? m->hairpin_src : pkt->saddr.b);
	mark = PORTMAP_FLOW_F | (hairpin ? PORTMAP_HAIRPIN_F : 0) | (m->ifindex & PORTMAP_IFINDEX_MASK);
	nat_tuple_init(&s->it, &s->src, &pkt->daddr, s->l4.sport, s->l4.dport, pkt->ip_proto, pkt->family);

	cfg = nat_config_get();
	now = bpf_ktime_get_ns();
	in = bpf_map_lookup_elem(&nat_in, &s->it);
	live = in && !ct_expired(in, cfg, now) && !nat_stale(in, pkt->family, in->addr);
	if (live && !portmap_flow(in))
		return PORTMAP_NONE;
	if (live && portmap_pair_current(in, m, mark)) {
		state = ct_next_state(in->state, pkt->ip_proto, s->l4.tcp_flags, 1, 0);
		ct_touch(in, state, now, skb->len);
		nat_out_key(&s->ot, &s->it, in);
		out = bpf_map_lookup_elem(&nat_out, &s->ot);
		if (out && nat_out_belongs(out, &s->it))
			ct_touch(out, state, now, 0);
	} else {
		/* What the tuple held goes whole: its nat_out half too. */
		if (in) {
			nat_out_key(&s->ot, &s->it, in);
			out = bpf_map_lookup_elem(&nat_out, &s->ot);
			if (out && nat_out_belongs(out, &s->it) && !bpf_map_delete_elem(&nat_out, &s->ot) &&
			    !nat_stale(in, pkt->family, in->addr))
				nat_usage_forget(pkt->family, in->addr);
		}
		__builtin_memset(&s->v, 0, sizeof(s->v));
		s->v.state = ct_next_state(0, pkt->ip_proto, s->l4.tcp_flags, 1, 1);
		s->v.uplink = mark;
		s->v.created_ns = now;
		s->v.last_seen_ns = now;
		s->v.flags = (__u8)((nat_gen_of(pkt->family, m->addr) & CT_GEN_MASK) << CT_GEN_SHIFT);
		s->v.packets = 1;
		s->v.bytes = skb->len;
		nat_tuple_init(&s->ot, (const union addr *)m->addr, &s->src, m->port, s->l4.sport,
			       pkt->ip_proto, pkt->family);
		reason = portmap_pair_create(s, m, &pkt->daddr, s->l4.dport);
		if (reason != DROP_NONE)
			return -reason;
	}
	__sync_fetch_and_add(&m->packets, 1);

	addr_copy(s->to.b, m->addr);
	if (nat_rewrite_dst(skb, pkt, &s->l4, &s->to, m->port))
		return -DROP_MALFORMED;
	if (!hairpin)
		return PORTMAP_DONE;
	if (nat_rewrite_src(skb, pkt, &s->l4, &s->src, s->l4.sport))
		return -DROP_MALFORMED;
	return PORTMAP_HAIRPIN;
}

/* Reverse NAT of what a published container sends on a live published-port
 * flow: the source becomes the host address and port the request went to
 * (and, for hairpin, the destination the container itself). Returns
 * PORTMAP_DONE, PORTMAP_HAIRPIN, PORTMAP_NONE or -reason. */
__subprog int portmap_reverse(struct __sk_buff *skb, const struct pkt *pkt __arg_nonnull)
{
	const struct nat_config *cfg;
	struct portmap_scratch *s;
	struct nat_entry *out, *in;
	__u8 state;
	__u64 now;

	s = portmap_scratch_for(pkt);
	if (!s)
		return PORTMAP_NONE;
	nat_tuple_init(&s->ot, &pkt->saddr, &pkt->daddr, bpf_htons(pkt->sport), bpf_htons(pkt->dport),
		       pkt->ip_proto, pkt->family);
	out = bpf_map_lookup_elem(&nat_out, &s->ot);
	if (!out || !portmap_flow(out))
		return PORTMAP_NONE;
	cfg = nat_config_get();
	now = bpf_ktime_get_ns();
	if (ct_expired(out, cfg, now) || nat_stale(out, pkt->family, s->ot.src))
		return PORTMAP_NONE;
	__builtin_memset(&s->l4, 0, sizeof(s->l4));
	if (nat_parse_l4(skb, pkt, ICMP_ECHOREPLY, ICMPV6_ECHO_REPLY, &s->l4) != NAT_L4_PORTS)
		return -DROP_MALFORMED;

	state = ct_next_state(out->state, pkt->ip_proto, s->l4.tcp_flags, 0, 0);
	ct_touch(out, state, now, skb->len);
	nat_in_key(&s->it, &s->ot, out->addr, out->port);
	in = bpf_map_lookup_elem(&nat_in, &s->it);
	if (in && nat_in_belongs(in, &s->ot))
		ct_touch(in, state, now, 0);

	addr_copy(s->to.b, out->addr);
	if (nat_rewrite_src(skb, pkt, &s->l4, &s->to, out->port))
		return -DROP_MALFORMED;
	if (!(out->uplink & PORTMAP_HAIRPIN_F))
		return PORTMAP_DONE;
	addr_copy(s->to.b, s->ot.src);
	if (nat_rewrite_dst(skb, pkt, &s->l4, &s->to, s->l4.dport))
		return -DROP_MALFORMED;
	return PORTMAP_HAIRPIN;
}

#ifndef AF_INET
#define AF_INET 2
#define AF_INET6 10
#endif

/* Route a translated packet from a container here, and send it on with
 * bpf_redirect_neigh, when its source became a node address (a reply's host
 * address, hairpin's gateway): the node's stack would drop it as a martian,
 * a local source arriving from outside. The reference's netfilter SNAT
 * runs after routing and never meets this; ours runs before it, at the
 * veth's tc ingress. Returns PORTMAP_REDIRECT, or PORTMAP_DONE to let the
 * stack route it when no route is found here. Not inlined: the lookup's
 * parameters get a frame of their own. */
__subprog int portmap_route(struct __sk_buff *skb, __u8 family)
{
	struct bpf_fib_lookup fib;
	int rc;

	__builtin_memset(&fib, 0, sizeof(fib));
	if (family == 4) {
		fib.family = AF_INET;
		if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, saddr), &fib.ipv4_src, 8))
			return PORTMAP_DONE;
	} else {
		fib.family = AF_INET6;
		if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, saddr), fib.ipv6_src, 32))
			return PORTMAP_DONE;
	}
	/* As forwarded from the veth: the lookup does not judge sources (an
	 * output lookup would bind the route to the veth). */
	fib.ifindex = skb->ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) || !fib.ifindex)
		return PORTMAP_DONE;
	bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
	return PORTMAP_REDIRECT;
}

/* Send a hairpin packet, translated, back into the container it came from:
 * out of its own veth (whose to_container sees it), from the gateway's MAC
 * (the frame's destination) to the container's (its source). The node's
 * stack would take it for a martian (a node address as source). */
static __always_inline int portmap_hairpin(struct __sk_buff *skb, const struct pkt *pkt)
{
	__u8 macs[12];

	__builtin_memcpy(macs, pkt->src_mac, 6);
	__builtin_memcpy(macs + 6, pkt->dst_mac, 6);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0))
		return -DROP_MALFORMED;
	bpf_redirect(skb->ifindex, 0);
	return PORTMAP_REDIRECT;
}

/* Deliver a translated reply to the container that holds its destination,
 * straight out of that container's veth (whose to_container sees it), from
 * the MAC the frame was sent to. Neither the bridge nor the node's stack
 * sees a packet whose source is a node address: the stack would drop it as
 * a martian, and a bridge whose frames netfilter inspects
 * (br_netfilter) loses it too (measured: IPv4 replies never arrived).
 * Returns PORTMAP_REDIRECT, or PORTMAP_NONE when no endpoint holds the
 * destination. */
__subprog int portmap_to_endpoint(struct __sk_buff *skb, const struct pkt *pkt __arg_nonnull)
{
	const struct ip_owner *owner = ip_owner_lookup(pkt->family, &pkt->daddr);
	const struct endpoint *ep;
	__u32 ifindex;
	__u8 macs[12];

	if (!owner)
		return PORTMAP_NONE;
	ifindex = owner->ifindex;
	ep = bpf_map_lookup_elem(&endpoints, &ifindex);
	if (!ep)
		return PORTMAP_NONE;
	__builtin_memcpy(macs, ep->mac, 6);
	__builtin_memcpy(macs + 6, pkt->dst_mac, 6);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0))
		return -DROP_MALFORMED;
	bpf_redirect(ifindex, 0);
	return PORTMAP_REDIRECT;
}

/* Port mapping for what a container sends, after anti-spoofing, on a node
 * with port mappings (portmap_enabled, which the caller asks first: on
 * every packet, a call saved): its replies on a published-port flow, then
 * requests to a published port.
 * Hairpin goes back by portmap_hairpin, a reply to a container by
 * portmap_to_endpoint, any other reply by portmap_route. Returns
 * PORTMAP_NONE, PORTMAP_DONE, PORTMAP_REDIRECT or -reason. */
__subprog int portmap_from_container(struct __sk_buff *skb, const struct pkt *pkt __arg_nonnull)
{
	int ret;

	ret = portmap_reverse(skb, pkt);
	if (ret == PORTMAP_DONE) {
		ret = portmap_to_endpoint(skb, pkt);
		return ret == PORTMAP_NONE ? portmap_route(skb, pkt->family) : ret;
	}
	if (ret == PORTMAP_NONE)
		ret = portmap_dnat(skb, pkt, skb->ifindex);
	return ret == PORTMAP_HAIRPIN ? portmap_hairpin(skb, pkt) : ret;
}

/* Port mapping for what arrives on an uplink (portmap_dnat). */
static __always_inline int portmap_from_outside(struct __sk_buff *skb, const struct pkt *pkt)
{
	return portmap_enabled() ? portmap_dnat(skb, pkt, 0) : PORTMAP_NONE;
}

/* Whether a TCP or UDP packet on its way to a container belongs to a
 * published-port flow: a request to the published container (nat_out holds
 * its reply's tuple) or a reply to the client container (nat_in holds its
 * request's). Such a packet passes isolation: a published port is public,
 * to containers of other networks too, as the reference's DNAT allows.
 * On an uplink's egress the same test finds a published container's reply,
 * translated already by portmap_reverse: the masquerade must not track it
 * as the node's own flow (whose tuple the pair holds). */
__subprog int portmap_flow_exempt(const struct pkt *pkt __arg_nonnull)
{
	struct nat_entry *e;
	struct nat_tuple t;

	if (!portmap_enabled() || (pkt->ip_proto != IPPROTO_TCP && pkt->ip_proto != IPPROTO_UDP) || !(pkt->flags & PKT_F_L4))
		return 0;
	nat_tuple_init(&t, &pkt->daddr, &pkt->saddr, bpf_htons(pkt->dport), bpf_htons(pkt->sport),
		       pkt->ip_proto, pkt->family);
	e = bpf_map_lookup_elem(&nat_out, &t);
	if (e && portmap_flow(e))
		return 1;
	e = bpf_map_lookup_elem(&nat_in, &t);
	return e && portmap_flow(e);
}

/* The socket programs: a node socket connecting or sending to a published
 * port on a node address, or on 127.0.0.1 / ::1, goes to the container's
 * address and port instead. The kernel then routes it to the bridge like
 * any packet of the node's, and the container's replies come back to the
 * socket directly; no packet needs translating. */
static __always_inline int portmap_node_netns(struct bpf_sock_addr *ctx)
{
	const struct portmap_config *c = portmap_config_get();

	return c && c->enabled && c->netns_cookie && c->netns_cookie == bpf_get_netns_cookie(ctx);
}

static __always_inline void portmap_sock_read(struct bpf_sock_addr *ctx, __u8 family, union addr *a)
{
	__builtin_memset(a, 0, sizeof(*a));
	if (family == 4) {
		a->v4 = ctx->user_ip4;
		return;
	}
	a->w[0] = ctx->user_ip6[0];
	a->w[1] = ctx->user_ip6[1];
	a->w[2] = ctx->user_ip6[2];
	a->w[3] = ctx->user_ip6[3];
}

static __always_inline void portmap_sock_write(struct bpf_sock_addr *ctx, __u8 family, const __u8 *b, __be16 port)
{
	union addr a;

	addr_copy(a.b, b);
	if (family == 4) {
		ctx->user_ip4 = a.v4;
	} else {
		ctx->user_ip6[0] = a.w[0];
		ctx->user_ip6[1] = a.w[1];
		ctx->user_ip6[2] = a.w[2];
		ctx->user_ip6[3] = a.w[3];
	}
	ctx->user_port = port;
}

/* connect and sendmsg of family. */
static __always_inline void portmap_sock_connect(struct bpf_sock_addr *ctx, __u8 family)
{
	struct portmap_sock_key rk = {};
	struct portmap_sock_orig orig = {};
	struct portmap_value *m;
	struct portmap_key k;
	union addr dst;
	__be16 port;
	__u8 proto = ctx->protocol;

	if ((proto != IPPROTO_TCP && proto != IPPROTO_UDP) || !portmap_node_netns(ctx))
		return;
	portmap_sock_read(ctx, family, &dst);
	port = (__be16)ctx->user_port;
	m = portmap_find(&k, family, proto, port, &dst, portmap_is_loopback(family, &dst));
	if (!m)
		return;
	rk.cookie = bpf_get_socket_cookie(ctx);
	addr_copy(rk.addr, m->addr);
	rk.port = m->port;
	rk.family = family;
	addr_copy(orig.addr, dst.b);
	orig.port = port;
	bpf_map_update_elem(&portmap_sock_rev, &rk, &orig, BPF_ANY);
	portmap_sock_write(ctx, family, m->addr, m->port);
}

/* recvmsg of a UDP socket, and getpeername: a peer that
 * portmap_sock_connect translated is reported as where the application
 * sent or connected to. */
static __always_inline void portmap_sock_peer(struct bpf_sock_addr *ctx, __u8 family)
{
	struct portmap_sock_key rk = {};
	const struct portmap_sock_orig *orig;
	union addr src;

	if (!portmap_node_netns(ctx))
		return;
	portmap_sock_read(ctx, family, &src);
	rk.cookie = bpf_get_socket_cookie(ctx);
	addr_copy(rk.addr, src.b);
	rk.port = (__be16)ctx->user_port;
	rk.family = family;
	orig = bpf_map_lookup_elem(&portmap_sock_rev, &rk);
	if (orig)
		portmap_sock_write(ctx, family, orig->addr, orig->port);
}
