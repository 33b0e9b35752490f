/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The fast path between containers of one bridge. A unicast IP frame a
 * container sends to the MAC of another endpoint on the same bridge is
 * decided completely by the sender's program, the receiver's policy and
 * counters included, and delivered with bpf_redirect_peer straight to the
 * receiver's container interface: past the bridge and the receiver's host
 * veth, whose to_container program therefore never sees it.
 *
 * Everything else takes the bridge: broadcast and multicast, ARP, frames to
 * the gateway or to an unknown MAC, VLAN-tagged frames, and endpoints whose
 * control plane did not set EP_F_FAST_PATH (ports with VLANs or port
 * isolation, `datapath.fastPath: false`, endpoints of earlier builds).
 * Where br_netfilter hands bridged frames to netfilter, only flows it does
 * not track skip the bridge (EP_F_BRIDGE_NF, below). */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "conntrack.h"
#include "endpoint.h"
#include "isolation.h"
#include "nat.h"
#include "parse.h"
#include "stats.h"
#include "verdict.h"

/* Frames each endpoint sent by the fast path, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); /* ifindex of the sender's host veth */
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fast_path_stats SEC(".maps");

static __always_inline void fast_path_count(__u32 ifindex)
{
	__u64 *n, one = 1;

	n = bpf_map_lookup_elem(&fast_path_stats, &ifindex);
	if (n)
		*n += 1;
	else
		bpf_map_update_elem(&fast_path_stats, &ifindex, &one, BPF_NOEXIST);
}

/* The receiving endpoint's host veth for a frame that may take the fast
 * path, or 0. ep sent it (anti-spoofing and its own isolation passed);
 * owners are its MACs' owners as far as isolation looked them up. */
static __always_inline __u32 fast_path_peer(const struct endpoint *ep, const struct pkt *pkt,
					    __u32 self_ifindex, struct frame_owners *owners)
{
	const struct mac_owner *self, *peer;

	if (!(ep->flags & EP_F_FAST_PATH) || (pkt->flags & PKT_F_TAGGED) || mac_is_group(pkt->dst_mac))
		return 0;
	if (pkt->family != 4 && pkt->family != 6)
		return 0;
	peer = mac_owner_memo(&owners->dst, pkt->dst_mac);
	if (!peer || peer->ifindex == self_ifindex || !peer->bridge)
		return 0;
	self = mac_owner_memo(&owners->src, ep->mac);
	if (!self || self->bridge != peer->bridge)
		return 0;
	return peer->ifindex;
}

/* ------------------------------------------------------------------------
 * The routed fast path: what the node would route between a container and
 * the outside world (or between containers of two bridges) is routed here,
 * by the kernel's FIB, and sent on with bpf_redirect_neigh (to an uplink)
 * or bpf_redirect_peer (into a container), past the bridge, the second veth
 * hop and the host's IP forwarding.
 *
 * Only packets the FIB decides completely: the lookup must succeed (a
 * route, forwarding enabled, a resolved neighbour), the packet must fit the
 * egress MTU and have a TTL (hop limit) above 1. Everything else takes the
 * stack, which sends the ICMP errors path-MTU discovery and traceroute rely
 * on (fragmentation needed / packet too big, time exceeded), resolves
 * neighbours and says "unreachable".
 *
 * Netfilter keeps working, by this rule: the fast path carries only the
 * later packets of flows whose start went through the stack, and only as
 * long as the kernel's conntrack does not track them.
 *   - A TCP connection's SYN always takes the stack: netfilter sees and
 *     judges every new connection (filter rules, DNAT of a chained portmap
 *     or a Service, anything the operator added), and conntrack, if
 *     anything in the node uses it, starts tracking it there. The SYN-ACK
 *     and the rest, its RST included, may take the fast path: a flow
 *     conntrack started tracking at the SYN stays in the stack by the
 *     lookup below, and the others have been judged at the SYN.
 *   - UDP takes the fast path only for masqueraded flows, which the NAT
 *     table holds once their first datagram left through the stack and the
 *     uplink; ICMP, other protocols and fragments always take the stack.
 *   - Before a packet is sent by the fast path, the kernel's conntrack is
 *     asked for its flow (bpf_skb_ct_lookup, either direction): a tracked
 *     flow (a DNAT'd hostPort connection, a masquerade of the host's own,
 *     any flow a stateful rule looks at) stays in the stack, every packet
 *     of it, so conntrack never sees half a flow. Flows conntrack does not
 *     track are the ones no NAT and no stateful rule applies to.
 * A kernel without conntrack (the kfunc is weak: it may be missing) has no
 * NAT and no stateful rules to keep; stateless rules on forwarded traffic
 * still judge every connection's first packet, not the later ones. */


