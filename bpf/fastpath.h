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
 * isolation, `datapath.fastPath: false`, endpoints of earlier builds). */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

#include "endpoint.h"
#include "isolation.h"
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
 * path, or 0. ep sent it (anti-spoofing and its own isolation passed). */
static __always_inline __u32 fast_path_peer(const struct endpoint *ep, const struct pkt *pkt,
					    __u32 self_ifindex)
{
	const struct mac_owner *self, *peer;

	if (!(ep->flags & EP_F_FAST_PATH) || (pkt->flags & PKT_F_TAGGED) || mac_is_group(pkt->dst_mac))
		return 0;
	if (pkt->family != 4 && pkt->family != 6)
		return 0;
	peer = mac_owner_lookup(pkt->dst_mac);
	if (!peer || peer->ifindex == self_ifindex || !peer->bridge)
		return 0;
	self = mac_owner_lookup(ep->mac);
	if (!self || self->bridge != peer->bridge)
		return 0;
	return peer->ifindex;
}
