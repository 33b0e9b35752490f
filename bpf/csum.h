/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Checksum arithmetic for the NAT rewrites (nat.h, icmp_error.h).
 *
 * Two kinds of checksum fields get updated:
 *
 *  - The checksums of the packet's own headers (IPv4 header, TCP, UDP,
 *    ICMP, ICMPv6). These go through bpf_l3_csum_replace and
 *    bpf_l4_csum_replace, which know the skb's checksum state: with
 *    CHECKSUM_PARTIAL (GSO and checksum-offloaded packets the stack sends)
 *    the L4 field holds only the pseudo-header sum and the device finishes
 *    it, so only pseudo-header changes (BPF_F_PSEUDO_HDR) may touch it; with
 *    CHECKSUM_COMPLETE (received packets) skb->csum must follow the bytes
 *    that changed.
 *
 *  - Checksums inside the payload of an ICMP error (the embedded IPv4 header
 *    and L4 checksum). To the skb they are just data: they are computed here
 *    in C and written with bpf_skb_store_bytes, and the ICMP checksum that
 *    covers them is fixed by the difference.
 *
 * A "diff" is a 32-bit one's complement partial sum in the byte order of
 * memory, as bpf_csum_diff returns it and as bpf_l4_csum_replace takes it
 * when the size bits of its flags are 0. 16-bit fields are loaded from the
 * packet as raw __be16/__sum16 and used as they are: for a field at an even
 * offset from the start of the checksummed area that is the same
 * representation. All fields we touch are at even offsets. */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>

/* bpf_l4_csum_replace flag: the address change is IPv6's, which has no
 * header checksum, so with CHECKSUM_COMPLETE the address change and the L4
 * checksum change cancel out in skb->csum (kernel 6.16, "bpf: Support L4
 * csum update for IPv6 address changes"). Defined by value so that older
 * UAPI headers build; older kernels refuse it with -EINVAL, see
 * csum_l4_replace_ipv6_addr. */
#define CSUM_F_IPV6 (1ULL << 7)

static __always_inline __u32 csum_add(__u32 a, __u32 b)
{
	a += b;
	return a + (a < b); /* end-around carry */
}

static __always_inline __u32 csum_sub(__u32 a, __u32 b)
{
	return csum_add(a, ~b);
}

/* The diff of a 16-bit field changing from old to new. */
static __always_inline __u32 csum_diff16(__u16 old, __u16 new)
{
	return csum_add(~(__u32)old, new);
}

/* The diff of a 4-byte field; cheaper than bpf_csum_diff for one word. */
static __always_inline __u32 csum_diff32(__u32 old, __u32 new)
{
	return csum_add(~old, new);
}

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* A checksum field's new value when the data it covers changed by diff: the
 * kernel's csum_replace_by_diff. */
static __always_inline __u16 csum_update(__u16 check, __u32 diff)
{
	return csum_fold(csum_add(diff, ~(__u32)check));
}

/* Replace an IPv6 address in the pseudo-header of the L4 checksum at
 * csum_off (diff from bpf_csum_diff over the old and new address) and store
 * the new address at addr_off. flags may add BPF_F_MARK_MANGLED_0 (UDP).
 *
 * Kernels before 6.16 do not know CSUM_F_IPV6 and wrongly subtract the diff
 * from skb->csum for CHECKSUM_COMPLETE packets. There the address is stored
 * with BPF_F_RECOMPUTE_CSUM, which adds the same diff back (for other
 * checksum states both are no-ops), so skb->csum ends up right on every
 * kernel. Returns 0 or a negative error. */
static __always_inline int csum_l4_replace_ipv6_addr(struct __sk_buff *skb, __u32 csum_off,
						     __u32 addr_off, const void *new_addr,
						     __u32 diff, __u64 flags)
{
	__u64 store_flags = 0;
	int ret;

	flags |= BPF_F_PSEUDO_HDR;
	ret = bpf_l4_csum_replace(skb, csum_off, 0, diff, flags | CSUM_F_IPV6);
	if (ret == -EINVAL) {
		ret = bpf_l4_csum_replace(skb, csum_off, 0, diff, flags);
		store_flags = BPF_F_RECOMPUTE_CSUM;
	}
	if (ret)
		return ret;
	return bpf_skb_store_bytes(skb, addr_off, new_addr, 16, store_flags);
}