#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef ENOENT
#define ENOENT 2
#endif

/* The MAC of each bridge the node's endpoints are ports of, keyed by the
 * bridge's ifindex: a frame to it is routed by the node (the gateway). The
 * control plane writes it at every ADD. */
struct gateway_mac {
	__u8 mac[6];
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); /* ifindex of the bridge */
	__type(value, struct gateway_mac);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gateway_macs SEC(".maps");

/* The kernel's conntrack, from the nf_conntrack kfuncs. struct bpf_ct_opts
 * is the kernel's (net/netfilter/nf_conntrack_bpf.c), not UAPI: its first
 * 12 bytes, a size every kernel with the kfuncs accepts. */
struct nf_conn {
	/* Opaque here; a complete type, because loading matches the
	 * kfunc's prototype with the kernel's, where it is one. */
	__u8 opaque;
};
struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};
#define FAST_PATH_CT_OPTS_SZ 12
#define FAST_PATH_CURRENT_NETNS (-1)

extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple,
					 __u32 tuple__sz, struct bpf_ct_opts *opts,
					 __u32 opts__sz) __ksym __weak;
extern void bpf_ct_release(struct nf_conn *ct) __ksym __weak;

/* Whether the kernel's conntrack holds pkt's flow (in either direction).
 * Any answer but "not found" counts as tracked: a lookup that failed must
 * not let a flow past netfilter. */
static __always_inline int fast_path_ct_tracked(struct __sk_buff *skb, const struct pkt *pkt)
{
	struct bpf_ct_opts opts = { .netns_id = FAST_PATH_CURRENT_NETNS, .l4proto = pkt->ip_proto };
	struct bpf_sock_tuple t = {};
	struct nf_conn *ct;
	__u32 sz;

	if (!bpf_skb_ct_lookup)
		return 0; /* no conntrack in this kernel */
	if (pkt->family == 4) {
		t.ipv4.saddr = pkt->saddr.v4;
		t.ipv4.daddr = pkt->daddr.v4;
		t.ipv4.sport = bpf_htons(pkt->sport);
		t.ipv4.dport = bpf_htons(pkt->dport);
		sz = sizeof(t.ipv4);
	} else {
		addr_copy(t.ipv6.saddr, pkt->saddr.b);
		addr_copy(t.ipv6.daddr, pkt->daddr.b);
		t.ipv6.sport = bpf_htons(pkt->sport);
		t.ipv6.dport = bpf_htons(pkt->dport);
		sz = sizeof(t.ipv6);
	}
	ct = bpf_skb_ct_lookup(skb, &t, sz, &opts, FAST_PATH_CT_OPTS_SZ);
	if (ct) {
		bpf_ct_release(ct);
		return 1;
	}
	return opts.error != -ENOENT;
}

/* Whether pkt opens a TCP connection, a SYN without ACK: the segment the
 * stack must see. A header we cannot read counts as one. */
