package hostlocal

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/bpfbridge/bpfbridge/ipam/store"
)

// defaultDataDir is where the reference keeps its store; sharing it is what
// makes us a drop-in replacement.
const defaultDataDir = "/var/lib/cni/networks"

// config is the validated host-local view of a network config.
type config struct {
	name       string
	cniVersion string
	dataDir    string
	resolvConf string
	sets       []rangeSet
	routes     []*types.Route
	requests   []request
	valid      []store.Attachment // GC only: cni.dev/valid-attachments
	prevResult map[string]any     // CHECK only, parsed there
}

// request is a statically requested address and the key it came from.
type request struct {
	ip  netip.Addr
	key string
}

// netConf is the part of the network config host-local reads. Every other
// key, including unknown ones under args (Mesos sends org.apache.mesos), is
// ignored.
type netConf struct {
	CNIVersion string    `json:"cniVersion"`
	Name       string    `json:"name"`
	IPAM       *ipamConf `json:"ipam"`
	Args       struct {
		CNI struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args"`
	RuntimeConfig struct {
		IPRanges [][]rangeConf `json:"ipRanges"`
		IPs      []string      `json:"ips"`
	} `json:"runtimeConfig"`
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments"`
	PrevResult       map[string]any       `json:"prevResult"`
}

type ipamConf struct {
	rangeConf                    // the legacy single range at the top level
	Ranges     [][]rangeConf     `json:"ranges"`
	Routes     []json.RawMessage `json:"routes"`
	DataDir    string            `json:"dataDir"`
	ResolvConf string            `json:"resolvConf"`
}

type rangeConf struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart"`
	RangeEnd   string `json:"rangeEnd"`
	Gateway    string `json:"gateway"`
}

// envArgs is the CNI_ARGS host-local understands. types.LoadArgs rejects
// other keys unless IgnoreUnknown=1.
type envArgs struct {
	types.CommonArgs
	IP addrList
}

// addrList is a comma-separated list of addresses, each optionally with a
// prefix length, which is dropped.
type addrList []string

// UnmarshalText implements encoding.TextUnmarshaler for types.LoadArgs; the
// values are parsed later, where errors can name their key.
func (l *addrList) UnmarshalText(text []byte) error {
	*l = strings.Split(string(text), ",")
	return nil
}

