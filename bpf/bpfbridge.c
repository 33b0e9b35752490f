// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* bpfbridge's datapath: two tc programs on the host-side veth of every
 * container attachment, two on the node's uplinks when a network
 * masquerades.
 *
 *   from_container  tc ingress of the host veth: what the container sends.
 *                   Anti-spoofing (MAC, IPv4, IPv6, ARP, NDP), then
 *                   isolation by destination; unicast to an endpoint on
 *                   the same bridge is delivered past the bridge, and
 *                   what its gateway routes may be routed here
 *                   (fastpath.h).
 *   to_container    tc egress of the host veth: what is delivered to the
 *                   container. Isolation by source, in the receiver's mode.
 *   uplink_egress   tc egress of an uplink: source NAT of what masqueraded
 *                   containers send out (nat.h).
 *   uplink_ingress  tc ingress of an uplink: destination NAT to published
 *                   ports (portmap.h), reverse NAT of the replies and of
 *                   ICMP errors about translated flows (nat.h,
 *                   icmp_error.h); either may go straight into its
 *                   container (fastpath.h).
 *   portmap_*       cgroup sock_addr programs: the node's own sockets to
 *                   a published port (portmap.h).
 *
 * skb->ifindex is the host veth in the first two, and keys the endpoint; the
 * uplink in the others. Packets pass with TC_ACT_UNSPEC and drop with
 * TC_ACT_SHOT through drop_packet(), which counts and reports every drop
 * (verdict.h). */

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "antispoof.h"
#include "conntrack.h"
#include "drop.h"
#include "endpoint.h"
#include "fastpath.h"
#include "icmp_error.h"
#include "isolation.h"
#include "nat.h"
#include "parse.h"
#include "portmap.h"
#include "stats.h"
#include "verdict.h"

/* Build variant, 0 in every release. A load-time constant (.rodata): the
 * control plane sets it when it loads the programs, from a Go variable a
 * test build sets with the linker (datapath/program/variant.go), so that
 * the upgrade test gets a build whose programs differ, as a newer
 * release's would, while the verdicts stay the same. */
volatile const __u32 bpfbridge_variant = 0;

/* The values the control plane shares with the programs, one enum each.
 * Nothing reads this: a global whose type names every such enum is what
 * puts them into the object's BTF, from which bpf2go generates their Go
 * constants (-type in datapath/program/gen.go). */
struct go_contract {
	enum drop_reason drop_reason;
	enum direction direction;
	enum event_budget_limit event_budget_limit;
	enum layout layout;
	enum endpoint_limits endpoint_limits;
	enum isolation_mode isolation_mode;
	enum endpoint_flags endpoint_flags;
	enum attach_mode attach_mode;
	enum ct_state ct_state;
	enum ct_timeout_default ct_timeout_default;
	enum nat_port_default nat_port_default;
	enum nat_network_flags nat_network_flags;
	enum nat_quota_default nat_quota_default;
	enum nat_usage_key nat_usage_key;
	enum nat_limits nat_limits;
	enum ct_gen ct_gen;
	enum portmap_limits portmap_limits;
	enum portmap_flow_flags portmap_flow_flags;
};
const struct go_contract *const bpfbridge_contract __attribute__((unused)) = 0;

char __license[] SEC("license") = "Dual BSD/GPL";

/* Port mapping of what a container sends, past anti-spoofing: a packet it
 * translated (PKT_F_XLATED) is of a published-port flow, which passes
 * isolation (portmap.h) and takes the bridge, not the fast path (pkt
 * describes it as it was). Returns 0 when the packet goes on to the
 * isolation check, else 1 with the verdict's reason in *reason (DROP_NONE:
 * it passes). */
static __always_inline int from_container_portmap(struct __sk_buff *skb, struct pkt *pkt, __u8 *reason)
{
	int ret = portmap_enabled() ? portmap_from_container(skb, pkt) : PORTMAP_NONE;

	if (ret == PORTMAP_NONE)
		return 0;
	*reason = ret < 0 ? (__u8)-ret : DROP_NONE;
	pkt->flags |= PKT_F_XLATED | (ret == PORTMAP_REDIRECT ? PKT_F_REDIRECT : 0);
	return 1;
}

/* The policy for a frame a container sends; parsed is what parse_packet()
 * returned, owners what isolation learns of the frame's MACs, for the fast
 * path. Returns DROP_NONE or the reason to drop. */
