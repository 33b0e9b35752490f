package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"

	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/datapath/program"
	"github.com/bpfbridge/bpfbridge/datapath/topology"
	"github.com/bpfbridge/bpfbridge/ipam"
	"github.com/bpfbridge/bpfbridge/ipam/hostlocal"
)

// defaultBridge is the reference plugin's default bridge name.
const defaultBridge = "cni0"

// Plugin-specific CNI error codes (the spec reserves 100 and up); the
// host-local IPAM owns 100-109.
const (
	// errHostConflict: the node's links disagree with the config (an
	// existing bridge with another MTU, a foreign address on the bridge).
	errHostConflict uint = 110
	// errCheckFailed: CHECK found the attachment differs from prevResult.
	errCheckFailed uint = 111
	// errDatapath: the eBPF datapath could not be set up or changed
	// (bpffs, loading or attaching programs, maps).
	errDatapath uint = 112
)

// NetConf is the configuration of a bpfbridge network: every key of the
// reference bridge plugin, so existing configs work unchanged.
type NetConf struct {
	types.NetConf

	Bridge                    string      `json:"bridge"`
	IsGateway                 bool        `json:"isGateway"`
	IsDefaultGateway          bool        `json:"isDefaultGateway"`
	ForceAddress              bool        `json:"forceAddress"`
	IPMasq                    bool        `json:"ipMasq"`
	IPMasqBackend             *string     `json:"ipMasqBackend,omitempty"` // accepted, ignored: eBPF is our only backend
	MTU                       int         `json:"mtu"`
	HairpinMode               bool        `json:"hairpinMode"`
	PromiscMode               bool        `json:"promiscMode"`
	Vlan                      int         `json:"vlan"`
	VlanTrunk                 []VlanTrunk `json:"vlanTrunk,omitempty"`
	PreserveDefaultVlan       bool        `json:"preserveDefaultVlan"`
	MacSpoofChk               bool        `json:"macspoofchk"` // always on in bpfbridge
	EnableDad                 bool        `json:"enabledad"`
	DisableContainerInterface bool        `json:"disableContainerInterface"`
	PortIsolation             bool        `json:"portIsolation"`

	// Masquerade tunes ipMasq (bpfbridge's own keys, all optional).
	Masquerade struct {
		Exclude []string `json:"exclude"` // destination CIDRs never masqueraded
		Uplinks []string `json:"uplinks"` // instead of the routing table's
		// Address chooses the source address among the uplinks': one
		// address, or a list of at most one per family.
		Address   stringOrList `json:"address"`
		PortRange string       `json:"portRange"` // "1024-65535"
		// PrivilegedPorts lets portRange reach below 1024.
		PrivilegedPorts bool `json:"privilegedPorts"`
		// FlowsPerContainer is each container's guaranteed share of the
		// node's NAT table (node-wide; 0: the default).
		FlowsPerContainer int `json:"flowsPerContainer"`
		Timeouts          struct {
			TCP        int `json:"tcp"`
			TCPSyn     int `json:"tcpSyn"`
			TCPClosing int `json:"tcpClosing"`
			UDP        int `json:"udp"`
			ICMP       int `json:"icmp"`
		} `json:"timeouts"` // seconds
	} `json:"masquerade"`

	// Isolation is bpfbridge's: "network" (default), "container" or "none".
	Isolation string `json:"isolation"`
	// Trace writes the time of each phase of ADD and DEL to stderr, as
	// BPFBRIDGE_TRACE=1 does (package trace).
	Trace bool `json:"trace"`
	// Datapath says where the node's eBPF state lives and how programs
	// are attached; the defaults suit a node.
	Datapath struct {
		BPFFS  string `json:"bpffs"`
		Attach string `json:"attach"`
		// FastPath: unicast between endpoints of one bridge skips the
		// bridge (default true).
		FastPath *bool `json:"fastPath"`
		// Cgroup is the cgroup v2 directory the node-socket
		// port-mapping programs attach to (default: the cgroup2 root).
		Cgroup string `json:"cgroup"`
	} `json:"datapath"`

	// Args holds args.cni.mac and Mesos' port mappings; other keys are
	// ignored.
	Args struct {
		CNI struct {
			MAC string `json:"mac,omitempty"`
		} `json:"cni"`
		Mesos struct {
			NetworkInfo struct {
				PortMappings []mesosPortMapping `json:"port_mappings"`
			} `json:"network_info"`
		} `json:"org.apache.mesos"`
	} `json:"args"`
	RuntimeConfig struct {
		MAC string `json:"mac,omitempty"`
		// Bandwidth reaches bpfbridge when its entry declares the
		// "bandwidth" capability, as the chained bandwidth plugin's does:
		// an egress limit makes this endpoint's programs tcx links (see
		// bandwidthAttach).
		Bandwidth struct {
			EgressRate  uint64 `json:"egressRate"`
			EgressBurst uint64 `json:"egressBurst"`
		} `json:"bandwidth"`
		// PortMappings reach bpfbridge when its entry declares the
		// "portMappings" capability (portmap.go).
		PortMappings []cniPortMapping `json:"portMappings"`
	} `json:"runtimeConfig"`

	// trunk is VlanTrunk expanded into sorted, distinct VLAN IDs.
	trunk []int
	// masq is Masquerade, parsed; Network and Subnets are filled at ADD.
	masq datapath.Masquerade
	// ports are the port mappings of both forms, parsed.
	ports []datapath.PortMapping
}

