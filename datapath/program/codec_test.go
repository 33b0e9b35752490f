package program_test

import (
	"net/netip"
	"testing"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// The codec's decoders invert its encoders; the layouts themselves are
// checked against the kernel by the program tests, which build their keys
// and values with the same encoders.
func TestCodecRoundTrips(t *testing.T) {
	for _, s := range []string{"10.1.2.3", "fd00::7"} {
		a := netip.MustParseAddr(s)
		if k := program.IPKeyOf(a); k.IP() != a {
			t.Errorf("IPKeyOf(%v).IP() = %v", a, k.IP())
		}
		src, dst := netip.AddrPortFrom(a, 40000), netip.AddrPortFrom(a, 443)
		if tp := program.NATTupleOf(6, src, dst); tp.Source() != src || tp.Dest() != dst {
			t.Errorf("NATTupleOf(%v, %v) = %v > %v", src, dst, tp.Source(), tp.Dest())
		}
		p := netip.PrefixFrom(a, 24).Masked()
		if k := program.NATExcludeKeyOf(7, p); k.Prefix() != p || k.Network != 7 {
			t.Errorf("NATExcludeKeyOf(%v).Prefix() = %v", p, k.Prefix())
		}
	}
	if v4 := netip.MustParseAddr("10.0.0.1"); program.FromBe32(program.Be32(v4)) != v4 {
		t.Errorf("FromBe32(Be32(%v)) = %v", v4, program.FromBe32(program.Be32(v4)))
	}
	if got := program.FromBe16(program.Be16(0x1234)); got != 0x1234 {
		t.Errorf("FromBe16(Be16(0x1234)) = %#x", got)
	}

	var m program.BpfbridgeEndpointMeta
	names := program.MetaNames{ContainerID: "ctr", IfName: "eth0", HostIfName: "veth1", Network: "net", Netns: "/run/netns/x", ProgTag: "abc"}
	m.SetNames(names)
	if got := m.Names(); got != names {
		t.Errorf("Names() = %+v, want %+v", got, names)
	}
	// A name longer than its array is truncated, leaving the NUL.
	m.SetNames(program.MetaNames{IfName: "0123456789abcdefXYZ"})
	if got := m.Names().IfName; got != "0123456789abcde" {
		t.Errorf("truncated ifname %q", got)
	}

	var e program.BpfbridgeEndpoint
	ips := []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::2")}
	if err := e.SetAddrs(mac("02:00:00:00:00:02"), ips); err != nil {
		t.Fatal(err)
	}
	if got := e.IPs(); len(got) != 2 || got[0] != ips[0] || got[1] != ips[1] {
		t.Errorf("IPs() = %v, want %v", got, ips)
	}
	five := []netip.Addr{ips[0], ips[0].Next(), ips[0].Next().Next(), ips[0].Prev(), ips[0].Prev().Prev()}
	if err := e.SetAddrs(mac("02:00:00:00:00:02"), five); err == nil {
		t.Error("SetAddrs took more addresses than struct endpoint holds")
	}

	var u program.BpfbridgeNatUplink
	u.SetAddrs(netip.Addr{}, ips[1])
	if v4, v6 := u.Addrs(); v4.IsValid() || v6 != ips[1] {
		t.Errorf("uplink Addrs() = %v, %v", v4, v6)
	}
}
