package sandbox

import (
	"fmt"
	"net/netip"
)

// VethPair is the physical limit of the paths a CNI plugin builds: two
// namespaces joined by one veth pair, with nothing else on the way (no
// bridge, no routing hop, no program, no firewall). Benchmarks measure it
// beside a plugin's paths, in the same run, to tell what the plugin costs
// from what the machine can do.
type VethPair struct {
	Prefix string // starts both namespace names
	A, B   *NetNS
	// AddrA and AddrB are A's and B's addresses, 10.202.0.1 and 10.202.0.2
	// (/24; the same in every pair, which live in namespaces of their own).
	AddrA, AddrB netip.Addr
}

// NewVethPair creates the namespaces prefix+"a" and prefix+"b", joined by a
// veth pair whose both ends have mtu (that of the networks it stands beside)
// and an address. prefix must start with NamePrefix and must not be a prefix
// of another live sandbox's prefix, since [VethPair.Close] removes every
// namespace that starts with it.
func NewVethPair(prefix string, mtu int) (*VethPair, error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, err
	}
	p := &VethPair{Prefix: prefix, AddrA: netip.MustParseAddr("10.202.0.1"), AddrB: netip.MustParseAddr("10.202.0.2")}
	if err := newJoined(veth{prefix + "a", PairNameA, &p.A}, veth{prefix + "b", PairNameB, &p.B}, mtu, p.configure); err != nil {
		return nil, err
	}
	return p, nil
}

// configure gives both ends their addresses.
func (p *VethPair) configure() error {
	for _, end := range []struct {
		ns   *NetNS
		name string
		addr netip.Addr
	}{{p.A, PairNameA, p.AddrA}, {p.B, PairNameB, p.AddrB}} {
		err := end.ns.Do(func() error {
			_, err := upWithAddrs(end.name, netip.PrefixFrom(end.addr, 24))
			return err
		})
		if err != nil {
			return fmt.Errorf("sandbox: configure %s: %w", end.ns.Name, err)
		}
	}
	return nil
}

// Close deletes both namespaces, and with them the veth pair. Calling it
// again is harmless.
func (p *VethPair) Close() error {
	return RemoveAll(p.Prefix)
}
