// Package topology builds the links of a bpfbridge network with netlink: the
// bridge, each container's veth pair and the bridge's gateway addresses. It
// builds the same topology as the reference bridge plugin so existing nodes
// and configs keep working; every function here acts on the network namespace
// of the calling thread unless it takes a namespace argument.
package topology

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
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
}

// EnsureBridge returns the bridge named cfg.Name, creating it when missing,
// and makes sure it is up with the configured promiscuity and VLAN filtering.
// An existing link with that name that is not a bridge, or a bridge whose MTU
// differs from a configured MTU, is a *ConflictError.
func EnsureBridge(cfg BridgeConfig) (*netlink.Bridge, error) {
	br, err := LookupBridge(cfg.Name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		br, err = createBridge(cfg)
	}
	if err != nil {
		return nil, err
	}
	if cfg.MTU != 0 && br.MTU != cfg.MTU {
		return nil, conflictf("bridge %q has mtu %d but the config sets \"mtu\": %d; "+
			"align the config or delete the bridge once no container uses it", cfg.Name, br.MTU, cfg.MTU)
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

// createBridge adds the bridge. Concurrent ADDs race to create it, so EEXIST
// means another ADD won and its bridge is used.
func createBridge(cfg BridgeConfig) (*netlink.Bridge, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = cfg.Name
	attrs.MTU = cfg.MTU
	br := &netlink.Bridge{LinkAttrs: attrs}
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
	// Pin the bridge's MAC: left alone, a bridge takes the lowest MAC of its
	// ports, so its address (the containers' gateway MAC) would change as
	// containers come and go and every neighbour cache would go stale.
	if err := netlink.LinkSetHardwareAddr(created, created.HardwareAddr); err != nil {
		return nil, fmt.Errorf("pin MAC of bridge %q: %w", cfg.Name, err)
	}
	// The gateway owns the routes of this network; router advertisements
	// from a container must not add routes to the node.
	_, _ = sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/accept_ra", cfg.Name), "0")
	return created, nil
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
