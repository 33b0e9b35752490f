/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking for masquerade: the NAT table (nat_out and nat_in), the
 * states of a tracked flow and when a flow expires.
 *
 * Every masqueraded flow is a PAIR of entries:
 *
 *   nat_out  key: the flow as the container sent it (container -> remote)
 *            value: the translated source (uplink address, NAT port)
 *   nat_in   key: the reply as it arrives on the uplink
 *                 (remote -> uplink address, NAT port)
 *            value: the container's original address and port
 *
 * nat_in is also the port allocator: claiming a NAT port is inserting the
 * nat_in key with BPF_NOEXIST. The two halves must stay consistent, which is
 * why these are plain hash maps and not LRU: an LRU evicts one half without
 * the other, and then either replies go nowhere or two flows share a port
 * (Cilium lived through both). Entries are never evicted; they expire:
 * an entry idle for longer than the timeout of its state counts as absent,
 * its port may be reclaimed by a new flow, and the control plane garbage
 * collects pairs that stay expired.
 *
 * Timestamps are bpf_ktime_get_ns(): CLOCK_MONOTONIC, not wall time. */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "parse.h"

/* nat_entry.state (one byte, as stored there). TCP is tracked just enough
 * to pick a timeout; the endpoints do the real state keeping. */
enum __attribute__((packed)) ct_state {
	CT_SYN_SENT = 1,    /* TCP: the container sent a SYN, no reply yet */
	CT_ESTABLISHED = 2, /* TCP: the remote replied (or picked up mid-stream) */
	CT_CLOSING = 3,     /* TCP: FIN or RST seen in either direction */
	CT_UDP = 4,         /* UDP: no states */
	CT_ICMP = 5,        /* ICMP/ICMPv6 echo */
	CT_STATES = 6,      /* one past the last state */
};

/* Defaults for the zero timeouts of nat_config, in seconds. They follow
 * Linux conntrack's order of magnitude: established TCP for hours, the rest
 * for seconds. */
enum ct_timeout_default {
	CT_TIMEOUT_TCP_DEFAULT_S = 7200,
	CT_TIMEOUT_TCP_SYN_DEFAULT_S = 60,
	CT_TIMEOUT_TCP_CLOSING_DEFAULT_S = 10,
	CT_TIMEOUT_UDP_DEFAULT_S = 60,
	CT_TIMEOUT_ICMP_DEFAULT_S = 30,
};

#define NAT_MAX_ENTRIES 262144

/* TCP header flags (byte 13 of the header). */
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* Written by the control plane; zero fields mean the defaults (above for
 * the timeouts, in nat.h for the ports). */
struct nat_config {
	__u16 port_min; /* host order, inclusive */
	__u16 port_max;
	__u32 timeout_tcp_s;         /* CT_ESTABLISHED */
	__u32 timeout_tcp_syn_s;     /* CT_SYN_SENT */
	__u32 timeout_tcp_closing_s; /* CT_CLOSING */
	__u32 timeout_udp_s;
	__u32 timeout_icmp_s;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nat_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_config SEC(".maps");

/* A flow in one direction. Addresses as in struct ip_key: IPv4 in the first
 * 4 bytes, the rest zero. ICMP echo: the identifier is sport, dport is 0 (in
 * nat_in too, where it is the NAT identifier). Padding must be zero: it is
 * hashed with the rest. */
struct nat_tuple {
	__u8 src[16] ADDR_ALIGNED;
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;  /* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6 */
	__u8 family; /* 4 or 6 */
	__u8 pad[2];
};

/* nat_entry.flags, bits 0-1 (nat_in half, TCP): what its ct_window holds.
 * Entries of older builds have 0 here, and their created_ns is a time: no
 * window. */
#define CT_F_WSCALE 0x01 /* wscale is the container's, from its SYN */
#define CT_F_WINDOW 0x02 /* ack and win are the container's latest */

/* nat_entry.flags, bits 2-7 (both halves): the generation of the
 * container's address when the flow was created (nat_gen in nat.h). DEL
 * bumps the address's generation instead of scanning the table: a flow of
 * another generation is dead, and reclaimed lazily. Older builds' entries
 * hold 0, the generation of an address never deleted. */
enum ct_gen {
	CT_GEN_SHIFT = 2,
	CT_GEN_MASK = 0x3f,
};

struct nat_entry {
	__u8 addr[16];  /* nat_out: the translated source; nat_in: the container's address */
	__be16 port;    /* nat_out: the NAT port/identifier; nat_in: the container's */
	__u8 state;     /* CT_*, the same in both halves */
	__u8 flags;     /* CT_F_*, nat_in only */
	__u32 uplink;   /* ifindex of the uplink the flow was created on */
	/* nat_out: when the flow was created. nat_in of a TCP flow: its
	 * struct ct_window once flags say so (the creation time is the
	 * nat_out half's). */
	__u64 created_ns;
	__u64 last_seen_ns; /* refreshed in both halves by traffic in either direction */
	__u64 packets;  /* nat_out: container -> remote; nat_in: replies */
	__u64 bytes;
};

/* The two halves of the table: one map definition, twice. */
#define NAT_TABLE_HALF(name)                               \
	struct {                                           \
		__uint(type, BPF_MAP_TYPE_HASH);           \
		__uint(max_entries, NAT_MAX_ENTRIES);      \
		__uint(map_flags, BPF_F_NO_PREALLOC);      \
		__type(key, struct nat_tuple);             \
		__type(value, struct nat_entry);           \
		__uint(pinning, LIBBPF_PIN_BY_NAME);       \
	} name SEC(".maps")

NAT_TABLE_HALF(nat_out);
NAT_TABLE_HALF(nat_in);

static __always_inline const struct nat_config *nat_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&nat_config, &zero);
}