// loadConfig parses and validates the network config and CNI_ARGS. It checks
// everything that does not depend on the store, so a bad config fails before
// any file is touched.
func loadConfig(data []byte, cniArgs string) (*config, error) {
	var n netConf
	if err := json.Unmarshal(data, &n); err != nil {
		return nil, newError(types.ErrDecodingFailure, "decoding network config: %v", err)
	}
	if n.Name == "" {
		return nil, newError(types.ErrInvalidNetworkConfig, "name is missing")
	}
	// The name becomes a directory: refuse anything like "../x".
	if err := utils.ValidateNetworkName(n.Name); err != nil {
		return nil, newError(types.ErrInvalidNetworkConfig, "name %q: %s", n.Name, err.Msg)
	}
	if n.IPAM == nil {
		return nil, newError(types.ErrInvalidNetworkConfig, "ipam is missing")
	}
	c := &config{
		name:       n.Name,
		cniVersion: n.CNIVersion,
		dataDir:    n.IPAM.DataDir,
		resolvConf: n.IPAM.ResolvConf,
		prevResult: n.PrevResult,
	}
	if c.cniVersion == "" {
		c.cniVersion = "0.1.0"
	}
	if c.dataDir == "" {
		c.dataDir = defaultDataDir
	}
	for _, a := range n.ValidAttachments {
		c.valid = append(c.valid, store.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	var err error
	if c.sets, err = loadRangeSets(&n); err != nil {
		return nil, err
	}
	if err := checkAddressesPerFamily(c.cniVersion, c.sets); err != nil {
		return nil, err
	}
	if c.routes, err = loadRoutes(n.IPAM.Routes); err != nil {
		return nil, err
	}
	if c.requests, err = loadRequests(&n, cniArgs); err != nil {
		return nil, err
	}
	return c, nil
}

// loadRangeSets collects the range sets in the reference's order, which
// fixes their last_reserved_ip indexes: runtimeConfig.ipRanges, then the
// legacy top-level range, then ipam.ranges.
func loadRangeSets(n *netConf) ([]rangeSet, error) {
	sets, err := appendRangeSets(nil, "runtimeConfig.ipRanges", n.RuntimeConfig.IPRanges)
	if err != nil {
		return nil, err
	}
	// As in the reference, the legacy keys count only with a subnet.
	if n.IPAM.Subnet != "" {
		r, err := loadRange("ipam", n.IPAM.rangeConf)
		if err != nil {
			return nil, err
		}
		sets = append(sets, rangeSet{key: "ipam.subnet", ranges: []ipRange{r}})
	}
	if sets, err = appendRangeSets(sets, "ipam.ranges", n.IPAM.Ranges); err != nil {
		return nil, err
	}
	if len(sets) == 0 {
		return nil, newError(types.ErrInvalidNetworkConfig, "ipam.ranges is missing: set ipam.ranges or ipam.subnet")
	}
	for i := range sets {
		for j := range sets[:i] {
			if err := checkOverlap(&sets[j], &sets[i]); err != nil {
				return nil, err
			}
		}
	}
	return sets, nil
}

// appendRangeSets appends the range sets of the list at key to sets.
func appendRangeSets(sets []rangeSet, key string, list [][]rangeConf) ([]rangeSet, error) {
	for i, confs := range list {
		set, err := loadRangeSet(fmt.Sprintf("%s[%d]", key, i), confs)
		if err != nil {
			return nil, err
		}
		sets = append(sets, set)
	}
	return sets, nil
}

func loadRangeSet(key string, confs []rangeConf) (rangeSet, error) {
	set := rangeSet{key: key}
	if len(confs) == 0 {
		return set, newError(types.ErrInvalidNetworkConfig, "%s is empty", key)
	}
	for i, rc := range confs {
		r, err := loadRange(fmt.Sprintf("%s[%d]", key, i), rc)
		if err != nil {
			return set, err
		}
		if len(set.ranges) > 0 && set.ranges[0].subnet.Addr().Is4() != r.subnet.Addr().Is4() {
			first := set.ranges[0]
			return set, newError(types.ErrInvalidNetworkConfig, "%s.subnet %q is not of the address family of %s.subnet %q: a range set has one family",
				r.key, r.subnet, first.key, first.subnet)
		}
		set.ranges = append(set.ranges, r)
	}
	if err := checkOverlap(&set, &set); err != nil {
		return set, err
	}
	return set, nil
}

// checkOverlap rejects overlapping ranges between a and b, or within a when
// b is a.
func checkOverlap(a, b *rangeSet) error {
	for i := range b.ranges {
		for j := range a.ranges {
			if a == b && j >= i {
				break
			}
			if ra, rb := &a.ranges[j], &b.ranges[i]; ra.overlaps(rb) {
				return newError(types.ErrInvalidNetworkConfig, "%s (%s-%s) overlaps %s (%s-%s)",
					rb.key, rb.start, rb.end, ra.key, ra.start, ra.end)
			}
		}
	}
	return nil
}

// loadRange validates one range and fills in the reference's defaults:
// gateway = subnet+1, rangeStart = subnet+1 (the gateway is skipped when
// allocating), rangeEnd = the last address, for IPv4 the one before the
// broadcast address.
func loadRange(key string, rc rangeConf) (ipRange, error) {
	r := ipRange{key: key}
	if rc.Subnet == "" {
		return r, newError(types.ErrInvalidNetworkConfig, "%s.subnet is missing", key)
	}
	subnet, err := netip.ParsePrefix(rc.Subnet)
	if err != nil || subnet.Addr().Is4In6() {
		return r, newError(types.ErrInvalidNetworkConfig, "%s.subnet %q is not an IPv4 or IPv6 CIDR", key, rc.Subnet)
	}
	// A /0 is every address of the family, the node's own included: there
	// is no network to put containers in (and no room for a default route).
	if subnet.Bits() == 0 {
		return r, newError(types.ErrInvalidNetworkConfig, "%s.subnet %q covers every address of its family", key, rc.Subnet)
	}
	if subnet.Masked() != subnet {
		return r, newError(types.ErrInvalidNetworkConfig, "%s.subnet %q has host bits set: the network address is %s",
			key, rc.Subnet, subnet.Masked())
	}
	// A /31 or /32 (/127, /128) has no address left once the network address
	// (and for IPv4 broadcast) is excluded.
	if bits := subnet.Addr().BitLen(); subnet.Bits() > bits-2 {
		return r, newError(types.ErrInvalidNetworkConfig, "%s.subnet %q is too small: the longest prefix is /%d",
			key, rc.Subnet, bits-2)
	}
	r.subnet = subnet
	if r.gateway, err = loadAddr(key+".gateway", rc.Gateway, subnet, subnet.Addr().Next()); err != nil {
		return r, err
	}
	if r.start, err = loadAddr(key+".rangeStart", rc.RangeStart, subnet, subnet.Addr().Next()); err != nil {
		return r, err
	}
	if r.end, err = loadAddr(key+".rangeEnd", rc.RangeEnd, subnet, lastAddr(subnet)); err != nil {
		return r, err
	}
	if r.end.Less(r.start) {
		return r, newError(types.ErrInvalidNetworkConfig, "%s.rangeEnd %q is before %s.rangeStart %q",
			key, r.end, key, r.start)
	}
	return r, nil
}

// loadAddr parses an address that must lie in subnet, or returns def if s
// is empty.
func loadAddr(key, s string, subnet netip.Prefix, def netip.Addr) (netip.Addr, error) {
	if s == "" {
		return def, nil
	}
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Zone() != "" {
		return ip, newError(types.ErrInvalidNetworkConfig, "%s %q is not an IP address", key, s)
	}
	ip = ip.Unmap()
	if !subnet.Contains(ip) {
		return ip, newError(types.ErrInvalidNetworkConfig, "%s %q is outside subnet %q", key, s, subnet)
	}
	return ip, nil
}

// lastAddr is the last usable address of p: the last one for IPv6, the one
// before the broadcast address for IPv4.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := range b {
		if netBits := p.Bits() - i*8; netBits < 8 {
			b[i] |= 0xff >> max(netBits, 0)
		}
	}
	last, _ := netip.AddrFromSlice(b)
	if last.Is4() {
		return last.Prev()
	}
	return last
}

