/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Drops: every packet a program drops is counted under one reason, per
 * endpoint and in total, and reported to user space as a rate-limited event
 * on a ring buffer (for `bridge inspect monitor`). */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* Why a packet was dropped. bpf2go exports the values to Go
 * (datapath/program), where drops.go names them for `bridge inspect`; a
 * reason without a Go name fails to compile there. One byte, as stored in
 * drop_event.reason. */
enum __attribute__((packed)) drop_reason {
	DROP_NONE = 0,
	DROP_SPOOF_MAC = 1,       /* Ethernet source is not the endpoint's MAC */
	DROP_SPOOF_IPV4 = 2,      /* IPv4 source is not the endpoint's */
	DROP_SPOOF_IPV6 = 3,      /* IPv6 source is not the endpoint's (nor its link-local) */
	DROP_SPOOF_ARP = 4,       /* ARP sender MAC or IP is not the endpoint's */
	DROP_SPOOF_NDP = 5,       /* NS/NA link-layer option or NA target not the endpoint's */
	DROP_ROUTER_NDP = 6,      /* router advertisement or redirect from a container */
	DROP_CROSS_NETWORK = 7,   /* to or from a container of another network */
	DROP_SAME_NETWORK = 8,    /* between containers of a network in container isolation */
	DROP_NO_ENDPOINT = 9,     /* the veth has no endpoint entry */
	DROP_MALFORMED = 10,      /* headers truncated or inconsistent */
	DROP_ETHERTYPE = 11,      /* neither IPv4, IPv6 nor ARP (nor VLAN on a trunk) */
	DROP_NAT_EXHAUSTED = 12,  /* masquerade: no free NAT port among the tries, or NAT table full */
	DROP_NAT_NO_ADDRESS = 13, /* masquerade: the uplink has no address of the packet's family */
	DROP_NAT_QUOTA = 14,      /* masquerade: the container holds its share of the NAT table */
	DROP_NAT_UNTRACKED = 15,  /* masquerade: a later fragment whose first fragment was not seen */
	DROP_REASONS = 16,        /* number of reasons */
};

/* drop_event.direction: which hook dropped the packet. */
enum __attribute__((packed)) direction {
	DIR_FROM_CONTAINER = 0, /* tc ingress of the host veth */
	DIR_TO_CONTAINER = 1,   /* tc egress of the host veth */
	DIR_UPLINK_EGRESS = 2,  /* tc egress of an uplink (masquerade); ifindex is the uplink */
	DIR_UPLINK_INGRESS = 3, /* tc ingress of an uplink (reverse NAT); ifindex is the uplink */
	DIRECTIONS = 4,         /* number of directions */
};

struct drop_event {
	__u64 timestamp_ns; /* bpf_ktime_get_ns(), CLOCK_MONOTONIC */
	__u32 ifindex;      /* host-side veth; the uplink for DIR_UPLINK_* */
	__u8 reason;        /* enum drop_reason */
	__u8 direction;     /* DIR_* */
	__u16 eth_proto;    /* host byte order */
	__u8 ip_proto;      /* IPPROTO_* when IPv4/IPv6, else 0 */
	__u8 pad;
	__u16 sport;        /* host byte order, TCP/UDP only */
	__u16 dport;
	__u8 pad2[2];
	__u8 src_mac[6];
	__u8 dst_mac[6];
	__u8 src_ip[16];    /* IPv4 in the first 4 bytes; ARP: sender IP */
	__u8 dst_ip[16];    /* ARP: target IP */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} drop_events SEC(".maps");

/* Events are rate limited per CPU so that a flood of bad packets cannot
 * flood user space: at most EVENTS_PER_WINDOW per EVENT_WINDOW_NS. */
#define EVENT_WINDOW_NS 1000000000ULL
enum event_budget_limit {
	EVENTS_PER_WINDOW = 64,
};

struct event_budget {
	__u64 window_start_ns;
	__u32 used;
	__u32 suppressed; /* events not sent for lack of budget, ever */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_budget);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} event_budget SEC(".maps");

/* Totals by reason, including drops on veths without an endpoint. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_REASONS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} drop_totals SEC(".maps");
