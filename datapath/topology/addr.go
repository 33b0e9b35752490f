package topology

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// EnsureGatewayAddr puts the gateway address gw (gateway IP with the
// network's prefix length) on link, usually the bridge. An address of the same
// family that overlaps gw's subnet and differs from it is a *ConflictError
// unless force is set, in which case it is replaced, as the reference plugin's
// forceAddress does. IPv6 permits several non-overlapping addresses.
func EnsureGatewayAddr(link netlink.Link, gw *net.IPNet, force bool) error {
	family := netlink.FAMILY_V6
	if gw.IP.To4() != nil {
		family = netlink.FAMILY_V4
	}
	addrs, err := netlinksafe.AddrList(link, family)
	if err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("list addresses of %q: %w", link.Attrs().Name, err)
	}
	want := gw.String()
	for _, a := range addrs {
		if a.IPNet.String() == want {
			return nil
		}
		overlaps := a.IPNet.Contains(gw.IP) || gw.Contains(a.IP)
		if family == netlink.FAMILY_V6 && !overlaps {
			continue
		}
		if !force {
			return conflictf("%q already has address %s, not the gateway %s; "+
				"set \"forceAddress\": true to replace it", link.Attrs().Name, a.IPNet, want)
		}
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("remove address %s from %q: %w", a.IPNet, link.Attrs().Name, err)
		}
	}
	addr := &netlink.Addr{IPNet: gw}
	if family == netlink.FAMILY_V6 {
		// The gateway address is ours by construction: skip duplicate address
		// detection so IPv6 containers can use their gateway at once instead
		// of after the ~1 s DAD delay.
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("add gateway address %s to %q: %w", want, link.Attrs().Name, err)
	}
	return nil
}
