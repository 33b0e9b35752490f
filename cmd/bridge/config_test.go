package main

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestBadMAC(t *testing.T) {
	for mac, want := range map[string]string{
		"02:00:00:00:00:01":       "",
		"zz":                      "a MAC address",
		"02:00:00:00:00:00:00:01": "6-byte",
		"00:00:00:00:00:00":       "all zeros",
		"ff:ff:ff:ff:ff:ff":       "broadcast",
		"01:00:5e:00:00:01":       "multicast",
		"33:33:00:00:00:01":       "multicast",
	} {
		got := badMAC(mac)
		if (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("badMAC(%q) = %q, want %q", mac, got, want)
		}
	}
}

func TestBadLinkName(t *testing.T) {
	for _, name := range []string{"all", "default", ".", "..", "a/b", "a b", "a:b", "", "br-0123456789abc"} {
		if badLinkName(name) == "" {
			t.Errorf("badLinkName(%q) accepts it", name)
		}
	}
	for _, name := range []string{"cni0", "eth0", "br-0123456789ab", "all0", "defaults"} {
		if why := badLinkName(name); why != "" {
			t.Errorf("badLinkName(%q) = %q, want accepted", name, why)
		}
	}
}

// TestVlanWithoutKernelSupport: the kernel's "not supported" for a VLAN
// config is a config error naming the key; without VLAN keys it stays an
// error of the node. The end-to-end path runs in TestConfigErrorCodes on
// kernels without VLAN filtering.
func TestVlanWithoutKernelSupport(t *testing.T) {
	five := 5
	notSupported := fmt.Errorf("enable vlan_filtering on bridge %q: %w", "br0", syscall.EOPNOTSUPP)
	for _, c := range []struct {
		conf NetConf
		want []string
	}{
		{NetConf{Vlan: 12}, []string{`"vlan": 12`, "VLAN filtering"}},
		{NetConf{VlanTrunk: []VlanTrunk{{ID: &five}}, trunk: []int{5}}, []string{`"vlanTrunk": [{"id":5}]`, "VLAN filtering"}},
	} {
		err := c.conf.bridgeError(notSupported)
		cniErr, ok := err.(*types.Error)
		if !ok || cniErr.Code != types.ErrInvalidNetworkConfig {
			t.Errorf("%+v: %v, want code 7", c.conf, err)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(cniErr.Msg, w) {
				t.Errorf("message %q does not name %q", cniErr.Msg, w)
			}
		}
	}
	if err := (&NetConf{}).bridgeError(notSupported); err != notSupported {
		t.Errorf("without VLAN keys: %v, want the error unchanged", err)
	}
}

func TestCheckFamilies(t *testing.T) {
	for _, c := range []struct {
		mtu, v4, v6 int
		want        string // "" when accepted
	}{
		{0, 4, 4, ""},
		{0, 5, 0, "5 IPv4"},
		{0, 0, 5, "5 IPv6"},
		{1279, 1, 1, `"mtu": 1279`},
		{1280, 1, 1, ""},
		{576, 1, 0, ""},
	} {
		err := (&NetConf{MTU: c.mtu}).checkFamilies(`"ipam"`, c.v4, c.v6)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v: %v, want accepted", c, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: %v, want an error naming %q", c, err, c.want)
		}
	}
}

func TestMasqueradeTimeoutBound(t *testing.T) {
	for v, ok := range map[int]bool{4294967295: true, 4294967296: false, 5000000000: false} {
		conf := NetConf{}
		conf.Masquerade.Timeouts.UDP = v
		_, err := parseMasquerade(&conf)
		if ok != (err == nil) {
			t.Errorf("timeouts.udp %d: %v", v, err)
		}
		if err != nil && !strings.Contains(err.Error(), fmt.Sprint(v)) {
			t.Errorf("message %q does not name %d", err, v)
		}
	}
}

func TestMasqueradeAddress(t *testing.T) {
	for _, c := range []struct {
		json string
		want []string // parsed addresses; nil: invalid, code 7
	}{
		{`"192.0.2.7"`, []string{"192.0.2.7"}},
		{`["192.0.2.7", "2001:db8::7"]`, []string{"192.0.2.7", "2001:db8::7"}},
		{`["::ffff:192.0.2.7"]`, []string{"192.0.2.7"}},
		{`"192.0.2.0/24"`, nil},
		{`["192.0.2.7", "192.0.2.8"]`, nil},
		{`"fe80::1%eth0"`, nil},
	} {
		conf, err := loadConf([]byte(`{"cniVersion": "1.0.0", "name": "n", "type": "bridge", "masquerade": {"address": ` + c.json + `}}`))
		if c.want == nil {
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), "masquerade.address") {
				t.Errorf("address %s: %v, want code 7 naming masquerade.address", c.json, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("address %s: %v", c.json, err)
			continue
		}
		var got []string
		for _, a := range conf.masq.Address {
			got = append(got, a.String())
		}
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("address %s: parsed %v, want %v", c.json, got, c.want)
		}
	}
}