static __always_inline int fast_path_tcp_opens(struct __sk_buff *skb, const struct pkt *pkt)
{
	__u8 flags;

	if (bpf_skb_load_bytes(skb, pkt->l4_off + 13, &flags, 1))
		return 1;
	return (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* The half of the rule below that pkt alone decides: unfragmented TCP past
 * its SYN, or UDP. It is cheap, so the routed fast path asks it before the
 * FIB: what takes the stack anyway (every connection's SYN, fragments,
 * ICMP) costs no route lookup. */
static __always_inline int fast_path_flow_may(struct __sk_buff *skb, const struct pkt *pkt)
{
	if ((pkt->flags & (PKT_F_FRAG | PKT_F_L4)) != PKT_F_L4)
		return 0;
	if (pkt->ip_proto == IPPROTO_TCP)
		return !fast_path_tcp_opens(skb, pkt);
	return pkt->ip_proto == IPPROTO_UDP;
}

/* Whether pkt's protocol and state let it take the routed fast path:
 * unfragmented TCP past its SYN, or UDP of a flow the NAT holds
 * (masqueraded, nat_known), and no flow of the kernel's conntrack. */
__subprog int fast_path_flow_ok(struct __sk_buff *skb, const struct pkt *pkt __arg_nonnull, int nat_known)
{
	if (!fast_path_flow_may(skb, pkt) || (pkt->ip_proto == IPPROTO_UDP && !nat_known))
		return 0;
	return !fast_path_ct_tracked(skb, pkt);
}

/* The FIB lookup's parameters and the next hop, per CPU. On the stack they
 * would take from_container and uplink_ingress, which also call the
 * port-mapping and NAT subprograms, past the verifier's 512 bytes for a
 * chain of calls. Held as bytes because bpf2go cannot express the kernel
 * structs' anonymous unions in Go; fast_path_scratch_get hands out typed
 * pointers. */
struct fast_path_scratch {
	__u8 fib[sizeof(struct bpf_fib_lookup)] __attribute__((aligned(8)));
	__u8 nh[sizeof(struct bpf_redir_neigh)] __attribute__((aligned(8)));
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fast_path_scratch);
} fast_path_scratch SEC(".maps");

struct fast_path_params {
	struct bpf_fib_lookup *fib;
	struct bpf_redir_neigh *nh;
};

static __always_inline int fast_path_scratch_get(struct fast_path_params *p)
{
	struct fast_path_scratch *s;
	__u32 zero = 0;

	s = bpf_map_lookup_elem(&fast_path_scratch, &zero);
	if (!s)
		return 0;
	p->fib = (struct bpf_fib_lookup *)s->fib;
	p->nh = (struct bpf_redir_neigh *)s->nh;
	return 1;
}

/* The FIB's decision for pkt as the node would forward it, arriving on
 * in_ifindex: fib->ifindex the egress, smac/dmac the new L2 addresses.
 * Returns 1 when the FIB decided completely and the packet fits. */
__subprog int fast_path_fib(struct __sk_buff *skb, const struct pkt *pkt __arg_nonnull, __u32 in_ifindex,
			    struct bpf_fib_lookup *fib __arg_nonnull)
{
	__u32 l3_len = pkt->l3_end - ETH_HLEN, mtu = 0;
	int gso = skb->gso_segs > 1;
	long rc;

	__builtin_memset(fib, 0, sizeof(*fib));
	fib->ifindex = in_ifindex;
	fib->l4_protocol = pkt->ip_proto;
	fib->sport = bpf_htons(pkt->sport);
	fib->dport = bpf_htons(pkt->dport);
	/* An aggregate (GSO) is checked by its segments below. */
	fib->tot_len = gso ? 0 : l3_len;
	if (pkt->family == 4) {
		fib->family = AF_INET;
		fib->ipv4_src = pkt->saddr.v4;
		fib->ipv4_dst = pkt->daddr.v4;
	} else {
		fib->family = AF_INET6;
		addr_copy(fib->ipv6_src, pkt->saddr.b);
		addr_copy(fib->ipv6_dst, pkt->daddr.b);
	}
	rc = bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return 0;
	if (gso && bpf_check_mtu(skb, fib->ifindex, &mtu, 0, BPF_MTU_CHK_SEGS) != BPF_MTU_CHK_RET_SUCCESS)
		return 0;
	return 1;
}

/* Whether the packet may be forwarded once more (TTL or hop limit above 1);
 * a last hop is the stack's, which answers with time exceeded. */
static __always_inline int fast_path_ttl_ok(struct __sk_buff *skb, const struct pkt *pkt)
{
	__u8 ttl;
	__u32 off = pkt->family == 4 ? ETH_HLEN + offsetof(struct iphdr, ttl)
				     : ETH_HLEN + offsetof(struct ipv6hdr, hop_limit);

	if (bpf_skb_load_bytes(skb, off, &ttl, 1))
		return 0;
	return ttl > 1;
}

/* Forward once: TTL (hop limit) minus one, the IPv4 header checksum with
 * it, and the new L2 addresses (dmac, smac). Returns 0 or a negative
 * error (the packet may then be half written: drop it). */
static __always_inline int fast_path_forward(struct __sk_buff *skb, const struct pkt *pkt,
					     const __u8 *dmac, const __u8 *smac)
{
	__u8 ttl;
	int ret;

	if (pkt->family == 4) {
		__u32 off = ETH_HLEN + offsetof(struct iphdr, ttl);
		__be16 old, new;

		if (bpf_skb_load_bytes(skb, off, &old, 2))
			return -1;
		/* TTL and protocol share a 16-bit word of the checksum. */
		ttl = ((__u8 *)&old)[0] - 1;
		new = old;
		((__u8 *)&new)[0] = ttl;
		ret = bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, new, 2);
		if (!ret)
			ret = bpf_skb_store_bytes(skb, off, &new, 2, 0);
	} else {
		__u32 off = ETH_HLEN + offsetof(struct ipv6hdr, hop_limit);

		if (bpf_skb_load_bytes(skb, off, &ttl, 1))
			return -1;
		ttl--;
		ret = bpf_skb_store_bytes(skb, off, &ttl, 1, 0);
	}
	if (!ret)
		ret = bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), dmac, ETH_ALEN, 0);
	if (!ret)
		ret = bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), smac, ETH_ALEN, 0);
	return ret;
}

