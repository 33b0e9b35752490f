/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Verdicts. Passing is TC_ACT_UNSPEC, not TC_ACT_OK: under tcx, TC_ACT_OK
 * ends the chain (TCX_PASS) and would silently skip any program attached
 * after ours; TC_ACT_UNSPEC lets later tcx programs and cls_bpf filters run
 * and otherwise passes the packet.
 *
 * Every drop goes through drop_packet(): it counts the reason per endpoint
 * and in total and reports the packet to user space, so that no packet
 * disappears without a trace. */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "drop.h"
#include "parse.h"
#include "stats.h"
#include "subprog.h"

#define VERDICT_PASS TC_ACT_UNSPEC
#define VERDICT_DROP TC_ACT_SHOT

static __always_inline void drop_count_total(__u8 reason)
{
	__u32 key = reason;
	__u64 *total;

	total = bpf_map_lookup_elem(&drop_totals, &key);
	if (total)
		*total += 1;
}

/* Take one event from this CPU's budget. The window restarts lazily on the
 * first drop after it expired, so an idle CPU costs nothing. Returns the
 * budget to charge a failed reservation to, or NULL when the event must be
 * suppressed (already counted). */
static __always_inline struct event_budget *event_budget_take(void)
{
	struct event_budget *b;
	__u32 zero = 0;
	__u64 now;

	b = bpf_map_lookup_elem(&event_budget, &zero);
	if (!b)
		return NULL;
	now = bpf_ktime_get_ns();
	if (now - b->window_start_ns >= EVENT_WINDOW_NS) {
		b->window_start_ns = now;
		b->used = 0;
	}
	if (b->used >= EVENTS_PER_WINDOW) {
		b->suppressed++;
		return NULL;
	}
	b->used++;
	return b;
}

/* Fill a reserved event. Not inlined on purpose: a function that takes a
 * struct drop_event is what puts the type into the object's BTF, from which
 * bpf2go generates its Go mirror (-type drop_event); the ring buffer map
 * itself carries no value type. Drops are the slow path, a call costs
 * nothing there. */
static __noinline void drop_event_fill(struct drop_event *e, const struct pkt *pkt, __u32 ifindex,
				       __u8 reason, __u8 direction)
{
	/* Ring buffer memory is not zeroed: clear it all, padding included,
	 * so no stale bytes reach user space. */
	__builtin_memset(e, 0, sizeof(*e));
	e->timestamp_ns = bpf_ktime_get_ns();
	e->ifindex = ifindex;
	e->reason = reason;
	e->direction = direction;
	e->eth_proto = pkt->eth_proto;
	if (pkt->family)
		e->ip_proto = pkt->ip_proto;
	e->sport = pkt->sport;
	e->dport = pkt->dport;
	__builtin_memcpy(e->src_mac, pkt->src_mac, sizeof(e->src_mac));
	__builtin_memcpy(e->dst_mac, pkt->dst_mac, sizeof(e->dst_mac));
	__builtin_memcpy(e->src_ip, pkt->saddr.b, sizeof(e->src_ip));
	__builtin_memcpy(e->dst_ip, pkt->daddr.b, sizeof(e->dst_ip));
}

/* Report a drop on the ring buffer, within this CPU's budget. */
static __always_inline void drop_event_emit(__u32 ifindex, const struct pkt *pkt,
					    __u8 reason, __u8 direction)
{
	struct event_budget *b;
	struct drop_event *e;

	b = event_budget_take();
	if (!b)
		return;
	e = bpf_ringbuf_reserve(&drop_events, sizeof(*e), 0);
	if (!e) {
		/* Ring full: user space is behind. Count it with the
		 * suppressed events so a reader can tell it missed some. */
		b->suppressed++;
		return;
	}
	drop_event_fill(e, pkt, ifindex, reason, direction);
	bpf_ringbuf_submit(e, 0);
}

/* The one way to drop a packet, on behalf of the veth ifindex (the one the
 * program runs on, or the receiver's when the fast path decides for it). st
 * is the endpoint's counters, NULL when the veth has no endpoint
 * (DROP_NO_ENDPOINT) or its stats entry could not be created; the total is
 * counted regardless. */
__subprog int drop_packet_for(__u32 ifindex, struct endpoint_stats *st, const struct pkt *pkt __arg_nonnull,
			      __u8 reason, __u8 direction)
{
	/* A bounded index keeps the verifier happy and a bad reason visible
	 * as something rather than nothing. */
	if (reason == DROP_NONE || reason >= DROP_REASONS)
		reason = DROP_MALFORMED;
	if (st)
		st->drops[reason]++;
	drop_count_total(reason);
	drop_event_emit(ifindex, pkt, reason, direction);
	return VERDICT_DROP;
}

/* drop_packet_for the veth the program runs on. */
static __always_inline int drop_packet(struct __sk_buff *skb, struct endpoint_stats *st,
				       const struct pkt *pkt, __u8 reason, __u8 direction)
{
	return drop_packet_for(skb->ifindex, st, pkt, reason, direction);
}
