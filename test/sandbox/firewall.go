package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// FirewallRules are the netfilter rules of a network namespace, as the
// tools print them. bpfbridge never writes any; the reference plugins do
// (masquerade, port isolation), which cnibench counts.
type FirewallRules struct {
	IPTables, IP6Tables []string // "-A chain …" lines of iptables-save, ip6tables-save
	// NFT are the rules of every nftables table (iptables-nft rules
	// included), as JSON objects of `nft --json list ruleset`.
	NFT []string
}

// All is every rule, each prefixed by its tool.
func (r FirewallRules) All() []string {
	var all []string
	for _, set := range []struct {
		tool  string
		rules []string
	}{{"iptables", r.IPTables}, {"ip6tables", r.IP6Tables}, {"nft", r.NFT}} {
		for _, rule := range set.rules {
			all = append(all, set.tool+": "+rule)
		}
	}
	return all
}

// FirewallRules lists the rules of n's iptables, ip6tables and nftables.
func (n *NetNS) FirewallRules(ctx context.Context) (FirewallRules, error) {
	var (
		r   FirewallRules
		err error
	)
	if r.IPTables, err = n.iptablesRules(ctx, "iptables-save"); err != nil {
		return r, err
	}
	if r.IP6Tables, err = n.iptablesRules(ctx, "ip6tables-save"); err != nil {
		return r, err
	}
	r.NFT, err = n.nftRules(ctx)
	return r, err
}

// iptablesRules lists the rules ("-A chain …" lines) save prints in n.
func (n *NetNS) iptablesRules(ctx context.Context, save string) ([]string, error) {
	out, err := n.Command(ctx, save).Output()
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w", save, n.Name, err)
	}
	var rules []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "-A ") {
			rules = append(rules, sc.Text())
		}
	}
	return rules, sc.Err()
}

// nftRules lists the rules of every table in n, from the JSON listing,
// which tells rules apart from tables, chains and sets.
func (n *NetNS) nftRules(ctx context.Context) ([]string, error) {
	out, err := n.Command(ctx, "nft", "--json", "list", "ruleset").Output()
	if err != nil {
		return nil, fmt.Errorf("nft list ruleset in %s: %w", n.Name, err)
	}
	var ruleset struct {
		NFTables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &ruleset); err != nil {
		return nil, fmt.Errorf("nft list ruleset: %w", err)
	}
	var rules []string
	for _, obj := range ruleset.NFTables {
		if rule, ok := obj["rule"]; ok {
			rules = append(rules, string(rule))
		}
	}
	return rules, nil
}
