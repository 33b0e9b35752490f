package sandbox

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Names of the two ends of the uplink veth pair, and of a bare pair's.
const (
	NodeUplinkName     = "uplink0" // in Sandbox.Node
	ExternalUplinkName = "ext0"    // in Sandbox.External
	PairNameA          = "bare0"   // in VethPair.A
	PairNameB          = "bare1"   // in VethPair.B
)

// Sandbox is a throwaway node: the Node namespace, where the CNI plugin runs,
// has an uplink to the External namespace, which stands for the outside
// world and answers for the "internet" addresses Internet4 and Internet6.
// Container namespaces come from [Sandbox.NewContainer].
//
// The addresses are the same in every sandbox; that is safe because each
// sandbox lives in namespaces of its own.
type Sandbox struct {
	Prefix   string // starts every namespace name of this sandbox
	Node     *NetNS // where the CNI plugin runs
	External *NetNS // the outside world

	NodeUplink4, External4 netip.Prefix // 198.51.100.1/24 on uplink0, 198.51.100.2/24 on ext0
	NodeUplink6, External6 netip.Prefix // 2001:db8:ffff::1/64 on uplink0, 2001:db8:ffff::2/64 on ext0
	Internet4, Internet6   netip.Addr   // 203.0.113.10 and 2001:db8:eeee::10 on External's lo

	// BPFFS is the node's bpffs mount point, under BPFFSRoot: point the
	// plugin's datapath at it (config datapath.bpffs or BPFBRIDGE_BPFFS).
	// It does not exist until the plugin (or MountBPFFS) mounts a bpffs
	// there; Close unmounts and removes it.
	BPFFS string
}

// New builds a sandbox whose namespaces are named prefix+"node",
// prefix+"ext" and prefix+<container>. prefix must start with NamePrefix
// and must not be a prefix of another live sandbox's prefix, since
// [Sandbox.Close] removes every namespace that starts with it.
//
// Node gets default routes (IPv4 and IPv6) via External and has forwarding
// enabled; External only knows the uplink subnets until
// [Sandbox.AddExternalRoute] routes container subnets back to Node.
func New(prefix string) (*Sandbox, error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, err
	}
	s := &Sandbox{
		Prefix:      prefix,
		NodeUplink4: netip.MustParsePrefix("198.51.100.1/24"),
		External4:   netip.MustParsePrefix("198.51.100.2/24"),
		NodeUplink6: netip.MustParsePrefix("2001:db8:ffff::1/64"),
		External6:   netip.MustParsePrefix("2001:db8:ffff::2/64"),
		Internet4:   netip.MustParseAddr("203.0.113.10"),
		Internet6:   netip.MustParseAddr("2001:db8:eeee::10"),
		BPFFS:       filepath.Join(BPFFSRoot, prefix+"bpffs"),
	}
	err := newJoined(veth{prefix + "node", NodeUplinkName, &s.Node}, veth{prefix + "ext", ExternalUplinkName, &s.External}, 0, s.configure)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// veth is one end of a veth pair between two namespaces: the namespace's
// name, the end's name in it, and where the namespace goes once created.
type veth struct {
	netns, name string
	ns          **NetNS
}

// newJoined creates the namespaces of a and b, joined by a veth pair whose
// both ends have mtu (0: the kernel's default), and then calls configure.
// The pair is created from inside a with its peer placed straight into b,
// so it never exists in the caller's namespace, not even briefly. When any
// of it fails, newJoined deletes the namespaces it created, and only those:
// with a clashing name, an existing namespace belongs to somebody else.
func newJoined(a, b veth, mtu int, configure func() error) error {
	err := joinVeth(a, b, mtu)
	if err == nil {
		err = configure()
	}
	if err != nil {
		for _, n := range []*NetNS{*a.ns, *b.ns} {
			if n != nil {
				err = errors.Join(err, n.Delete())
			}
		}
	}
	return err
}

func joinVeth(a, b veth, mtu int) error {
	var err error
	if *a.ns, err = NewNetNS(a.netns); err != nil {
		return err
	}
	if *b.ns, err = NewNetNS(b.netns); err != nil {
		return err
	}
	peer, err := os.Open((*b.ns).Path)
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	defer peer.Close()
	err = (*a.ns).Do(func() error {
		return netlink.LinkAdd(&netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: a.name, MTU: mtu},
			PeerName:      b.name,
			PeerMTU:       uint32(mtu),
			PeerNamespace: netlink.NsFd(peer.Fd()),
		})
	})
	if err != nil {
		return fmt.Errorf("sandbox: create veth %s in %s: %w", a.name, a.netns, err)
	}
	return nil
}