/* The bridge a frame from ep is routed by: the sender's bridge, when the
 * frame goes to its MAC (the gateway). 0 otherwise. self_memo is the owner
 * of ep's MAC. */
static __always_inline __u32 fast_path_gateway(const struct endpoint *ep, const struct pkt *pkt,
					       struct mac_memo *self_memo)
{
	const struct mac_owner *self;
	const struct gateway_mac *gw;
	__u32 bridge;

	if (!(ep->flags & EP_F_FAST_PATH) || (pkt->flags & PKT_F_TAGGED) || mac_is_group(pkt->dst_mac))
		return 0;
	if (pkt->family != 4 && pkt->family != 6)
		return 0;
	self = mac_owner_memo(self_memo, ep->mac);
	if (!self || !self->bridge)
		return 0;
	bridge = self->bridge;
	gw = bpf_map_lookup_elem(&gateway_macs, &bridge);
	if (!gw || !mac_equal(gw->mac, pkt->dst_mac))
		return 0;
	return bridge;
}

/* The bridge a frame from ep goes up to, past the bridge, or 0: a router
 * solicitation or an MLD report or done. They concern routers and multicast
 * queriers, and on a container bridge the node is the only one: containers
 * may not advertise routes (antispoof_ndp), and a bridge that does not
 * snoop (EP_F_NODE_MCAST) keeps no memberships. The bridge would flood
 * each to every port, a clone through a veth into every container, which
 * discards it: work per new container (it sends about six) that grows with
 * the containers on the bridge, and keeps coming (router solicitations
 * repeat, backing off, for the interface's life). Neighbour solicitations
 * (duplicate address detection) still take the bridge: a duplicate may sit
 * on any port. */
static __always_inline __u32 fast_path_node_mcast(const struct endpoint *ep, const struct pkt *pkt)
{
	const struct mac_owner *self;

	if (!(ep->flags & EP_F_NODE_MCAST) || pkt->family != 6 || pkt->ip_proto != IPPROTO_ICMPV6 ||
	    !(pkt->flags & PKT_F_L4) || !mac_is_group(pkt->dst_mac))
		return 0;
	switch (pkt->icmp6_type) {
	case NDISC_ROUTER_SOLICITATION:
	case ICMPV6_MGM_REPORT:
	case ICMPV6_MGM_REDUCTION:
	case ICMPV6_MLD2_REPORT:
		break;
	default:
		return 0;
	}
	self = mac_owner_lookup(ep->mac);
	return self ? self->bridge : 0;
}

