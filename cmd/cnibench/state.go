package main

import (
	"context"
	"fmt"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// datapathState is the size of what a plugin set left in the node's
// datapath: firewall rules, and entries of bpfbridge's pinned maps.
type datapathState struct {
	IPTablesRules, IP6TablesRules, NFTRules int
	BPFMaps                                 map[string]int // entries per keyed map, by "v<layout>/<pin name>"
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
// keyed maps pinned in its bpffs, of every layout (a node may hold more
// than one across an upgrade). Arrays always hold max_entries keys and
// ring buffers none, so they are left out.
func nodeState(ctx context.Context, sb *sandbox.Sandbox) (s datapathState, err error) {
	rules, err := sb.Node.FirewallRules(ctx)
	if err != nil {
		return s, err
	}
	s.IPTablesRules, s.IP6TablesRules, s.NFTRules = len(rules.IPTables), len(rules.IP6Tables), len(rules.NFT)
	maps, err := datapath.PinnedMaps(sb.BPFFS)
	if err != nil {
		return s, err
	}
	s.BPFMaps = map[string]int{}
	for _, m := range maps {
		if m.Type.Keyed() && m.Entries != nil {
			s.BPFMaps[fmt.Sprintf("v%d/%s", m.Layout, m.Name)] = *m.Entries
		}
	}
	return s, nil
}
