package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/bpfbridge/bpfbridge/datapath"
)

// mapList serves `map list`.
func (in *inspector) mapList([]string) error {
	return emitRead(in, in.dp.Maps, func(w io.Writer, maps []datapath.PinnedMap) {
		row(w, "NAME", "ID", "TYPE", "KEY", "VALUE", "MAX_ENTRIES", "ENTRIES", "PRESSURE", "FLAGS")
		for _, m := range maps {
			entries, pressure := "-", "-"
			if m.Entries != nil {
				entries, pressure = fmt.Sprint(*m.Entries), fmt.Sprintf("%.1f%%", 100*m.Pressure)
			}
			row(w, m.Name, m.ID, m.Type, fmt.Sprintf("%dB", m.KeySize), fmt.Sprintf("%dB", m.ValueSize),
				m.MaxEntries, entries, pressure, fmt.Sprintf("%#x", m.Flags))
		}
	})
}

// mapDump serves `map dump <name>`: JSON is the list of entries, each
// {"key": …, "value": …} plus "per_cpu" with --per-cpu.
func (in *inspector) mapDump(args []string) error {
	entries, err := in.dp.DumpMap(args[0])
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("no map %q on this node (see bridge inspect map list)", args[0])
	}
	if err != nil {
		return err
	}
	return in.emitEntries(entries)
}

// emitEntries prints decoded map entries: in a table, one "key … value …"
// line each, and with --per-cpu a line per CPU below it.
func (in *inspector) emitEntries(entries []datapath.MapEntry) error {
	if !in.perCPU {
		for i := range entries {
			entries[i].PerCPU = nil
		}
	}
	return in.emit(entries, func(w io.Writer) {
		for _, e := range entries {
			row(w, "key:", fields(e.Key), "value:", fields(e.Value))
			for cpu, v := range e.PerCPU {
				row(w, "", "", fmt.Sprintf("cpu%d:", cpu), fields(v))
			}
		}
		row(w, fmt.Sprintf("(%d entries)", len(entries)))
	})
}

// ctList serves `ct list`: the masquerade's connection tracking, both
// tuples of each flow with state, age, expiry and counters.
func (in *inspector) ctList([]string) error {
	flows, err := in.flows()
	if err != nil || flows == nil {
		return err
	}
	return in.emit(flows, func(w io.Writer) {
		row(w, "PROTO", "ORIGINAL", "REPLY", "STATE", "AGE", "EXPIRES", "PKTS_ORIG", "BYTES_ORIG", "PKTS_REPLY", "BYTES_REPLY")
		for _, f := range flows {
			row(w, f.Proto, f.Container.String()+" > "+f.Remote.String(), f.Remote.String()+" > "+f.Translated.String(),
				f.State, f.Age.Round(time.Second), f.ExpiresIn.Round(time.Second), f.Orig.Packets, f.Orig.Bytes, f.Reply.Packets, f.Reply.Bytes)
		}
	})
}

// natList serves `nat list`: who is translated to what.
func (in *inspector) natList([]string) error {
	flows, err := in.flows()
	if err != nil || flows == nil {
		return err
	}
	return in.emit(flows, func(w io.Writer) {
		row(w, "PROTO", "CONTAINER", "TRANSLATED", "REMOTE", "UPLINK")
		for _, f := range flows {
			row(w, f.Proto, f.Container, f.Translated, f.Remote, f.Uplink)
		}
	})
}

// flows reads the masquerade translations, filtered by --endpoint. With
// none it says so, which is no error: on stdout, or with --json on stderr
// and an empty list on stdout; then it returns nil flows.
func (in *inspector) flows() ([]datapath.Flow, error) {
	flows, err := in.dp.Flows()
	if err == nil && in.endpoint != "" {
		ips, ferr := in.endpointIPs()
		if ferr != nil {
			return nil, ferr
		}
		flows = slices.DeleteFunc(flows, func(f datapath.Flow) bool { return !slices.Contains(ips, f.Container.Addr()) })
		if len(flows) == 0 {
			err = datapath.ErrNoFlows
		}
	}
	if errors.Is(err, datapath.ErrNoMasquerade) {
		if in.json {
			fmt.Fprintln(os.Stderr, err)
			return nil, in.emit([]datapath.Flow{}, nil)
		}
		fmt.Fprintln(in.out, err)
		return nil, nil
	}
	return flows, err
}

// endpointIPs are the addresses of the endpoint(s) --endpoint names.
func (in *inspector) endpointIPs() ([]netip.Addr, error) {
	recs, err := in.endpointsOf(splitEndpoint(in.endpoint))
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	for _, r := range recs {
		ips = append(ips, r.IPs...)
	}
	return ips, nil
}

// portmapList serves `portmap list`: the node's published ports.
func (in *inspector) portmapList([]string) error {
	return emitRead(in, in.dp.PublishedPorts, func(w io.Writer, ports []datapath.PublishedPort) {
		row(w, "HOST", "CONTAINER", "PROTO", "OWNER", "PACKETS")
		for _, p := range ports {
			row(w, p.Host, p.Container, p.Protocol, p.Owner, p.Packets)
		}
	})
}
