package datapath

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// Port mapping (bpf/portmap.h): a published port is a port_maps entry per
// family, which the endpoint and uplink programs translate, plus the
// node's addresses (portmap_node_addrs) and, for the node's own sockets,
// cgroup sock_addr programs. Every ADD that publishes ports makes sure of
// all of them (PublishPorts); Detach removes an attachment's entries.

// PortMapping is one published port of a container.
type PortMapping struct {
	// Protocol is unix.IPPROTO_TCP or unix.IPPROTO_UDP.
	Protocol uint8
	// HostIP binds the mapping to one address; invalid: every node
	// address (the uplinks' and the bridges' gateways).
	HostIP        netip.Addr
	HostPort      uint16
	ContainerPort uint16
}

// ProtocolName is the mapping's protocol as configs spell it.
func (m PortMapping) ProtocolName() string { return protoName(m.Protocol) }

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	}
	return fmt.Sprintf("proto-%d", p)
}

// String is host:port/proto, with "*" for every node address.
func (m PortMapping) String() string {
	return hostPort(m.HostIP, m.HostPort) + "/" + m.ProtocolName()
}

// hostPort is a:port, "*:port" for an invalid a (every node address).
func hostPort(a netip.Addr, port uint16) string {
	if !a.IsValid() {
		return fmt.Sprintf("*:%d", port)
	}
	return netip.AddrPortFrom(a, port).String()
}

// Ports is what one attachment publishes.
type Ports struct {
	ContainerID, IfName string
	Mappings            []PortMapping
	// Addresses are the container's; the first of each family receives
	// the traffic of mappings of that family.
	Addresses []netip.Addr
	// Gateways are the network's gateway addresses: node addresses, and
	// the source hairpin traffic is translated to.
	Gateways []netip.Addr
	// Cgroup is the cgroup v2 directory the node-socket programs are
	// attached to; empty: the root of the machine's cgroup2 mount on a
	// node that is the initial network namespace, none on another.
	Cgroup string
}

// PortConflictError reports a published port another attachment holds.
type PortConflictError struct {
	Mapping PortMapping
	// Holder is the holding attachment, "<containerID>/<ifname>" (or its
	// key when its record is gone).
	Holder string
}

func (e *PortConflictError) Error() string {
	return fmt.Sprintf("host port %d/%s on %s is already mapped by container %s", e.Mapping.HostPort,
		e.Mapping.ProtocolName(), hostName(e.Mapping.HostIP), e.Holder)
}

func hostName(a netip.Addr) string {
	if !a.IsValid() {
		return "every node address"
	}
	return a.String()
}

// entries are the port_maps entries of p: one per mapping and family the
// container has an address of (a mapping bound to a hostIP: that family
// only).
func (p *Ports) entries(ifindex uint32) ([]program.BpfbridgePortmapKey, []program.BpfbridgePortmapValue, error) {
	first := map[bool]netip.Addr{}
	for _, a := range p.Addresses {
		if _, ok := first[a.Is4()]; !ok {
			first[a.Is4()] = a
		}
	}
	gateway := map[bool]netip.Addr{}
	for _, g := range p.Gateways {
		if _, ok := gateway[g.Is4()]; !ok {
			gateway[g.Is4()] = g
		}
	}
	owner := KeyOf(p.ContainerID, p.IfName)
	var (
		keys []program.BpfbridgePortmapKey
		vals []program.BpfbridgePortmapValue
	)
	for _, m := range p.Mappings {
		for _, v4 := range []bool{true, false} {
			if m.HostIP.IsValid() && !m.HostIP.IsUnspecified() && m.HostIP.Is4() != v4 {
				continue
			}
			c, ok := first[v4]
			if !ok {
				if m.HostIP.IsValid() && !m.HostIP.IsUnspecified() {
					return nil, nil, fmt.Errorf("port mapping %s: the container has no address of its family", m)
				}
				continue
			}
			family := uint8(6)
			if v4 {
				family = 4
			}
			keys = append(keys, program.PortmapKeyOf(family, m.Protocol, m.HostIP, m.HostPort))
			vals = append(vals, program.PortmapValueOf(c, m.ContainerPort, ifindex, gateway[v4], owner))
		}
	}
	return keys, vals, nil
}

