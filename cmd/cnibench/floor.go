package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// The floor is what no bridge plugin can go below on this machine, measured
// in the same run as the plugins: libcni executing a plugin that does
// nothing (ADD prints a minimal result), and for DEL that plus deleting a
// container's veth pair, the kernel's share of every DEL (unregistering a
// netdevice waits for RCU grace periods).

// floorLabel names the floor in the output.
const floorLabel = "floor"

// emptyPlugin is the floor's plugin: it reads its config and answers ADD
// with one address, every other verb with nothing.
const emptyPlugin = `package main

import (
	"io"
	"os"
)

func main() {
	_, _ = io.Copy(io.Discard, os.Stdin)
	switch os.Getenv("CNI_COMMAND") {
	case "ADD":
		os.Stdout.WriteString(` + "`" + `{"cniVersion":"1.1.0","ips":[{"address":"10.200.0.2/20"}]}` + "`" + `)
	case "VERSION":
		os.Stdout.WriteString(` + "`" + `{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}` + "`" + `)
	}
}
`

// buildFloor compiles the empty plugin into a fresh directory under tmp, as
// "bridge" so that the scale config runs it.
func buildFloor(ctx context.Context, tmp string) (*plugin, error) {
	dir, err := os.MkdirTemp(tmp, "floor-")
	if err != nil {
		return nil, err
	}
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte(emptyPlugin), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(dir, "bridge"), src)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GO111MODULE=off", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build the floor's empty plugin (needs go on PATH; --floor=false skips it): %v: %s", err, out)
	}
	return &plugin{Label: floorLabel, Dir: dir}, nil
}

// floorBridge is the bridge the floor's veths join on its node.
const floorBridge = "cb0"

// addFloorBridge creates the floor's bridge in the sandbox's node.
func addFloorBridge(sb *sandbox.Sandbox) error {
	return sb.InNode(func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: floorBridge, Flags: 1}} // up
		return netlink.LinkAdd(br)
	})
}

// addFloorVeth gives container ctr a veth pair as a bridge plugin would:
// eth0 inside, up (with its IPv6 link-local address, like any container's
// interface, so that deleting it costs what a plugin's DEL pays), its peer
// an up port of the node's bridge. It is not timed.
func addFloorVeth(sb *sandbox.Sandbox, ctr *sandbox.NetNS, i int) error {
	f, err := os.Open(ctr.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = sb.InNode(func() error {
		br, err := netlink.LinkByName(floorBridge)
		if err != nil {
			return err
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: fmt.Sprintf("vethf%d", i), MasterIndex: br.Attrs().Index, Flags: 1},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(int(f.Fd())),
		}
		return netlink.LinkAdd(veth)
	})
	if err != nil {
		return err
	}
	return ctr.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err == nil {
			err = netlink.LinkSetUp(l)
		}
		return err
	})
}

// delFloorVeth deletes ctr's eth0 from inside its namespace, as every
// bridge plugin's DEL does, and returns how long it took.
func delFloorVeth(ctr *sandbox.NetNS) (time.Duration, error) {
	start := time.Now()
	err := ctr.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err == nil {
			err = netlink.LinkDel(l)
		}
		return err
	})
	return time.Since(start), err
}
