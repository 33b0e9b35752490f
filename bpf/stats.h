/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-endpoint traffic counters, per CPU so the hot path takes no lock. */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "drop.h"
#include "endpoint.h"

struct endpoint_stats {
	__u64 from_packets; /* sent by the container (tc ingress of the host veth), dropped or not */
	__u64 from_bytes;
	__u64 to_packets;   /* delivered to the container (tc egress): passed the policy */
	__u64 to_bytes;
	__u64 drops[DROP_REASONS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	/* Not preallocated: 65536 entries of 128 bytes per possible CPU
	 * would be 1 GiB on a 128-CPU node, charged to the plugin's cgroup
	 * at load. Programs create an entry on an endpoint's first packet. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); /* ifindex of the host-side veth */
	__type(value, struct endpoint_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoint_stats SEC(".maps");

/* The calling CPU's counters for the endpoint on ifindex, created on the
 * endpoint's first packet if the control plane has not created it (it may,
 * at ADD). Call it only once the endpoint is known to exist, so that traffic
 * on veths without an endpoint cannot fill the map. Returns NULL only when
 * the entry can be neither found nor created (map full). */
/* A new entry's value. A constant (.rodata) rather than a zeroed local:
 * at 200-odd bytes a local would take half of the stack that a program
 * and the global functions it calls share (subprog.h). */
static const struct endpoint_stats stats_zero;

static __always_inline struct endpoint_stats *stats_get(__u32 ifindex)
{
	struct endpoint_stats *st;

	st = bpf_map_lookup_elem(&endpoint_stats, &ifindex);
	if (st)
		return st;
	/* BPF_NOEXIST: if another CPU created it meanwhile, keep its entry
	 * (a per-CPU update from a program only writes this CPU's slot). */
	bpf_map_update_elem(&endpoint_stats, &ifindex, &stats_zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&endpoint_stats, &ifindex);
}

/* Per-CPU values are only ever written by programs on their own CPU, and tc
 * programs do not preempt each other on one CPU, so plain adds suffice. */
static __always_inline void stats_count_from(struct endpoint_stats *st, __u32 len)
{
	if (!st)
		return;
	st->from_packets++;
	st->from_bytes += len;
}

static __always_inline void stats_count_to(struct endpoint_stats *st, __u32 len)
{
	if (!st)
		return;
	st->to_packets++;
	st->to_bytes += len;
}
