// Package topology builds the links of a bpfbridge network with netlink: the
// bridge, each container's veth pair and the bridge's gateway addresses. It
// builds the same topology as the reference bridge plugin so existing nodes
// and configs keep working; every function here acts on the network namespace
// of the calling thread unless it takes a namespace argument.
package topology

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"syscall"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ConflictError reports host state that disagrees with the configuration,
// such as an existing bridge with another MTU. bpfbridge never silently
// rewrites state other attachments may depend on; the operator decides.
type ConflictError struct{ Msg string }

func (e *ConflictError) Error() string { return e.Msg }

func conflictf(format string, args ...any) error {
	return &ConflictError{Msg: fmt.Sprintf(format, args...)}
}

// BridgeConfig is the desired state of a network's bridge.
type BridgeConfig struct {
	Name string
	// MTU is the configured MTU; 0 leaves the kernel default and accepts any
	// MTU on an existing bridge.
	MTU           int
	Promisc       bool
	VlanFiltering bool
	// PinMAC pins an existing bridge's MAC, as the reference does for a
	// gateway (a bridge this package creates is always pinned).
	PinMAC bool
}

// EnsureBridge returns the bridge named cfg.Name, creating it when missing,
// and makes sure it is up with the configured MTU, promiscuity and VLAN
// filtering. An existing link with that name that is not a bridge, or a
// bridge in use whose MTU differs from a configured MTU, is a *ConflictError.
func EnsureBridge(cfg BridgeConfig) (*netlink.Bridge, error) {
	br, err := LookupBridge(cfg.Name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		br, err = createBridge(cfg)
	} else if err == nil && cfg.PinMAC {
		// Only a MAC not pinned yet is set: setting it, even to the
		// address it has, flushes the node's neighbour entries on the
		// bridge (NETDEV_CHANGEADDR), so that the node must resolve every
		// container again. An answer sysfs cannot give pins, as before.
		if pinned, perr := macPinned(br.Name); perr != nil || !pinned {
			err = pinMAC(br)
		}
	}
	if err != nil {
		return nil, err
	}
	if cfg.MTU != 0 && br.MTU != cfg.MTU {
		if err := adoptMTU(br, cfg.MTU); err != nil {
			return nil, err
		}
	}
	if cfg.VlanFiltering && (br.VlanFiltering == nil || !*br.VlanFiltering) {
		if err := netlink.BridgeSetVlanFiltering(br, true); err != nil {
			return nil, fmt.Errorf("enable vlan_filtering on bridge %q: %w", cfg.Name, err)
		}
	}
	if cfg.Promisc && br.Promisc == 0 {
		if err := netlink.SetPromiscOn(br); err != nil {
			return nil, fmt.Errorf("set promiscuous mode on bridge %q: %w", cfg.Name, err)
		}
	}
	if br.Flags&1 == 0 { // net.FlagUp
		if err := netlink.LinkSetUp(br); err != nil {
			return nil, fmt.Errorf("set bridge %q up: %w", cfg.Name, err)
		}
	}
	return br, nil
}

// Snoops reports whether br keeps multicast memberships (multicast
// snooping on, as the kernel defaults; unknown counts as on).
func Snoops(br *netlink.Bridge) bool {
	return br.MulticastSnooping == nil || *br.MulticastSnooping
}