/* Whether the masquerade holds pkt's flow as it leaves a container: its
 * first packet went through the stack and the uplink. */
static __always_inline int fast_path_nat_known(const struct pkt *pkt)
{
	struct nat_tuple t;

	nat_tuple_init(&t, &pkt->saddr, &pkt->daddr, bpf_htons(pkt->sport), bpf_htons(pkt->dport),
		       pkt->ip_proto, pkt->family);
	return bpf_map_lookup_elem(&nat_out, &t) != NULL;
}

/* The endpoint a routed packet is for, when the FIB sends it to a bridge
 * with one of our endpoints behind the neighbour it chose: its host veth,
 * or 0. */
static __always_inline __u32 fast_path_routed_peer(const struct pkt *pkt, const struct bpf_fib_lookup *fib)
{
	const struct ip_owner *owner;
	const struct mac_owner *l2;
	const struct endpoint *rcv;
	__u32 peer;

	owner = ip_owner_lookup(pkt->family, &pkt->daddr);
	if (!owner)
		return 0;
	peer = owner->ifindex;
	rcv = bpf_map_lookup_elem(&endpoints, &peer);
	if (!rcv || !(rcv->flags & EP_F_FAST_PATH) || !mac_equal(rcv->mac, fib->dmac))
		return 0;
	l2 = mac_owner_lookup(rcv->mac);
	if (!l2 || l2->ifindex != peer || l2->bridge != fib->ifindex)
		return 0;
	return peer;
}

/* What the receiver's to_container would have done with a frame the fast
 * path brings it, the receiver being the endpoint of host veth peer: its
 * policy and counters; src is the owner of the frame's source MAC. Returns
 * 1 when the frame may be delivered, 0 when it must take the normal path
 * (a receiver without the fast path, or being removed), -1 when the
 * receiver's policy dropped it (counted). */
__subprog int fast_path_admit(__u32 peer, const struct pkt *pkt __arg_nonnull, __u32 len,
			      struct mac_memo *src __arg_nonnull)
{
	struct endpoint_stats *st;
	struct endpoint *rcv;
	__u8 reason;

	rcv = bpf_map_lookup_elem(&endpoints, &peer);
	if (!rcv || !(rcv->flags & EP_F_FAST_PATH))
		return 0;
	st = stats_get(peer);
	reason = to_container_policy(peer, rcv, pkt, DROP_NONE, src);
	if (reason != DROP_NONE) {
		drop_packet_for(peer, st, pkt, reason, DIR_TO_CONTAINER);
		return -1;
	}
	stats_count_to(st, len);
	return 1;
}

static __always_inline int fast_path_verdict(int admitted)
{
	return admitted < 0 ? VERDICT_DROP : VERDICT_PASS;
}

/* Deliver a frame from ep by the fast path to the container behind the
 * host veth peer on the sender's bridge (fast_path_peer), straight into
 * it; self is the owner of ep's MAC, the frame's source. Where the node's
 * netfilter sees bridged frames (EP_F_BRIDGE_NF), only the later packets
 * of flows it does not track skip the bridge, by the rule of the routed
 * fast path (fast_path_flow_ok). The frame is as it arrived (nothing on
 * this path rewrites it), skb->len its length. */
__subprog int fast_path_deliver(struct __sk_buff *skb, const struct endpoint *ep __arg_nonnull, __u32 peer,
				const struct pkt *pkt __arg_nonnull, struct mac_memo *self __arg_nonnull)
{
	int admitted;

	if ((ep->flags & EP_F_BRIDGE_NF) && !fast_path_flow_ok(skb, pkt, 0))
		return VERDICT_PASS;
	admitted = fast_path_admit(peer, pkt, skb->len, self);

	if (admitted <= 0)
		return fast_path_verdict(admitted);
	fast_path_count(skb->ifindex);
	return bpf_redirect_peer(peer, 0);
}

/* Route a packet into the container behind peer: forward it (TTL, MAC
 * addresses) once its receiver admitted it, then straight into it. pkt is
 * updated to the frame as forwarded, which the receiver's policy judges. */
