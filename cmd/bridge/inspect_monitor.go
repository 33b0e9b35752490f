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

	"github.com/bpfbridge/bpfbridge/datapath"
)

// monitorReady is the line monitor writes to stderr once it is reading:
// drops from then on are shown.
const monitorReady = "monitoring drop events… (Ctrl-C to stop)"

// monitor serves `monitor`.
func (in *inspector) monitor([]string) error {
	var reasons []datapath.DropReason
	if in.reasons != "" {
		for name := range strings.SplitSeq(in.reasons, ",") {
			r, ok := datapath.ParseDropReason(name)
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
		if wantID != "" && (ev.ContainerID != wantID || wantIf != "" && ev.IfName != wantIf) {
			continue
		}
		if in.json {
			err = enc.Encode(ev)
		} else {
			err = printEvent(in, ev)
		}
		if err != nil {
			return err
		}
		shown++
	}
	return nil
}

// printEvent writes one event as a line:
//
//	time  endpoint  reason  direction  protocol  source > destination  MACs
func printEvent(in *inspector, v datapath.DropEvent) error {
	ep := fmt.Sprintf("ifindex %d", v.Ifindex)
	if v.ContainerID != "" {
		ep = endpointName(v.ContainerID, v.IfName)
	}
	proto := v.EthProto.String()
	if ip := v.IPProto.String(); ip != "" {
		proto += "/" + ip
	}
	addrs := "-"
	if v.Src.IsValid() {
		addrs = hostPort(v.Src, v.SrcPort) + " > " + hostPort(v.Dst, v.DstPort)
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
