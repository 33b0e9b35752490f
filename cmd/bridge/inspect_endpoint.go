package main

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// endpointJSON is an endpoint in `endpoint list|show -j`.
type endpointJSON struct {
	ContainerID   string            `json:"container_id"`
	IfName        string            `json:"ifname"`
	Network       string            `json:"network"`
	Netns         string            `json:"netns"`
	IPs           []netip.Addr      `json:"ips"`
	MAC           string            `json:"mac"`
	HostIfName    string            `json:"host_ifname"`
	Ifindex       int               `json:"ifindex"`
	Isolation     string            `json:"isolation"`
	VLANTrunk     bool              `json:"vlan_trunk"`
	AttachMode    string            `json:"attach_mode"` // "tcx", "legacy", or "" before attaching
	ProgTag       string            `json:"prog_tag"`
	Created       time.Time         `json:"created"`
	FromContainer trafficJSON       `json:"from_container"`
	ToContainer   trafficJSON       `json:"to_container"`
	Drops         map[string]uint64 `json:"drops"` // by reason
	DropsTotal    uint64            `json:"drops_total"`
	// Stale is true when the container looks gone: StaleReason is
	// "veth-gone" or "netns-gone".
	Stale       bool   `json:"stale"`
	StaleReason string `json:"stale_reason"`
}

type trafficJSON struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

func endpointView(r datapath.EndpointRecord) endpointJSON {
	c := r.Counters
	var total uint64
	for _, n := range c.Drops {
		total += n
	}
	ips := r.IPs
	if ips == nil {
		ips = []netip.Addr{}
	}
	return endpointJSON{
		ContainerID: r.ContainerID, IfName: r.IfName, Network: r.Network, Netns: r.Netns,
		IPs: ips, MAC: r.MAC.String(), HostIfName: r.HostIfName, Ifindex: r.HostIfindex,
		Isolation: r.Isolation.String(), VLANTrunk: r.TaggedOK,
		AttachMode: string(r.Attach), ProgTag: r.ProgTag, Created: r.Created,
		FromContainer: trafficJSON{c.FromPackets, c.FromBytes},
		ToContainer:   trafficJSON{c.ToPackets, c.ToBytes},
		Drops:         dropsByReason(c.Drops),
		DropsTotal:    total,
		Stale:         r.Stale != "",
		StaleReason:   r.Stale,
	}
}

func ipList(ips []netip.Addr) string {
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
	}
	return dash(strings.Join(s, ","))
}

// endpointViews renders records for output.
func endpointViews(recs []datapath.EndpointRecord) []endpointJSON {
	views := make([]endpointJSON, len(recs))
	for i, r := range recs {
		views[i] = endpointView(r)
	}
	return views
}

// endpointList serves `endpoint list`.
func (in *inspector) endpointList([]string) error {
	recs, err := in.dp.Endpoints()
	if err != nil {
		return err
	}
	views := endpointViews(recs)
	return in.emit(views, func(w io.Writer) {
		row(w, "CONTAINER", "IFNAME", "NETWORK", "IPS", "MAC", "HOST_IF", "IFINDEX", "ISOLATION", "MODE", "PROG_TAG",
			"PKTS_FROM", "BYTES_FROM", "PKTS_TO", "BYTES_TO", "DROPS", "STALE")
		for _, v := range views {
			row(w, v.ContainerID, v.IfName, v.Network, ipList(v.IPs), v.MAC, v.HostIfName, v.Ifindex, v.Isolation,
				dash(v.AttachMode), v.ProgTag, v.FromContainer.Packets, v.FromContainer.Bytes,
				v.ToContainer.Packets, v.ToContainer.Bytes, v.DropsTotal, dash(v.StaleReason))
		}
	})
}

