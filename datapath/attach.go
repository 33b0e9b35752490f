package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// hook is one attachment point of an endpoint's veth.
type hook struct {
	pin    string          // tcx link pin name
	tcx    ebpf.AttachType // tcx attach type
	parent uint32          // clsact parent of the legacy filter
	name   string          // legacy filter name
	prog   func(*program.BpfbridgePrograms) *ebpf.Program
}

// endpointHooks: packets from the container enter the host veth
// (ingress); packets to it leave through the host veth (egress).
var endpointHooks = []hook{
	{"ingress", ebpf.AttachTCXIngress, netlink.HANDLE_MIN_INGRESS, "bpfbridge_from",
		func(p *program.BpfbridgePrograms) *ebpf.Program { return p.FromContainer }},
	{"egress", ebpf.AttachTCXEgress, netlink.HANDLE_MIN_EGRESS, "bpfbridge_to",
		func(p *program.BpfbridgePrograms) *ebpf.Program { return p.ToContainer }},
}

// Legacy filters use a fixed priority and handle of their own, so that a
// replace finds exactly bpfbridge's filter and other filters are left alone.
const (
	legacyPriority = 0xbb
	legacyHandle   = 0xbb
)

// attach attaches the programs to the veth ifindex and returns the mode used.
func (d *Datapath) attach(key EndpointKey, ifindex int) (AttachMode, error) {
	if d.opts.Attach == AttachTCX {
		err := d.attachTCX(key, ifindex)
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return AttachTCX, err
		}
		// A kernel older than 6.6 has no tcx: fall back.
		if err := d.detachPrograms(key, nil); err != nil {
			return 0, err
		}
	}
	return AttachLegacy, d.attachLegacy(ifindex, endpointHooks)
}

// attachTCX attaches both programs as tcx links and pins the links.
func (d *Datapath) attachTCX(key EndpointKey, ifindex int) error {
	dir := d.state.linkDir(key)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, h := range endpointHooks {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: h.prog(d.progs), Attach: h.tcx})
		if err != nil {
			return fmt.Errorf("attach tcx %s to ifindex %d: %w", h.pin, ifindex, err)
		}
		err = l.Pin(filepath.Join(dir, h.pin))
		l.Close()
		if err != nil {
			return fmt.Errorf("pin tcx link: %w", err)
		}
	}
	return nil
}

// attachLegacy attaches the programs of hs to ifindex as cls_bpf filters
// under its clsact qdisc, adding the qdisc where it is missing (a replace of
// an existing clsact changes nothing). A filter already there is replaced
// atomically: no packet meets the veth without a program.
func (d *Datapath) attachLegacy(ifindex int, hs []hook) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscReplace(qdisc); err != nil {
		return fmt.Errorf("add clsact qdisc to ifindex %d: %w", ifindex, err)
	}
	for _, h := range hs {
		f := legacyFilter(ifindex, h)
		f.Fd = h.prog(d.progs).FD()
		if err := netlink.FilterReplace(f); err != nil {
			return fmt.Errorf("add cls_bpf filter %s to ifindex %d: %w", h.name, ifindex, err)
		}
	}
	return nil
}

func legacyFilter(ifindex int, h hook) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    h.parent,
			Handle:    legacyHandle,
			Priority:  legacyPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		Name:         h.name,
		DirectAction: true,
	}
}

// replacePrograms moves an endpoint's veth onto this build's programs. A
// legacy veth may have no qdisc yet (its ADD was killed before attaching):
// attachLegacy makes sure of it, a no-op where it exists.
func (d *Datapath) replacePrograms(key EndpointKey, m *program.BpfbridgeEndpointMeta) error {
	if AttachMode(m.Attach) == AttachLegacy {
		if !d.vethExists(m) {
			return nil // gone with its container; DEL or GC will clean up
		}
		return d.attachLegacy(int(m.Ifindex), endpointHooks)
	}
	for _, h := range endpointHooks {
		l, err := link.LoadPinnedLink(filepath.Join(d.state.linkDir(key), h.pin), nil)
		if err != nil {
			return err
		}
		err = l.Update(h.prog(d.progs))
		l.Close()
		if err != nil {
			return fmt.Errorf("update tcx link %s: %w", h.pin, err)
		}
	}
	return nil
}