// VlanTrunk is one entry of vlanTrunk: a single id or a minID-maxID range.
type VlanTrunk struct {
	MinID *int `json:"minID,omitempty"`
	MaxID *int `json:"maxID,omitempty"`
	ID    *int `json:"id,omitempty"`
}

// envArgs are the CNI_ARGS keys bpfbridge reads; IP is listed so that
// static-address requests meant for IPAM are not "unknown".
type envArgs struct {
	types.CommonArgs
	MAC types.UnmarshallableString `json:"mac,omitempty"`
	IP  types.UnmarshallableString `json:"ip,omitempty"`
}

// loadConf decodes and validates a network configuration. It checks what
// every verb relies on; checks that only matter when creating an attachment
// are in validateForAdd, so that DEL still cleans up after a config that ADD
// rejected.
func loadConf(stdin []byte) (*NetConf, error) {
	conf := &NetConf{Bridge: defaultBridge}
	var err error
	if err = json.Unmarshal(stdin, conf); err != nil {
		return nil, decodeError(err)
	}
	// A config without cniVersion is 0.1.0; libcni passes it on as "".
	if conf.CNIVersion == "" {
		conf.CNIVersion = "0.1.0"
	}
	if conf.IsDefaultGateway {
		conf.IsGateway = true
	}
	if conf.MTU < 0 || conf.MTU > 65535 {
		return nil, invalidConf("\"mtu\": %d is out of range (0-65535)", conf.MTU)
	}
	if conf.Vlan < 0 || conf.Vlan > 4094 {
		return nil, invalidConf("\"vlan\": %d is out of range (0-4094)", conf.Vlan)
	}
	if conf.Isolation == "" {
		conf.Isolation = "network"
	}
	if _, ok := datapath.ParseIsolation(conf.Isolation); !ok {
		return nil, invalidConf("\"isolation\": %q is not one of \"network\", \"container\", \"none\"", conf.Isolation)
	}
	if _, ok := datapath.ParseAttachMode(conf.attachName()); !ok {
		return nil, invalidConf("\"datapath.attach\" (or %s): %q is not one of \"legacy\", \"tcx\"",
			envAttach, conf.attachName())
	}
	if err := conf.bandwidthAttach(); err != nil {
		return nil, err
	}
	if conf.masq, err = parseMasquerade(conf); err != nil {
		return nil, err
	}
	if conf.ports, err = parsePortMappings(conf); err != nil {
		return nil, err
	}
	trunk, err := expandTrunk(conf.VlanTrunk)
	if err != nil {
		return nil, err
	}
	conf.trunk = trunk
	return conf, nil
}

