// Package sandbox builds throwaway network topologies out of Linux network
// namespaces for bpfbridge's end-to-end tests, the demo program and the
// cnibench load tool.
//
// A [Sandbox] is a "node" namespace, where the CNI plugin runs, joined by a
// veth pair to an "external" namespace that stands in for the rest of the
// world, plus any number of bare container namespaces. Every namespace is
// bind-mounted at /run/netns/<name> under a name starting with "bpfb-", so
// `ip netns` and nsenter can inspect a live sandbox and [RemoveAll] can clear
// the leftovers of a crashed run.
//
// Nothing in this package touches the caller's own network namespace: links,
// addresses, routes and sysctls are only ever changed from a thread that has
// entered a namespace the package created, and all addresses come from the
// documentation ranges 198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32.
// Everything requires root (CAP_SYS_ADMIN and CAP_NET_ADMIN).
package sandbox
