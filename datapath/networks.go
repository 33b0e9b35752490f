package datapath

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// Network ids. The programs tell networks apart by a 32-bit id in every
// endpoint and owner entry. The id is allocated, never derived: a hash cut
// to 32 bits collides for names an attacker can search for in a second,
// which would merge two networks' isolation. The registry maps the SHA-256
// of a network's full name to its id; it is the control plane's alone (no
// program reads it), so it is defined here and pinned beside the layouts,
// outliving them.

// networkIDsPin is the registry's pin in the state directory.
const networkIDsPin = "network_ids"

var networkIDsSpec = ebpf.MapSpec{
	Name:       networkIDsPin,
	Type:       ebpf.Hash,
	KeySize:    sha256.Size,
	ValueSize:  4,
	MaxEntries: maxNetworks,
	Flags:      bpfFNoPrealloc,
	Pinning:    ebpf.PinByName,
}

// maxNetworks bounds the registry: far more networks than a node can have
// endpoints for.
const maxNetworks = 1 << 16

// bpfFNoPrealloc is BPF_F_NO_PREALLOC: the registry stays small.
const bpfFNoPrealloc = 1 << 0

// openNetworkIDs opens the node's registry, creating it when create is set.
// Without create, a node without one (its state predates the registry)
// yields nil.
func (d *Datapath) openNetworkIDs(create bool) error {
	if !create {
		m, err := ebpf.LoadPinnedMap(filepath.Join(d.state.root, networkIDsPin), nil)
		if err == nil {
			d.networkIDs = m
		}
		return nil
	}
	// Concurrent first ADDs race to pin it: the loser opens the winner's.
	m, err := ebpf.NewMapWithOptions(&networkIDsSpec, ebpf.MapOptions{PinPath: d.state.root})
	if errors.Is(err, os.ErrExist) {
		m, err = ebpf.LoadPinnedMap(filepath.Join(d.state.root, networkIDsPin), nil)
	}
	if err != nil {
		return fmt.Errorf("open the network registry: %w", err)
	}
	d.networkIDs = m
	return nil
}

type networkKey [sha256.Size]byte

func networkKeyOf(name string) networkKey { return sha256.Sum256([]byte(name)) }

// lookupNetworkID returns the id of network name, if it has one.
func (d *Datapath) lookupNetworkID(name string) (uint32, bool) {
	var id uint32
	if d.networkIDs == nil || d.networkIDs.Lookup(networkKeyOf(name), &id) != nil {
		return 0, false
	}
	return id, true
}

// networkID returns the id of network name, allocating it on the network's
// first attachment. A network that endpoints of an earlier build already
// use keeps the id they carry, so that old and new endpoints of one network
// stay one network.
func (d *Datapath) networkID(name string) (uint32, error) {
	if id, ok := d.lookupNetworkID(name); ok {
		return id, nil
	}
	if d.networkIDs == nil {
		return 0, errors.New("network registry not open")
	}
	unlock, err := d.lock()
	if err != nil {
		return 0, err
	}
	defer unlock()
	if id, ok := d.lookupNetworkID(name); ok {
		return id, nil
	}
	used, adopted, err := d.usedNetworkIDs(name)
	if err != nil {
		return 0, err
	}
	id := adopted
	for id == 0 || used[id] {
		id, err = randomID()
		if err != nil {
			return 0, err
		}
	}
	if err := d.networkIDs.Update(networkKeyOf(name), id, ebpf.UpdateNoExist); err != nil {
		return 0, fmt.Errorf("register network %q: %w", name, err)
	}
	return id, nil
}

// usedNetworkIDs lists the ids in use, in the registry and in endpoint
// records, and the id that records of network name carry, to adopt (0 if
// none, or if the registry gave it to another network: names whose old ids
// collided part at their next attachment). A record names its network
// truncated to the field; a name that does not fit is never adopted by
// prefix.
func (d *Datapath) usedNetworkIDs(name string) (used map[uint32]bool, adopted uint32, err error) {
	used, registered := map[uint32]bool{}, map[uint32]bool{}
	var (
		k  networkKey
		id uint32
	)
	it := d.networkIDs.Iterate()
	for it.Next(&k, &id) {
		used[id], registered[id] = true, true
	}
	if err := it.Err(); err != nil {
		return nil, 0, err
	}
	var nameField program.BpfbridgeEndpointMeta
	fits := len(name) < len(nameField.Network)
	err = d.eachEndpoint(func(_ EndpointKey, m *program.BpfbridgeEndpointMeta) {
		if fits && adopted == 0 && !registered[m.Ep.Network] && program.CString(m.Network[:]) == name {
			adopted = m.Ep.Network
		}
		used[m.Ep.Network] = true
	})
	if adopted != 0 {
		delete(used, adopted)
	}
	return used, adopted, err
}

func randomID() (uint32, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b[:]), nil
}
