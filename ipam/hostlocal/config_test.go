package hostlocal

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestInvalidConfigs(t *testing.T) {
	v4 := `"ranges": [[{"subnet": "10.0.0.0/24"}]]`
	tests := []struct {
		name    string
		conf    string // the whole config, instead of network(ipam, top)
		ipam    string // ipam members, used when conf is empty
		top     []string
		cniArgs string
		id      string
		code    uint
		msg     []string
	}{
		{name: "bad JSON", conf: `{"name": "net", "ipam": {`, code: types.ErrDecodingFailure, msg: []string{"decoding network config"}},
		{name: "missing name", conf: `{"cniVersion": "1.0.0", "ipam": {"subnet": "10.0.0.0/24"}}`, code: types.ErrInvalidNetworkConfig, msg: []string{"name is missing"}},
		{name: "name with slash", conf: `{"cniVersion": "1.0.0", "name": "../x", "ipam": {"subnet": "10.0.0.0/24"}}`, code: types.ErrInvalidNetworkConfig, msg: []string{`name "../x"`}},
		{name: "missing ipam", conf: `{"cniVersion": "1.0.0", "name": "net"}`, code: types.ErrInvalidNetworkConfig, msg: []string{"ipam is missing"}},
		{name: "missing ranges", ipam: `"routes": []`, code: types.ErrInvalidNetworkConfig, msg: []string{"ipam.ranges is missing"}},
		{name: "empty range set", ipam: `"ranges": [[]]`, code: types.ErrInvalidNetworkConfig, msg: []string{"ipam.ranges[0] is empty"}},
		{name: "subnet missing in range", ipam: `"ranges": [[{"rangeStart": "10.0.0.5"}]]`, code: types.ErrInvalidNetworkConfig, msg: []string{"ipam.ranges[0][0].subnet is missing"}},
		{name: "subnet not a CIDR", ipam: `"ranges": [[{"subnet": "10.0.0.0"}]]`, code: types.ErrInvalidNetworkConfig, msg: []string{`ipam.ranges[0][0].subnet "10.0.0.0"`}},
		{name: "host bits set", ipam: `"ranges": [[{"subnet": "10.0.0.1/24"}]]`, code: types.ErrInvalidNetworkConfig,
			msg: []string{`ipam.ranges[0][0].subnet "10.0.0.1/24" has host bits set`, "10.0.0.0/24"}},
		{name: "IPv4 /31", ipam: `"ranges": [[{"subnet": "10.0.0.0/31"}]]`, code: types.ErrInvalidNetworkConfig, msg: []string{`ipam.ranges[0][0].subnet "10.0.0.0/31" is too small`, "/30"}},
		{name: "IPv4 /32", ipam: `"subnet": "10.0.0.0/32"`, code: types.ErrInvalidNetworkConfig, msg: []string{`ipam.subnet "10.0.0.0/32" is too small`}},
		{name: "IPv6 /127", ipam: `"ranges": [[{"subnet": "fd00::/127"}]]`, code: types.ErrInvalidNetworkConfig, msg: []string{`"fd00::/127" is too small`, "/126"}},
		{name: "rangeStart outside subnet", ipam: `"ranges": [[{"subnet": "9.0.1.0/25", "rangeStart": "10.1.0.5"}]]`, code: types.ErrInvalidNetworkConfig,
			msg: []string{`ipam.ranges[0][0].rangeStart "10.1.0.5" is outside subnet "9.0.1.0/25"`}},
		{name: "legacy rangeEnd outside subnet", ipam: `"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.5"`, code: types.ErrInvalidNetworkConfig,
			msg: []string{`ipam.rangeEnd "10.0.1.5" is outside subnet "10.0.0.0/24"`}},
		{name: "rangeStart not an IP", ipam: `"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0"}]]`, code: types.ErrInvalidNetworkConfig,
			msg: []string{`ipam.ranges[0][0].rangeStart "10.0.0" is not an IP address`}},
		{name: "rangeEnd before rangeStart", ipam: `"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.5"}]]`,
			code: types.ErrInvalidNetworkConfig, msg: []string{`ipam.ranges[0][0].rangeEnd "10.0.0.5" is before ipam.ranges[0][0].rangeStart "10.0.0.9"`}},
		{name: "gateway outside subnet", ipam: `"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}]]`, code: types.ErrInvalidNetworkConfig,
			msg: []string{`ipam.ranges[0][0].gateway "10.0.1.1" is outside subnet "10.0.0.0/24"`}},
		{name: "overlapping range sets", ipam: `"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/16"}]]`, code: types.ErrInvalidNetworkConfig,
			msg: []string{"ipam.ranges[1][0]", "overlaps ipam.ranges[0][0]"}},
		{name: "overlapping ranges in a set", ipam: `"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.100"}, {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.50"}]]`,
			code: types.ErrInvalidNetworkConfig, msg: []string{"ipam.ranges[0][1] (10.0.0.50-10.0.0.254) overlaps ipam.ranges[0][0] (10.0.0.1-10.0.0.100)"}},
		{name: "legacy overlaps ranges", ipam: `"subnet": "10.0.0.0/24", ` + v4, code: types.ErrInvalidNetworkConfig, msg: []string{"ipam.ranges[0][0]", "overlaps ipam"}},
		{name: "mixed families in a set", ipam: `"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]`, code: types.ErrInvalidNetworkConfig,
			msg: []string{`ipam.ranges[0][1].subnet "fd00::/64"`, "address family"}},
		{name: "runtimeConfig.ipRanges bad subnet", ipam: v4, top: []string{`"runtimeConfig": {"ipRanges": [[{"subnet": "10.2.0.0/33"}]]}`},
			code: types.ErrInvalidNetworkConfig, msg: []string{`runtimeConfig.ipRanges[0][0].subnet "10.2.0.0/33"`}},
		{name: "two IPv4 sets in 0.2.0", conf: `{"cniVersion": "0.2.0", "name": "net", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/24"}]]}}`,
			code: types.ErrInvalidNetworkConfig, msg: []string{"ipam.ranges[0] and ipam.ranges[1]", `cniVersion "0.2.0"`}},
		{name: "bad route dst", ipam: v4 + `, "routes": [{"dst": "10.0.0/8"}]`, code: types.ErrInvalidNetworkConfig, msg: []string{`ipam.routes[0].dst "10.0.0/8" is not a CIDR`}},
		{name: "bad route gw", ipam: v4 + `, "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "1.2.3"}]`, code: types.ErrInvalidNetworkConfig,
			msg: []string{`ipam.routes[1].gw "1.2.3" is not an IP address`}},
		{name: "IPv6 /0", ipam: `"ranges": [[{"subnet": "::/0"}]]`, code: types.ErrInvalidNetworkConfig, msg: []string{`ipam.ranges[0][0].subnet "::/0" covers every address`}},
		{name: "IPv4 /0", ipam: `"subnet": "0.0.0.0/0"`, code: types.ErrInvalidNetworkConfig, msg: []string{`ipam.subnet "0.0.0.0/0" covers every address`}},
		{name: "route gw of the other family", ipam: v4 + `, "routes": [{"dst": "0.0.0.0/0", "gw": "fd00::1"}]`, code: types.ErrInvalidNetworkConfig,
			msg: []string{`ipam.routes[0].gw "fd00::1" is not of the address family of ipam.routes[0].dst "0.0.0.0/0"`}},
		{name: "the same route twice", ipam: v4 + `, "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16"}, {"dst": "0.0.0.0/0"}]`, code: types.ErrInvalidNetworkConfig,
			msg: []string{`ipam.routes[2] (dst "0.0.0.0/0") repeats ipam.routes[0]`}},
		{name: "route without dst", ipam: v4 + `, "routes": [{"gw": "10.0.0.1"}]`, code: types.ErrInvalidNetworkConfig, msg: []string{"ipam.routes[0].dst is missing"}},
		{name: "unknown CNI_ARGS key", ipam: v4, cniArgs: "K8S_POD_NAME=x", code: types.ErrInvalidEnvironmentVariables, msg: []string{`CNI_ARGS "K8S_POD_NAME=x"`, "unknown"}},
		{name: "malformed CNI_ARGS", ipam: v4, cniArgs: "IP", code: types.ErrInvalidEnvironmentVariables, msg: []string{`CNI_ARGS "IP"`}},
		{name: "bad IP in CNI_ARGS", ipam: v4, cniArgs: "IP=10.0.0.300", code: types.ErrInvalidEnvironmentVariables, msg: []string{`CNI_ARGS IP "10.0.0.300" is not an IP address`}},
		{name: "bad IP in args.cni.ips", ipam: v4, top: []string{`"args": {"cni": {"ips": ["nope"]}}`}, code: types.ErrInvalidNetworkConfig, msg: []string{`args.cni.ips[0] "nope"`}},
		{name: "static IP is the gateway", ipam: v4, top: []string{`"args": {"cni": {"ips": ["10.0.0.1"]}}`}, code: types.ErrInvalidNetworkConfig,
			msg: []string{`args.cni.ips[0] "10.0.0.1" is the gateway of ipam.ranges[0][0]`}},
		{name: "static IP outside ranges", ipam: v4, cniArgs: "IP=192.168.0.5", code: types.ErrInvalidNetworkConfig,
			msg: []string{`CNI_ARGS IP "192.168.0.5" is outside every range of network "net"`}},
		{name: "two static IPs in one set", ipam: v4, cniArgs: "IP=10.0.0.5,10.0.0.6", code: types.ErrInvalidNetworkConfig,
			msg: []string{`CNI_ARGS IP "10.0.0.5" and CNI_ARGS IP "10.0.0.6" both fall in ipam.ranges[0]`}},
		{name: "bad container ID", ipam: v4, id: "a/b", code: types.ErrInvalidEnvironmentVariables, msg: []string{`CNI_CONTAINERID "a/b"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dataDir := t.TempDir()
			conf := []byte(tt.conf)
			if tt.conf == "" {
				conf = network(dataDir, tt.ipam, tt.top...)
			}
			id := tt.id
			if id == "" {
				id = "c1"
			}
			args := cmdArgs(conf, id, "eth0")
			args.Args = tt.cniArgs
			_, err := Add(args)
			wantCode(t, err, tt.code, tt.msg...)
			// A rejected config touches nothing.
			if entries, _ := os.ReadDir(dataDir); len(entries) != 0 {
				t.Errorf("data dir not empty after rejected ADD")
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	tests := []struct {
		name                   string
		ipam                   string
		subnet, start, end, gw string
	}{
		{name: "legacy IPv4", ipam: `"subnet": "10.0.0.0/24"`, subnet: "10.0.0.0/24", start: "10.0.0.1", end: "10.0.0.254", gw: "10.0.0.1"},
		{name: "ranges IPv4 /30", ipam: `"ranges": [[{"subnet": "10.0.0.0/30"}]]`, subnet: "10.0.0.0/30", start: "10.0.0.1", end: "10.0.0.2", gw: "10.0.0.1"},
		{name: "IPv6 keeps the last address", ipam: `"ranges": [[{"subnet": "fd00::/120"}]]`, subnet: "fd00::/120", start: "fd00::1", end: "fd00::ff", gw: "fd00::1"},
		{name: "explicit values", ipam: `"ranges": [[{"subnet": "10.0.0.0/16", "rangeStart": "10.0.1.10", "rangeEnd": "10.0.1.20", "gateway": "10.0.0.254"}]]`,
			subnet: "10.0.0.0/16", start: "10.0.1.10", end: "10.0.1.20", gw: "10.0.0.254"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := loadConfig(network("/unused", tt.ipam), "")
			if err != nil {
				t.Fatal(err)
			}
			r := c.sets[0].ranges[0]
			if r.subnet.String() != tt.subnet || r.start.String() != tt.start || r.end.String() != tt.end || r.gateway.String() != tt.gw {
				t.Errorf("range = %s %s-%s gw %s, want %s %s-%s gw %s", r.subnet, r.start, r.end, r.gateway, tt.subnet, tt.start, tt.end, tt.gw)
			}
		})
	}
}

func TestConfigOrderAndRequests(t *testing.T) {
	conf := network("/unused", `"subnet": "10.1.0.0/24", "ranges": [[{"subnet": "10.2.0.0/24"}], [{"subnet": "fd00::/64"}]]`,
		`"runtimeConfig": {"ipRanges": [[{"subnet": "10.3.0.0/24"}]], "ips": ["10.2.0.9/24"]}`,
		`"args": {"cni": {"ips": ["fd00::9"]}, "org.apache.mesos": {"network_info": {"name": "net"}}}`)
	c, err := loadConfig(conf, "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.1.0.9")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, s := range c.sets {
		keys = append(keys, s.key)
	}
	// The reference's order fixes the last_reserved_ip.N indexes.
	if want := []string{"runtimeConfig.ipRanges[0]", "ipam.subnet", "ipam.ranges[0]", "ipam.ranges[1]"}; !slices.Equal(keys, want) {
		t.Errorf("range sets %v, want %v", keys, want)
	}
	var reqs []string
	for _, r := range c.requests {
		reqs = append(reqs, r.ip.String())
	}
	if want := []string{"10.1.0.9", "fd00::9", "10.2.0.9"}; !slices.Equal(reqs, want) {
		t.Errorf("requests %v, want %v", reqs, want)
	}
	got, err := c.assign()
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{{}, netip.MustParseAddr("10.1.0.9"), netip.MustParseAddr("10.2.0.9"), netip.MustParseAddr("fd00::9")}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("assign()[%d] = %v, want %v", i, got[i], want[i])
		}
	}
	if c.cniVersion != "1.0.0" || c.name != "net" {
		t.Errorf("cniVersion %q name %q", c.cniVersion, c.name)
	}
}

func TestConfigMissingVersionIs010(t *testing.T) {
	for _, conf := range []string{
		`{"name": "net", "ipam": {"subnet": "10.0.0.0/24"}}`,
		`{"cniVersion": "", "name": "net", "ipam": {"subnet": "10.0.0.0/24"}}`,
	} {
		c, err := loadConfig([]byte(conf), "")
		if err != nil {
			t.Fatal(err)
		}
		if c.cniVersion != "0.1.0" || c.dataDir != defaultDataDir {
			t.Errorf("%s: cniVersion %q dataDir %q", conf, c.cniVersion, c.dataDir)
		}
	}
}

// TestPlanAdd: the plan counts one address per range set, lists every
// range's subnet and the routes (ECMP routes are kept), and touches no
// file; a config Add would refuse is refused the same way.
func TestPlanAdd(t *testing.T) {
	dataDir := t.TempDir()
	conf := network(dataDir, `"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.1.0/24"}], [{"subnet": "fd00::/64"}]],
		"routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}, {"dst": "0.0.0.0/0", "gw": "10.0.0.2"}]`)
	plan, err := PlanAdd(cmdArgs(conf, "c1", "eth0"))
	if err != nil {
		t.Fatal(err)
	}
	if plan.IPv4 != 1 || plan.IPv6 != 1 {
		t.Errorf("plan of %d IPv4 and %d IPv6 addresses, want 1 and 1", plan.IPv4, plan.IPv6)
	}
	if fmt.Sprint(plan.Subnets) != "[10.0.0.0/24 10.0.1.0/24 fd00::/64]" || len(plan.Routes) != 2 {
		t.Errorf("plan subnets %v, %d routes", plan.Subnets, len(plan.Routes))
	}
	if entries, _ := os.ReadDir(dataDir); len(entries) != 0 {
		t.Error("PlanAdd touched the store")
	}
	args := cmdArgs(conf, "c1", "eth0")
	args.Args = "IP=10.0.0.1"
	_, err = PlanAdd(args)
	wantCode(t, err, types.ErrInvalidNetworkConfig, "is the gateway")
}
