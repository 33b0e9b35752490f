/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Isolation between containers on one bridge, decided by the address of the
 * peer container: ip_owners tells which endpoint (and so which network) an
 * address belongs to. Addresses nobody owns (the gateway, the node, the
 * outside world, broadcast and multicast) are never isolated here.
 *
 * Both directions apply the mode of the endpoint the program runs for: on
 * the way out the sender's (its destination is the peer), on the way in the
 * receiver's (its source is the peer). So a container whose network is
 * isolated is protected even from containers of a network that is not. */
#pragma once

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#include "drop.h"
#include "endpoint.h"
#include "parse.h"

/* NDP is never isolated: like ARP it is how neighbours on the bridge find
 * each other and the gateway, and it carries no payload. */
static __always_inline int pkt_is_ndp(const struct pkt *pkt)
{
	if (pkt->family != 6 || pkt->ip_proto != IPPROTO_ICMPV6 || !(pkt->flags & PKT_F_L4))
		return 0;
	return pkt->icmp6_type >= NDISC_ROUTER_SOLICITATION &&
	       pkt->icmp6_type <= NDISC_REDIRECT;
}

/* The rule, with ep the endpoint the program runs for and peer the owner of
 * the other address. Modes this program does not know (a newer control
 * plane) get the strictest treatment rather than none. */
static __always_inline __u8 isolation_rule(const struct endpoint *ep, const struct ip_owner *peer,
					   __u32 self_ifindex)
{
	if (!peer || peer->ifindex == self_ifindex)
		return DROP_NONE;
	switch (ep->isolation) {
	case ISOLATION_NONE:
		return DROP_NONE;
	case ISOLATION_NETWORK:
		return peer->network != ep->network ? DROP_CROSS_NETWORK : DROP_NONE;
	case ISOLATION_CONTAINER:
	default:
		return peer->network != ep->network ? DROP_CROSS_NETWORK : DROP_SAME_NETWORK;
	}
}

/* peer_addr is the packet's destination when the container sends, its
 * source when the container receives. */
static __always_inline __u8 isolation_check(const struct endpoint *ep, const struct pkt *pkt,
					    const union addr *peer_addr, __u32 self_ifindex)
{
	if (pkt->family != 4 && pkt->family != 6)
		return DROP_NONE;
	if (pkt_is_ndp(pkt))
		return DROP_NONE;
	/* ISOLATION_NONE needs no lookup. */
	if (ep->isolation == ISOLATION_NONE)
		return DROP_NONE;
	return isolation_rule(ep, ip_owner_lookup(pkt->family, peer_addr), self_ifindex);
}