// endpointShow serves `endpoint show <container-id>[/<ifname>]`: without
// an ifname, every attachment of the container.
func (in *inspector) endpointShow(args []string) error {
	id, ifname := splitEndpoint(args[0])
	recs, err := in.endpointsOf(id, ifname)
	if err != nil {
		return err
	}
	views := endpointViews(recs)
	return in.emit(views, func(w io.Writer) {
		for i, v := range views {
			if i > 0 {
				row(w)
			}
			for _, kv := range [][2]any{
				{"container", v.ContainerID}, {"ifname", v.IfName}, {"network", v.Network},
				{"netns", dash(v.Netns)}, {"ips", ipList(v.IPs)}, {"mac", v.MAC},
				{"host veth", fmt.Sprintf("%s (ifindex %d)", v.HostIfName, v.Ifindex)},
				{"isolation", v.Isolation}, {"vlan trunk", v.VLANTrunk},
				{"attach mode", dash(v.AttachMode)}, {"program tag", v.ProgTag},
				{"created", v.Created.Format(time.RFC3339)},
				{"from container", fmt.Sprintf("%d packets, %d bytes", v.FromContainer.Packets, v.FromContainer.Bytes)},
				{"to container", fmt.Sprintf("%d packets, %d bytes", v.ToContainer.Packets, v.ToContainer.Bytes)},
				{"drops", v.DropsTotal}, {"stale", dash(v.StaleReason)},
			} {
				row(w, kv[0].(string)+":", kv[1])
			}
			for _, r := range program.DropReasons() {
				if n := v.Drops[r.String()]; n > 0 {
					row(w, "  "+r.String()+":", n)
				}
			}
		}
	})
}

// endpointsOf returns the attachment id/ifname, or every attachment of
// container id when ifname is empty; none is an error.
func (in *inspector) endpointsOf(id, ifname string) ([]datapath.EndpointRecord, error) {
	if ifname != "" {
		r, err := in.dp.Endpoint(id, ifname)
		if err != nil {
			return nil, err
		}
		return []datapath.EndpointRecord{r}, nil
	}
	all, err := in.dp.Endpoints()
	if err != nil {
		return nil, err
	}
	var recs []datapath.EndpointRecord
	for _, r := range all {
		if r.ContainerID == id {
			recs = append(recs, r)
		}
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("%s: %w", id, datapath.ErrNoEndpoint)
	}
	return recs, nil
}

// statsJSON is `stats -j`: drops by reason (every reason a key).
type statsJSON struct {
	// Totals are the node's, from drop_totals: they also count drops on
	// veths without an endpoint, and endpoints since deleted.
	Totals    map[string]uint64   `json:"totals"`
	Networks  []networkDropsJSON  `json:"networks"`
	Endpoints []endpointDropsJSON `json:"endpoints"`
}

type networkDropsJSON struct {
	Network string            `json:"network"`
	Drops   map[string]uint64 `json:"drops"`
}

type endpointDropsJSON struct {
	ContainerID string            `json:"container_id"`
	IfName      string            `json:"ifname"`
	Network     string            `json:"network"`
	Drops       map[string]uint64 `json:"drops"`
}

// stats serves `stats`.
func (in *inspector) stats([]string) error {
	totals, err := in.dp.DropTotals()
	if err != nil {
		return err
	}
	recs, err := in.dp.Endpoints()
	if err != nil {
		return err
	}
	v := statsJSON{Totals: dropsByReason(totals), Networks: []networkDropsJSON{}, Endpoints: []endpointDropsJSON{}}
	perNetwork := map[string]*[program.NumDropReasons]uint64{}
	for _, r := range recs {
		sum := perNetwork[r.Network]
		if sum == nil {
			sum = new([program.NumDropReasons]uint64)
			perNetwork[r.Network] = sum
			// Endpoints come ordered by network: so do networks.
			v.Networks = append(v.Networks, networkDropsJSON{Network: r.Network})
		}
		for i, n := range r.Counters.Drops {
			sum[i] += n
		}
		v.Endpoints = append(v.Endpoints, endpointDropsJSON{r.ContainerID, r.IfName, r.Network, dropsByReason(r.Counters.Drops)})
	}
	for i := range v.Networks {
		v.Networks[i].Drops = dropsByReason(*perNetwork[v.Networks[i].Network])
	}
	return in.emit(v, func(w io.Writer) {
		row(w, "REASON", "NODE TOTAL")
		for _, r := range program.DropReasons() {
			row(w, r, v.Totals[r.String()])
		}
		row(w)
		row(w, "NETWORK", "REASON", "DROPS")
		for _, n := range v.Networks {
			for _, r := range program.DropReasons() {
				if d := n.Drops[r.String()]; d > 0 {
					row(w, n.Network, r, d)
				}
			}
		}
		row(w)
		row(w, "ENDPOINT", "NETWORK", "REASON", "DROPS")
		for _, e := range v.Endpoints {
			for _, r := range program.DropReasons() {
				if d := e.Drops[r.String()]; d > 0 {
					row(w, endpointName(e.ContainerID, e.IfName), e.Network, r, d)
				}
			}
		}
	})
}
