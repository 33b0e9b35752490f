package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/ipam/store"
)

// allocationJSON is an address in `ipam -j`.
type allocationJSON struct {
	Network     string     `json:"network"`
	IP          netip.Addr `json:"ip"`
	ContainerID string     `json:"container_id"`
	IfName      string     `json:"ifname"` // empty in the old, ID-only format
	// Stale is true when the container is gone: StaleReason is
	// "no-endpoint" (this node's datapath has no record of the
	// attachment) or "netns-gone" (the record's netns no longer exists).
	Stale       bool   `json:"stale"`
	StaleReason string `json:"stale_reason"`
}

// ipam serves `ipam`: the host-local store, read without its lock and
// never written, against the datapath's endpoint records.
func (in *inspector) ipam([]string) error {
	networks, err := store.Networks(in.dataDir)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("no host-local store at %s (set --data-dir to the network's ipam.dataDir)", in.dataDir)
	}
	if err != nil {
		return err
	}
	recs, err := in.dp.Endpoints()
	if err != nil {
		return err
	}
	views := []allocationJSON{}
	for _, network := range networks {
		allocs, err := store.List(in.dataDir, network)
		if err != nil {
			return fmt.Errorf("read the store of %s: %w", network, err)
		}
		for _, a := range allocs {
			v := allocationJSON{Network: network, IP: a.IP, ContainerID: a.ContainerID, IfName: a.IfName}
			v.StaleReason = staleReason(a.Attachment, recs)
			v.Stale = v.StaleReason != ""
			views = append(views, v)
		}
	}
	return in.emit(views, func(w io.Writer) {
		row(w, "NETWORK", "IP", "CONTAINER", "IFNAME", "STALE")
		for _, v := range views {
			stale := "-"
			if v.Stale {
				stale = "stale (" + v.StaleReason + ")"
			}
			row(w, v.Network, v.IP, dash(v.ContainerID), dash(v.IfName), stale)
		}
	})
}

// staleReason says why the allocation's container is gone, or "" when it
// is not: an endpoint record of the attachment whose netns still exists
// keeps it live. An old ID-only allocation matches any ifname.
func staleReason(a store.Attachment, recs []datapath.EndpointRecord) string {
	reason := "no-endpoint"
	for _, r := range recs {
		if r.ContainerID != a.ContainerID || a.IfName != "" && r.IfName != a.IfName {
			continue
		}
		if isNetns(r.Netns) {
			return ""
		}
		reason = "netns-gone"
	}
	return reason
}

// isNetns reports whether path is (a bind mount of) a network namespace:
// a deleted one's path is gone, or left as a plain file.
func isNetns(path string) bool {
	var st unix.Statfs_t
	return path != "" && unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}