// overlaps reports whether two published ports take the same traffic: one
// family, protocol and port, and the same host address or either on every
// node address.
func overlaps(a, b *program.BpfbridgePortmapKey) bool {
	if a.Family != b.Family || a.Proto != b.Proto || a.Port != b.Port {
		return false
	}
	zero := [16]uint8{}
	return a.Addr == b.Addr || a.Addr == zero || b.Addr == zero
}

// PublishPorts publishes p's ports on the node, refusing with a
// *PortConflictError any that another attachment holds; the attachment must
// be attached. It also records the node's addresses, attaches the uplink
// programs to the uplinks (also without masquerade) and the node-socket
// programs to the cgroup. Idempotent; under the state lock, so two ADDs
// never both take a port.
func (d *Datapath) PublishPorts(p Ports) error {
	if len(p.Mappings) == 0 {
		return nil
	}
	unlock, err := d.lock()
	if err != nil {
		return err
	}
	defer unlock()
	pm, keys, vals, err := d.portEntries(p, d.writableMap)
	if err != nil {
		return fmt.Errorf("publish ports: %w", err)
	}
	defer pm.Close()
	if err := d.checkConflicts(pm, KeyOf(p.ContainerID, p.IfName), keys); err != nil {
		return err
	}
	if err := d.portmapNode(p); err != nil {
		return err
	}
	for i := range keys {
		if err := pm.Update(&keys[i], &vals[i], ebpf.UpdateAny); err != nil {
			return fmt.Errorf("publish port %d: %w", program.FromBe16(keys[i].Port), err)
		}
	}
	return nil
}

// portEntries returns the port_maps entries that publish p's ports, for its
// attachment's veth, and port_maps opened by open (writable to publish them,
// read-only to check them).
func (d *Datapath) portEntries(p Ports, open func(string) (*ebpf.Map, error)) (
	*ebpf.Map, []program.BpfbridgePortmapKey, []program.BpfbridgePortmapValue, error) {
	var meta program.BpfbridgeEndpointMeta
	if err := d.maps.meta.Lookup(KeyOf(p.ContainerID, p.IfName), &meta); err != nil {
		return nil, nil, nil, fmt.Errorf("no datapath record for %s/%s: %w", p.ContainerID, p.IfName, err)
	}
	keys, vals, err := p.entries(meta.Ifindex)
	if err != nil {
		return nil, nil, nil, err
	}
	pm, err := open(program.BpfbridgeMapPortMaps)
	return pm, keys, vals, err
}

// eachPortMap calls fn with every port_maps entry until it returns false.
func eachPortMap(pm *ebpf.Map, fn func(*program.BpfbridgePortmapKey, *program.BpfbridgePortmapValue) bool) error {
	var (
		k program.BpfbridgePortmapKey
		v program.BpfbridgePortmapValue
	)
	it := pm.Iterate()
	for it.Next(&k, &v) && fn(&k, &v) {
	}
	return it.Err()
}

// checkConflicts fails with the first of keys another attachment holds.
func (d *Datapath) checkConflicts(pm *ebpf.Map, owner EndpointKey, keys []program.BpfbridgePortmapKey) error {
	var conflict *PortConflictError
	err := eachPortMap(pm, func(k *program.BpfbridgePortmapKey, v *program.BpfbridgePortmapValue) bool {
		for i := range keys {
			if EndpointKey(v.Owner) != owner && overlaps(k, &keys[i]) {
				conflict = &PortConflictError{
					Mapping: PortMapping{Protocol: keys[i].Proto, HostIP: keys[i].HostIP(), HostPort: program.FromBe16(keys[i].Port)},
					Holder:  d.holderName(EndpointKey(v.Owner)),
				}
				return false
			}
		}
		return true
	})
	if conflict != nil {
		return conflict
	}
	return err
}

