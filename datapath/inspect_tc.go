package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// What the kernel has attached to tc hooks, whoever attached it: the
// read side of attach.go, for `bridge inspect prog|link` and the tests.

// tcHooks are the two tc hooks of an interface, as far as finding what is
// attached to them goes.
var tcHooks = []hook{
	{pin: "ingress", tcx: ebpf.AttachTCXIngress, parent: netlink.HANDLE_MIN_INGRESS},
	{pin: "egress", tcx: ebpf.AttachTCXEgress, parent: netlink.HANDLE_MIN_EGRESS},
}

// TCAttachment is a program attached to a tc hook of an interface.
type TCAttachment struct {
	IfName    string         `json:"interface"`
	Ifindex   int            `json:"ifindex"`
	Direction string         `json:"direction"` // "ingress" or "egress"
	Mode      AttachMode     `json:"attach_mode"`
	ProgramID ebpf.ProgramID `json:"-"`
}

// TCAttachments lists the tc programs (tcx links and cls_bpf filters)
// attached to every interface of the calling thread's network namespace,
// whoever attached them. It asks the kernel rather than the endpoint
// records, so it also shows what the records miss: programs left on a veth
// without an endpoint, or an endpoint whose programs are gone.
func TCAttachments() ([]TCAttachment, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	tcx := true
	var out []TCAttachment
	for _, l := range links {
		idx, name := l.Attrs().Index, l.Attrs().Name
		for _, h := range tcHooks {
			at := TCAttachment{Ifindex: idx, IfName: name, Direction: h.pin}
			if tcx {
				ids, err := tcxProgramIDs(idx, h)
				if errors.Is(err, ebpf.ErrNotSupported) {
					tcx = false // a kernel before 6.6
				} else if err != nil {
					return nil, err
				}
				at.Mode = AttachTCX
				for _, id := range ids {
					at.ProgramID = id
					out = append(out, at)
				}
			}
			ids, err := legacyProgramIDs(idx, h)
			// An interface without a clsact qdisc has no filters.
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
				continue
			}
			if err != nil {
				return nil, err
			}
			at.Mode = AttachLegacy
			for _, id := range ids {
				at.ProgramID = id
				out = append(out, at)
			}
		}
	}
	return out, nil
}

// Link is an interface with bpfbridge's programs attached, or the host
// veth of an endpoint (which should have them). It is what `bridge inspect
// link` prints.
type Link struct {
	Interface string `json:"interface"`
	Ifindex   int    `json:"ifindex"`
	// ContainerID and IfName name the endpoint of a host veth; empty for
	// an interface without one.
	ContainerID string        `json:"container_id"`
	IfName      string        `json:"ifname"`
	Ingress     []LinkProgram `json:"ingress"`
	Egress      []LinkProgram `json:"egress"`
}

// LinkProgram is one of bpfbridge's programs on a hook of a Link.
type LinkProgram struct {
	ID    ebpf.ProgramID `json:"id"`
	Name  string         `json:"name"`
	Build string         `json:"build"`
	Mode  AttachMode     `json:"attach_mode"`
}

// Links returns the endpoints' host veths and the other interfaces of the
// calling thread's network namespace that have bpfbridge's programs
// attached: endpoints first, in the order of Endpoints. A host veth without
// programs is an endpoint that is not protected.
func (d *Datapath) Links() ([]Link, error) {
	progs, err := d.Programs()
	if err != nil {
		return nil, err
	}
	recs, err := d.Endpoints()
	if err != nil {
		return nil, err
	}
	var (
		links []Link
		index = map[int]int{} // ifindex → position in links
	)
	linkOf := func(ifindex int, name string) *Link {
		i, ok := index[ifindex]
		if !ok {
			i = len(links)
			index[ifindex] = i
			links = append(links, Link{Interface: name, Ifindex: ifindex, Ingress: []LinkProgram{}, Egress: []LinkProgram{}})
		}
		return &links[i]
	}
	for _, r := range recs {
		l := linkOf(r.HostIfindex, r.HostIfName)
		l.ContainerID, l.IfName = r.ContainerID, r.IfName
	}
	for _, p := range progs {
		for _, a := range p.Attachments {
			l := linkOf(a.Ifindex, a.IfName)
			l.Interface = a.IfName // the kernel's name, should a record be stale
			lp := LinkProgram{p.ID, p.Name, p.Build, a.Mode}
			if a.Direction == "ingress" {
				l.Ingress = append(l.Ingress, lp)
			} else {
				l.Egress = append(l.Egress, lp)
			}
		}
	}
	return links, nil
}
