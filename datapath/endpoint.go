package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// Isolation is how a network's containers are isolated from other
// containers on the node.
type Isolation uint8

// Isolation modes: enum isolation_mode in bpf/endpoint.h.
const (
	// IsolationNone: anti-spoofing only.
	IsolationNone = Isolation(program.BpfbridgeIsolationModeISOLATION_NONE)
	// IsolationNetwork: no traffic to or from containers of other networks.
	IsolationNetwork = Isolation(program.BpfbridgeIsolationModeISOLATION_NETWORK)
	// IsolationContainer: additionally none between containers of the
	// network; the gateway, the node and the outside stay reachable.
	IsolationContainer = Isolation(program.BpfbridgeIsolationModeISOLATION_CONTAINER)
)

var isolationNames = map[string]Isolation{"none": IsolationNone, "network": IsolationNetwork, "container": IsolationContainer}

// ParseIsolation parses the config value of "isolation".
func ParseIsolation(s string) (Isolation, bool) {
	i, ok := isolationNames[s]
	return i, ok
}

func (i Isolation) String() string {
	for name, v := range isolationNames {
		if v == i {
			return name
		}
	}
	return fmt.Sprintf("isolation(%d)", uint8(i))
}

// MarshalText writes the mode's name.
func (i Isolation) MarshalText() ([]byte, error) { return []byte(i.String()), nil }

// Endpoint is a container attachment as the datapath sees it. The JSON
// field names are those of `bridge inspect endpoint -j`.
type Endpoint struct {
	ContainerID string       `json:"container_id"`
	IfName      string       `json:"ifname"`
	Network     string       `json:"network"`
	Netns       string       `json:"netns"`
	IPs         []netip.Addr `json:"ips"`
	MAC         MAC          `json:"mac"` // of the container interface
	HostIfName  string       `json:"host_ifname"`
	HostIfindex int          `json:"ifindex"`
	Isolation   Isolation    `json:"isolation"`
	// TaggedOK lets VLAN-tagged frames through (the port is a VLAN trunk).
	TaggedOK bool `json:"vlan_trunk"`
	// FastPath lets unicast to endpoints on its bridge skip the bridge
	// (bpf/fastpath.h); Bridge is the bridge's ifindex.
	FastPath bool `json:"fast_path"`
	Bridge   int  `json:"-"`
	// BridgeNetfilter: the node's netfilter sees bridged frames
	// (br_netfilter), so the fast path between endpoints of the bridge
	// carries only flows it does not track (bpf/fastpath.h).
	BridgeNetfilter bool `json:"-"`
	// NodeMulticast: the bridge does not snoop multicast, so the fast path
	// hands the container's router solicitations and MLD messages to the
	// node rather than the bridge flooding them (bpf/fastpath.h).
	NodeMulticast bool `json:"-"`
}

// entry is the endpoint's struct endpoint, in the network with id network.
func (ep *Endpoint) entry(network uint32) (program.BpfbridgeEndpoint, error) {
	e := program.BpfbridgeEndpoint{Isolation: uint8(ep.Isolation), Network: network}
	if ep.TaggedOK {
		e.Flags |= uint8(program.BpfbridgeEndpointFlagsEP_F_TAGGED_OK)
	}
	if ep.FastPath {
		e.Flags |= uint8(program.BpfbridgeEndpointFlagsEP_F_FAST_PATH)
	}
	if ep.FastPath && ep.BridgeNetfilter {
		e.Flags |= uint8(program.BpfbridgeEndpointFlagsEP_F_BRIDGE_NF)
	}
	if ep.FastPath && ep.NodeMulticast {
		e.Flags |= uint8(program.BpfbridgeEndpointFlagsEP_F_NODE_MCAST)
	}
	return e, e.SetAddrs(net.HardwareAddr(ep.MAC), ep.IPs)
}

// epFlagTaggedOK is EP_F_TAGGED_OK (enum endpoint_flags in bpf/endpoint.h).
const epFlagTaggedOK = uint8(program.BpfbridgeEndpointFlagsEP_F_TAGGED_OK)