// bandwidthAttach attaches with tcx an endpoint the runtime gives an
// egress limit. The chained bandwidth plugin shapes egress with an
// `ingress` qdisc (handle ffff:) that it creates exclusively on the host
// veth, and a clsact qdisc, which legacy attachment needs, holds that
// handle: the two cannot share a veth, while tcx needs no qdisc. Legacy
// stays the default for every other endpoint because a tcx attach waits
// for an RCU grace period under RTNL (README, "Attach modes"). A config
// that insists on legacy gets a clear error here instead of bandwidth's
// "file exists".
func (c *NetConf) bandwidthAttach() error {
	bw := c.RuntimeConfig.Bandwidth
	if bw.EgressRate == 0 && bw.EgressBurst == 0 {
		return nil
	}
	if c.Datapath.Attach == datapath.AttachLegacy.String() {
		return invalidConf("\"datapath.attach\": \"legacy\" cannot carry runtimeConfig.bandwidth's egress limit " +
			"(the bandwidth plugin's ingress qdisc and bpfbridge's clsact both need handle ffff:): use \"tcx\" or leave it unset")
	}
	c.Datapath.Attach = datapath.AttachTCX.String()
	return nil
}

// Link MTU minimums: the kernel's (ETH_MIN_MTU, also IPv4's minimum) and
// IPv6's. A link below 1280 loses IPv6 altogether, so a network with IPv6
// addresses needs at least 1280; an IPv4-only or L2-only network may go
// down to 68.
const (
	minMTU     = 68
	minMTUIPv6 = 1280
)

// maxAddrsPerFamily is how many addresses of each family the datapath's
// endpoint record holds (MAX_IPV4 and MAX_IPV6 in bpf/endpoint.h).
var maxAddrsPerFamily = struct{ ipv4, ipv6 int }{
	len(program.BpfbridgeEndpoint{}.Ipv4), len(program.BpfbridgeEndpoint{}.Ipv6),
}

// validateForAdd rejects configs that cannot be honoured, before anything is
// created.
func (c *NetConf) validateForAdd() error {
	if why := badLinkName(c.Bridge); why != "" {
		return invalidConf("\"bridge\": %q is not a valid interface name: %s", c.Bridge, why)
	}
	// The datapath mounts a bpffs there when none is: never relative to
	// wherever the runtime happens to run the plugin.
	if c.Datapath.BPFFS != "" && !filepath.IsAbs(c.Datapath.BPFFS) {
		return invalidConf("\"datapath.bpffs\": %q is not an absolute path", c.Datapath.BPFFS)
	}
	if env := os.Getenv(envBPFFS); c.Datapath.BPFFS == "" && env != "" && !filepath.IsAbs(env) {
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("%s=%q is not an absolute path", envBPFFS, env), "")
	}
	if c.Vlan != 0 && c.IsGateway {
		if name := topology.VlanGatewayName(c.Bridge, c.Vlan); badLinkName(name) != "" {
			return invalidConf("\"bridge\": %q with \"vlan\": %d and \"isGateway\": the gateway link would be %q, longer than an interface name may be",
				c.Bridge, c.Vlan, name)
		}
	}
	if c.MTU != 0 && c.MTU < minMTU {
		return invalidConf("\"mtu\": %d is below the minimum of %d", c.MTU, minMTU)
	}
	if c.IPMasq && c.IPAM.Type == "" {
		return invalidConf("\"ipMasq\": true needs \"ipam\": a network without addresses has nothing to masquerade")
	}
	if c.HairpinMode && c.PromiscMode {
		return invalidConf("\"hairpinMode\": true and \"promiscMode\": true cannot be set together")
	}
	if c.DisableContainerInterface && c.IPAM.Type != "" {
		return invalidConf("\"disableContainerInterface\": true cannot be used with \"ipam\" (type %q): addresses need the interface up", c.IPAM.Type)
	}
	if c.IPAM.Type == "" {
		// Results before 0.3.0 can only carry addresses (ip4/ip6).
		if ok, _ := version.GreaterThanOrEqualTo(c.CNIVersion, "0.3.0"); !ok {
			return invalidConf("\"ipam\" is required with \"cniVersion\": %q: its results carry only addresses", c.CNIVersion)
		}
	}
	return nil
}

// containerMAC resolves the container interface's MAC address; the
// precedence is runtimeConfig.mac, then args.cni.mac, then CNI_ARGS MAC, as
// in the reference plugin. It returns "" when none is set.
func (c *NetConf) containerMAC(cniArgs string) (string, error) {
	for _, src := range []struct{ key, value string }{
		{"runtimeConfig.mac", c.RuntimeConfig.MAC},
		{"args.cni.mac", c.Args.CNI.MAC},
	} {
		if src.value == "" {
			continue
		}
		if why := badMAC(src.value); why != "" {
			return "", invalidConf("%q: %q is not %s", src.key, src.value, why)
		}
		return src.value, nil
	}
	var env envArgs
	if err := types.LoadArgs(cniArgs, &env); err != nil {
		return "", types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_ARGS %q: %v", cniArgs, err), "")
	}
	if mac := string(env.MAC); mac != "" {
		if why := badMAC(mac); why != "" {
			return "", types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_ARGS MAC=%q is not %s", mac, why), "")
		}
		return mac, nil
	}
	return "", nil
}