__subprog int from_container_policy(struct __sk_buff *skb, const struct endpoint *ep __arg_nonnull,
				    struct pkt *pkt __arg_nonnull, __u8 parsed,
				    struct frame_owners *owners __arg_nonnull)
{
	__u8 reason;

	if (!(pkt->flags & PKT_F_ETH))
		return DROP_MALFORMED;
	if (!mac_equal(pkt->src_mac, ep->mac))
		return DROP_SPOOF_MAC;
	if (pkt->flags & PKT_F_TAGGED)
		/* A trunk port: what is inside the tag belongs to another
		 * L2 domain and is not ours to interpret. */
		return (ep->flags & EP_F_TAGGED_OK) ? DROP_NONE : DROP_ETHERTYPE;

	switch (pkt->eth_proto) {
	case ETH_P_ARP:
		if (parsed != DROP_NONE)
			return parsed;
		return antispoof_arp(ep, pkt);
	case ETH_P_IP:
		if (parsed != DROP_NONE)
			return parsed;
		reason = antispoof_ipv4(ep, pkt);
		if (reason != DROP_NONE || from_container_portmap(skb, pkt, &reason))
			return reason;
		return isolation_check(ep, pkt, &owners->dst, pkt->dst_mac, &pkt->daddr, skb->ifindex,
				       DIR_FROM_CONTAINER);
	case ETH_P_IPV6:
		if (parsed != DROP_NONE)
			return parsed;
		/* A header chain we did not walk to its end could hide a
		 * router advertisement: fail closed. */
		if (pkt->flags & PKT_F_EXT_DEEP)
			return DROP_MALFORMED;
		reason = antispoof_ipv6(ep, pkt);
		if (reason != DROP_NONE)
			return reason;
		reason = antispoof_ndp(skb, ep, pkt);
		if (reason != DROP_NONE || from_container_portmap(skb, pkt, &reason))
			return reason;
		return isolation_check(ep, pkt, &owners->dst, pkt->dst_mac, &pkt->daddr, skb->ifindex,
				       DIR_FROM_CONTAINER);
	default:
		return DROP_ETHERTYPE;
	}
}

/* The verdict for a frame on a host veth, in direction dir: the endpoint
 * of the veth, its counters, then the direction's policy. Inlined into
 * each program with dir constant, so each keeps only its own branch. */
static __always_inline int endpoint_verdict(struct __sk_buff *skb, const __u8 dir)
{
	__u32 ifindex = skb->ifindex, len = skb->len;
	struct frame_owners owners = {};
	struct endpoint_stats *st;
	struct endpoint *ep;
	struct pkt pkt = {};
	__u8 parsed, reason;
	__u32 peer, bridge;

	/* Parse first so that even a no-endpoint drop reports the packet. */
	parsed = parse_packet(skb, &pkt);

	ep = bpf_map_lookup_elem(&endpoints, &ifindex);
	if (!ep)
		return drop_packet(skb, NULL, &pkt, DROP_NO_ENDPOINT, dir);
	st = stats_get(ifindex);
	/* What the container sends counts whatever becomes of it (drops
	 * say what did); what is delivered to it counts once the policy
	 * let it through. */
	if (dir == DIR_FROM_CONTAINER) {
		stats_count_from(st, len);
		reason = from_container_policy(skb, ep, &pkt, parsed, &owners);
	} else {
		reason = to_container_policy(ifindex, ep, &pkt, parsed, NULL);
	}
	if (reason != DROP_NONE)
		return drop_packet(skb, st, &pkt, reason, dir);
	if (pkt.flags & PKT_F_REDIRECT)
		return TC_ACT_REDIRECT; /* portmap_route sent it */
	if (dir == DIR_TO_CONTAINER)
		stats_count_to(st, len);
	else if (!(pkt.flags & PKT_F_XLATED)) {
		/* A port-mapped packet takes the stack (pkt describes it as
		 * it was, before the translation). */
		if ((peer = fast_path_peer(ep, &pkt, ifindex, &owners)))
			return fast_path_deliver(skb, ep, peer, &pkt, &owners.src);
		if ((bridge = fast_path_gateway(ep, &pkt, &owners.src)))
			return fast_path_route_out(skb, &pkt, bridge, len);
		if ((bridge = fast_path_node_mcast(ep, &pkt))) {
			fast_path_count(ifindex);
			return bpf_redirect(bridge, BPF_F_INGRESS);
		}
	}
	return VERDICT_PASS;
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	return endpoint_verdict(skb, DIR_FROM_CONTAINER);
}

SEC("tc")
int to_container(struct __sk_buff *skb)
{
	return endpoint_verdict(skb, DIR_TO_CONTAINER);
}

