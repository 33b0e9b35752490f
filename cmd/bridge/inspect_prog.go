package main

import (
	"io"
	"strconv"
	"strings"

	"github.com/bpfbridge/bpfbridge/datapath"
)

// prog serves `prog`: one table row per attachment (a program attached
// nowhere gets one row too).
func (in *inspector) prog([]string) error {
	return emitRead(in, in.dp.Programs, func(w io.Writer, progs []datapath.Program) {
		row(w, "ID", "NAME", "TAG", "BUILD", "INTERFACE", "DIRECTION", "MODE", "RUNS", "RUN_TIME")
		for _, p := range progs {
			runs, runTime := "-", "-"
			if p.RunCount != nil {
				runs, runTime = strconv.FormatUint(*p.RunCount, 10), p.RunTime.String()
			}
			build := p.Build
			if p.Current {
				build += " (this binary)"
			}
			if len(p.Attachments) == 0 {
				row(w, p.ID, p.Name, p.Tag, build, "-", "-", "-", runs, runTime)
			}
			for _, a := range p.Attachments {
				row(w, p.ID, p.Name, p.Tag, build, a.IfName, a.Direction, a.Mode, runs, runTime)
			}
		}
	})
}

// link serves `link` (and `net`).
func (in *inspector) link([]string) error {
	return emitRead(in, in.dp.Links, func(w io.Writer, links []datapath.Link) {
		row(w, "INTERFACE", "IFINDEX", "ENDPOINT", "INGRESS", "EGRESS")
		for _, l := range links {
			ep := "-"
			if l.ContainerID != "" {
				ep = endpointName(l.ContainerID, l.IfName)
			}
			row(w, l.Interface, l.Ifindex, ep, hookCell(l.Ingress), hookCell(l.Egress))
		}
	})
}

// hookCell lists a hook's programs as "mode:id name"; "-" (none) on an
// endpoint's veth means it is not protected.
func hookCell(ps []datapath.LinkProgram) string {
	cells := make([]string, len(ps))
	for i, p := range ps {
		cells[i] = p.Mode.String() + ":" + strconv.FormatUint(uint64(p.ID), 10) + " " + p.Name
	}
	return dash(strings.Join(cells, ", "))
}
