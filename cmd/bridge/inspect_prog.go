package main

import (
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfbridge/bpfbridge/datapath"
)

// progJSON is a program in `prog -j`.
type progJSON struct {
	ID      ebpf.ProgramID `json:"id"`
	Name    string         `json:"name"`
	Tag     string         `json:"tag"`   // the kernel's tag
	Build   string         `json:"build"` // the bpfbridge build that loaded it
	Current bool           `json:"current"`
	Pin     string         `json:"pin"`
	// RunCount and RunTimeNs are null while kernel.bpf_stats_enabled=0.
	RunCount    *uint64          `json:"run_count"`
	RunTimeNs   *int64           `json:"run_time_ns"`
	Attachments []attachmentJSON `json:"attachments"`
}

// attachmentJSON is where a program is attached.
type attachmentJSON struct {
	Interface  string `json:"interface"`
	Ifindex    int    `json:"ifindex"`
	Direction  string `json:"direction"`   // "ingress" or "egress"
	AttachMode string `json:"attach_mode"` // "tcx" or "legacy"
}

// ourAttachments returns bpfbridge's programs and, by program ID, where
// each is attached in this network namespace.
func (in *inspector) ourAttachments() ([]datapath.Program, map[ebpf.ProgramID][]datapath.TCAttachment, error) {
	progs, err := in.dp.Programs()
	if err != nil {
		return nil, nil, err
	}
	all, err := datapath.TCAttachments()
	if err != nil {
		return nil, nil, err
	}
	byProg := map[ebpf.ProgramID][]datapath.TCAttachment{}
	for _, p := range progs {
		byProg[p.ID] = nil
	}
	for _, a := range all {
		if _, ours := byProg[a.ProgramID]; ours {
			byProg[a.ProgramID] = append(byProg[a.ProgramID], a)
		}
	}
	return progs, byProg, nil
}

// prog serves `prog`: one table row per attachment (a program attached
// nowhere gets one row too).
func (in *inspector) prog([]string) error {
	progs, attached, err := in.ourAttachments()
	if err != nil {
		return err
	}
	stats := datapath.BPFStatsEnabled()
	views := make([]progJSON, len(progs))
	for i, p := range progs {
		v := progJSON{ID: p.ID, Name: p.Name, Tag: p.Tag, Build: p.Build, Current: p.Current, Pin: p.Pin,
			Attachments: []attachmentJSON{}}
		if stats {
			runTime := int64(p.RunTime)
			v.RunCount, v.RunTimeNs = &p.RunCount, &runTime
		}
		for _, a := range attached[p.ID] {
			v.Attachments = append(v.Attachments, attachmentJSON{a.IfName, a.Ifindex, a.Direction, a.Mode.String()})
		}
		views[i] = v
	}
	return in.emit(views, func(w io.Writer) {
		row(w, "ID", "NAME", "TAG", "BUILD", "INTERFACE", "DIRECTION", "MODE", "RUNS", "RUN_TIME")
		for _, v := range views {
			runs, runTime := "-", "-"
			if v.RunCount != nil {
				runs, runTime = strconv.FormatUint(*v.RunCount, 10), time.Duration(*v.RunTimeNs).String()
			}
			build := v.Build
			if v.Current {
				build += " (this binary)"
			}
			if len(v.Attachments) == 0 {
				row(w, v.ID, v.Name, v.Tag, build, "-", "-", "-", runs, runTime)
			}
			for _, a := range v.Attachments {
				row(w, v.ID, v.Name, v.Tag, build, a.Interface, a.Direction, a.AttachMode, runs, runTime)
			}
		}
	})
}

// linkJSON is an interface in `link -j`: one with bpfbridge's programs
// attached, or the host veth of an endpoint (which should have them).
type linkJSON struct {
	Interface string `json:"interface"`
	Ifindex   int    `json:"ifindex"`
	// ContainerID and IfName name the endpoint of a host veth; empty for
	// an interface without one.
	ContainerID string         `json:"container_id"`
	IfName      string         `json:"ifname"`
	Ingress     []linkProgJSON `json:"ingress"`
	Egress      []linkProgJSON `json:"egress"`
}

type linkProgJSON struct {
	ID         ebpf.ProgramID `json:"id"`
	Name       string         `json:"name"`
	Build      string         `json:"build"`
	AttachMode string         `json:"attach_mode"`
}

// link serves `link` (and `net`).
func (in *inspector) link([]string) error {
	progs, attached, err := in.ourAttachments()
	if err != nil {
		return err
	}
	recs, err := in.dp.Endpoints()
	if err != nil {
		return err
	}
	var (
		views []linkJSON
		index = map[int]int{} // ifindex → position in views
	)
	viewOf := func(ifindex int, name string) *linkJSON {
		i, ok := index[ifindex]
		if !ok {
			i = len(views)
			index[ifindex] = i
			views = append(views, linkJSON{Interface: name, Ifindex: ifindex, Ingress: []linkProgJSON{}, Egress: []linkProgJSON{}})
		}
		return &views[i]
	}
	for _, r := range recs {
		v := viewOf(r.HostIfindex, r.HostIfName)
		v.ContainerID, v.IfName = r.ContainerID, r.IfName
	}
	for _, p := range progs {
		for _, a := range attached[p.ID] {
			v := viewOf(a.Ifindex, a.IfName)
			v.Interface = a.IfName // the kernel's name, should a record be stale
			lp := linkProgJSON{p.ID, p.Name, p.Build, a.Mode.String()}
			if a.Direction == "ingress" {
				v.Ingress = append(v.Ingress, lp)
			} else {
				v.Egress = append(v.Egress, lp)
			}
		}
	}
	return in.emit(views, func(w io.Writer) {
		row(w, "INTERFACE", "IFINDEX", "ENDPOINT", "INGRESS", "EGRESS")
		for _, v := range views {
			ep := "-"
			if v.ContainerID != "" {
				ep = endpointName(v.ContainerID, v.IfName)
			}
			row(w, v.Interface, v.Ifindex, ep, hookCell(v.Ingress), hookCell(v.Egress))
		}
	})
}

// hookCell lists a hook's programs as "mode:id name"; "-" (none) on an
// endpoint's veth means it is not protected.
func hookCell(ps []linkProgJSON) string {
	cells := make([]string, len(ps))
	for i, p := range ps {
		cells[i] = p.AttachMode + ":" + strconv.FormatUint(uint64(p.ID), 10) + " " + p.Name
	}
	return dash(strings.Join(cells, ", "))
}
