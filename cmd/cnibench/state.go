package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// datapathState is the size of what a plugin set left in the node's
// datapath: firewall rules, and entries of bpfbridge's pinned maps.
type datapathState struct {
	IPTablesRules, IP6TablesRules, NFTRules int
	BPFMaps                                 map[string]int // entries per keyed map, by pin name
}

// counts are the state's figures as metrics.
func (s datapathState) counts() map[string]int {
	total := 0
	for _, n := range s.BPFMaps {
		total += n
	}
	return map[string]int{
		"iptables_rules":  s.IPTablesRules,
		"ip6tables_rules": s.IP6TablesRules,
		"nft_rules":       s.NFTRules,
		"bpf_map_entries": total,
	}
}

// nodeState counts the firewall rules in sb's node and the entries of the
// maps pinned in its bpffs.
func nodeState(ctx context.Context, sb *sandbox.Sandbox) (s datapathState, err error) {
	if s.IPTablesRules, err = iptablesRules(ctx, sb, "iptables-save"); err != nil {
		return s, err
	}
	if s.IP6TablesRules, err = iptablesRules(ctx, sb, "ip6tables-save"); err != nil {
		return s, err
	}
	if s.NFTRules, err = nftRules(ctx, sb); err != nil {
		return s, err
	}
	// One directory per map layout version (maps/v1, maps/v2, …): count
	// them all, as a node may hold more than one across an upgrade.
	dirs, err := filepath.Glob(filepath.Join(sb.BPFFS, "bpfbridge", "maps", "v*"))
	if err != nil {
		return s, err
	}
	s.BPFMaps = map[string]int{}
	for _, dir := range dirs {
		counts, err := mapEntries(dir)
		if err != nil {
			return s, err
		}
		for name, n := range counts {
			s.BPFMaps[filepath.Base(dir)+"/"+name] = n
		}
	}
	return s, nil
}

// iptablesRules counts the rules ("-A chain …" lines) iptables-save prints
// in the node. With the nf_tables backend these rules show up in
// nftRules too.
func iptablesRules(ctx context.Context, sb *sandbox.Sandbox, save string) (int, error) {
	out, err := sb.Node.Command(ctx, save).Output()
	if err != nil {
		return 0, fmt.Errorf("%s in the node: %w", save, err)
	}
	count := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "-A ") {
			count++
		}
	}
	return count, sc.Err()
}

// nftRules counts the rules of every table in the node, from the JSON
// listing, which tells rules apart from tables, chains and sets.
func nftRules(ctx context.Context, sb *sandbox.Sandbox) (int, error) {
	out, err := sb.Node.Command(ctx, "nft", "--json", "list", "ruleset").Output()
	if err != nil {
		return 0, fmt.Errorf("nft list ruleset in the node: %w", err)
	}
	var ruleset struct {
		NFTables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &ruleset); err != nil {
		return 0, fmt.Errorf("nft list ruleset: %w", err)
	}
	count := 0
	for _, obj := range ruleset.NFTables {
		if _, ok := obj["rule"]; ok {
			count++
		}
	}
	return count, nil
}

// mapEntries counts the keys of each hash-like map pinned in dir. Arrays always hold
// max_entries keys and ring buffers none, so they are left out.
func mapEntries(dir string) (map[string]int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	counts := map[string]int{}
	for _, e := range entries {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, e.Name()), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return nil, fmt.Errorf("open pinned map %s: %w", e.Name(), err)
		}
		switch m.Type() {
		case ebpf.Hash, ebpf.LRUHash, ebpf.PerCPUHash, ebpf.LRUCPUHash, ebpf.LPMTrie:
			counts[e.Name()], err = countKeys(m)
		}
		m.Close()
		if err != nil {
			return nil, fmt.Errorf("count entries of %s: %w", e.Name(), err)
		}
	}
	return counts, nil
}

// countKeys walks m's keys with NextKey; it needs no knowledge of the key
// type, only its size.
func countKeys(m *ebpf.Map) (int, error) {
	key := make([]byte, m.KeySize())
	count := 0
	var err error
	for err = m.NextKey(nil, key); err == nil; err = m.NextKey(key, key) {
		count++
		// A map changing under the walk could restart it; no walk can
		// legitimately see more keys than the map holds.
		if count > int(m.MaxEntries()) {
			return 0, fmt.Errorf("more than max_entries (%d) keys", m.MaxEntries())
		}
	}
	if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, err
	}
	return count, nil
}