// holderName names the attachment of key for messages.
func (d *Datapath) holderName(key EndpointKey) string {
	var m program.BpfbridgeEndpointMeta
	if d.maps.meta.Lookup(key, &m) != nil {
		return "with endpoint key " + key.String()
	}
	return program.CString(m.ContainerId[:]) + "/" + program.CString(m.Ifname[:])
}

// portmapNode makes the node ready for published ports: its addresses,
// the uplink programs on its uplinks, the flag that turns the programs'
// port mapping on, and the node-socket programs.
func (d *Datapath) portmapNode(p Ports) error {
	uplinks, err := findUplinks(uplinkQuery{})
	if err != nil {
		return err
	}
	addrs, err := d.writableMap(program.BpfbridgeMapPortmapNodeAddrs)
	if err != nil {
		return err
	}
	defer addrs.Close()
	nodeAddrs := slices.Clone(p.Gateways)
	for _, u := range uplinks {
		l, err := netlink.LinkByIndex(u.index)
		if err != nil {
			return fmt.Errorf("uplink ifindex %d: %w", u.index, err)
		}
		list, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("addresses of uplink %s: %w", u.name, err)
		}
		for _, a := range list {
			if a.Scope == unix.RT_SCOPE_UNIVERSE {
				nodeAddrs = append(nodeAddrs, ipAddr(a.IP))
			}
		}
		// A masquerading network's entry names its chosen addresses:
		// only a bare uplink gets one here (the upgrade moves every
		// uplink of nat_uplinks onto new programs).
		var v program.BpfbridgeNatUplink
		v.SetAddrs(u.ipv4, u.ipv6)
		if err := d.maps.natUplinks.Update(uint32(u.index), &v, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			return fmt.Errorf("record uplink %s: %w", u.name, err)
		}
		if err := d.attachUplink(u.index); err != nil {
			return fmt.Errorf("uplink %s: %w", u.name, err)
		}
	}
	for _, a := range nodeAddrs {
		if a.IsValid() {
			if err := addrs.Update(program.IPKeyOf(a), uint8(1), ebpf.UpdateAny); err != nil {
				return fmt.Errorf("record node address %s: %w", a, err)
			}
		}
	}
	cookie, err := netnsCookie()
	if err != nil {
		return err
	}
	cfg := program.BpfbridgePortmapConfig{NetnsCookie: cookie, Enabled: 1}
	if err := d.writeConfig(program.BpfbridgeMapPortmapConfig, &cfg); err != nil {
		return fmt.Errorf("write port mapping config: %w", err)
	}
	return d.attachSockPrograms(p.Cgroup)
}

// sockAttach are the cgroup hooks of the node-socket programs.
var sockAttach = map[string]ebpf.AttachType{
	"portmap_connect4": ebpf.AttachCGroupInet4Connect, "portmap_connect6": ebpf.AttachCGroupInet6Connect,
	"portmap_sendmsg4": ebpf.AttachCGroupUDP4Sendmsg, "portmap_sendmsg6": ebpf.AttachCGroupUDP6Sendmsg,
	"portmap_recvmsg4": ebpf.AttachCGroupUDP4Recvmsg, "portmap_recvmsg6": ebpf.AttachCGroupUDP6Recvmsg,
	"portmap_getpeername4": ebpf.AttachCgroupInet4GetPeername, "portmap_getpeername6": ebpf.AttachCgroupInet6GetPeername,
}