// checkAddressesPerFamily enforces that results before 0.3.0 hold one IPv4
// and one IPv6 address at most.
func checkAddressesPerFamily(cniVersion string, sets []rangeSet) error {
	ok, err := version.GreaterThanOrEqualTo(cniVersion, "0.3.0")
	if err != nil {
		return newError(types.ErrDecodingFailure, "cniVersion %q: %v", cniVersion, err)
	}
	if ok {
		return nil
	}
	seen := map[bool]string{}
	for _, s := range sets {
		is4 := s.ranges[0].subnet.Addr().Is4()
		if prev, dup := seen[is4]; dup {
			return newError(types.ErrInvalidNetworkConfig, "%s and %s are of one address family, which cniVersion %q cannot return: use 0.3.0 or later",
				prev, s.key, cniVersion)
		}
		seen[is4] = s.key
	}
	return nil
}

// loadRoutes decodes ipam.routes, checking dst and gw first so that errors
// name the route.
func loadRoutes(raw []json.RawMessage) ([]*types.Route, error) {
	var routes []*types.Route
	seen := map[string]string{} // routeID → key of its first route
	for i, msg := range raw {
		key := fmt.Sprintf("ipam.routes[%d]", i)
		var rc struct {
			Dst *string `json:"dst"`
			GW  *string `json:"gw"`
		}
		if err := json.Unmarshal(msg, &rc); err != nil {
			return nil, newError(types.ErrDecodingFailure, "%s: %v", key, err)
		}
		if rc.Dst == nil {
			return nil, newError(types.ErrInvalidNetworkConfig, "%s.dst is missing", key)
		}
		if _, _, err := net.ParseCIDR(*rc.Dst); err != nil {
			return nil, newError(types.ErrInvalidNetworkConfig, "%s.dst %q is not a CIDR", key, *rc.Dst)
		}
		if rc.GW != nil && net.ParseIP(*rc.GW) == nil {
			return nil, newError(types.ErrInvalidNetworkConfig, "%s.gw %q is not an IP address", key, *rc.GW)
		}
		route := &types.Route{}
		if err := json.Unmarshal(msg, route); err != nil {
			return nil, newError(types.ErrDecodingFailure, "%s: %v", key, err)
		}
		// The kernel refuses both; caught here, the error names the route.
		if route.GW != nil && (route.GW.To4() == nil) != (route.Dst.IP.To4() == nil) {
			return nil, newError(types.ErrInvalidNetworkConfig, "%s.gw %q is not of the address family of %s.dst %q",
				key, *rc.GW, key, *rc.Dst)
		}
		// Routes to one destination via different gateways are ECMP; the
		// same route twice is refused by the kernel.
		id := routeID(route)
		if first, dup := seen[id]; dup {
			return nil, newError(types.ErrInvalidNetworkConfig, "%s (dst %q) repeats %s: the same route twice",
				key, *rc.Dst, first)
		}
		seen[id] = key
		routes = append(routes, route)
	}
	return routes, nil
}

