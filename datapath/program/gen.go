// Package program embeds bpfbridge's tc programs, compiled from bpf/ by
// bpf2go, and the Go mirrors of the structs they share with the control
// plane.
//
// Two programs run on the host-side veth of every container attachment:
// FromContainer at tc ingress (what the container sends: anti-spoofing,
// then isolation by destination) and ToContainer at tc egress (what is
// delivered to the container: isolation by source, in the receiver's mode).
// Both pass with TC_ACT_UNSPEC and drop with TC_ACT_SHOT, counting every
// drop under a [DropReason].
//
// The generated bpfbridge_bpfel.go and bpfbridge_bpfel.o are committed, so
// building needs no clang. Regenerate with clang-19 (each clang version emits
// different bytes, and CI checks that the committed files are current):
//
//	go generate ./datapath/program
package program

// bpf2go emits the Go type of every map key and value by itself. The -type
// flags name the rest (drop_event travels on a ring buffer, which has no
// value type), pin down the structs the control plane fills, name the structs
// nested in others (addr, nat_l4, icmp_quote) so that each is one Go type
// rather than a copy inlined at every use, and export the
// enums C shares with Go (bpfbridge_contract in bpf/bpfbridge.c puts them
// into the BTF) as Go constants: Go never retypes a C value. There is no
// -type for endpoint_meta, endpoint_stats and event_budget: each shares its
// name with its map, which makes bpf2go's lookup by name ambiguous, and they
// are generated as map values anyway. The generated file still repeats itself
// in one way, by bpf2go's design: the *Specs structs and the loaded *Maps and
// *Programs structs list the same names.
//
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type endpoint -type ip_key -type ip_owner -type endpoint_key -type drop_event -type nat_tuple -type nat_entry -type nat_exclude_key -type nat_uplink -type nat_network -type drop_reason -type direction -type event_budget_limit -type layout -type endpoint_limits -type isolation_mode -type endpoint_flags -type attach_mode -type ct_state -type ct_timeout_default -type nat_port_default -type nat_network_flags -type nat_quota_default -type nat_usage_key -type nat_limits -type ct_gen -type nat_gen_key -type portmap_key -type portmap_value -type portmap_limits -type portmap_flow_flags -type portmap_sock_key -type addr -type nat_l4 -type icmp_quote Bpfbridge ../../bpf/bpfbridge.c -- -I../../bpf
