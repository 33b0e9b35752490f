package topology

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// EnsureGatewayAddr puts the gateway address gw (gateway IP with the
// network's prefix length) on link, usually the bridge. An address of the same
// family that overlaps gw's subnet and differs from it is a *ConflictError
// unless force is set, in which case it is replaced, as the reference plugin's
// forceAddress does. IPv6 permits several non-overlapping addresses.
//
// Every ADD of a gateway network calls this, and listing addresses makes the
// kernel walk every device of the namespace (O(containers)). So it adds the
// address first: EEXIST, the common case, means the gateway is already in
// place; only a bridge that just got its gateway is checked for conflicts.
func EnsureGatewayAddr(link netlink.Link, gw *net.IPNet, force bool) error {
	addr := &netlink.Addr{IPNet: gw}
	if gw.IP.To4() == nil {
		// The gateway address is ours by construction: skip duplicate address
		// detection so IPv6 containers can use their gateway at once instead
		// of after the ~1 s DAD delay.
		addr.Flags = unix.IFA_F_NODAD
	}
	err := netlink.AddrAdd(link, addr)
	if errors.Is(err, syscall.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("add gateway address %s to %q: %w", gw, link.Attrs().Name, err)
	}
	conflicts, err := conflictingAddrs(link, gw)
	if err == nil && len(conflicts) > 0 && !force {
		err = conflictf("%q already has address %s, not the gateway %s; "+
			"set \"forceAddress\": true to replace it", link.Attrs().Name, conflicts[0].IPNet, gw)
	}
	for i := 0; err == nil && i < len(conflicts); i++ {
		if err = netlink.AddrDel(link, &conflicts[i]); err != nil {
			err = fmt.Errorf("remove address %s from %q: %w", conflicts[i].IPNet, link.Attrs().Name, err)
		}
	}
	if err != nil {
		_ = netlink.AddrDel(link, addr) // leave the link as it was
	}
	return err
}

// conflictingAddrs returns the addresses of link, other than gw, that
// overlap gw's subnet: any other IPv4 address (one gateway per bridge, as in
// the reference plugin), or an IPv6 address in an overlapping subnet.
func conflictingAddrs(link netlink.Link, gw *net.IPNet) ([]netlink.Addr, error) {
	family := netlink.FAMILY_V6
	if gw.IP.To4() != nil {
		family = netlink.FAMILY_V4
	}
	addrs, err := netlinksafe.AddrList(link, family)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %q: %w", link.Attrs().Name, err)
	}
	var conflicts []netlink.Addr
	for _, a := range addrs {
		if a.IPNet.String() == gw.String() {
			continue
		}
		if family == netlink.FAMILY_V4 || a.IPNet.Contains(gw.IP) || gw.Contains(a.IP) {
			conflicts = append(conflicts, a)
		}
	}
	return conflicts, nil
}

// EnableForwarding turns on IP forwarding for the family of gw in the
// calling thread's namespace: the gateway routes its containers' traffic.
// It reads first, so a node where it is on costs no write.
func EnableForwarding(gw net.IP) error {
	key := "net/ipv6/conf/all/forwarding"
	if gw.To4() != nil {
		key = "net/ipv4/ip_forward"
	}
	if v, err := sysctl.Sysctl(key); err == nil && v == "1" {
		return nil
	}
	if _, err := sysctl.Sysctl(key, "1"); err != nil {
		return fmt.Errorf("enable forwarding (%s): %w", key, err)
	}
	return nil
}