// Attach makes ep's veth enforce ep: it records the endpoint, fills the
// maps the programs read, and attaches the programs. On error it leaves
// nothing behind.
func (d *Datapath) Attach(ep Endpoint) (err error) {
	if d.progs == nil {
		return errors.New("attach needs the programs: open the datapath with Open")
	}
	network, err := d.networkID(ep.Network)
	if err != nil {
		return err
	}
	entry, err := ep.entry(network)
	if err != nil {
		return err
	}
	key := KeyOf(ep.ContainerID, ep.IfName)
	meta := program.BpfbridgeEndpointMeta{
		Ifindex:   uint32(ep.HostIfindex),
		CreatedNs: uint64(time.Now().UnixNano()),
		Ep:        entry,
	}
	meta.SetNames(program.MetaNames{ContainerID: ep.ContainerID, IfName: ep.IfName, HostIfName: ep.HostIfName,
		Network: ep.Network, Netns: ep.Netns, ProgTag: programSetTag()})

	// State left under this key is stale: its DEL never came (a crash, or a
	// runtime that lost track). The caller just created the veth, so the
	// old attachment's interface is gone.
	if err := d.Detach(ep.ContainerID, ep.IfName); err != nil {
		return fmt.Errorf("clear stale state of %s/%s: %w", ep.ContainerID, ep.IfName, err)
	}
	defer func() {
		if err != nil {
			_ = d.Detach(ep.ContainerID, ep.IfName)
		}
	}()
	// The record goes first, so that a failure at any later step, even a
	// crash, leaves something DEL and GC can find.
	if err := d.maps.meta.Update(key, &meta, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("record endpoint: %w", err)
	}
	// The counters start at zero, their entries in place: the programs
	// never add entries for a live endpoint.
	zero := make([]program.BpfbridgeEndpointStats, ebpf.MustPossibleCPU())
	if err := d.maps.stats.Update(meta.Ifindex, zero, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("reset counters: %w", err)
	}
	if err := d.maps.fastPath.Update(meta.Ifindex, make([]uint64, ebpf.MustPossibleCPU()), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("reset counters: %w", err)
	}
	if err := d.writeEntries(&meta, ep.Bridge); err != nil {
		return err
	}
	d.opts.Trace.Mark("maps")
	mode, err := d.attach(key, ep.HostIfindex)
	if err != nil {
		return err
	}
	d.opts.Trace.Mark("tc")
	meta.Attach = uint32(mode)
	if err := d.markVeth(&meta); err != nil {
		return err
	}
	return d.maps.meta.Update(key, &meta, ebpf.UpdateExist)
}

// writeEntries writes what the programs read about the recorded endpoint:
// its addresses' owners, then its endpoint entry. Entries before programs:
// a packet must never meet a program that does not know its endpoint.
func (d *Datapath) writeEntries(meta *program.BpfbridgeEndpointMeta, bridge int) error {
	owner := program.BpfbridgeIpOwner{Ifindex: meta.Ifindex, Network: meta.Ep.Network}
	for _, ip := range meta.Ep.IPs() {
		if err := d.maps.ipOwners.Update(program.IPKeyOf(ip), &owner, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("record owner of %s: %w", ip, err)
		}
	}
	l2 := program.BpfbridgeMacOwner{Ifindex: meta.Ifindex, Network: meta.Ep.Network, Isolation: meta.Ep.Isolation, Bridge: uint32(bridge)}
	if err := d.maps.macOwners.Update(macKey(&meta.Ep), &l2, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("record owner of MAC %s: %w", net.HardwareAddr(meta.Ep.Mac[:]), err)
	}
	if err := d.writeGateway(bridge); err != nil {
		return err
	}
	if err := d.maps.endpoints.Update(meta.Ifindex, &meta.Ep, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write endpoint: %w", err)
	}
	return nil
}

// writeGateway records the MAC of the bridge (by ifindex) in gateway_macs:
// frames to it are what the node routes, which the fast path may route
// itself (bpf/fastpath.h). Read at every ADD: a bridge's MAC follows its
// ports until the gateway pins it. A bridge that vanished meanwhile is no
// error here (the veth's own checks catch that); without its entry routed
// frames simply take the stack.
func (d *Datapath) writeGateway(bridge int) error {
	if bridge == 0 {
		return nil
	}
	l, err := netlink.LinkByIndex(bridge)
	if err != nil || len(l.Attrs().HardwareAddr) != 6 {
		return nil
	}
	gw := program.BpfbridgeGatewayMac{Mac: [6]uint8(l.Attrs().HardwareAddr)}
	if err := d.maps.gateways.Update(uint32(bridge), &gw, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("record the MAC of bridge %d: %w", bridge, err)
	}
	return nil
}

// Detach removes everything the datapath holds for the attachment
// (containerID, ifname): programs or tcx links, map entries and the record.
// It works whether or not the veth still exists, and an unknown attachment
// is not an error, so DEL may repeat it.
func (d *Datapath) Detach(containerID, ifname string) error {
	return d.detach(KeyOf(containerID, ifname))
}