// configure gives the uplink its addresses and Node its default routes and
// forwarding.
func (s *Sandbox) configure() error {
	err := s.External.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		for _, a := range []netip.Addr{s.Internet4, s.Internet6} {
			if err := addAddr(lo, netip.PrefixFrom(a, a.BitLen())); err != nil {
				return err
			}
		}
		_, err = upWithAddrs(ExternalUplinkName, s.External4, s.External6)
		return err
	})
	if err != nil {
		return fmt.Errorf("sandbox: configure %s: %w", s.External.Name, err)
	}

	err = s.Node.Do(func() error {
		link, err := upWithAddrs(NodeUplinkName, s.NodeUplink4, s.NodeUplink6)
		if err != nil {
			return err
		}
		for _, gw := range []netip.Addr{s.External4.Addr(), s.External6.Addr()} {
			def := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if gw.Is6() {
				def = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
			r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(def), Gw: gw.AsSlice()}
			if err := netlink.RouteAdd(r); err != nil {
				return fmt.Errorf("default route via %s: %w", gw, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sandbox: configure %s: %w", s.Node.Name, err)
	}
	for _, name := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if err := s.Node.SetSysctl(name, "1"); err != nil {
			return err
		}
	}
	return nil
}

// upWithAddrs assigns addrs to the link called name in the current namespace
// and sets it up.
func upWithAddrs(name string, addrs ...netip.Prefix) (netlink.Link, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, err
	}
	for _, p := range addrs {
		if err := addAddr(link, p); err != nil {
			return nil, err
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	return link, nil
}

// AddAddr adds p to the link called name in the calling thread's namespace
// (tests set up links of their own with it). IPv6 addresses skip duplicate
// address detection, as addAddr says.
func AddAddr(name string, p netip.Prefix) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return addAddr(link, p)
}

// addAddr adds p to link. IPv6 addresses skip duplicate address detection,
// which would otherwise leave them unusable (tentative) for about a second.
func addAddr(link netlink.Link, p netip.Prefix) error {
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := netlink.AddrAdd(link, a); err != nil {
		return fmt.Errorf("add %s to %s: %w", p, link.Attrs().Name, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// MountBPFFS mounts a bpffs at BPFFS, if none is there yet. The plugin
// mounts one itself when missing, but a plugin run in a mount namespace of
// its own (CNITool with StateDir) would mount it there, out of sight of
// the next run: mount it beforehand, and every run shares it.
func (s *Sandbox) MountBPFFS() error {
	var st unix.Statfs_t
	if unix.Statfs(s.BPFFS, &st) == nil && uint32(st.Type) == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(s.BPFFS, 0o700); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	if err := unix.Mount("bpf", s.BPFFS, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("sandbox: mount bpffs at %s: %w", s.BPFFS, err)
	}
	return nil
}

// AddExternalRoute routes dst (a container subnet) in External via the
// node's uplink address of the same family, so that External can answer
// containers that reach it without NAT. Adding the same route twice is fine.
func (s *Sandbox) AddExternalRoute(dst netip.Prefix) error {
	if !dst.IsValid() {
		return fmt.Errorf("sandbox: invalid route destination %v", dst)
	}
	dst = netip.PrefixFrom(dst.Addr().Unmap(), dst.Bits()).Masked()
	gw := s.NodeUplink4.Addr()
	if dst.Addr().Is6() {
		gw = s.NodeUplink6.Addr()
	}
	return s.External.Do(func() error {
		link, err := netlink.LinkByName(ExternalUplinkName)
		if err != nil {
			return err
		}
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(dst), Gw: gw.AsSlice()}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("sandbox: route %s via %s in %s: %w", dst, gw, s.External.Name, err)
		}
		return nil
	})
}

// ForTest returns a new sandbox named "bpfb-t<6 random hex digits>-" that
// is closed when t ends. It fails t, rather than skipping it, when not run as
// root: a skipped end-to-end test would pass silently without testing anything.
func ForTest(t testing.TB) *Sandbox {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("sandbox: network namespace tests must run as root (CAP_SYS_ADMIN, CAP_NET_ADMIN); use sudo or a privileged container")
	}
	s, err := New(fmt.Sprintf("%st%06x-", NamePrefix, rand.IntN(1<<24)))
	if err != nil {
		t.Fatalf("sandbox: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("sandbox: %v", err)
		}
	})
	return s
}

// NewContainer creates the bare namespace Prefix+name, with only lo up, for
// the CNI plugin to attach.
func (s *Sandbox) NewContainer(name string) (*NetNS, error) {
	if name == "" {
		return nil, errors.New("sandbox: empty container name")
	}
	return NewNetNS(s.Prefix + name)
}

// InNode runs fn inside Node, like s.Node.Do. Processes fn starts, such as
// the plugins libcni execs, inherit the namespace of the thread that forks
// them and so run in Node too.
func (s *Sandbox) InNode(fn func() error) error {
	return s.Node.Do(fn)
}

// Close deletes every namespace of the sandbox, containers included. Calling
// it again is harmless.
func (s *Sandbox) Close() error {
	return RemoveAll(s.Prefix)
}