// badMAC says why s cannot be a container's MAC address, or returns "".
// net.ParseMAC also accepts 8- and 20-byte (EUI-64, InfiniBand) addresses,
// and a veth takes neither those nor a group or all-zero address.
func badMAC(s string) string {
	mac, err := net.ParseMAC(s)
	switch {
	case err != nil:
		return "a MAC address"
	case len(mac) != 6:
		return fmt.Sprintf("a 6-byte Ethernet address (it has %d bytes)", len(mac))
	case bytes.Equal(mac, make(net.HardwareAddr, 6)):
		return "a unicast address: it is all zeros"
	case bytes.Equal(mac, bytes.Repeat([]byte{0xff}, 6)):
		return "a unicast address: it is the broadcast address"
	case mac[0]&1 != 0:
		return "a unicast address: it is a multicast address"
	}
	return ""
}

// badLinkName says why name cannot name a link the plugin creates, or
// returns "": the CNI rules (1-15 bytes, not "." or "..", no "/", ":" or
// whitespace) and the names of the kernel's per-family defaults
// (net.ipv4.conf.all, .default), which no link can take.
func badLinkName(name string) string {
	if err := utils.ValidateInterfaceName(name); err != nil {
		return err.Msg
	}
	if name == "all" || name == "default" {
		return "the kernel reserves it for its per-interface settings"
	}
	return ""
}

// validateIPAM checks, before anything is created, what can be known of
// the addresses an ADD will get: that the IPAM plugin exists and, for the
// built-in host-local, its whole config, the number of addresses per
// family and the default route. Other IPAM types are checked on their
// result by checkAddresses.
func (c *NetConf) validateIPAM(args *skel.CmdArgs) error {
	if c.IPAM.Type == "" {
		return nil
	}
	if c.IPAM.Type != ipam.HostLocal {
		path := os.Getenv("CNI_PATH")
		if _, err := invoke.FindInPath(c.IPAM.Type, filepath.SplitList(path)); err != nil {
			return invalidConf("\"ipam.type\": %q: no such plugin in CNI_PATH %q", c.IPAM.Type, path)
		}
		return nil
	}
	plan, err := hostlocal.PlanAdd(args)
	if err != nil {
		return err
	}
	for i, r := range plan.Routes {
		if ones, _ := r.Dst.Mask.Size(); ones == 0 && r.GW == nil && c.IsDefaultGateway {
			return invalidConf("\"ipam.routes[%d]\": %q is a default route, and \"isDefaultGateway\": true adds another", i, r.Dst.String())
		}
		// Routes go on the container's interface, so their gateway must
		// be on one of its subnets.
		if gw, ok := netip.AddrFromSlice(r.GW); ok && !slices.ContainsFunc(plan.Subnets, func(p netip.Prefix) bool { return p.Contains(gw.Unmap()) }) {
			return invalidConf("\"ipam.routes[%d].gw\": %q is on none of the network's subnets %v: the container cannot reach it", i, r.GW.String(), plan.Subnets)
		}
	}
	return c.checkFamilies("\"ipam\"", plan.IPv4, plan.IPv6)
}

// checkAddresses applies checkFamilies to the addresses an IPAM plugin
// returned.
func (c *NetConf) checkAddresses(ips []*current.IPConfig) error {
	var v4, v6 int
	for _, ipc := range ips {
		if ipc.Address.IP.To4() != nil {
			v4++
		} else {
			v6++
		}
	}
	return c.checkFamilies(fmt.Sprintf("\"ipam\" (type %q)", c.IPAM.Type), v4, v6)
}