// detach is Detach by endpoint key.
func (d *Datapath) detach(key EndpointKey) error {
	var meta program.BpfbridgeEndpointMeta
	err := d.maps.meta.Lookup(key, &meta)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		// No record; a crash between pinning links and recording is not
		// possible (the record comes first), but unpin defensively.
		_, perr := d.unpublishPorts(key)
		return errors.Join(perr, d.detachPrograms(key, nil))
	}
	if err != nil {
		return fmt.Errorf("look up endpoint: %w", err)
	}
	// Fail closed: a veth that outlived its endpoint (a DEL without netns,
	// a GC, a replaced attachment) would carry its container's traffic
	// unfiltered once the programs leave. It goes first; if it cannot, the
	// programs and entries stay and keep enforcing.
	if err := d.deleteVeth(&meta); err != nil {
		return err
	}
	// Its published ports go, and their flows die with its addresses'
	// generations, before the addresses can go to another container.
	var errs []error
	if had, err := d.unpublishPorts(key); had || err != nil {
		errs = append(errs, err, d.ForgetFlows(meta.Ep.IPs()))
	}
	errs = append(errs, d.detachPrograms(key, &meta), d.deleteEntries(&meta))
	if err := d.maps.meta.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// deleteEntries deletes the endpoint's map entries. Ifindexes and addresses
// are reused, so an entry is deleted only while it still describes this
// endpoint: a newer endpoint that reuses the ifindex keeps its entries.
func (d *Datapath) deleteEntries(m *program.BpfbridgeEndpointMeta) error {
	var current program.BpfbridgeEndpoint
	err := d.maps.endpoints.Lookup(m.Ifindex, &current)
	switch {
	case errors.Is(err, ebpf.ErrKeyNotExist):
	case err != nil:
		return err
	case current != m.Ep:
		return nil // the ifindex belongs to another endpoint now
	}
	var (
		errs     []error
		released []netip.Addr
	)
	for _, ip := range m.Ep.IPs() {
		var owner program.BpfbridgeIpOwner
		if d.maps.ipOwners.Lookup(program.IPKeyOf(ip), &owner) == nil && owner.Ifindex == m.Ifindex {
			errs = append(errs, ignoreMissing(d.maps.ipOwners.Delete(program.IPKeyOf(ip))))
			released = append(released, ip)
		}
	}
	var owner program.BpfbridgeMacOwner
	releasedMAC := false
	if key := macKey(&m.Ep); d.maps.macOwners.Lookup(key, &owner) == nil && owner.Ifindex == m.Ifindex {
		errs = append(errs, ignoreMissing(d.maps.macOwners.Delete(key)))
		releasedMAC = true
	}
	errs = append(errs,
		ignoreMissing(d.maps.endpoints.Delete(m.Ifindex)),
		ignoreMissing(d.maps.stats.Delete(m.Ifindex)),
		ignoreMissing(d.maps.fastPath.Delete(m.Ifindex)))
	if len(released) > 0 || releasedMAC {
		errs = append(errs, d.restoreOwners(released, releasedMAC, m.Ep.Mac))
	}
	return errors.Join(errs...)
}