// detachPrograms removes an endpoint's programs from its veth; a veth that
// is already gone took legacy filters with it, but tcx links outlive their
// device and must be unpinned. The veth can vanish with its namespace at any
// moment, also between the check and the removal: a filter that could not be
// removed is an error only while its veth is still there.
func (d *Datapath) detachPrograms(key EndpointKey, m *program.BpfbridgeEndpointMeta) error {
	var errs []error
	if m != nil && AttachMode(m.Attach) == AttachLegacy && d.vethExists(m) {
		for _, h := range endpointHooks {
			// ENODEV: the veth went with its netns since vethExists
			// looked, and took its filters with it.
			err := netlink.FilterDel(legacyFilter(int(m.Ifindex), h))
			if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) && d.vethExists(m) {
				errs = append(errs, fmt.Errorf("remove cls_bpf filter %s: %w", h.name, err))
			}
		}
	}
	// Unpinning drops the last reference to a tcx link, which detaches it.
	if err := os.RemoveAll(d.state.linkDir(key)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// attachedPrograms reports an error unless this build's programs are
// attached to the endpoint's veth in both directions.
func (d *Datapath) attachedPrograms(m *program.BpfbridgeEndpointMeta) error {
	for _, h := range endpointHooks {
		want, err := programID(h.prog(d.progs))
		if err != nil {
			return err
		}
		var have []ebpf.ProgramID
		if AttachMode(m.Attach) == AttachLegacy {
			have, err = legacyProgramIDs(int(m.Ifindex), h)
		} else {
			have, err = tcxProgramIDs(int(m.Ifindex), h)
		}
		if err != nil {
			return err
		}
		if !slices.Contains(have, want) {
			return fmt.Errorf("%s program (id %d) is not attached to %s (attached: %v)", h.pin, want, program.CString(m.HostIfname[:]), have)
		}
	}
	return nil
}

func programID(p *ebpf.Program) (ebpf.ProgramID, error) {
	info, err := p.Info()
	if err != nil {
		return 0, err
	}
	id, _ := info.ID()
	return id, nil
}

func tcxProgramIDs(ifindex int, h hook) ([]ebpf.ProgramID, error) {
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: h.tcx})
	if err != nil {
		return nil, fmt.Errorf("query tcx programs of ifindex %d: %w", ifindex, err)
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids, nil
}

func legacyProgramIDs(ifindex int, h hook) ([]ebpf.ProgramID, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return nil, err
	}
	filters, err := netlink.FilterList(l, h.parent)
	if err != nil {
		return nil, fmt.Errorf("list filters of ifindex %d: %w", ifindex, err)
	}
	var ids []ebpf.ProgramID
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok {
			ids = append(ids, ebpf.ProgramID(bf.Id))
		}
	}
	return ids, nil
}

// markVeth sets the endpoint's host veth's alias to VethAlias, the mark by
// which the kernel tells the endpoints of the node (discover.go). Only a
// veth whose endpoint is recorded carries it. The caller knows the veth is
// the endpoint's (Attach just created it; Upgrade checks).
func (d *Datapath) markVeth(m *program.BpfbridgeEndpointMeta) error {
	l := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: int(m.Ifindex)}}
	if err := netlink.LinkSetAlias(l, VethAlias); err != nil {
		return fmt.Errorf("mark host veth %s: %w", program.CString(m.HostIfname[:]), err)
	}
	return nil
}

// bridgeOf is the ifindex of the bridge the veth ifindex is a port of, 0
// when there is none (or no such veth any more).
func bridgeOf(ifindex uint32) int {
	l, err := netlink.LinkByIndex(int(ifindex))
	if err != nil {
		return 0
	}
	return l.Attrs().MasterIndex
}

// deleteVeth deletes the endpoint's host veth, and with it the container's
// end, if it still exists.
func (d *Datapath) deleteVeth(m *program.BpfbridgeEndpointMeta) error {
	if !d.vethExists(m) {
		return nil
	}
	err := netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: int(m.Ifindex)}})
	if err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete host veth %s of a removed endpoint (its programs stay attached): %w: %w", program.CString(m.HostIfname[:]), ErrVethInUse, err)
	}
	return nil
}

// ErrVethInUse reports that an endpoint's host veth could not be deleted:
// the endpoint still carries traffic (under its programs), so its addresses
// are not free.
var ErrVethInUse = errors.New("the endpoint's veth still exists")

// vethExists reports whether the endpoint's host veth is still the link at
// its ifindex (ifindexes are reused once a veth is gone).
func (d *Datapath) vethExists(m *program.BpfbridgeEndpointMeta) bool {
	l, err := netlink.LinkByIndex(int(m.Ifindex))
	return err == nil && l.Attrs().Name == program.CString(m.HostIfname[:])
}
