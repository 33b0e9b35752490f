package main

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath"
)

const pmBase = `{"cniVersion": "1.0.0", "name": "n", "type": "bridge", `

// TestPortMappingsBothForms: runtimeConfig.portMappings and Mesos'
// port_mappings become the same list.
func TestPortMappingsBothForms(t *testing.T) {
	cni, err := loadConf([]byte(pmBase + `"runtimeConfig": {"portMappings": [
		{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
		{"hostPort": 8080, "containerPort": 80, "protocol": "UDP", "hostIP": "192.0.2.7"},
		{"hostPort": 53, "containerPort": 53, "hostIP": "0.0.0.0"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	mesos, err := loadConf([]byte(`{"name": "n", "type": "bridge", "args": {"org.apache.mesos": {"network_info": {"name": "n",
		"port_mappings": [{"host_port": 8080, "container_port": 80, "protocol": "tcp"},
		                  {"host_port": 9090, "container_port": 90}]}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []datapath.PortMapping{
		{Protocol: unix.IPPROTO_TCP, HostPort: 8080, ContainerPort: 80},
		{Protocol: unix.IPPROTO_UDP, HostIP: netip.MustParseAddr("192.0.2.7"), HostPort: 8080, ContainerPort: 80},
		{Protocol: unix.IPPROTO_TCP, HostPort: 53, ContainerPort: 53},
	}
	if len(cni.ports) != len(want) {
		t.Fatalf("CNI form: %+v, want %+v", cni.ports, want)
	}
	for i := range want {
		if cni.ports[i] != want[i] {
			t.Errorf("CNI form [%d]: %+v, want %+v", i, cni.ports[i], want[i])
		}
	}
	wantMesos := []datapath.PortMapping{want[0], {Protocol: unix.IPPROTO_TCP, HostPort: 9090, ContainerPort: 90}}
	if len(mesos.ports) != 2 || mesos.ports[0] != wantMesos[0] || mesos.ports[1] != wantMesos[1] {
		t.Errorf("Mesos form: %+v, want %+v", mesos.ports, wantMesos)
	}
}

// TestPortMappingErrors: bad entries are code 7 naming the key and value.
func TestPortMappingErrors(t *testing.T) {
	for conf, want := range map[string][]string{
		pmBase + `"runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}}`:                                                           {"runtimeConfig.portMappings[0]", "hostPort 0"},
		pmBase + `"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 70000}]}}`:                                                       {"containerPort 70000"},
		pmBase + `"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]}}`:                                      {`protocol "icmp"`},
		pmBase + `"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "sctp"}]}}`:                                      {`protocol "sctp"`, "not supported"},
		pmBase + `"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "hostIP": "nope"}]}}`:                                        {`hostIP "nope"`},
		pmBase + `"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80}, {"hostPort": 80, "containerPort": 81}]}}`:                   {"portMappings[1]", "mapped twice"},
		`{"name": "n", "type": "bridge", "args": {"org.apache.mesos": {"network_info": {"port_mappings": [{"host_port": 80, "container_port": -1}]}}}}`: {"port_mappings[0]", "container_port -1"},
	} {
		_, err := loadConf([]byte(conf))
		cniErr, ok := err.(*types.Error)
		if !ok || cniErr.Code != types.ErrInvalidNetworkConfig {
			t.Errorf("%s: %v, want code 7", conf, err)
			continue
		}
		for _, w := range want {
			if !strings.Contains(cniErr.Msg, w) {
				t.Errorf("%s: %q lacks %q", conf, cniErr.Msg, w)
			}
		}
	}
}