// restoreOwners hands the addresses (and, with mac, the MAC) a removed
// endpoint owned to another endpoint that holds them too: the owner maps
// keep one endpoint per key, the one attached last, and L2-only networks
// with overlapping subnets (or a MAC configured twice) have several. One
// batched read of the endpoints; nothing to do in the common case but that
// read.
func (d *Datapath) restoreOwners(ips []netip.Addr, mac bool, hw [6]uint8) error {
	wanted := map[netip.Addr]bool{}
	for _, ip := range ips {
		wanted[ip] = true
	}
	var (
		cursor ebpf.MapBatchCursor
		keys   = make([]uint32, 256)
		values = make([]program.BpfbridgeEndpoint, 256)
		errs   []error
	)
	for {
		n, err := d.maps.endpoints.BatchLookup(&cursor, keys, values, nil)
		for i := range n {
			ep := &values[i]
			for _, ip := range ep.IPs() {
				if wanted[ip] {
					owner := program.BpfbridgeIpOwner{Ifindex: keys[i], Network: ep.Network}
					errs = append(errs, d.maps.ipOwners.Update(program.IPKeyOf(ip), &owner, ebpf.UpdateNoExist))
					delete(wanted, ip)
				}
			}
			if mac && ep.Mac == hw {
				owner := program.BpfbridgeMacOwner{Ifindex: keys[i], Network: ep.Network, Isolation: ep.Isolation,
					Bridge: uint32(bridgeOf(keys[i]))}
				errs = append(errs, d.maps.macOwners.Update(macKey(ep), &owner, ebpf.UpdateNoExist))
				mac = false
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return err
		}
	}
	for i, err := range errs {
		if errors.Is(err, ebpf.ErrKeyExist) {
			errs[i] = nil // an ADD meanwhile took it
		}
	}
	return errors.Join(errs...)
}

// macKey is the mac_owners key of an endpoint.
func macKey(e *program.BpfbridgeEndpoint) program.BpfbridgeMacKey {
	return program.BpfbridgeMacKey{Mac: e.Mac}
}

func ignoreMissing(err error) error {
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}

// Addresses returns the addresses recorded for the attachment
// (containerID, ifname), or none when there is no record.
func (d *Datapath) Addresses(containerID, ifname string) []netip.Addr {
	var meta program.BpfbridgeEndpointMeta
	if d.maps.meta.Lookup(KeyOf(containerID, ifname), &meta) != nil {
		return nil
	}
	return meta.Ep.IPs()
}

// Check verifies that the datapath enforces ep on its veth: the record, the
// endpoint and address entries, and this build's programs attached in both
// directions.
func (d *Datapath) Check(ep Endpoint) error {
	if d.progs == nil {
		return errors.New("check needs the programs: open the datapath with Open")
	}
	network, ok := d.lookupNetworkID(ep.Network)
	if !ok {
		return fmt.Errorf("network %q has no id in the datapath's registry", ep.Network)
	}
	want, err := ep.entry(network)
	if err != nil {
		return err
	}
	var meta program.BpfbridgeEndpointMeta
	if err := d.maps.meta.Lookup(KeyOf(ep.ContainerID, ep.IfName), &meta); err != nil {
		return fmt.Errorf("no datapath record for %s/%s: %w", ep.ContainerID, ep.IfName, err)
	}
	if int(meta.Ifindex) != ep.HostIfindex {
		return fmt.Errorf("datapath record names ifindex %d, but the host veth is %d", meta.Ifindex, ep.HostIfindex)
	}
	var have program.BpfbridgeEndpoint
	if err := d.maps.endpoints.Lookup(meta.Ifindex, &have); err != nil {
		return fmt.Errorf("no endpoint entry for ifindex %d: %w", meta.Ifindex, err)
	}
	// The fast path's flags are no policy (a frame that takes it meets
	// both endpoints' policies all the same; the bridge's snooping may
	// change under it), and endpoints of earlier builds lack them.
	fast := uint8(program.BpfbridgeEndpointFlagsEP_F_FAST_PATH | program.BpfbridgeEndpointFlagsEP_F_NODE_MCAST)
	have.Flags, want.Flags = have.Flags&^fast, want.Flags&^fast
	if have != want {
		return fmt.Errorf("endpoint entry of ifindex %d differs from the attachment (MAC, addresses or isolation)", meta.Ifindex)
	}
	for _, ip := range ep.IPs {
		var owner program.BpfbridgeIpOwner
		if err := d.maps.ipOwners.Lookup(program.IPKeyOf(ip), &owner); err != nil || owner.Ifindex != meta.Ifindex {
			return fmt.Errorf("address %s is not recorded for ifindex %d", ip, meta.Ifindex)
		}
	}
	var l2 program.BpfbridgeMacOwner
	if err := d.maps.macOwners.Lookup(macKey(&want), &l2); err != nil || l2.Ifindex != meta.Ifindex {
		return fmt.Errorf("MAC %s is not recorded for ifindex %d", ep.MAC, meta.Ifindex)
	}
	return d.attachedPrograms(&meta)
}

// GC detaches every endpoint of network whose attachment is not in valid.
// Records are matched by key and network id, never by their truncated
// strings: a container id or network name too long for its field must not
// make GC confuse two attachments, or two networks.
func (d *Datapath) GC(network string, valid map[EndpointKey]bool) error {
	id, registered := d.lookupNetworkID(network)
	var nameField program.BpfbridgeEndpointMeta
	if !registered && len(network) >= len(nameField.Network) {
		// A node not yet on the registry, and a name its records hold
		// truncated: nothing can be matched safely.
		return nil
	}
	// The name a record holds: network, cut to the field.
	recorded := network[:min(len(network), len(nameField.Network)-1)]
	var stale []EndpointKey
	err := d.eachEndpoint(func(key EndpointKey, m *program.BpfbridgeEndpointMeta) {
		ours := program.CString(m.Network[:]) == recorded && (!registered || m.Ep.Network == id)
		if ours && !valid[key] {
			stale = append(stale, key)
		}
	})
	var errs []error
	for _, key := range stale {
		errs = append(errs, d.detach(key))
	}
	return errors.Join(append(errs, err, d.sweepPortMaps())...)
}

// eachEndpoint calls fn with every endpoint record; fn receives a copy.
func (d *Datapath) eachEndpoint(fn func(EndpointKey, *program.BpfbridgeEndpointMeta)) error {
	var (
		key  program.BpfbridgeEndpointKey
		meta program.BpfbridgeEndpointMeta
	)
	it := d.maps.meta.Iterate()
	for it.Next(&key, &meta) {
		m := meta
		fn(EndpointKey(key.Sha256), &m)
	}
	return it.Err()
}