// sockPrograms are the node-socket programs (cgroup sock_addr).
func sockPrograms(p *program.BpfbridgePrograms) []pin[ebpf.Program] {
	return []pin[ebpf.Program]{
		{"portmap_connect4", &p.PortmapConnect4}, {"portmap_connect6", &p.PortmapConnect6},
		{"portmap_sendmsg4", &p.PortmapSendmsg4}, {"portmap_sendmsg6", &p.PortmapSendmsg6},
		{"portmap_recvmsg4", &p.PortmapRecvmsg4}, {"portmap_recvmsg6", &p.PortmapRecvmsg6},
		{"portmap_getpeername4", &p.PortmapGetpeername4}, {"portmap_getpeername6", &p.PortmapGetpeername6},
	}
}

// sockLinksDir holds the pinned cgroup links, one directory per cgroup
// (named by a hash of its path), one link per program.
func (s state) sockLinksDir() string { return filepath.Join(s.root, "portmap-links") }

func (s state) sockLinkDir(cgroup string) string {
	h := sha256.Sum256([]byte(cgroup))
	return filepath.Join(s.sockLinksDir(), hex.EncodeToString(h[:8]))
}

// DefaultCgroup is the root of the machine's cgroup v2 hierarchy, where
// the node-socket programs are attached by default, or "" if none is
// mounted.
func DefaultCgroup() string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options ... - fstype source
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if sep > 4 && sep+1 < len(fields) && fields[sep+1] == "cgroup2" && fields[3] == "/" {
			return unescapeMountPath(fields[4])
		}
	}
	return ""
}

// attachSockPrograms attaches the node-socket programs to cgroup unless
// this build's are there, and pins the links so that they outlive the
// plugin. Without a cgroup named, a node that is the machine's initial
// network namespace uses DefaultCgroup; a node in another namespace (a
// nested node, a test's sandbox) attaches nothing to the machine's
// hierarchy unless told where (datapath.cgroup): its published ports are
// then not reachable from its own sockets, and everything else works, as
// on a node without cgroup v2.
func (d *Datapath) attachSockPrograms(cgroup string) error {
	if cgroup == "" {
		if initial, err := inInitialNS("net"); err != nil || !initial {
			return err
		}
		if cgroup = DefaultCgroup(); cgroup == "" {
			return nil
		}
	}
	dir := d.state.sockLinkDir(cgroup)
	// Attached already: an ADD leaves the links alone (Upgrade moves them
	// onto a new build's programs), which saves it opening each.
	complete := true
	for _, p := range sockPrograms(d.progs) {
		if _, err := os.Stat(filepath.Join(dir, p.name)); err != nil {
			complete = false
		}
	}
	if complete {
		return nil
	}
	if _, err := d.loadGroups(sockPrograms); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, p := range sockPrograms(d.progs) {
		path := filepath.Join(dir, p.name)
		if l, err := link.LoadPinnedLink(path, nil); err == nil {
			err = updateLink(l, *p.dst) // an older build's is replaced
			l.Close()
			if err != nil {
				return fmt.Errorf("update %s on cgroup %s: %w", p.name, cgroup, err)
			}
			continue
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: sockAttach[p.name], Program: *p.dst})
		if err != nil {
			return fmt.Errorf("attach %s to cgroup %s: %w", p.name, cgroup, err)
		}
		err = l.Pin(path)
		l.Close()
		if err != nil {
			return fmt.Errorf("pin %s link: %w", p.name, err)
		}
	}
	return nil
}

// updateLink makes l run prog unless it does already: a cgroup link's
// update recomputes the programs of every cgroup below, which an ADD need
// not pay for.
func updateLink(l link.Link, prog *ebpf.Program) error {
	want, err := programID(prog)
	if err != nil {
		return err
	}
	if info, err := l.Info(); err == nil && info.Program == want {
		return nil
	}
	return l.Update(prog)
}

