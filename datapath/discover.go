package datapath

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// The kernel is the source of truth; pins are a convenience. Host veths of
// endpoints carry a marker the kernel keeps as long as the veth lives (its
// alias), and their programs. A plugin run that sees no pinned state while
// such veths exist is looking at the wrong bpffs, or at one that lost its
// pins: it must not start a second, empty datapath beside the live one,
// whose endpoints would then not be isolated from the new ones.

// VethAlias is the alias (IFLA_IFALIAS) of every endpoint's host veth: the
// plugin sets it when it creates the veth, Upgrade on veths of builds that
// did not.
const VethAlias = "bpfbridge"

// ErrLostState reports endpoints on the node whose datapath state is not in
// the state directory the plugin was pointed at.
var ErrLostState = errors.New("datapath state lost")

// freshState reports whether the node's state directory holds no maps at
// all, of any layout: Open is about to create the node's datapath.
func (s state) freshState() bool {
	_, err := os.Stat(filepath.Join(s.root, "maps"))
	return errors.Is(err, os.ErrNotExist)
}

// checkNoLiveEndpoints fails with ErrLostState when veths of bpfbridge
// endpoints exist on the node: marked ones, and for veths of builds that
// did not mark them, ones running bpfbridge's programs. A marked veth that
// runs no program any more (its tcx links went with the lost pins) carries
// its container's traffic unfiltered: it is deleted, as DEL would. Open
// calls this only when it would create the node's state, so its cost (a
// dump of the node's links) is paid once per node, not per ADD.
func (s state) checkNoLiveEndpoints() error {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return fmt.Errorf("list the node's links: %w", err)
	}
	var live, unfiltered []string
	var errs []error
	for _, l := range links {
		if _, ok := l.(*netlink.Veth); !ok {
			continue
		}
		marked, filtered := l.Attrs().Alias == VethAlias, runsOurPrograms(l.Attrs().Index)
		switch {
		case filtered:
			live = append(live, l.Attrs().Name)
		case marked:
			unfiltered = append(unfiltered, l.Attrs().Name)
			if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("delete unfiltered veth %s: %w", l.Attrs().Name, err))
			}
		}
	}
	if len(live)+len(unfiltered) == 0 {
		return nil
	}
	msg := fmt.Sprintf("%d veth(s) of bpfbridge endpoints exist on this node (%s), but %s holds no datapath state "+
		"(the bpffs was unmounted or remounted, or the plugin sees another bpffs than the one it pinned in); "+
		"refusing to start a second datapath beside them: point datapath.bpffs at the node's bpffs, or delete those containers",
		len(live)+len(unfiltered), strings.Join(slices.Concat(live, unfiltered)[:min(len(live)+len(unfiltered), 5)], ", "), s.root)
	if len(unfiltered) > 0 {
		msg += fmt.Sprintf("; %d of them ran no bpfbridge program any more and were deleted (%s)", len(unfiltered), strings.Join(unfiltered, ", "))
	}
	return errors.Join(append([]error{fmt.Errorf("%w: %s", ErrLostState, msg)}, errs...)...)
}

// runsOurPrograms reports whether the ingress of ifindex runs bpfbridge's
// from_container program, as a cls_bpf filter or a tcx link.
func runsOurPrograms(ifindex int) bool {
	var ids []ebpf.ProgramID
	if filters, err := netlink.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}, netlink.HANDLE_MIN_INGRESS); err == nil {
		for _, f := range filters {
			if bf, ok := f.(*netlink.BpfFilter); ok {
				ids = append(ids, ebpf.ProgramID(bf.Id))
			}
		}
	}
	if res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress}); err == nil {
		for _, p := range res.Programs {
			ids = append(ids, p.ID)
		}
	}
	for _, id := range ids {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, err := p.Info()
		p.Close()
		if err == nil && info.Name == "from_container" {
			return true
		}
	}
	return false
}

// FindEndpoint opens the datapath that holds the record of the attachment
// (containerID, ifname), for DEL. That is the configured one, except when
// the configuration names no bpffs and the record is not in the default
// one: a runtime may run DEL with another environment than ADD (podman's
// cleanup gets only a few variables, so BPFBRIDGE_BPFFS does not reach
// it). Then every bpffs mounted on the machine is searched for a state
// directory of this node holding the record of an endpoint that is this
// one: its veth is here, or it was attached in netns. It returns ErrNoState
// when there is none.
func FindEndpoint(opts Options, containerID, ifname, netns string) (*Datapath, error) {
	opts = opts.withDefaults()
	d, err := OpenExisting(opts)
	if err != nil && !errors.Is(err, ErrNoState) {
		return nil, err
	}
	key := KeyOf(containerID, ifname)
	if d != nil && (!opts.defaultBPFFS || d.hasRecord(key)) {
		return d, nil
	}
	if d != nil {
		d.Close()
	}
	if !opts.defaultBPFFS {
		return nil, ErrNoState
	}
	for _, root := range otherStateRoots() {
		c, err := openStateAt(root, opts)
		if err != nil {
			continue
		}
		var meta program.BpfbridgeEndpointMeta
		if c.maps.meta.Lookup(key, &meta) == nil && (c.vethExists(&meta) || (netns != "" && program.CString(meta.Netns[:]) == netns)) {
			return c, nil
		}
		c.Close()
	}
	return nil, ErrNoState
}

func (d *Datapath) hasRecord(key EndpointKey) bool {
	var meta program.BpfbridgeEndpointMeta
	return d.maps.meta.Lookup(key, &meta) == nil
}

// openStateAt opens the state directory root as OpenExisting would.
func openStateAt(root string, opts Options) (*Datapath, error) {
	d := &Datapath{opts: opts, state: state{root: root}}
	var err error
	if d.maps, err = openMapSet(d.state.mapsDir()); err != nil {
		return nil, err
	}
	if err := d.openNetworkIDs(false); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// otherStateRoots lists the state directories of this node in every bpffs
// mounted in this mount namespace: each mount's unscoped directory and the
// one named after this node's netns.
func otherStateRoots() []string {
	f, err := os.Open("/proc/thread-self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	scoped := ""
	if cookie, err := netnsCookie(); err == nil {
		scoped = fmt.Sprintf("%s-netns%d", stateDirName, cookie)
	}
	var roots []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "<id> <parent> <dev> <root> <mount point> <options> ... - <fstype> ..."
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields := strings.Fields(pre)
		if !ok || len(fields) < 5 || !strings.HasPrefix(post, "bpf ") {
			continue
		}
		mnt := unescapeMountPath(fields[4])
		roots = append(roots, filepath.Join(mnt, stateDirName))
		if scoped != "" {
			roots = append(roots, filepath.Join(mnt, scoped))
		}
	}
	return roots
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}
