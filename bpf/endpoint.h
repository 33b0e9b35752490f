/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Endpoint state: what the control plane (datapath/ in Go) tells the
 * programs about each container attachment, keyed by the ifindex of its
 * host-side veth. The Go side mirrors these layouts through bpf2go. */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "parse.h"

/* A change to any struct or map here is a new layout: bump it, and the Go
 * side (datapath/state.go, from the generated value) pins the maps under a
 * new directory instead of failing on the old pins, then migrates the
 * node's state (datapath/layout.go). A new map is not a change: the first
 * load of a build that has it pins it beside the others, and Upgrade fills
 * it for the endpoints of earlier builds. */
/* 2: DROP_REASONS 12 -> 14 (masquerade), which resizes endpoint_stats and
 * drop_totals; the NAT maps are new. */
/* 3: DROP_REASONS 14 -> 16 (nat-quota, nat-untracked) resizes endpoint_stats and
 * drop_totals; the NAT ring, usage and quota maps are new (a v2 node is
 * converted: datapath/layout.go). */
enum layout {
	LAYOUT_VERSION = 3,
};

enum endpoint_limits {
	MAX_ENDPOINTS = 65536,
	MAX_IPV4 = 4, /* addresses per endpoint and family */
	MAX_IPV6 = 4,
};

/* The hash maps below are BPF_F_NO_PREALLOC: sized for the most endpoints a
 * node could ever have, preallocated they would pin tens of megabytes
 * (endpoint_meta alone is 65536 x ~0.9 KiB, ip_owners half a million
 * entries) in every node's kernel, charged to the cgroup that loads them.
 * Only the control plane inserts into them, so allocating on insert costs
 * the datapath nothing; lookups are the same either way.
 *
 * They share one shape (and with them stats.h's, fastpath.h's and nat.h's
 * per-endpoint and per-network maps) but each is spelled out in libbpf's
 * form, deliberately: a map definition is a declaration, not logic, and the
 * written-out struct is what a reader greps for and bpftool names. Only the
 * two halves of one table share a macro (NAT_TABLE_HALF in conntrack.h). */

/* endpoint.isolation; one byte, as stored there. */
enum __attribute__((packed)) isolation_mode {
	ISOLATION_NONE = 0,      /* anti-spoofing only */
	ISOLATION_NETWORK = 1,   /* no traffic to or from other networks' containers */
	ISOLATION_CONTAINER = 2, /* and none between containers of one network */
};

/* endpoint.flags */
enum __attribute__((packed)) endpoint_flags {
	EP_F_TAGGED_OK = 1 << 0, /* VLAN trunk port: 802.1Q/802.1ad frames pass */
	EP_F_FAST_PATH = 1 << 1, /* frames to endpoints on its bridge may skip it (fastpath.h) */
	EP_F_BRIDGE_NF = 1 << 2, /* the node's netfilter sees bridged frames (br_netfilter): the fast
				  * path between endpoints of a bridge carries only what it does
				  * not track, as routed traffic (fastpath.h) */
	EP_F_NODE_MCAST = 1 << 3, /* its bridge keeps no multicast memberships (snooping off): its
				   * router solicitations and MLD messages go to the node alone
				   * (fastpath.h) */
};

/* What a container may send as, and how it is isolated. */
struct endpoint {
	__u8 mac[6];     /* the container interface's MAC */
	__u8 isolation;  /* enum isolation_mode */
	__u8 flags;      /* EP_F_* */
	__u32 network;   /* network id: the same for every endpoint of a network */
	__u8 n_ipv4;
	__u8 n_ipv6;
	__u8 pad[2];
	__be32 ipv4[MAX_IPV4];
	__u8 ipv6[MAX_IPV6][16];
	__u8 ipv6_ll[16]; /* link-local address derived from mac (EUI-64) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); /* ifindex of the host-side veth */
	__type(value, struct endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

/* Which endpoint holds an address, for isolation decisions. */
struct ip_key {
	__u8 family; /* 4 or 6 */
	__u8 pad[3];
	__u8 addr[16] ADDR_ALIGNED; /* IPv4 in the first 4 bytes, rest zero */
};

struct ip_owner {
	__u32 ifindex;
	__u32 network;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS * (MAX_IPV4 + MAX_IPV6));
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ip_key);
	__type(value, struct ip_owner);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ip_owners SEC(".maps");

/* The endpoint that holds addr, or NULL: isolation decides by it, the NAT
 * finds the container (and its network) behind a source address by it. */
static __always_inline const struct ip_owner *ip_owner_lookup(__u8 family, const union addr *addr)
{
	struct ip_key key;

	/* Padding and the unused tail of an IPv4 key are part of the hash. */
	__builtin_memset(&key, 0, sizeof(key));
	key.family = family;
	if (family == 4)
		__builtin_memcpy(key.addr, &addr->v4, 4);
	else
		addr_copy(key.addr, addr->b);
	return bpf_map_lookup_elem(&ip_owners, &key);
}

/* Which endpoint a MAC belongs to, for isolation decisions at L2: a frame
 * between two endpoints on a bridge is decided by who they are, whatever
 * its addresses (IPv6 link-local, multicast, anything no owner holds). */
struct mac_key {
	__u8 mac[6];
	__u8 pad[2];
};

struct mac_owner {
	__u32 ifindex;
	__u32 network;
	__u8 isolation; /* enum isolation_mode of the endpoint */
	__u8 pad[3];
	__u32 bridge;   /* ifindex of the bridge the veth is a port of; 0: not known */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mac_key);
	__type(value, struct mac_owner);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mac_owners SEC(".maps");

/* The endpoint that has mac, or NULL. */
static __always_inline const struct mac_owner *mac_owner_lookup(const __u8 *mac)
{
	struct mac_key key = {};

	__builtin_memcpy(key.mac, mac, sizeof(key.mac));
	return bpf_map_lookup_elem(&mac_owners, &key);
}

/* Control-plane record of an attachment, keyed by the SHA-256 of
 * "<containerID>\0<ifname>". The programs never read it: it lets DEL, GC and
 * `bridge inspect` find an endpoint by container id and ifname even after
 * its veth (and so its ifindex) is gone, and rebuild the maps above after a
 * layout change. */
struct endpoint_key {
	__u8 sha256[32];
};

/* endpoint_meta.attach; 0 while an ADD has not attached yet. */
enum attach_mode {
	ATTACH_TCX = 1,
	ATTACH_LEGACY = 2, /* clsact + cls_bpf direct-action */
};

struct endpoint_meta {
	__u32 ifindex;
	__u32 attach;      /* ATTACH_* */
	__u64 created_ns;  /* CLOCK_REALTIME, nanoseconds */
	char container_id[256];
	char ifname[16];      /* inside the container */
	char host_ifname[16]; /* the host-side veth */
	char network[128];    /* network name */
	char netns[256];      /* CNI_NETNS at ADD */
	char prog_tag[16];    /* program set attached (see datapath) */
	struct endpoint ep;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_meta);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoint_meta SEC(".maps");