// upgradeSockLinks moves the pinned node-socket links onto this build's
// programs (a link update is atomic).
func (d *Datapath) upgradeSockLinks() error {
	dirs, err := os.ReadDir(d.state.sockLinksDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := d.loadGroups(sockPrograms); err != nil {
		return err
	}
	var errs []error
	for _, dir := range dirs {
		for _, p := range sockPrograms(d.progs) {
			l, err := link.LoadPinnedLink(filepath.Join(d.state.sockLinksDir(), dir.Name(), p.name), nil)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err == nil {
				err = updateLink(l, *p.dst)
				l.Close()
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// unpublishPorts removes the port_maps entries of the attachment key and
// reports whether it had any. A node whose state predates port mapping
// has none.
func (d *Datapath) unpublishPorts(key EndpointKey) (bool, error) {
	return d.deletePortMaps(func(owner EndpointKey) bool { return owner == key })
}

// deletePortMaps deletes the port_maps entries whose owner drop selects.
func (d *Datapath) deletePortMaps(drop func(owner EndpointKey) bool) (bool, error) {
	pm, err := d.writableMap(program.BpfbridgeMapPortMaps)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer pm.Close()
	var stale []program.BpfbridgePortmapKey
	err = eachPortMap(pm, func(k *program.BpfbridgePortmapKey, v *program.BpfbridgePortmapValue) bool {
		if drop(EndpointKey(v.Owner)) {
			stale = append(stale, *k)
		}
		return true
	})
	errs := []error{err}
	for i := range stale {
		errs = append(errs, ignoreMissing(pm.Delete(&stale[i])))
	}
	return len(stale) > 0, errors.Join(errs...)
}

// sweepPortMaps removes the published ports of attachments that have no
// record any more (GC).
func (d *Datapath) sweepPortMaps() error {
	_, err := d.deletePortMaps(func(owner EndpointKey) bool { return !d.hasRecord(owner) })
	return err
}

// CheckPorts verifies that p's ports are published for its attachment, to
// its container's address and port.
func (d *Datapath) CheckPorts(p Ports) error {
	if len(p.Mappings) == 0 {
		return nil
	}
	pm, keys, vals, err := d.portEntries(p, d.pinnedMap)
	if err != nil {
		return err
	}
	defer pm.Close()
	for i := range keys {
		var have program.BpfbridgePortmapValue
		if err := pm.Lookup(&keys[i], &have); err != nil {
			return fmt.Errorf("host port %s is not published: %w", hostPort(keys[i].HostIP(), program.FromBe16(keys[i].Port)), err)
		}
		have.Packets = 0
		if have != vals[i] {
			return fmt.Errorf("host port %s is published to %s of %s, not to %s of this attachment",
				hostPort(keys[i].HostIP(), program.FromBe16(keys[i].Port)), have.Container(keys[i].Family),
				d.holderName(EndpointKey(have.Owner)), vals[i].Container(keys[i].Family))
		}
	}
	return nil
}

// PublishedPort is one port_maps entry as `bridge inspect portmap list`
// shows it.
type PublishedPort struct {
	Host      string         `json:"host"` // address:port, "*:port" on every node address
	Container netip.AddrPort `json:"container"`
	Protocol  string         `json:"protocol"`
	// Owner is the attachment, containerID/ifname.
	Owner   string `json:"owner"`
	Packets uint64 `json:"packets"`
}

// PublishedPorts lists the node's published ports, sorted by port.
func (d *Datapath) PublishedPorts() ([]PublishedPort, error) {
	pm, err := d.pinnedMap(program.BpfbridgeMapPortMaps)
	if errors.Is(err, os.ErrNotExist) {
		return []PublishedPort{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer pm.Close()
	out := []PublishedPort{}
	err = eachPortMap(pm, func(k *program.BpfbridgePortmapKey, v *program.BpfbridgePortmapValue) bool {
		out = append(out, PublishedPort{
			Host: hostPort(k.HostIP(), program.FromBe16(k.Port)), Container: v.Container(k.Family),
			Protocol: protoName(k.Proto), Owner: d.holderName(EndpointKey(v.Owner)), Packets: v.Packets,
		})
		return true
	})
	slices.SortFunc(out, func(a, b PublishedPort) int { return strings.Compare(a.Host+a.Protocol, b.Host+b.Protocol) })
	return out, err
}
