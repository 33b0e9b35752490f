/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Anti-spoofing: a container may only send as itself. Checked on every frame
 * a container sends (tc ingress of its host-side veth), whatever its
 * isolation mode: a spoofed source defeats isolation, and a spoofed ARP or
 * NDP message poisons the neighbour tables of the host and of every other
 * container on the bridge.
 *
 * Each check returns DROP_NONE or the reason to drop. */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "drop.h"
#include "endpoint.h"
#include "parse.h"

/* NDP option types (RFC 4861 section 4.6) and how many options we inspect.
 * NS, NA and RS carry one or two options in practice (link-layer address,
 * nonce); a message with more than we look at is dropped as malformed rather
 * than passed unchecked. */
#define ND_OPT_SOURCE_LL_ADDR 1
#define ND_OPT_TARGET_LL_ADDR 2
#define ND_MAX_OPTS 8

static __always_inline int ep_owns_ipv4(const struct endpoint *ep, __be32 addr)
{
	int i;

	for (i = 0; i < MAX_IPV4; i++) {
		if (i >= ep->n_ipv4)
			break;
		if (ep->ipv4[i] == addr)
			return 1;
	}
	return 0;
}

/* The endpoint's global/ULA addresses or its link-local one. */
static __always_inline int ep_owns_ipv6(const struct endpoint *ep, const union addr *addr)
{
	int i;

	if (addr16_equal(addr->b, ep->ipv6_ll))
		return 1;
	for (i = 0; i < MAX_IPV6; i++) {
		if (i >= ep->n_ipv6)
			break;
		if (addr16_equal(addr->b, ep->ipv6[i]))
			return 1;
	}
	return 0;
}

static __always_inline __u8 antispoof_ipv4(const struct endpoint *ep, const struct pkt *pkt)
{
	return ep_owns_ipv4(ep, pkt->saddr.v4) ? DROP_NONE : DROP_SPOOF_IPV4;
}

/* ARP is not IPv4: without this check a container can answer for the
 * gateway and poison the host's neighbour table. 0.0.0.0 as sender is an
 * ARP probe (RFC 5227), which announces nothing. */
static __always_inline __u8 antispoof_arp(const struct endpoint *ep, const struct pkt *pkt)
{
	if (!mac_equal(pkt->arp_sha, ep->mac))
		return DROP_SPOOF_ARP;
	if (pkt->saddr.v4 != 0 && !ep_owns_ipv4(ep, pkt->saddr.v4))
		return DROP_SPOOF_ARP;
	return DROP_NONE;
}

/* The unspecified source :: is legitimate only while an interface has no
 * address yet: duplicate address detection sends neighbour solicitations
 * (RFC 4862 5.4.2), and MLD reports may precede it (RFC 3810 5.2.13). */
static __always_inline int ipv6_unspecified_ok(const struct pkt *pkt)
{
	if (pkt->ip_proto != IPPROTO_ICMPV6 || !(pkt->flags & PKT_F_L4))
		return 0;
	return pkt->icmp6_type == NDISC_NEIGHBOUR_SOLICITATION ||
	       pkt->icmp6_type == ICMPV6_MGM_REPORT ||
	       pkt->icmp6_type == ICMPV6_MLD2_REPORT;
}

static __always_inline __u8 antispoof_ipv6(const struct endpoint *ep, const struct pkt *pkt)
{
	if (ipv6_is_unspecified(&pkt->saddr))
		return ipv6_unspecified_ok(pkt) ? DROP_NONE : DROP_SPOOF_IPV6;
	return ep_owns_ipv6(ep, &pkt->saddr) ? DROP_NONE : DROP_SPOOF_IPV6;
}

/* Walk the options of an NS, NA or RS starting at off: every source or
 * target link-layer address option must carry the endpoint's MAC. The
 * options sit at a variable offset, so they are read with
 * bpf_skb_load_bytes. */
static __always_inline __u8 ndp_check_options(struct __sk_buff *skb, const struct endpoint *ep,
					      const struct pkt *pkt, __u32 off)
{
	int i;

	for (i = 0; i < ND_MAX_OPTS; i++) {
		__u8 opt[8]; /* type, length, and a link-layer address */
		__u32 len;

		if (off >= pkt->l3_end)
			return DROP_NONE;
		/* Every option is at least 8 bytes long. */
		if (off + sizeof(opt) > pkt->l3_end ||
		    bpf_skb_load_bytes(skb, off, opt, sizeof(opt)))
			return DROP_MALFORMED;
		len = (__u32)opt[1] * 8;
		/* Length 0 is invalid and would loop forever (RFC 4861 4.6). */
		if (len == 0 || off + len > pkt->l3_end)
			return DROP_MALFORMED;
		if ((opt[0] == ND_OPT_SOURCE_LL_ADDR || opt[0] == ND_OPT_TARGET_LL_ADDR) &&
		    !mac_equal(&opt[2], ep->mac))
			return DROP_SPOOF_NDP;
		off += len;
	}
	return off >= pkt->l3_end ? DROP_NONE : DROP_MALFORMED;
}

/* NDP from a container. Routers are on the host side: a container sending
 * router advertisements or redirects hijacks the others' traffic. Neighbour
 * and router solicitations and advertisements must not announce someone
 * else's MAC, and an advertisement must not claim someone else's address. */
static __always_inline __u8 antispoof_ndp(struct __sk_buff *skb, const struct endpoint *ep,
					  const struct pkt *pkt)
{
	union addr target;
	__u32 opts;

	if (pkt->ip_proto != IPPROTO_ICMPV6 || !(pkt->flags & PKT_F_L4))
		return DROP_NONE;

	switch (pkt->icmp6_type) {
	case NDISC_ROUTER_ADVERTISEMENT:
	case NDISC_REDIRECT:
		return DROP_ROUTER_NDP;
	case NDISC_ROUTER_SOLICITATION:
		/* type, code, checksum, 4 reserved bytes, options */
		opts = pkt->l4_off + 8;
		break;
	case NDISC_NEIGHBOUR_SOLICITATION:
		/* ... 4 reserved bytes, target address, options */
		opts = pkt->l4_off + 8 + 16;
		break;
	case NDISC_NEIGHBOUR_ADVERTISEMENT:
		opts = pkt->l4_off + 8 + 16;
		if (opts > pkt->l3_end ||
		    bpf_skb_load_bytes(skb, pkt->l4_off + 8, target.b, sizeof(target.b)))
			return DROP_MALFORMED;
		if (!ep_owns_ipv6(ep, &target))
			return DROP_SPOOF_NDP;
		break;
	default:
		return DROP_NONE;
	}
	if (opts > pkt->l3_end)
		return DROP_MALFORMED;
	return ndp_check_options(skb, ep, pkt, opts);
}
