package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// monitorReady is the line monitor writes to stderr once it is reading:
// drops from then on are shown.
const monitorReady = "monitoring drop events… (Ctrl-C to stop)"

// eventJSON is a drop event in `monitor -j`, one per line.
type eventJSON struct {
	Time    time.Time `json:"time"`
	Ifindex int       `json:"ifindex"`
	// ContainerID, IfName and Network name the endpoint of the veth;
	// empty when it has none (a no-endpoint drop).
	ContainerID string     `json:"container_id"`
	IfName      string     `json:"ifname"`
	Network     string     `json:"network"`
	Reason      string     `json:"reason"`
	Direction   string     `json:"direction"` // from-container, to-container, uplink-egress, uplink-ingress
	EthProto    string     `json:"eth_proto"` // "ipv4", "ipv6", "arp" or the EtherType in hex
	IPProto     string     `json:"ip_proto"`  // "tcp", "udp", "icmp", "icmpv6", a number, or ""
	SrcMAC      string     `json:"src_mac"`
	DstMAC      string     `json:"dst_mac"`
	SrcIP       netip.Addr `json:"src_ip"` // "" when not IP or ARP
	DstIP       netip.Addr `json:"dst_ip"`
	SrcPort     uint16     `json:"src_port"` // TCP and UDP only, else 0
	DstPort     uint16     `json:"dst_port"`
}

// monitor serves `monitor`.
func (in *inspector) monitor([]string) error {
	var reasons []program.DropReason
	if in.reasons != "" {
		for name := range strings.SplitSeq(in.reasons, ",") {
			r, ok := parseReason(name)
			if !ok {
				return usagef("unknown drop reason %q (reasons: %s)", name, reasonNames())
			}
			reasons = append(reasons, r)
		}
	}
	if in.count < 0 || in.duration < 0 {
		return usagef("--count and --duration must not be negative")
	}
	wantID, wantIf := splitEndpoint(in.endpoint)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if in.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, in.duration)
		defer cancel()
	}
	rd, err := in.dp.DropEvents()
	if err != nil {
		return err
	}
	defer rd.Close()
	// Closing the reader is what interrupts a waiting Read.
	go func() {
		<-ctx.Done()
		rd.Close()
	}()
	names := endpointsByIfindex{dp: in.dp}
	fmt.Fprintln(os.Stderr, monitorReady)
	enc := json.NewEncoder(in.out)
	for shown := 0; in.count == 0 || shown < in.count; {
		ev, err := rd.Read()
		if errors.Is(err, os.ErrClosed) {
			return nil // Ctrl-C, SIGTERM or --duration
		}
		if err != nil {
			return err
		}
		if len(reasons) > 0 && !slices.Contains(reasons, ev.Reason) {
			continue
		}
		ep := names.lookup(ev.Ifindex)
		if wantID != "" && (ep == nil || ep.ContainerID != wantID || wantIf != "" && ep.IfName != wantIf) {
			continue
		}
		v := eventView(ev, ep)
		if in.json {
			err = enc.Encode(v)
		} else {
			err = printEvent(in, v)
		}
		if err != nil {
			return err
		}
		shown++
	}
	return nil
}

func parseReason(name string) (program.DropReason, bool) {
	for _, r := range program.DropReasons() {
		if r.String() == strings.TrimSpace(name) {
			return r, true
		}
	}
	return 0, false
}

// endpointsByIfindex names the endpoints of veths, reading the records
// again when an event comes from a veth it does not know (an endpoint
// attached since, or none: no-endpoint drops are rate limited, so are
// these reads).
type endpointsByIfindex struct {
	dp   *datapath.Datapath
	recs map[int]*datapath.EndpointRecord
}

func (e *endpointsByIfindex) lookup(ifindex int) *datapath.EndpointRecord {
	if r, ok := e.recs[ifindex]; ok {
		return r
	}
	recs, err := e.dp.Endpoints()
	if err != nil {
		return nil // the event still shows, by ifindex
	}
	e.recs = make(map[int]*datapath.EndpointRecord, len(recs))
	for i := range recs {
		e.recs[recs[i].HostIfindex] = &recs[i]
	}
	return e.recs[ifindex]
}

func eventView(ev datapath.DropEvent, ep *datapath.EndpointRecord) eventJSON {
	v := eventJSON{
		Time: ev.Time, Ifindex: ev.Ifindex, Reason: ev.Reason.String(), Direction: ev.Direction.String(),
		EthProto: ethProtoName(ev.EthProto), IPProto: ipProtoName(ev.EthProto, ev.IPProto),
		SrcMAC: ev.SrcMAC.String(), DstMAC: ev.DstMAC.String(),
		SrcIP: ev.Src, DstIP: ev.Dst, SrcPort: ev.SrcPort, DstPort: ev.DstPort,
	}
	if ep != nil {
		v.ContainerID, v.IfName, v.Network = ep.ContainerID, ep.IfName, ep.Network
	}
	return v
}

func ethProtoName(p uint16) string {
	switch p {
	case unix.ETH_P_IP:
		return "ipv4"
	case unix.ETH_P_IPV6:
		return "ipv6"
	case unix.ETH_P_ARP:
		return "arp"
	}
	return fmt.Sprintf("0x%04x", p)
}

func ipProtoName(eth uint16, p uint8) string {
	if eth != unix.ETH_P_IP && eth != unix.ETH_P_IPV6 {
		return ""
	}
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_ICMP:
		return "icmp"
	case unix.IPPROTO_ICMPV6:
		return "icmpv6"
	}
	return fmt.Sprint(p)
}

// printEvent writes one event as a line:
//
//	time  endpoint  reason  direction  protocol  source > destination  MACs
func printEvent(in *inspector, v eventJSON) error {
	ep := fmt.Sprintf("ifindex %d", v.Ifindex)
	if v.ContainerID != "" {
		ep = endpointName(v.ContainerID, v.IfName)
	}
	proto := v.EthProto
	if v.IPProto != "" {
		proto += "/" + v.IPProto
	}
	addrs := "-"
	if v.SrcIP.IsValid() {
		addrs = hostPort(v.SrcIP, v.SrcPort) + " > " + hostPort(v.DstIP, v.DstPort)
	}
	_, err := fmt.Fprintf(in.out, "%s  %-24s %-14s %-15s %-12s %s  (%s > %s)\n",
		v.Time.Format("2006-01-02T15:04:05.000000Z07:00"), ep, v.Reason, v.Direction, proto, addrs, v.SrcMAC, v.DstMAC)
	return err
}

func hostPort(ip netip.Addr, port uint16) string {
	if port == 0 {
		return ip.String()
	}
	return netip.AddrPortFrom(ip, port).String()
}