// routeID identifies a route as the kernel does: destination, gateway,
// priority and table.
func routeID(r *types.Route) string {
	id := fmt.Sprintf("%s via %s metric %d", r.Dst.String(), r.GW, r.Priority)
	if r.Table != nil {
		id += fmt.Sprintf(" table %d", *r.Table)
	}
	return id
}

// Plan is what an ADD with a config would allocate, known before anything
// is allocated.
type Plan struct {
	// IPv4 and IPv6 count the addresses ADD returns per family: one per
	// range set.
	IPv4, IPv6 int
	// Subnets are the subnets of every range, where the addresses come
	// from.
	Subnets []netip.Prefix
	// Routes are ipam.routes.
	Routes []*types.Route
}

// PlanAdd validates the config and CNI_ARGS of args as Add does, without
// touching the store, so that the calling plugin can refuse a config it
// cannot honour before it creates anything.
func PlanAdd(args *skel.CmdArgs) (Plan, error) {
	c, _, err := load(args)
	if err != nil {
		return Plan{}, err
	}
	if _, err := c.assign(); err != nil {
		return Plan{}, err
	}
	p := Plan{Routes: c.routes}
	for _, s := range c.sets {
		if s.ranges[0].subnet.Addr().Is4() {
			p.IPv4++
		} else {
			p.IPv6++
		}
		for _, r := range s.ranges {
			p.Subnets = append(p.Subnets, r.subnet)
		}
	}
	return p, nil
}

// loadRequests gathers statically requested addresses in the reference's
// order, CNI_ARGS IP, args.cni.ips, runtimeConfig.ips, dropping repeats.
func loadRequests(n *netConf, cniArgs string) ([]request, error) {
	var env envArgs
	if err := types.LoadArgs(cniArgs, &env); err != nil {
		return nil, newError(types.ErrInvalidEnvironmentVariables, "CNI_ARGS %q: %v", cniArgs, err)
	}
	var reqs []request
	seen := map[netip.Addr]bool{}
	add := func(key, s string, code uint) error {
		ip, err := parseRequest(s)
		if err != nil {
			return newError(code, "%s %q is not an IP address", key, s)
		}
		if !seen[ip] {
			seen[ip] = true
			reqs = append(reqs, request{ip: ip, key: fmt.Sprintf("%s %q", key, s)})
		}
		return nil
	}
	for _, s := range env.IP {
		if err := add("CNI_ARGS IP", s, types.ErrInvalidEnvironmentVariables); err != nil {
			return nil, err
		}
	}
	for i, s := range n.Args.CNI.IPs {
		if err := add(fmt.Sprintf("args.cni.ips[%d]", i), s, types.ErrInvalidNetworkConfig); err != nil {
			return nil, err
		}
	}
	for i, s := range n.RuntimeConfig.IPs {
		if err := add(fmt.Sprintf("runtimeConfig.ips[%d]", i), s, types.ErrInvalidNetworkConfig); err != nil {
			return nil, err
		}
	}
	return reqs, nil
}

// parseRequest accepts "ip" or "ip/prefix", as the reference does.
func parseRequest(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr().Unmap(), nil
	}
	ip, err := netip.ParseAddr(s)
	if err == nil && ip.Zone() != "" {
		err = fmt.Errorf("zone not allowed")
	}
	return ip.Unmap(), err
}

// assign maps each request to the range set containing it, returning one
// address per set (the zero Addr where the set allocates freely).
func (c *config) assign() ([]netip.Addr, error) {
	out := make([]netip.Addr, len(c.sets))
	owner := make([]string, len(c.sets))
	for _, req := range c.requests {
		i := c.setOf(req.ip)
		if i < 0 {
			return nil, newError(types.ErrInvalidNetworkConfig, "%s is outside every range of network %q", req.key, c.name)
		}
		if r := c.sets[i].find(req.ip); req.ip == r.gateway {
			return nil, newError(types.ErrInvalidNetworkConfig, "%s is the gateway of %s", req.key, r.key)
		}
		if out[i].IsValid() {
			return nil, newError(types.ErrInvalidNetworkConfig, "%s and %s both fall in %s, which yields one address",
				owner[i], req.key, c.sets[i].key)
		}
		out[i], owner[i] = req.ip, req.key
	}
	return out, nil
}

// setOf returns the index of the range set containing ip, or -1.
func (c *config) setOf(ip netip.Addr) int {
	for i := range c.sets {
		if c.sets[i].find(ip) != nil {
			return i
		}
	}
	return -1
}