// checkFamilies refuses more addresses per family than the datapath holds
// and IPv6 addresses on a link whose MTU cannot carry IPv6.
func (c *NetConf) checkFamilies(source string, v4, v6 int) error {
	if v4 > maxAddrsPerFamily.ipv4 || v6 > maxAddrsPerFamily.ipv6 {
		return invalidConf("%s gives %d IPv4 and %d IPv6 addresses: the datapath holds at most %d and %d per attachment",
			source, v4, v6, maxAddrsPerFamily.ipv4, maxAddrsPerFamily.ipv6)
	}
	if v6 > 0 && c.MTU != 0 && c.MTU < minMTUIPv6 {
		return invalidConf("\"mtu\": %d is below IPv6's minimum of %d, and %s gives IPv6 addresses", c.MTU, minMTUIPv6, source)
	}
	return nil
}

// prevResult returns the result of the previous plugin in a chain, or nil.
func (c *NetConf) prevResult() (*current.Result, error) {
	if c.RawPrevResult == nil {
		return nil, nil
	}
	if err := version.ParsePrevResult(&c.NetConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("\"prevResult\": %v", err), "")
	}
	prev, err := current.NewResultFromResult(c.PrevResult)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("\"prevResult\": %v", err), "")
	}
	return prev, nil
}

// portConfig is how the container's host-side veth joins the bridge.
func (c *NetConf) portConfig() topology.PortConfig {
	return topology.PortConfig{
		Hairpin:             c.HairpinMode,
		Isolated:            c.PortIsolation,
		Vlan:                c.Vlan,
		Trunk:               c.trunk,
		PreserveDefaultVlan: c.PreserveDefaultVlan,
	}
}

// bridgeConfig is the desired state of the network's bridge.
func (c *NetConf) bridgeConfig() topology.BridgeConfig {
	return topology.BridgeConfig{
		Name:          c.Bridge,
		MTU:           c.MTU,
		Promisc:       c.PromiscMode,
		VlanFiltering: c.Vlan != 0 || len(c.trunk) > 0,
		PinMAC:        c.IsGateway,
	}
}

// parseMasquerade validates the masquerade keys.
func parseMasquerade(c *NetConf) (datapath.Masquerade, error) {
	m := c.Masquerade
	out := datapath.Masquerade{Uplinks: m.Uplinks}
	// Checked before anything is written: an ADD must not fill the
	// node's map part way and fail.
	if len(m.Exclude) >= datapath.MaxNATExcludes {
		return out, invalidConf("\"masquerade.exclude\": %d entries, more than the node's masquerade exclusion map holds (%d, the network's own subnets included)", len(m.Exclude), datapath.MaxNATExcludes)
	}
	for i, cidr := range m.Exclude {
		p, err := netip.ParsePrefix(cidr)
		if err != nil {
			return out, invalidConf("\"masquerade.exclude[%d]\": %q is not a CIDR", i, cidr)
		}
		out.Exclude = append(out.Exclude, p)
	}
	if m.PortRange != "" {
		lo, hi, _ := strings.Cut(m.PortRange, "-")
		min, err1 := strconv.ParseUint(lo, 10, 16)
		max, err2 := strconv.ParseUint(hi, 10, 16)
		if err1 != nil || err2 != nil || min == 0 || min > max {
			return out, invalidConf("\"masquerade.portRange\": %q is not a port range like \"1024-65535\"", m.PortRange)
		}
		// A translated source port below 1024 looks to the remote like
		// a privileged (root) client: only on request.
		if min < 1024 && !m.PrivilegedPorts {
			return out, invalidConf("\"masquerade.portRange\": %q includes privileged ports (below 1024); set \"masquerade.privilegedPorts\": true to allow them", m.PortRange)
		}
		out.PortMin, out.PortMax = uint16(min), uint16(max)
	}
	if v := m.FlowsPerContainer; v < 0 || v > datapath.MaxNATFlowsPerContainer {
		return out, invalidConf("\"masquerade.flowsPerContainer\": %d is not between 0 (the default, %d) and %d", v, datapath.DefaultNATFlowsPerContainer, datapath.MaxNATFlowsPerContainer)
	}
	out.FlowsPerContainer = uint32(m.FlowsPerContainer)
	t := m.Timeouts
	for key, v := range map[string]int{"tcp": t.TCP, "tcpSyn": t.TCPSyn, "tcpClosing": t.TCPClosing, "udp": t.UDP, "icmp": t.ICMP} {
		if v < 0 {
			return out, invalidConf("\"masquerade.timeouts.%s\": %d is negative", key, v)
		}
		// The datapath keeps timeouts as 32-bit seconds.
		if v > math.MaxUint32 {
			return out, invalidConf("\"masquerade.timeouts.%s\": %d is above the maximum of %d seconds", key, v, uint32(math.MaxUint32))
		}
	}
	for i, a := range m.Address {
		addr, err := netip.ParseAddr(a)
		if err != nil || addr.Zone() != "" {
			return out, invalidConf("\"masquerade.address[%d]\": %q is not an IP address", i, a)
		}
		addr = addr.Unmap()
		if slices.ContainsFunc(out.Address, func(b netip.Addr) bool { return b.Is4() == addr.Is4() }) {
			return out, invalidConf("\"masquerade.address[%d]\": %q is a second address of its family (one per family)", i, a)
		}
		out.Address = append(out.Address, addr)
	}
	sec := func(v int) time.Duration { return time.Duration(v) * time.Second }
	out.Timeouts = datapath.NATTimeouts{TCP: sec(t.TCP), TCPSyn: sec(t.TCPSyn), TCPClosing: sec(t.TCPClosing), UDP: sec(t.UDP), ICMP: sec(t.ICMP)}
	return out, nil
}