// createBridge adds the bridge. Concurrent ADDs race to create it, so EEXIST
// means another ADD won and its bridge is used.
func createBridge(cfg BridgeConfig) (*netlink.Bridge, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = cfg.Name
	// Multicast snooping off: with no querier on the segment (none is on a
	// node's container bridge) the kernel floods every multicast frame to
	// every port anyway, so snooping only costs: on each ADD, a port's
	// carrier coming up re-arms the query timers of every port (2 timers per
	// port firing in softirq), and every multicast frame a container sends
	// (its MLD reports, duplicate address detection, router solicitations)
	// is parsed and checksummed. Forwarding is the same; what changes is that
	// a query from a container (or a querier an operator adds) no longer
	// switches the bridge to forwarding by its learnt memberships.
	snooping := false
	br := &netlink.Bridge{LinkAttrs: attrs, MulticastSnooping: &snooping}
	if cfg.VlanFiltering {
		br.VlanFiltering = &cfg.VlanFiltering
	}
	err := netlink.LinkAdd(br)
	if errors.Is(err, syscall.EEXIST) {
		return LookupBridge(cfg.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("create bridge %q: %w", cfg.Name, err)
	}
	created, err := LookupBridge(cfg.Name)
	if err != nil {
		return nil, err
	}
	if err := pinMAC(created); err != nil {
		return nil, err
	}
	// The MTU is set after creation, not with it: only an explicit change
	// marks it as the operator's, for the kernel to keep.
	if cfg.MTU != 0 && created.MTU != cfg.MTU {
		if err := setMTU(created, cfg.MTU); err != nil {
			return nil, err
		}
	}
	// The gateway owns the routes of this network; router advertisements
	// from a container must not add routes to the node.
	_, _ = sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/accept_ra", cfg.Name), "0")
	return created, nil
}

// pinMAC sets the bridge's MAC to its current one. Left alone, a bridge
// takes the lowest MAC of its ports, so its address (the containers'
// gateway MAC) would change as containers come and go and every neighbour
// cache would go stale; once set explicitly, the kernel keeps it. Setting
// it, even to the MAC it has, makes the kernel flush the node's neighbour
// entries on the bridge (NETDEV_CHANGEADDR), so a bridge created by someone
// else is pinned once, by the first gateway ADD that finds it unpinned
// (macPinned); the reference pins it at every gateway ADD.
func pinMAC(br *netlink.Bridge) error {
	if err := netlink.LinkSetHardwareAddr(br, br.HardwareAddr); err != nil {
		return fmt.Errorf("pin MAC of bridge %q: %w", br.Name, err)
	}
	return nil
}

// netAddrSet is NET_ADDR_SET (linux/netdevice.h): the addr_assign_type of
// an address set explicitly, which a bridge keeps whatever its ports.
const netAddrSet = "3"

// macPinned reports whether the bridge name's MAC was set explicitly. Only
// sysfs shows it (addr_assign_type), and the machine's /sys shows the
// network namespace it was mounted in, which need not be the caller's (a
// node in a namespace of its own). So it reads a sysfs of the calling
// thread's network namespace, made for the purpose and mounted nowhere
// (fsopen, fsmount: a detached mount, gone with its last descriptor).
func macPinned(name string) (bool, error) {
	// sysfs shows the network namespace of the thread that creates it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fs, err := unix.Fsopen("sysfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return false, fmt.Errorf("open a sysfs: %w", err)
	}
	defer unix.Close(fs)
	if err := unix.FsconfigCreate(fs); err != nil {
		return false, fmt.Errorf("create a sysfs: %w", err)
	}
	mnt, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_RDONLY|unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		return false, fmt.Errorf("mount a sysfs: %w", err)
	}
	defer unix.Close(mnt)
	fd, err := unix.Openat(mnt, "class/net/"+name+"/addr_assign_type", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("addr_assign_type of bridge %q: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), "addr_assign_type")
	defer f.Close()
	assignType, err := io.ReadAll(f)
	if err != nil {
		return false, fmt.Errorf("addr_assign_type of bridge %q: %w", name, err)
	}
	return strings.TrimSpace(string(assignType)) == netAddrSet, nil
}

// adoptMTU sets the configured MTU on an existing bridge that has no ports.
// A bridge whose MTU was never set explicitly follows its smallest port and
// falls back to 1500 when its last port leaves, so a port-less bridge with
// another MTU is normal and nothing depends on it. With ports, their veths
// carry the old MTU: changing the bridge under them would leave the network
// inconsistent, so the operator decides.
func adoptMTU(br *netlink.Bridge, mtu int) error {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	ports := 0
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Index {
			ports++
		}
	}
	if ports > 0 {
		return conflictf("bridge %q has mtu %d but the config sets \"mtu\": %d, and %d port(s) use the bridge; "+
			"align the config, or detach those containers so the bridge can take the new MTU", br.Name, br.MTU, mtu, ports)
	}
	return setMTU(br, mtu)
}

// setMTU sets the bridge's MTU explicitly. Unlike the MTU given at
// creation, an explicit one is kept by the kernel as containers come and go
// instead of following the smallest port.
func setMTU(br *netlink.Bridge, mtu int) error {
	if err := netlink.LinkSetMTU(br, mtu); err != nil {
		return fmt.Errorf("set mtu %d on bridge %q: %w", mtu, br.Name, err)
	}
	br.MTU = mtu
	return nil
}

// LookupBridge returns the bridge named name; a link of another type with
// that name is a *ConflictError.
func LookupBridge(name string) (*netlink.Bridge, error) {
	link, err := netlinksafe.LinkByName(name)
	if err != nil {
		return nil, err
	}
	br, ok := link.(*netlink.Bridge)
	if !ok {
		return nil, conflictf("link %q exists but is a %s, not a bridge (\"bridge\": %q)", name, link.Type(), name)
	}
	return br, nil
}
