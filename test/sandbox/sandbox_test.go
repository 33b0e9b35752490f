package sandbox_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

const timeout = 2 * time.Second

func TestSandbox(t *testing.T) {
	linksBefore := rootLinkNames(t)
	forwardBefore := readFile(t, "/proc/sys/net/ipv4/ip_forward")
	s := sandbox.ForTest(t)

	for _, n := range []*sandbox.NetNS{s.Node, s.External} {
		if !strings.HasPrefix(n.Name, s.Prefix) || n.Path != filepath.Join(sandbox.RunDir, n.Name) {
			t.Errorf("namespace %+v does not follow prefix %q", n, s.Prefix)
		}
		if err := unix.Access(n.Path, unix.F_OK); err != nil {
			t.Errorf("namespace %s: %v", n.Name, err)
		}
	}

	t.Run("ping", func(t *testing.T) {
		for _, dst := range []netip.Addr{s.External4.Addr(), s.Internet4, s.External6.Addr(), s.Internet6} {
			if got, err := sandbox.Ping(s.Node, dst, 3, timeout); got != 3 || err != nil {
				t.Errorf("Ping(node, %s) received %d of 3, err %v", dst, got, err)
			}
		}
		// Nobody owns this address: a reply would mean Ping counts strays.
		if got, err := sandbox.Ping(s.Node, netip.MustParseAddr("198.51.100.77"), 1, 300*time.Millisecond); got != 0 || err != nil {
			t.Errorf("Ping(node, unowned address) = %d, %v; want 0, nil", got, err)
		}
	})

	t.Run("echo", func(t *testing.T) {
		payload := bytes.Repeat([]byte("bpfbridge"), 1000)
		for _, wildcard := range []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()} {
			tcp, stopTCP, err := sandbox.ServeTCPEcho(s.External, netip.AddrPortFrom(wildcard, 0))
			if err != nil {
				t.Fatal(err)
			}
			defer stopTCP()
			udp, stopUDP, err := sandbox.ServeUDPEcho(s.External, netip.AddrPortFrom(wildcard, 0))
			if err != nil {
				t.Fatal(err)
			}
			defer stopUDP()
			if tcp.Addr() != wildcard || tcp.Port() == 0 || udp.Addr() != wildcard || udp.Port() == 0 {
				t.Errorf("bound addresses %s, %s; want %s with a port", tcp, udp, wildcard)
			}
			dsts := []netip.Addr{s.External4.Addr(), s.Internet4}
			if wildcard.Is6() {
				dsts = []netip.Addr{s.External6.Addr(), s.Internet6}
			}
			for _, dst := range dsts {
				if err := sandbox.TCPEcho(s.Node, netip.AddrPortFrom(dst, tcp.Port()), payload, timeout); err != nil {
					t.Error(err)
				}
				if err := sandbox.UDPEcho(s.Node, netip.AddrPortFrom(dst, udp.Port()), payload, timeout); err != nil {
					t.Error(err)
				}
			}
		}
	})

	t.Run("echo failures", func(t *testing.T) {
		// A UDP server that answers with the wrong bytes.
		bound, stop, err := sandbox.ServeUDP(s.External, netip.AddrPortFrom(netip.IPv4Unspecified(), 0),
			func([]byte, net.Addr) []byte { return []byte("wrong") })
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		port := bound.Port()
		// External4, not Internet4: this naive server replies from the
		// uplink address, and the reply must reach UDPEcho to be compared.
		err = sandbox.UDPEcho(s.Node, netip.AddrPortFrom(s.External4.Addr(), port), []byte("right"), timeout)
		if err == nil || !strings.Contains(err.Error(), "differ") {
			t.Errorf("UDPEcho with a mismatched reply: %v", err)
		}
		// TCP to the same port number finds no listener.
		if err := sandbox.TCPEcho(s.Node, netip.AddrPortFrom(s.Internet4, port), []byte("x"), timeout); err == nil {
			t.Error("TCPEcho without a server succeeded")
		}
	})

	t.Run("sysctl scope", func(t *testing.T) {
		for n, want := range map[*sandbox.NetNS]string{s.Node: "1", s.External: "0"} {
			for _, name := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
				if got, err := n.Sysctl(name); got != want || err != nil {
					t.Errorf("%s: %s = %q, %v; want %q", n.Name, name, got, err, want)
				}
			}
		}
		if got := readFile(t, "/proc/sys/net/ipv4/ip_forward"); got != forwardBefore {
			t.Errorf("root namespace ip_forward changed from %q to %q", forwardBefore, got)
		}
		for _, name := range []string{"kernel.hostname", "net/../kernel/hostname", "vm.swappiness"} {
			if err := s.Node.SetSysctl(name, "1"); err == nil {
				t.Errorf("SetSysctl(%q) was allowed", name)
			}
		}
	})

	t.Run("container", func(t *testing.T) {
		c, err := s.NewContainer("c1")
		if err != nil {
			t.Fatal(err)
		}
		if c.Name != s.Prefix+"c1" {
			t.Errorf("container name %q", c.Name)
		}
		// A bare namespace has only lo, so nothing outside is routable.
		if got, err := sandbox.Ping(c, s.Internet4, 1, timeout); got != 0 || err == nil {
			t.Errorf("Ping from bare container = %d, %v; want 0 and an error", got, err)
		}
		if got, err := sandbox.Ping(c, netip.MustParseAddr("127.0.0.1"), 1, timeout); got != 1 || err != nil {
			t.Errorf("Ping container's lo = %d, %v; want 1, nil (lo must be up)", got, err)
		}
		if err := s.AddExternalRoute(netip.MustParsePrefix("10.244.1.0/24")); err != nil {
			t.Fatal(err)
		}
		if err := s.AddExternalRoute(netip.MustParsePrefix("fd00:244:1::/64")); err != nil {
			t.Fatal(err)
		}
		var routes []string
		err = s.External.Do(func() error {
			for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
				rs, err := netlink.RouteList(nil, family)
				if err != nil {
					return err
				}
				for _, r := range rs {
					if r.Dst != nil && r.Gw != nil {
						routes = append(routes, r.Dst.String()+" via "+r.Gw.String())
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(routes)
		want := []string{"10.244.1.0/24 via 198.51.100.1", "fd00:244:1::/64 via 2001:db8:ffff::1"}
		if !slices.Equal(routes, want) {
			t.Errorf("External routes %q, want %q", routes, want)
		}
	})

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(sandbox.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), s.Prefix) {
			t.Errorf("%s survived Close", e.Name())
		}
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if after := rootLinkNames(t); !slices.Equal(linksBefore, after) {
		t.Errorf("root namespace links changed from %q to %q", linksBefore, after)
	}
}

func TestChildrenInheritNodeNetNS(t *testing.T) {
	s := sandbox.ForTest(t)
	nodeNS := fmt.Sprintf("net:[%d]", inode(t, s.Node.Path))
	if self := readlink(t, "/proc/self/ns/net"); self == nodeNS {
		t.Fatalf("test process already in the node namespace %s", self)
	}

	t.Run("exec in Do", func(t *testing.T) {
		var out []byte
		err := s.InNode(func() (err error) {
			out, err = exec.Command("readlink", "/proc/self/ns/net").Output()
			return err
		})
		if got := strings.TrimSpace(string(out)); err != nil || got != nodeNS {
			t.Errorf("child of Node.Do runs in %q (err %v), want %s", got, err, nodeNS)
		}
	})

	t.Run("Command", func(t *testing.T) {
		out, err := s.Node.Command(t.Context(), "readlink", "/proc/self/ns/net").Output()
		if got := strings.TrimSpace(string(out)); err != nil || got != nodeNS {
			t.Errorf("Node.Command runs in %q (err %v), want %s", got, err, nodeNS)
		}
	})

	// A fake plugin records the namespace it runs in and its CNI variables.
	dir := t.TempDir()
	record := filepath.Join(dir, "record")
	plugin := "#!/bin/sh\ncat >/dev/null\n" +
		`echo "$(readlink /proc/self/ns/net) $CNI_COMMAND $CNI_IFNAME $CNI_NETNS $CNI_ARGS" >>` + record + "\n" +
		`[ "$CNI_COMMAND" = ADD ] && echo '{"cniVersion":"1.0.0"}'` + "\nexit 0\n"
	if err := os.WriteFile(filepath.Join(dir, "recorder"), []byte(plugin), 0o755); err != nil {
		t.Fatal(err)
	}
	conflist := `{"cniVersion":"1.0.0","name":"rec","plugins":[{"type":"recorder"}]}`
	if err := os.WriteFile(filepath.Join(dir, "rec.conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := s.NewContainer("c")
	if err != nil {
		t.Fatal(err)
	}

	t.Run("libcni in InNode", func(t *testing.T) {
		os.Remove(record)
		list, err := libcni.ConfListFromBytes([]byte(conflist))
		if err != nil {
			t.Fatal(err)
		}
		cni := libcni.NewCNIConfigWithCacheDir([]string{dir}, t.TempDir(), nil)
		rt := &libcni.RuntimeConf{ContainerID: "test", NetNS: c.Path, IfName: "eth0"}
		err = s.InNode(func() error {
			_, err := cni.AddNetworkList(t.Context(), list, rt)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("%s ADD eth0 %s\n", nodeNS, c.Path)
		if got := readFile(t, record); got != strings.TrimSpace(want) {
			t.Errorf("plugin recorded %q, want %q", got, want)
		}
	})

	t.Run("CNITool", func(t *testing.T) {
		os.Remove(record)
		cnitool := filepath.Join(t.TempDir(), "cnitool")
		build := exec.Command("go", "build", "-o", cnitool, "github.com/containernetworking/cni/cnitool")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("building cnitool: %v\n%s", err, out)
		}
		t.Setenv("CNI_ARGS", "LEAKED=1") // must not reach the plugin
		state := t.TempDir()             // stands in for /var/lib: libcni's cache must land here
		tool := sandbox.CNITool{Binary: cnitool, NetConfPath: dir, CNIPath: []string{dir}, IfName: "net1", Args: "K8S_POD_NAME=p", StateDir: state}
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		for _, verb := range []string{"add", "del"} {
			if _, _, err := tool.Run(ctx, s.Node, verb, "rec", c.Path); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := os.Stat(filepath.Join(state, "cni", "results")); err != nil {
			t.Errorf("libcni's result cache is not under StateDir: %v", err)
		}
		want := fmt.Sprintf("%[1]s ADD net1 %[2]s K8S_POD_NAME=p\n%[1]s DEL net1 %[2]s K8S_POD_NAME=p", nodeNS, c.Path)
		if got := readFile(t, record); got != want {
			t.Errorf("plugin recorded\n%s\nwant\n%s", got, want)
		}
		if _, stderr, err := tool.Run(ctx, s.Node, "add", "missing", c.Path); err == nil || len(stderr) == 0 {
			t.Errorf("cnitool add of a missing network: err %v, stderr %q", err, stderr)
		}
	})
}

func TestSocketsStayInNamespace(t *testing.T) {
	s := sandbox.ForTest(t)
	var c net.PacketConn
	err := s.Node.Do(func() (err error) {
		c, err = net.ListenPacket("udp4", "127.0.0.1:0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Ask the kernel which namespace the socket belongs to, from a goroutine
	// that is not in the node namespace.
	raw, err := c.(*net.UDPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var nsfd int
	var ioctlErr error
	if err := raw.Control(func(fd uintptr) { nsfd, ioctlErr = unix.IoctlRetInt(int(fd), unix.SIOCGSKNS) }); err != nil || ioctlErr != nil {
		t.Fatal(err, ioctlErr)
	}
	defer unix.Close(nsfd)
	var st unix.Stat_t
	if err := unix.Fstat(nsfd, &st); err != nil {
		t.Fatal(err)
	}
	if want := inode(t, s.Node.Path); st.Ino != want {
		t.Errorf("socket is in netns inode %d, want node's %d", st.Ino, want)
	}
}

func TestNetNSNames(t *testing.T) {
	for _, prefix := range []string{"", "/", "bpfb", "cni-", "x-bpfb-", "bpfb-/../", "bpfb-a/b"} {
		if err := sandbox.RemoveAll(prefix); err == nil {
			t.Errorf("RemoveAll(%q) was allowed", prefix)
		}
		if _, err := sandbox.NewNetNS(prefix); err == nil {
			t.Errorf("NewNetNS(%q) was allowed", prefix)
		}
		if _, err := sandbox.New(prefix); err == nil {
			t.Errorf("New(%q) was allowed", prefix)
		}
	}
	if err := (&sandbox.NetNS{Name: "bpfb-x", Path: "/"}).Delete(); err == nil {
		t.Error("Delete of a NetNS whose Path is outside RunDir was allowed")
	}

	s := sandbox.ForTest(t)
	if _, err := sandbox.NewNetNS(s.Node.Name); err == nil {
		t.Error("NewNetNS of an existing name succeeded")
	}
	if _, err := sandbox.New(s.Prefix); err == nil {
		t.Error("New with a prefix in use succeeded")
	}
	// The failed attempts must not have taken the existing namespaces away.
	if got, err := sandbox.Ping(s.Node, s.Internet6, 1, timeout); got != 1 || err != nil {
		t.Errorf("sandbox broken by clashing creations: Ping = %d, %v", got, err)
	}
	for range 2 {
		if err := s.External.Delete(); err != nil {
			t.Errorf("Delete: %v", err)
		}
	}
	if err := s.External.Do(func() error { return nil }); err == nil {
		t.Error("Do in a deleted namespace succeeded")
	}
}

func rootLinkNames(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func readlink(t *testing.T, path string) string {
	t.Helper()
	s, err := os.Readlink(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