/* A configured value (a timeout, a port bound, a quota), or its default when
 * the config leaves it 0. */
static __always_inline __u32 ct_or_default(__u32 configured, __u32 def)
{
	return configured ? configured : def;
}

static __always_inline __u64 ct_timeout_ns(const struct nat_config *cfg, __u8 state)
{
	__u32 s;

	switch (state) {
	case CT_SYN_SENT:
		s = ct_or_default(cfg ? cfg->timeout_tcp_syn_s : 0, CT_TIMEOUT_TCP_SYN_DEFAULT_S);
		break;
	case CT_ESTABLISHED:
		s = ct_or_default(cfg ? cfg->timeout_tcp_s : 0, CT_TIMEOUT_TCP_DEFAULT_S);
		break;
	case CT_CLOSING:
		s = ct_or_default(cfg ? cfg->timeout_tcp_closing_s : 0, CT_TIMEOUT_TCP_CLOSING_DEFAULT_S);
		break;
	case CT_UDP:
		s = ct_or_default(cfg ? cfg->timeout_udp_s : 0, CT_TIMEOUT_UDP_DEFAULT_S);
		break;
	default:
		/* CT_ICMP, and states a newer program wrote: the
		 * shortest sensible lifetime. */
		s = ct_or_default(cfg ? cfg->timeout_icmp_s : 0, CT_TIMEOUT_ICMP_DEFAULT_S);
		break;
	}
	return (__u64)s * 1000000000ULL;
}

static __always_inline int ct_expired(const struct nat_entry *e, const struct nat_config *cfg,
				      __u64 now)
{
	return e->last_seen_ns + ct_timeout_ns(cfg, e->state) < now;
}

/* A closing TCP flow's port may go to a new flow after this long idle,
 * before its timeout: connect-and-close traffic to one remote would
 * otherwise hold every port for the closing timeout and starve new flows
 * (4536 ports / 10 s = ~450 new connections a second). Linux's NAT lets a
 * new connection take over a closing one the same way; the remote end,
 * usually not the side in TIME_WAIT, sees a new SYN on a finished tuple. */
#define CT_CLOSING_REUSE_NS 1000000000ULL

/* Whether a flow's NAT port may go to a new flow: it expired, or it is a
 * closing TCP flow idle for CT_CLOSING_REUSE_NS. Replies are still
 * translated until it expires or its port is taken. */
static __always_inline int ct_reclaimable(const struct nat_entry *e, const struct nat_config *cfg,
					  __u64 now)
{
	if (e->state == CT_CLOSING && e->last_seen_ns + CT_CLOSING_REUSE_NS < now)
		return 1;
	return ct_expired(e, cfg, now);
}

/* The state of a flow after a packet. orig is 1 for the container's
 * direction, 0 for replies; is_new for the packet that creates the flow;
 * tcp_flags is byte 13 of the TCP header. */