/* Masquerade. Runs for every packet the node sends on the uplink, its own
 * included: what is not from a masqueraded container passes untouched. A
 * packet that must be translated and cannot be is dropped rather than sent
 * with the container's address. */
SEC("tc")
int uplink_egress(struct __sk_buff *skb)
{
	struct pkt *pkt = uplink_pkt_fresh();
	__u32 ep_ifindex = 0;
	__u8 reason;
	int ret;

	/* A packet we cannot parse is none we translate: from_container
	 * already dropped malformed ones from containers. */
	if (!pkt || parse_packet(skb, pkt) != DROP_NONE || (pkt->flags & PKT_F_TAGGED))
		return VERDICT_PASS;
	/* A published container's reply, translated on its veth already: its
	 * tuple is its pair's, not a node flow to track (portmap.h). */
	if (portmap_flow_exempt(pkt))
		return VERDICT_PASS;
	/* An ICMP error a container sends about a translated flow is
	 * translated with its quote; any other goes on as any ICMP. */
	ret = icmp_is_error(skb, pkt) ? icmp_error_nat(skb, ICMP_ERR_FROM_CONTAINER) : 0;
	if (ret > 0)
		return VERDICT_PASS;
	reason = ret < 0 ? (__u8)-ret : snat_egress(skb, pkt, &ep_ifindex);
	if (reason != DROP_NONE)
		return drop_packet(skb, ep_ifindex ? stats_get(ep_ifindex) : NULL, pkt, reason,
				   DIR_UPLINK_EGRESS);
	return VERDICT_PASS;
}

/* Destination NAT to published ports and reverse NAT of replies to
 * masqueraded flows (and ICMP errors about them): either goes on to the
 * container; everything else passes untouched. */
SEC("tc")
int uplink_ingress(struct __sk_buff *skb)
{
	struct pkt *pkt = uplink_pkt_fresh();
	int ret, translated = 0;
	__u8 reason;

	if (!pkt || parse_packet(skb, pkt) != DROP_NONE || (pkt->flags & PKT_F_TAGGED))
		return VERDICT_PASS;
	if (icmp_is_error(skb, pkt)) {
		ret = icmp_error_nat(skb, ICMP_ERR_FROM_OUTSIDE);
		reason = ret < 0 ? (__u8)-ret : DROP_NONE;
	} else {
		/* A published port first; a masqueraded flow's reply owns its
		 * tuple, and portmap_dnat leaves it to rnat_ingress. Either
		 * translation leaves a packet for a local container. */
		ret = portmap_from_outside(skb, pkt);
		if (ret < 0)
			reason = (__u8)-ret;
		else if (ret == PORTMAP_DONE)
			reason = DROP_NONE, translated = 1;
		else
			reason = rnat_ingress(skb, pkt, &translated);
	}
	if (reason != DROP_NONE)
		return drop_packet(skb, NULL, pkt, reason, DIR_UPLINK_INGRESS);
	/* A reply the masquerade gave back its container's address may go
	 * straight into the container (fastpath.h), as parsed anew. */
	if (translated && (pkt = uplink_pkt_fresh()) && parse_packet(skb, pkt) == DROP_NONE)
		return fast_path_route_in(skb, pkt);
	return VERDICT_PASS;
}

/* The node's own sockets to a published port (portmap.h): connect() and
 * sendmsg() go to the container instead, recvmsg() reports UDP replies
 * from where the application sent. They always allow the call (1). */
#define PORTMAP_SOCK_PROG(hook, fn, family)            \
	SEC("cgroup/" #hook)                            \
	int portmap_##hook(struct bpf_sock_addr *ctx)   \
	{                                               \
		fn(ctx, family);                        \
		return 1;                               \
	}

PORTMAP_SOCK_PROG(connect4, portmap_sock_connect, 4)
PORTMAP_SOCK_PROG(connect6, portmap_sock_connect, 6)
PORTMAP_SOCK_PROG(sendmsg4, portmap_sock_connect, 4)
PORTMAP_SOCK_PROG(sendmsg6, portmap_sock_connect, 6)
PORTMAP_SOCK_PROG(recvmsg4, portmap_sock_peer, 4)
PORTMAP_SOCK_PROG(recvmsg6, portmap_sock_peer, 6)
PORTMAP_SOCK_PROG(getpeername4, portmap_sock_peer, 4)
PORTMAP_SOCK_PROG(getpeername6, portmap_sock_peer, 6)
