package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// inspectCmd is `bridge inspect args… --bpffs <the node's bpffs>`, to be
// started inside the node (its interfaces are what link and prog show).
func inspectCmd(ctx context.Context, sb *sandbox.Sandbox, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bins.Bridge, append(append([]string{"inspect"}, args...), "--bpffs", sb.BPFFS)...)
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "CNI_") })
	return cmd
}

// runInspect runs `bridge inspect` in the node and returns its output and
// exit status.
func runInspect(t *testing.T, sb *sandbox.Sandbox, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	cmd := inspectCmd(ctx, sb, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := sb.InNode(cmd.Run)
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("bridge inspect %s: %v", strings.Join(args, " "), err)
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

// inspectJSON runs `bridge inspect args… -j`, which must succeed, and
// decodes its output into v.
func inspectJSON(t *testing.T, sb *sandbox.Sandbox, v any, args ...string) {
	t.Helper()
	stdout, stderr, code := runInspect(t, sb, append(args, "-j")...)
	if code != 0 {
		t.Fatalf("bridge inspect %s: exit %d: %s", strings.Join(args, " "), code, stderr)
	}
	if err := json.Unmarshal([]byte(stdout), v); err != nil {
		t.Fatalf("bridge inspect %s -j: %v\n%s", strings.Join(args, " "), err, stdout)
	}
}

// The subset of `bridge inspect -j` output the tests read, by the
// documented field names.
type (
	inspectTraffic struct {
		Packets uint64 `json:"packets"`
		Bytes   uint64 `json:"bytes"`
	}
	inspectEndpoint struct {
		ContainerID   string            `json:"container_id"`
		IfName        string            `json:"ifname"`
		Network       string            `json:"network"`
		Netns         string            `json:"netns"`
		IPs           []string          `json:"ips"`
		MAC           string            `json:"mac"`
		HostIfName    string            `json:"host_ifname"`
		Ifindex       int               `json:"ifindex"`
		Isolation     string            `json:"isolation"`
		AttachMode    string            `json:"attach_mode"`
		ProgTag       string            `json:"prog_tag"`
		FromContainer inspectTraffic    `json:"from_container"`
		ToContainer   inspectTraffic    `json:"to_container"`
		Drops         map[string]uint64 `json:"drops"`
	}
	inspectProg struct {
		ID          uint32 `json:"id"`
		Name        string `json:"name"`
		Current     bool   `json:"current"`
		Attachments []struct {
			Interface  string `json:"interface"`
			Direction  string `json:"direction"`
			AttachMode string `json:"attach_mode"`
		} `json:"attachments"`
	}
	inspectLinkProg struct {
		ID         uint32 `json:"id"`
		Name       string `json:"name"`
		AttachMode string `json:"attach_mode"`
	}
	inspectLink struct {
		Interface   string            `json:"interface"`
		ContainerID string            `json:"container_id"`
		Ingress     []inspectLinkProg `json:"ingress"`
		Egress      []inspectLinkProg `json:"egress"`
	}
	inspectDrops struct {
		Totals   map[string]uint64 `json:"totals"`
		Networks []struct {
			Network string            `json:"network"`
			Drops   map[string]uint64 `json:"drops"`
		} `json:"networks"`
		Endpoints []struct {
			ContainerID string            `json:"container_id"`
			IfName      string            `json:"ifname"`
			Drops       map[string]uint64 `json:"drops"`
		} `json:"endpoints"`
	}
	inspectEvent struct {
		Time        time.Time `json:"time"`
		ContainerID string    `json:"container_id"`
		IfName      string    `json:"ifname"`
		Reason      string    `json:"reason"`
		Direction   string    `json:"direction"`
		EthProto    string    `json:"eth_proto"`
		SrcMAC      string    `json:"src_mac"`
		SrcIP       string    `json:"src_ip"`
	}
	inspectMap struct {
		Name    string `json:"name"`
		Type    string `json:"type"`
		Entries *int   `json:"entries"`
	}
	inspectEntry struct {
		Key    map[string]any   `json:"key"`
		Value  map[string]any   `json:"value"`
		PerCPU []map[string]any `json:"per_cpu"`
	}
	inspectAllocation struct {
		Network     string `json:"network"`
		IP          string `json:"ip"`
		ContainerID string `json:"container_id"`
		Stale       bool   `json:"stale"`
		StaleReason string `json:"stale_reason"`
	}
)

// endpointsByID lists the node's endpoints, by container ID.
func endpointsByID(t *testing.T, sb *sandbox.Sandbox) map[string]inspectEndpoint {
	t.Helper()
	var eps []inspectEndpoint
	inspectJSON(t, sb, &eps, "endpoint", "list")
	byID := map[string]inspectEndpoint{}
	for _, ep := range eps {
		byID[ep.ContainerID] = ep
	}
	return byID
}

// TestInspect drives `bridge inspect` as an operator would, against a node
// with two containers, and checks what each command reports against what
// the test did: attachments, traffic, a spoofed packet, a vanished
// container.
func TestInspect(t *testing.T) {
	sb := sandbox.ForTest(t)
	dataDir := t.TempDir()
	n := newNetwork(t, sb, isoConf("insp", "br-insp", "10.130.0.0/24", "network", dataDir), bins.PluginDir())
	a, b := n.attach("insp-a"), n.attach("insp-b")
	if !reaches(a.ns, b.ip) {
		t.Fatal("the containers cannot reach each other")
	}
	ctrs := []container{a, b}

	t.Run("endpoints", func(t *testing.T) {
		before := endpointsByID(t, sb)
		for _, c := range ctrs {
			ep, ok := before[c.id]
			if !ok {
				t.Fatalf("endpoint list has no %s: %v", c.id, before)
			}
			want := inspectEndpoint{ContainerID: c.id, IfName: "eth0", Network: "insp", Netns: c.ns.Path,
				IPs: []string{c.ip.String()}, MAC: c.mac.String(), HostIfName: hostVeth(t, sb, c),
				Isolation: "network", AttachMode: attachMode().String()}
			got := ep
			got.Ifindex, got.ProgTag, got.FromContainer, got.ToContainer, got.Drops = 0, "", inspectTraffic{}, inspectTraffic{}, nil
			if !equalJSON(got, want) {
				t.Errorf("endpoint %s:\n got %+v\nwant %+v", c.id, got, want)
			}
			if ep.FromContainer.Packets == 0 || ep.ToContainer.Packets == 0 {
				t.Errorf("endpoint %s counted no traffic after a ping: %+v %+v", c.id, ep.FromContainer, ep.ToContainer)
			}
		}
		if got, _ := sandbox.Ping(a.ns, b.ip, 3, time.Second); got != 3 {
			t.Fatalf("%d of 3 pings answered", got)
		}
		after := endpointsByID(t, sb)
		for _, c := range ctrs {
			// Three echoes each way, at least.
			if was, is := before[c.id], after[c.id]; is.FromContainer.Packets < was.FromContainer.Packets+3 ||
				is.ToContainer.Packets < was.ToContainer.Packets+3 || is.FromContainer.Bytes <= was.FromContainer.Bytes {
				t.Errorf("counters of %s did not grow with traffic: before %+v %+v, after %+v %+v",
					c.id, was.FromContainer, was.ToContainer, is.FromContainer, is.ToContainer)
			}
		}
	})

	t.Run("programs and links", func(t *testing.T) {
		var progs []inspectProg
		inspectJSON(t, sb, &progs, "prog")
		var links []inspectLink
		inspectJSON(t, sb, &links, "link")
		for _, c := range ctrs {
			veth := hostVeth(t, sb, c)
			in, eg := attachedPrograms(t, sb, veth)
			var seen []string
			for _, p := range progs {
				for _, at := range p.Attachments {
					if at.Interface == veth {
						seen = append(seen, p.Name+"@"+at.Direction+"/"+at.AttachMode)
						if !p.Current {
							t.Errorf("%s: program %d of another build attached", veth, p.ID)
						}
					}
				}
			}
			slices.Sort(seen)
			mode := attachMode().String()
			if want := []string{"from_container@ingress/" + mode, "to_container@egress/" + mode}; !slices.Equal(seen, want) {
				t.Errorf("prog: %s carries %v, want %v", veth, seen, want)
			}
			i := slices.IndexFunc(links, func(l inspectLink) bool { return l.Interface == veth })
			if i < 0 {
				t.Fatalf("link does not list %s: %+v", veth, links)
			}
			l := links[i]
			wantIn := []inspectLinkProg{{uint32(in[0]), "from_container", mode}}
			wantEg := []inspectLinkProg{{uint32(eg[0]), "to_container", mode}}
			if l.ContainerID != c.id || !equalJSON(l.Ingress, wantIn) || !equalJSON(l.Egress, wantEg) {
				t.Errorf("link %s: %+v, want endpoint %s, ingress %+v, egress %+v", veth, l, c.id, wantIn, wantEg)
			}
		}
	})

	t.Run("spoofed packet", func(t *testing.T) {
		// The monitor watches for b's spoofed ARP only, so that no other
		// drop can satisfy --count 1.
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		mon := inspectCmd(ctx, sb, "monitor", "-j", "--count", "1", "--duration", "20s",
			"--endpoint", b.id+"/eth0", "--reason", "spoof-arp")
		stdout, err := mon.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		stderr, err := mon.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := sb.InNode(mon.Start); err != nil {
			t.Fatal(err)
		}
		ready := make(chan string, 1)
		go func() {
			line, _ := bufio.NewReader(stderr).ReadString('\n')
			ready <- line
			io.Copy(io.Discard, stderr)
		}()
		select {
		case line := <-ready:
			if !strings.HasPrefix(line, "monitoring drop events") {
				t.Fatalf("monitor did not start: %q", line)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("monitor did not say it was ready within 10s")
		}
		events := make(chan string, 1)
		go func() {
			line, _ := bufio.NewReader(stdout).ReadString('\n')
			events <- line
		}()

		// b claims a's address.
		sendFrame(t, b.ns, "eth0", arpReply(b.mac, a.ip, netip.MustParseAddr("10.130.0.1")))
		sent := time.Now()
		var ev inspectEvent
		select {
		case line := <-events:
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("monitor printed %q: %v", line, err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("monitor printed no event within 2s of the spoofed ARP")
		}
		if err := mon.Wait(); err != nil {
			t.Errorf("monitor --count 1: %v", err)
		}
		want := inspectEvent{Time: ev.Time, ContainerID: b.id, IfName: "eth0", Reason: "spoof-arp",
			Direction: "from-container", EthProto: "arp", SrcMAC: b.mac.String(), SrcIP: a.ip.String()}
		if ev != want {
			t.Errorf("event %+v, want %+v", ev, want)
		}
		if d := ev.Time.Sub(sent); d < -time.Second || d > time.Second {
			t.Errorf("event time %v is %v away from when the frame was sent", ev.Time, d)
		}

		var st inspectDrops
		inspectJSON(t, sb, &st, "stats")
		if st.Totals["spoof-arp"] < 1 {
			t.Errorf("stats: node total spoof-arp %d", st.Totals["spoof-arp"])
		}
		if i := slices.IndexFunc(st.Networks, func(n struct {
			Network string            `json:"network"`
			Drops   map[string]uint64 `json:"drops"`
		}) bool {
			return n.Network == "insp"
		}); i < 0 || st.Networks[i].Drops["spoof-arp"] < 1 {
			t.Errorf("stats: network insp counts no spoof-arp: %+v", st.Networks)
		}
		for _, e := range st.Endpoints {
			if got := e.Drops["spoof-arp"]; (e.ContainerID == b.id) != (got > 0) {
				t.Errorf("stats: endpoint %s/%s counts %d spoof-arp", e.ContainerID, e.IfName, got)
			}
		}
		for _, arg := range []string{b.id + "/eth0", b.id} {
			var eps []inspectEndpoint
			inspectJSON(t, sb, &eps, "endpoint", "show", arg)
			if len(eps) != 1 || eps[0].Drops["spoof-arp"] < 1 {
				t.Errorf("endpoint show %s: %+v, want one endpoint with a spoof-arp drop", arg, eps)
			}
		}
	})

	t.Run("ct and nat without masquerade", func(t *testing.T) {
		for _, obj := range []string{"ct", "nat"} {
			stdout, stderr, code := runInspect(t, sb, obj, "list")
			if code != 0 || stdout != "no masquerade state on this node (no network with ipMasq)\n" {
				t.Errorf("%s list: exit %d, stdout %q, stderr %q", obj, code, stdout, stderr)
			}
			var entries []inspectEntry
			inspectJSON(t, sb, &entries, obj, "list")
			if len(entries) != 0 {
				t.Errorf("%s list -j: %v", obj, entries)
			}
		}
	})

	t.Run("maps", func(t *testing.T) {
		var maps []inspectMap
		inspectJSON(t, sb, &maps, "map", "list")
		var names []string
		for _, m := range maps {
			names = append(names, m.Name)
			var entries []inspectEntry
			inspectJSON(t, sb, &entries, "map", "dump", m.Name, "--per-cpu")
			if m.Entries != nil && len(entries) != *m.Entries {
				t.Errorf("map dump %s: %d entries, map list says %d", m.Name, len(entries), *m.Entries)
			}
			for _, e := range entries {
				if len(e.Key) == 0 || len(e.Value) == 0 || e.Key["hex"] != nil || e.Value["hex"] != nil {
					t.Errorf("map dump %s: entry not decoded: %+v", m.Name, e)
				}
				if strings.HasPrefix(m.Type, "PerCPU") && len(e.PerCPU) == 0 {
					t.Errorf("map dump %s --per-cpu: no per-CPU values: %+v", m.Name, e)
				}
			}
			switch m.Name {
			case "endpoints":
				var macs []string
				for _, e := range entries {
					mac, _ := e.Value["mac"].(string)
					if _, err := net.ParseMAC(mac); err != nil {
						t.Errorf("endpoints: mac %v is not a MAC", e.Value["mac"])
					}
					macs = append(macs, mac)
				}
				for _, c := range ctrs {
					if !slices.Contains(macs, c.mac.String()) {
						t.Errorf("endpoints: no entry with %s's MAC %s: %v", c.id, c.mac, macs)
					}
				}
			case "ip_owners":
				var addrs []any
				for _, e := range entries {
					addrs = append(addrs, e.Key["addr"])
				}
				for _, c := range ctrs {
					if !slices.Contains(addrs, any(c.ip.String())) {
						t.Errorf("ip_owners: no key with %s's address %s: %v", c.id, c.ip, addrs)
					}
				}
			case "endpoint_meta":
				for _, e := range entries {
					if id, _ := e.Value["container_id"].(string); id != a.id && id != b.id {
						t.Errorf("endpoint_meta: container_id %v", e.Value["container_id"])
					}
				}
			}
		}
		for _, want := range []string{"endpoints", "ip_owners", "endpoint_meta", "endpoint_stats", "drop_totals", "drop_events", "event_budget"} {
			if !slices.Contains(names, want) {
				t.Errorf("map list has no %s: %v", want, names)
			}
		}
	})

	t.Run("stale allocation", func(t *testing.T) {
		gone := n.attach("insp-gone")
		if err := gone.ns.Delete(); err != nil {
			t.Fatal(err)
		}
		var allocs []inspectAllocation
		inspectJSON(t, sb, &allocs, "ipam", "--data-dir", dataDir)
		want := map[string]inspectAllocation{
			a.id:    {Network: "insp", IP: a.ip.String(), ContainerID: a.id},
			b.id:    {Network: "insp", IP: b.ip.String(), ContainerID: b.id},
			gone.id: {Network: "insp", IP: gone.ip.String(), ContainerID: gone.id, Stale: true, StaleReason: "netns-gone"},
		}
		if len(allocs) != len(want) {
			t.Errorf("ipam lists %d allocations, want %d: %+v", len(allocs), len(want), allocs)
		}
		for _, got := range allocs {
			if got != want[got.ContainerID] {
				t.Errorf("ipam: %+v, want %+v", got, want[got.ContainerID])
			}
		}
	})
}

// equalJSON compares two values by their JSON encoding.
func equalJSON(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

// TestInspectErrors: without root, without a bpffs, and on a node without
// state, every command fails with one line of explanation, never a trace.
func TestInspectErrors(t *testing.T) {
	// nobody needs a binary it can reach: t.TempDir is private to root.
	dir, err := os.MkdirTemp("", "bpfbridge-inspect-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bridge")
	data, err := os.ReadFile(bins.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	empty := sandbox.ForTest(t)
	if err := empty.MountBPFFS(); err != nil {
		t.Fatal(err)
	}
	nobody := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}

	for _, c := range []struct {
		what  string
		args  []string
		attr  *syscall.SysProcAttr
		code  int
		error string
	}{
		{"not root", []string{"endpoint", "list", "--bpffs", empty.BPFFS}, nobody, 1, "needs root (CAP_BPF and CAP_NET_ADMIN): run it with sudo"},
		{"no bpffs", []string{"stats", "--bpffs", t.TempDir()}, nil, 1, "no bpffs is mounted at"},
		{"no state", []string{"prog", "-j", "--bpffs", empty.BPFFS}, nil, 1, "no bpfbridge state on this node"},
		{"no state (monitor)", []string{"monitor", "--bpffs", empty.BPFFS}, nil, 1, "no bpfbridge state on this node"},
		{"unknown command", []string{"frobnicate"}, nil, 2, "unknown command"},
		{"flag of another command", []string{"stats", "--per-cpu"}, nil, 2, "--per-cpu does not apply to stats"},
		{"missing argument", []string{"endpoint", "show"}, nil, 2, "usage: bridge inspect endpoint show"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		cmd := exec.CommandContext(ctx, bin, append([]string{"inspect"}, c.args...)...)
		cmd.SysProcAttr = c.attr
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		cancel()
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Errorf("%s: %v, want exit status %d", c.what, err, c.code)
			continue
		}
		msg := stderr.String()
		if exit.ExitCode() != c.code || strings.Count(msg, "\n") != 1 || !strings.Contains(msg, c.error) ||
			strings.Contains(msg, "goroutine") || strings.Contains(msg, "panic") || stdout.Len() != 0 {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit %d and one line saying %q",
				c.what, exit.ExitCode(), stdout.String(), msg, c.code, c.error)
		}
	}
}

// TestInspectMasquerade: `ct list` and `nat list` show a container's flow
// to the external namespace with the translated address and port, and
// nothing once the container is deleted.
func TestInspectMasquerade(t *testing.T) {
	sb, n, server := newMasqNetwork(t, 8080)
	c := n.attach("flow")
	seen, err := whoAmI(t, c, "tcp", server)
	if err != nil {
		t.Fatal(err)
	}
	type flow struct {
		Proto      string                   `json:"proto"`
		Container  string                   `json:"container"`
		Remote     string                   `json:"remote"`
		Translated string                   `json:"translated"`
		State      string                   `json:"state"`
		Orig       struct{ Packets uint64 } `json:"orig"`
		Reply      struct{ Packets uint64 } `json:"reply"`
	}
	for _, obj := range []string{"ct", "nat"} {
		var flows []flow
		inspectJSON(t, sb, &flows, obj, "list", "--endpoint", c.id)
		found := false
		for _, f := range flows {
			if f.Proto == "tcp" && f.Remote == server.String() && f.Translated == seen.String() &&
				strings.HasPrefix(f.Container, c.ip.String()+":") && f.Orig.Packets > 0 && f.Reply.Packets > 0 {
				found = true
			}
		}
		if !found {
			t.Errorf("%s list: no TCP flow %s > %s translated to %s (the server saw it) in %+v", obj, c.ip, server, seen, flows)
		}
	}
	var dump []inspectEntry
	inspectJSON(t, sb, &dump, "map", "dump", "nat_out")
	decoded := false
	for _, e := range dump {
		decoded = decoded || e.Key["src"] != nil && strings.HasPrefix(fmt.Sprint(e.Key["src"]), c.ip.String()+":") && e.Value["addr"] == seen.String()
	}
	if !decoded {
		t.Errorf("map dump nat_out: no decoded entry %s → %s in %+v", c.ip, seen, dump)
	}
	if err := n.del(c.ns, c.id, "eth0"); err != nil {
		t.Fatal(err)
	}
	// The network's last endpoint took its masquerade state along.
	for _, obj := range []string{"ct", "nat"} {
		stdout, _, code := runInspect(t, sb, obj, "list")
		if code != 0 || !strings.HasPrefix(stdout, "no masquerade state on this node") {
			t.Errorf("%s list after DEL: exit %d, %q", obj, code, stdout)
		}
	}
}