static __always_inline __u8 ct_next_state(__u8 cur, __u8 proto, __u8 tcp_flags, int orig,
					  int is_new)
{
	if (proto == IPPROTO_UDP)
		return CT_UDP;
	if (proto != IPPROTO_TCP)
		return CT_ICMP;
	if (tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		return CT_CLOSING;
	if (is_new)
		/* A flow we first see mid-stream (entries expired, or the
		 * node rebooted) is picked up, as Linux conntrack does by
		 * default (nf_conntrack_tcp_loose), but with the short
		 * timeout of a SYN until the remote answers: a bare ACK
		 * nobody answers holds its entry for the SYN timeout, not
		 * for the hours of an established flow. */
		return CT_SYN_SENT;
	if (!orig && cur == CT_SYN_SENT)
		return CT_ESTABLISHED;
	/* A new SYN on a closing tuple: the container reuses the port for
	 * a new connection. */
	if (orig && cur == CT_CLOSING && (tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
		return CT_SYN_SENT;
	return cur;
}

/* Refresh an entry for a packet; state as from ct_next_state. Counters are
 * atomic: both halves are shared by all CPUs. */
static __always_inline void ct_touch(struct nat_entry *e, __u8 state, __u64 now, __u32 len)
{
	if (e->state != state)
		e->state = state;
	e->last_seen_ns = now;
	if (len) {
		__sync_fetch_and_add(&e->packets, 1);
		__sync_fetch_and_add(&e->bytes, len);
	}
}

/* What the container last told the remote about its receive window,
 * overlaid on the nat_in half's created_ns: the sequence numbers the
 * container accepts, against which a RST or FIN from the remote is judged
 * (ct_in_window). */
struct ct_window {
	__u32 ack;   /* host order: the last acknowledgment number the container sent */
	__u16 win;   /* its window field, unscaled */
	__u8 wscale; /* its window scale (CT_F_WSCALE), else CT_WSCALE_UNKNOWN */
	__u8 pad;
};

/* The window scale assumed for a flow picked up mid-stream: the largest
 * RFC 7323 allows, so that a real RST is never judged out of window. */
#define CT_WSCALE_UNKNOWN 14

static __always_inline struct ct_window *ct_window_of(struct nat_entry *in)
{
	return (struct ct_window *)&in->created_ns;
}

/* Record the window scale of the container's SYN in a new flow's nat_in. */
static __always_inline void ct_window_init(struct nat_entry *in, __u8 wscale)
{
	struct ct_window *w = ct_window_of(in);

	w->ack = 0;
	w->win = 0;
	w->wscale = wscale > CT_WSCALE_UNKNOWN ? CT_WSCALE_UNKNOWN : wscale;
	w->pad = 0;
	in->flags = (in->flags & ~(CT_F_WSCALE | CT_F_WINDOW)) | CT_F_WSCALE;
}

/* Record the acknowledgment and window of a container's TCP packet. */
static __always_inline void ct_window_update(struct nat_entry *in, __u32 ack, __u16 win)
{
	struct ct_window *w = ct_window_of(in);

	if (!(in->flags & CT_F_WSCALE)) {
		/* Picked up mid-stream, or an older build's entry. */
		w->wscale = CT_WSCALE_UNKNOWN;
		w->pad = 0;
		in->flags = (in->flags & ~(CT_F_WSCALE | CT_F_WINDOW)) | CT_F_WSCALE;
	}
	w->ack = ack;
	w->win = win;
	in->flags |= CT_F_WINDOW;
}

/* Whether a RST or FIN from the remote with sequence number seq lies in the
 * container's receive window: from its last acknowledgment to that plus
 * its window, as Linux conntrack judges a segment (tcp_in_window, loosely:
 * one window, no per-direction maxima). Until the container acknowledged
 * anything every segment counts as in window. */
static __always_inline int ct_in_window(struct nat_entry *in, __u32 seq)
{
	const struct ct_window *w = ct_window_of(in);
	__u32 scale;

	if (!(in->flags & CT_F_WINDOW))
		return 1;
	scale = w->wscale > CT_WSCALE_UNKNOWN ? CT_WSCALE_UNKNOWN : w->wscale;
	return seq - w->ack <= ((__u32)w->win << scale);
}
