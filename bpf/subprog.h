/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Global BPF functions. The verifier checks a static function (inlined or
 * not) again at every call site, with the caller's state; a global
 * function it checks once, on its own, from its signature: scalars, the
 * context, and pointers to memory of the pointee's size. A program that
 * reaches a large decision by several paths (the fast path's admission
 * of a frame by its receiver, the drop path) costs the verifier a
 * multiple of its size otherwise, and the verifier's time is a fresh
 * node's first ADD.
 *
 * The price: a global function knows nothing of its caller. Its pointer
 * arguments are non-NULL only when declared so (__arg_nonnull, which the
 * verifier then checks at the call); they point to the stack or to map
 * values, never into the packet (it re-reads what it needs through the
 * context) nor into ring buffer records; what it returns is a scalar (the
 * verifier refuses void), and it takes five arguments at most. Its frame
 * adds to the caller's in the verifier's 512-byte limit for a chain of
 * calls, which is why large values live in per-CPU scratch maps or
 * .rodata rather than on the stack.
 *
 * Measured on kernel 6.18 (processed instructions): from_container
 * 195,284 before its policy, parser, fast path, port mapping and drop path
 * became global functions, 12,376 after; uplink_egress 131,630 and 15,421
 * (the port search a bpf_loop step, nat_reclaim's body a function). */
#pragma once

#define __subprog __attribute__((noinline))

/* A pointer argument the caller must pass non-NULL (kernel 6.8+). */
#define __arg_nonnull __attribute__((btf_decl_tag("arg:nonnull")))
