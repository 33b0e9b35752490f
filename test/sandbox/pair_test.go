package sandbox_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// TestVethPair: both ends carry the MTU asked for and their address, the
// load generators run across the pair (directly and through the listen/dial
// variants), nothing appears in the caller's namespace, and Close removes
// both namespaces.
func TestVethPair(t *testing.T) {
	linksBefore := rootLinkNames(t)
	prefix := fmt.Sprintf("%sv%06x-", sandbox.NamePrefix, rand.IntN(1<<24))
	p, err := sandbox.NewVethPair(prefix, 1400)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, end := range []struct {
		ns   *sandbox.NetNS
		name string
		addr netip.Addr
	}{{p.A, sandbox.PairNameA, p.AddrA}, {p.B, sandbox.PairNameB, p.AddrB}} {
		err := end.ns.Do(func() error {
			l, err := netlink.LinkByName(end.name)
			if err != nil {
				return err
			}
			if mtu := l.Attrs().MTU; mtu != 1400 {
				t.Errorf("%s in %s: MTU %d, want 1400", end.name, end.ns.Name, mtu)
			}
			addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			if len(addrs) != 1 || !addrs[0].IP.Equal(end.addr.AsSlice()) {
				t.Errorf("%s in %s: addresses %v, want %v", end.name, end.ns.Name, addrs, end.addr)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := rootLinkNames(t); !slices.Equal(got, linksBefore) {
		t.Errorf("links of the caller's namespace changed: %v → %v", linksBefore, got)
	}
	ctx := context.Background()
	rtts, err := sandbox.TCPRequestResponse(ctx, p.A, p.B, p.AddrB, time.Second, 100)
	if err != nil || len(rtts) != 100 {
		t.Errorf("request/response across the pair: %d exchanges, %v", len(rtts), err)
	}
	// A fixed listen port and a dial address equal to it: the variants
	// the published-port phases use.
	at := netip.AddrPortFrom(p.AddrB, 18080)
	if rtts, err := sandbox.TCPRequestResponseAt(ctx, p.A, p.B, at, at, time.Second, 10); err != nil || len(rtts) != 10 {
		t.Errorf("request/response at %v: %d exchanges, %v", at, len(rtts), err)
	}
	if rate, err := sandbox.TCPConnectRateAt(ctx, p.A, p.B, at, at, 200*time.Millisecond); err != nil || rate <= 0 {
		t.Errorf("connections at %v: %v/s, %v", at, rate, err)
	}
	// Nothing listens where dial points: the error says so.
	if _, err := sandbox.TCPRequestResponseAt(ctx, p.A, p.B, at, netip.AddrPortFrom(p.AddrB, 18081), time.Second, 1); err == nil {
		t.Error("request/response to a port nobody listens on succeeded")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*sandbox.NetNS{p.A, p.B} {
		if _, err := os.Stat(filepath.Join(sandbox.RunDir, n.Name)); !os.IsNotExist(err) {
			t.Errorf("%s left after Close: %v", n.Name, err)
		}
	}
}
