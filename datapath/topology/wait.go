package topology

import (
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
)

// WaitOperUp waits until the link with index ifindex is operationally up,
// for at most timeout. The kernel reports a veth's carrier asynchronously
// (linkwatch), so right after both ends are set up the host end may still be
// down for a moment. Rather than polling with sleeps, it subscribes to link
// updates and then checks the current state again, so no transition is
// missed; the subscription is skipped when the link is already up.
func WaitOperUp(ifindex int, timeout time.Duration) error {
	if link, err := netlink.LinkByIndex(ifindex); err == nil && link.Attrs().OperState == netlink.OperUp {
		return nil
	}
	updates := make(chan netlink.LinkUpdate, 16)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.LinkSubscribe(updates, done); err != nil {
		return fmt.Errorf("subscribe to link updates: %w", err)
	}
	link, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("look up link %d: %w", ifindex, err)
	}
	state := link.Attrs().OperState
	deadline := time.After(timeout)
	for state != netlink.OperUp {
		select {
		case u := <-updates:
			if int(u.Index) == ifindex {
				state = u.Link.Attrs().OperState
			}
		case <-deadline:
			return fmt.Errorf("bridge port %q is still %s after %v", link.Attrs().Name, state, timeout)
		}
	}
	return nil
}
