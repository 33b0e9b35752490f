/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Isolation between containers on the node, decided by who the peer is.
 *
 * At L2 first: a frame whose peer MAC (the destination as the container
 * sends, the source as it receives) belongs to an endpoint is between two
 * endpoints on one bridge, and mac_owners says which; that covers every
 * address, IPv6 link-local and multicast included, which no owner map of
 * assigned addresses could. Otherwise the frame was routed (the peer MAC is
 * the gateway's) and ip_owners tells which endpoint holds the peer address.
 * Addresses nobody owns (the gateway, the node, the outside world) are
 * never isolated.
 *
 * Each direction applies the mode of the endpoint the program runs for: on
 * the way out the sender's, on the way in the receiver's, so a container
 * whose network is isolated is protected even from containers of a network
 * that is not. A multicast or broadcast frame has no one receiver the
 * sender could decide for: each receiver applies the stricter of its own
 * mode and the sender's.
 *
 * Between containers of one network, link-local is like any address: it
 * passes in "network" mode and is dropped in "container" mode. ARP and NDP
 * pass in every mode: they carry no payload, and neighbours and the
 * gateway could not be found without them. */
#pragma once

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#include "drop.h"
#include "endpoint.h"
#include "parse.h"
#include "portmap.h"

/* NDP is never isolated: like ARP it is how neighbours on the bridge find
 * each other and the gateway, and it carries no payload. */
static __always_inline int pkt_is_ndp(const struct pkt *pkt)
{
	if (pkt->family != 6 || pkt->ip_proto != IPPROTO_ICMPV6 || !(pkt->flags & PKT_F_L4))
		return 0;
	return pkt->icmp6_type >= NDISC_ROUTER_SOLICITATION &&
	       pkt->icmp6_type <= NDISC_REDIRECT;
}

/* The rule of mode between the endpoint the program runs for (ep) and a
 * peer endpoint of network peer_network. Modes this program does not know
 * (a newer control plane) get the strictest treatment rather than none. */
static __always_inline __u8 isolation_rule(__u8 mode, const struct endpoint *ep, __u32 peer_network)
{
	switch (mode) {
	case ISOLATION_NONE:
		return DROP_NONE;
	case ISOLATION_NETWORK:
		return peer_network != ep->network ? DROP_CROSS_NETWORK : DROP_NONE;
	case ISOLATION_CONTAINER:
	default:
		return peer_network != ep->network ? DROP_CROSS_NETWORK : DROP_SAME_NETWORK;
	}
}

static __always_inline int mac_is_group(const __u8 *mac)
{
	return mac[0] & 1; /* multicast, broadcast included */
}

/* The owner of one of a frame's MACs, looked up at most once per frame
 * however many decisions read it: a copy of the map value, on the stack of
 * the program that handles the frame, which the global functions it calls
 * share by pointer (subprog.h). */
struct mac_memo {
	struct mac_owner owner; /* valid when found */
	__u8 looked;            /* mac_owners was asked */
	__u8 found;
	__u8 pad[2];
};

/* A frame a container sends: the owners of its destination MAC, which the
 * sender's isolation and the fast path ask for, and of its source MAC,
 * which is the sender's own once anti-spoofing passed (the fast path asks
 * for it by the endpoint's MAC, the receiver's policy by the frame's). */
struct frame_owners {
	struct mac_memo dst;
	struct mac_memo src;
};

/* The endpoint that has mac, or NULL, through memo, which starts zeroed
 * and is only ever asked about the same mac; without a memo (NULL, a
 * constant once inlined) from the map. */
static __always_inline const struct mac_owner *mac_owner_memo(struct mac_memo *memo, const __u8 *mac)
{
	const struct mac_owner *o;

	if (!memo)
		return mac_owner_lookup(mac);
	if (!memo->looked) {
		o = mac_owner_lookup(mac);
		memo->looked = 1;
		memo->found = o != NULL;
		if (o)
			memo->owner = *o;
	}
	return memo->found ? &memo->owner : NULL;
}

/* peer_mac and peer_addr are the packet's destination when the container
 * sends (from_container), its source when it receives; peer_memo is
 * peer_mac's owner. */
static __always_inline __u8 isolation_check(const struct endpoint *ep, const struct pkt *pkt,
					    struct mac_memo *peer_memo, const __u8 *peer_mac,
					    const union addr *peer_addr, __u32 self_ifindex, const __u8 dir)
{
	const struct mac_owner *l2;
	const struct ip_owner *l3;
	__u8 mode = ep->isolation;

	if (pkt->family != 4 && pkt->family != 6)
		return DROP_NONE;
	if (pkt_is_ndp(pkt))
		return DROP_NONE;
	/* A group frame a container sends is decided by each receiver. */
	if (dir == DIR_FROM_CONTAINER && mac_is_group(pkt->dst_mac))
		return DROP_NONE;
	/* Nothing to decide in mode none, except for group frames received,
	 * where the sender's mode counts too. */
	if (mode == ISOLATION_NONE && (dir == DIR_FROM_CONTAINER || !mac_is_group(pkt->dst_mac)))
		return DROP_NONE;

	l2 = mac_owner_memo(peer_memo, peer_mac);
	if (l2) {
		if (l2->ifindex == self_ifindex)
			return DROP_NONE;
		if (dir == DIR_TO_CONTAINER && mac_is_group(pkt->dst_mac) && l2->isolation > mode)
			mode = l2->isolation;
		return isolation_rule(mode, ep, l2->network);
	}
	l3 = ip_owner_lookup(pkt->family, peer_addr);
	if (!l3 || l3->ifindex == self_ifindex)
		return DROP_NONE;
	return isolation_rule(mode, ep, l3->network);
}

/* The policy for a frame delivered to the container of the host veth
 * ifindex; src memoizes the owner of its source MAC (NULL: none to share,
 * the map is asked). Only isolation: what reaches the bridge was already
 * checked on its way in, by from_container for containers and by the host
 * for everything else. */
static __always_inline __u8 to_container_policy(__u32 ifindex, const struct endpoint *ep,
						const struct pkt *pkt, __u8 parsed, struct mac_memo *src)
{
	__u8 reason;

	if (pkt->flags & PKT_F_TAGGED)
		return DROP_NONE;
	switch (pkt->eth_proto) {
	case ETH_P_IP:
	case ETH_P_IPV6:
		/* Without the addresses there is no isolation decision;
		 * the receiving stack would discard the packet anyway. */
		if (parsed != DROP_NONE)
			return parsed;
		reason = isolation_check(ep, pkt, src, pkt->src_mac, &pkt->saddr, ifindex, DIR_TO_CONTAINER);
		/* A published port is public (portmap.h). */
		if ((reason == DROP_CROSS_NETWORK || reason == DROP_SAME_NETWORK) && portmap_flow_exempt(pkt))
			return DROP_NONE;
		return reason;
	default:
		/* ARP and everything else: never isolated. */
		return DROP_NONE;
	}
}