// stringOrList is a JSON string or list of strings.
type stringOrList []string

// UnmarshalJSON accepts "a" as ["a"].
func (l *stringOrList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*l = stringOrList{one}
		return nil
	}
	return json.Unmarshal(b, (*[]string)(l))
}

// expandTrunk turns vlanTrunk entries into sorted, distinct VLAN IDs.
func expandTrunk(entries []VlanTrunk) ([]int, error) {
	var vids []int
	for i, e := range entries {
		key := fmt.Sprintf("vlanTrunk[%d]", i)
		switch {
		case e.MinID != nil && e.MaxID != nil:
			if err := checkVid(key+".minID", *e.MinID); err != nil {
				return nil, err
			}
			if err := checkVid(key+".maxID", *e.MaxID); err != nil {
				return nil, err
			}
			if *e.MaxID < *e.MinID {
				return nil, invalidConf("%q: maxID %d is below minID %d", key, *e.MaxID, *e.MinID)
			}
			for v := *e.MinID; v <= *e.MaxID; v++ {
				vids = append(vids, v)
			}
		case e.MinID != nil || e.MaxID != nil:
			return nil, invalidConf("%q: minID and maxID must be set together", key)
		}
		if e.ID != nil {
			if err := checkVid(key+".id", *e.ID); err != nil {
				return nil, err
			}
			vids = append(vids, *e.ID)
		}
	}
	slices.Sort(vids)
	return slices.Compact(vids), nil
}

func checkVid(key string, v int) error {
	if v < 1 || v > 4094 {
		return invalidConf("%q: %d is out of range (1-4094)", key, v)
	}
	return nil
}

// decodeError names the offending key of a JSON decoding failure.
func decodeError(err error) error {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		return invalidConf("%q: expected %s, got JSON %s", typeErr.Field, typeErr.Type, typeErr.Value)
	}
	return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("network config is not valid JSON: %v", err), "")
}

func invalidConf(format string, args ...any) error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(format, args...), "")
}

// bridgeError gives the errors of setting up the bridge their CNI code: a
// VLAN config on a kernel whose bridge cannot filter VLANs is a config this
// node cannot honour (the kernel refuses the bridge, so nothing is left).
func (c *NetConf) bridgeError(err error) error {
	if errors.Is(err, unix.EOPNOTSUPP) && (c.Vlan != 0 || len(c.trunk) > 0) {
		key := fmt.Sprintf("\"vlan\": %d", c.Vlan)
		if c.Vlan == 0 {
			trunk, _ := json.Marshal(c.VlanTrunk)
			key = fmt.Sprintf("\"vlanTrunk\": %s", trunk)
		}
		return invalidConf("%s needs bridge VLAN filtering, which this kernel lacks: %v", key, err)
	}
	return hostError(err)
}

// hostError gives errors caused by the node's state their CNI code.
func hostError(err error) error {
	var conflict *topology.ConflictError
	if errors.As(err, &conflict) {
		return types.NewError(errHostConflict, conflict.Msg, "")
	}
	return err
}
