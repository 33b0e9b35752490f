package sandbox

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
)

// Names of the two ends of a bare pair's veth.
const (
	PairNameA = "bare0" // in VethPair.A
	PairNameB = "bare1" // in VethPair.B
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
	if err := p.build(mtu); err != nil {
		// Only what this call created: with a clashing prefix, the
		// existing namespaces belong to somebody else.
		for _, n := range []*NetNS{p.A, p.B} {
			if n != nil {
				err = errors.Join(err, n.Delete())
			}
		}
		return nil, err
	}
	return p, nil
}

func (p *VethPair) build(mtu int) error {
	var err error
	if p.A, err = NewNetNS(p.Prefix + "a"); err != nil {
		return err
	}
	if p.B, err = NewNetNS(p.Prefix + "b"); err != nil {
		return err
	}
	b, err := os.Open(p.B.Path)
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	defer b.Close()
	// As the sandbox's uplink: created inside A with its peer placed
	// straight into B, never in the caller's namespace.
	err = p.A.Do(func() error {
		return netlink.LinkAdd(&netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: PairNameA, MTU: mtu},
			PeerName:      PairNameB,
			PeerMTU:       uint32(mtu),
			PeerNamespace: netlink.NsFd(b.Fd()),
		})
	})
	if err != nil {
		return fmt.Errorf("sandbox: create veth pair %s: %w", p.Prefix, err)
	}
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
