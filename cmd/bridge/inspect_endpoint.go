package main

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/bpfbridge/bpfbridge/datapath"
)

func ipList(ips []netip.Addr) string {
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
	}
	return dash(strings.Join(s, ","))
}

// endpointList serves `endpoint list`.
func (in *inspector) endpointList([]string) error {
	return emitRead(in, in.dp.Endpoints, func(w io.Writer, recs []datapath.EndpointRecord) {
		row(w, "CONTAINER", "IFNAME", "NETWORK", "IPS", "MAC", "HOST_IF", "IFINDEX", "ISOLATION", "MODE", "PROG_TAG",
			"PKTS_FROM", "BYTES_FROM", "PKTS_TO", "BYTES_TO", "DROPS", "STALE")
		for _, r := range recs {
			row(w, r.ContainerID, r.IfName, r.Network, ipList(r.IPs), r.MAC, r.HostIfName, r.HostIfindex, r.Isolation,
				dash(r.Attach.String()), r.ProgTag, r.FromContainer.Packets, r.FromContainer.Bytes,
				r.ToContainer.Packets, r.ToContainer.Bytes, r.DropsTotal, dash(r.StaleReason))
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
	return in.emit(recs, func(w io.Writer) {
		for i, v := range recs {
			if i > 0 {
				row(w)
			}
			for _, kv := range [][2]any{
				{"container", v.ContainerID}, {"ifname", v.IfName}, {"network", v.Network},
				{"netns", dash(v.Netns)}, {"ips", ipList(v.IPs)}, {"mac", v.MAC},
				{"host veth", fmt.Sprintf("%s (ifindex %d)", v.HostIfName, v.HostIfindex)},
				{"isolation", v.Isolation}, {"vlan trunk", v.TaggedOK},
				{"attach mode", dash(v.Attach.String())}, {"program tag", v.ProgTag},
				{"created", v.Created.Format(time.RFC3339)},
				{"from container", fmt.Sprintf("%d packets, %d bytes", v.FromContainer.Packets, v.FromContainer.Bytes)},
				{"to container", fmt.Sprintf("%d packets, %d bytes", v.ToContainer.Packets, v.ToContainer.Bytes)},
				{"nat pairs", v.NATPairs},
				{"drops", v.DropsTotal}, {"stale", dash(v.StaleReason)},
			} {
				row(w, kv[0].(string)+":", kv[1])
			}
			for _, r := range datapath.DropReasons() {
				if n := v.Drops[r]; n > 0 {
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

// stats serves `stats`.
func (in *inspector) stats([]string) error {
	return emitRead(in, in.dp.DropStats, func(w io.Writer, s datapath.DropStats) {
		row(w, "REASON", "NODE TOTAL")
		for _, r := range datapath.DropReasons() {
			row(w, r, s.Totals[r])
		}
		row(w)
		row(w, "NETWORK", "REASON", "DROPS")
		for _, n := range s.Networks {
			for _, r := range datapath.DropReasons() {
				if d := n.Drops[r]; d > 0 {
					row(w, n.Network, r, d)
				}
			}
		}
		row(w)
		row(w, "ENDPOINT", "NETWORK", "REASON", "DROPS")
		for _, e := range s.Endpoints {
			for _, r := range datapath.DropReasons() {
				if d := e.Drops[r]; d > 0 {
					row(w, endpointName(e.ContainerID, e.IfName), e.Network, r, d)
				}
			}
		}
	})
}