static __always_inline int fast_path_route_to(struct __sk_buff *skb, struct pkt *pkt, __u32 peer,
					      const struct bpf_fib_lookup *fib, __u32 sender, __u32 len)
{
	struct mac_memo src = {}; /* of the new source MAC, the bridge's */
	int admitted;

	__builtin_memcpy(pkt->dst_mac, fib->dmac, ETH_ALEN);
	__builtin_memcpy(pkt->src_mac, fib->smac, ETH_ALEN);
	admitted = fast_path_admit(peer, pkt, len, &src);
	if (admitted <= 0)
		return fast_path_verdict(admitted);
	if (fast_path_forward(skb, pkt, fib->dmac, fib->smac))
		return drop_packet_for(peer, stats_get(peer), pkt, DROP_MALFORMED, DIR_TO_CONTAINER);
	if (sender)
		fast_path_count(sender);
	return bpf_redirect_peer(peer, 0);
}

/* The routed fast path for what the container of host veth skb->ifindex
 * sends to its gateway (bridge, from fast_path_gateway), its own policy
 * passed: to an uplink we masquerade on, forwarded and handed to the
 * uplink's neighbour with bpf_redirect_neigh (the uplink's tc egress,
 * uplink_egress, translates it as it does every masqueraded packet: one
 * home for the NAT); to a container on another bridge, forwarded into it
 * past both bridges. Anything else takes the stack. */
__subprog int fast_path_route_out(struct __sk_buff *skb, struct pkt *pkt __arg_nonnull, __u32 bridge, __u32 len)
{
	__u32 self = skb->ifindex, peer;
	struct fast_path_params s;

	if (!fast_path_flow_may(skb, pkt) || !fast_path_scratch_get(&s) || !fast_path_ttl_ok(skb, pkt) ||
	    !fast_path_fib(skb, pkt, bridge, s.fib))
		return VERDICT_PASS;
	if (bpf_map_lookup_elem(&nat_uplinks, &s.fib->ifindex)) {
		if (!fast_path_flow_ok(skb, pkt, fast_path_nat_known(pkt)))
			return VERDICT_PASS;
		if (fast_path_forward(skb, pkt, s.fib->dmac, s.fib->smac))
			return drop_packet_for(self, stats_get(self), pkt, DROP_MALFORMED, DIR_FROM_CONTAINER);
		fast_path_count(self);
		/* The FIB's next hop (the lookup wrote it over the
		 * destination). */
		__builtin_memset(s.nh, 0, sizeof(*s.nh));
		if (pkt->family == 4) {
			s.nh->nh_family = AF_INET;
			s.nh->ipv4_nh = s.fib->ipv4_dst;
		} else {
			s.nh->nh_family = AF_INET6;
			addr_copy(s.nh->ipv6_nh, s.fib->ipv6_dst);
		}
		return bpf_redirect_neigh(s.fib->ifindex, s.nh, sizeof(*s.nh), 0);
	}
	peer = fast_path_routed_peer(pkt, s.fib);
	if (!peer || peer == self || !fast_path_flow_ok(skb, pkt, 0))
		return VERDICT_PASS;
	return fast_path_route_to(skb, pkt, peer, s.fib, self, len);
}

/* The routed fast path for a reply arriving on an uplink, once the
 * masquerade translated it back (pkt parsed again after that): into the
 * container it is for. Anything else takes the stack. */
__subprog int fast_path_route_in(struct __sk_buff *skb, struct pkt *pkt __arg_nonnull)
{
	struct fast_path_params s;
	__u32 peer;

	if (!fast_path_scratch_get(&s) || !fast_path_flow_ok(skb, pkt, 1) || !fast_path_ttl_ok(skb, pkt) ||
	    !fast_path_fib(skb, pkt, skb->ifindex, s.fib))
		return VERDICT_PASS;
	peer = fast_path_routed_peer(pkt, s.fib);
	if (!peer)
		return VERDICT_PASS;
	return fast_path_route_to(skb, pkt, peer, s.fib, 0, skb->len);
}
