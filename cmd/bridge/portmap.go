package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath"
)

// envCgroup names the cgroup v2 directory the node-socket port-mapping
// programs attach to, for configs that cannot say it (datapath.cgroup).
const envCgroup = "BPFBRIDGE_CGROUP"

// cniPortMapping is an entry of runtimeConfig.portMappings, the CNI
// convention's (what the reference portmap plugin reads).
type cniPortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP"`
}

// mesosPortMapping is an entry of
// args["org.apache.mesos"].network_info.port_mappings, NetworkInfo.PortMapping
// of Mesos' protobuf in its JSON form (what the Mesos CNI isolator sends,
// and its port-mapper plugin reads): protocol is optional there, tcp when
// absent, and there is no host address.
type mesosPortMapping struct {
	HostPort      int    `json:"host_port"`
	ContainerPort int    `json:"container_port"`
	Protocol      string `json:"protocol"`
}

// parsePortMappings turns both forms into one list, validated: ports in
// 1-65535, protocol tcp or udp (default tcp), hostIP an address, and no
// host port twice. Errors name the key and its value (code 7).
func parsePortMappings(c *NetConf) ([]datapath.PortMapping, error) {
	var out []datapath.PortMapping
	seen := map[string]string{}
	add := func(key string, hostPort, containerPort int, proto, hostIP string) error {
		m := datapath.PortMapping{}
		for _, p := range []struct {
			name string
			v    int
			dst  *uint16
		}{{"hostPort", hostPort, &m.HostPort}, {"containerPort", containerPort, &m.ContainerPort}} {
			name := p.name
			if strings.HasPrefix(key, "args") {
				name = map[string]string{"hostPort": "host_port", "containerPort": "container_port"}[name]
			}
			if p.v < 1 || p.v > 65535 {
				return invalidConf("%q: %s %d is not a port (1-65535)", key, name, p.v)
			}
			*p.dst = uint16(p.v)
		}
		switch strings.ToLower(proto) {
		case "", "tcp":
			m.Protocol = unix.IPPROTO_TCP
		case "udp":
			m.Protocol = unix.IPPROTO_UDP
		case "sctp":
			return invalidConf("%q: protocol %q is not supported by bpfbridge's port mapping (tcp, udp)", key, proto)
		default:
			return invalidConf("%q: protocol %q is not one of \"tcp\", \"udp\"", key, proto)
		}
		if hostIP != "" {
			a, err := netip.ParseAddr(hostIP)
			if err != nil || a.Zone() != "" {
				return invalidConf("%q: hostIP %q is not an IP address", key, hostIP)
			}
			if !a.Unmap().IsUnspecified() {
				m.HostIP = a.Unmap()
			}
		}
		id := m.String()
		if prev, dup := seen[id]; dup {
			return invalidConf("%q: host port %s is mapped twice (also by %q)", key, id, prev)
		}
		seen[id] = key
		out = append(out, m)
		return nil
	}
	for i, p := range c.RuntimeConfig.PortMappings {
		if err := add(fmt.Sprintf("runtimeConfig.portMappings[%d]", i), p.HostPort, p.ContainerPort, p.Protocol, p.HostIP); err != nil {
			return nil, err
		}
	}
	for i, p := range c.Args.Mesos.NetworkInfo.PortMappings {
		key := fmt.Sprintf("args[\"org.apache.mesos\"].network_info.port_mappings[%d]", i)
		if err := add(key, p.HostPort, p.ContainerPort, p.Protocol, ""); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// cgroup is where the node-socket programs attach: the config key, else
// the environment, else the machine's cgroup2 root (datapath's default).
func (c *NetConf) cgroup() string {
	if c.Datapath.Cgroup != "" {
		return c.Datapath.Cgroup
	}
	return os.Getenv(envCgroup)
}

// portsOf is what the attachment publishes.
func portsOf(c *NetConf, args *skel.CmdArgs, ep datapath.Endpoint, gateways []netip.Addr) datapath.Ports {
	return datapath.Ports{
		ContainerID: args.ContainerID, IfName: args.IfName, Mappings: c.ports,
		Addresses: ep.IPs, Gateways: gateways, Cgroup: c.cgroup(),
	}
}

// portsError gives a port conflict its CNI code (node state conflicts
// with the config) and the rest the datapath's.
func portsError(err error) error {
	var conflict *datapath.PortConflictError
	if errors.As(err, &conflict) {
		return types.NewError(errHostConflict, conflict.Error(), "")
	}
	return datapathError(err)
}
