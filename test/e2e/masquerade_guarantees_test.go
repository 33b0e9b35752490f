package e2e

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath/program"
	"github.com/bpfbridge/bpfbridge/test/sandbox"
)

// Masquerade's guarantees, end to end: nothing leaves with a container's
// address, one container cannot starve the others or the node, off-path
// packets cannot close a flow, and a config that would hurt the node is
// refused before it touches anything.

// capture is an AF_PACKET socket in a namespace, reading every frame that
// passes there (both directions) until stopped.
type capture struct {
	fd   int
	done chan struct{}
	mu   sync.Mutex
	seen func(frame []byte)
}

// startCapture opens the capture in ns, on the link ifname ("": every
// link), and calls seen (serialized) for every frame until the test ends.
func startCapture(t *testing.T, ns *sandbox.NetNS, ifname string, seen func(frame []byte)) *capture {
	t.Helper()
	c := &capture{done: make(chan struct{}), seen: seen}
	err := ns.Do(func() (err error) {
		c.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil || ifname == "" {
			return err
		}
		ifc, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		return unix.Bind(c.fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index})
	})
	if err != nil {
		t.Fatalf("capture socket: %v", err)
	}
	// Reads wake up every 100 ms to notice the stop.
	tv := unix.Timeval{Usec: 100000}
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		buf := make([]byte, 65536)
		for {
			select {
			case <-c.done:
				return
			default:
			}
			n, _, err := unix.Recvfrom(c.fd, buf, 0)
			if err != nil {
				continue // timeout, EINTR
			}
			c.mu.Lock()
			c.seen(buf[:n])
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		close(c.done)
		<-stopped
		unix.Close(c.fd)
	})
	return c
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// frameSource is the IP source address of an Ethernet frame, if it is IP.
func frameSource(f []byte) (netip.Addr, bool) {
	if len(f) < 14 {
		return netip.Addr{}, false
	}
	switch binary.BigEndian.Uint16(f[12:]) {
	case unix.ETH_P_IP:
		if len(f) >= 14+20 {
			return netip.AddrFrom4([4]byte(f[26:30])), true
		}
	case unix.ETH_P_IPV6:
		if len(f) >= 14+40 {
			return netip.AddrFrom16([16]byte(f[22:38])), true
		}
	}
	return netip.Addr{}, false
}

// watchLeaks fails t if, while it runs, any frame in the external world
// carries a source address from one of the container subnets.
func watchLeaks(t *testing.T, sb *sandbox.Sandbox, subnets ...netip.Prefix) {
	t.Helper()
	var leaks int
	var first string
	c := startCapture(t, sb.External, "", func(f []byte) {
		src, ok := frameSource(f)
		if !ok {
			return
		}
		for _, p := range subnets {
			if p.Contains(src) {
				if leaks == 0 {
					first = fmt.Sprintf("%x", f[:min(len(f), 64)])
				}
				leaks++
			}
		}
	})
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if leaks > 0 {
			t.Errorf("the outside saw %d packets with a container source (%v); the first: %s", leaks, subnets, first)
		}
	})
}

var masqSubnet4 = netip.MustParsePrefix("10.150.0.0/24")

// TestMasqueradeLargeUDP: a 3000-byte datagram leaves in fragments; every
// one is translated, so it arrives whole, from the uplink address, and the
// fragmented answer reaches the container whole too.
func TestMasqueradeLargeUDP(t *testing.T) {
	sb, n, _ := newMasqNetwork(t, 8080)
	c := n.attach("big")
	server := netip.AddrPortFrom(sb.Internet4, 9100)
	var conn *net.UDPConn
	if err := sb.External.Do(func() (err error) {
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(server))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	type got struct {
		n    int
		from netip.AddrPort
	}
	received := make(chan got, 1)
	go func() {
		buf := make([]byte, 10000)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		k, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			close(received)
			return
		}
		received <- got{k, from}
		conn.WriteToUDPAddrPort(buf[:k], from) // the answer, as large
	}()
	payload := []byte(strings.Repeat("0123456789", 300))
	var answer []byte
	err := c.ns.Do(func() error {
		cc, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(server))
		if err != nil {
			return err
		}
		defer cc.Close()
		if _, err := cc.Write(payload); err != nil {
			return err
		}
		cc.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 10000)
		k, err := cc.Read(buf)
		answer = buf[:k]
		return err
	})
	g, ok := <-received
	if !ok {
		t.Fatal("the outside received nothing")
	}
	if g.n != len(payload) || g.from.Addr() != sb.NodeUplink4.Addr() {
		t.Errorf("the outside received %d bytes from %v, want %d from %v", g.n, g.from, len(payload), sb.NodeUplink4.Addr())
	}
	if err != nil || string(answer) != string(payload) {
		t.Errorf("the container got %d bytes of the answer back (%v), want %d", len(answer), err, len(payload))
	}
}

// TestMasqueradeFloodThenConnect: one container sends to 270,000 distinct
// destinations, more than the table holds; it is held to its budget
// (nat-quota), and another container connects at once, with no GC.
func TestMasqueradeFloodThenConnect(t *testing.T) {
	sb, n, server := newMasqNetwork(t, 8081)
	flooder, other := n.attach("flood"), n.attach("calm")
	const flows = 270000
	err := flooder.ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		deadline := time.Now().Add(90 * time.Second)
		for i := range flows {
			// 203.0.113.10-14 (the outside's "internet"), 54,000 ports each.
			to := &unix.SockaddrInet4{Port: 1024 + i%54000, Addr: [4]byte{203, 0, 113, byte(10 + i/54000)}}
			for unix.Sendto(fd, []byte("x"), 0, to) == unix.EAGAIN {
				time.Sleep(time.Millisecond)
			}
			if i%10000 == 0 && time.Now().After(deadline) {
				return fmt.Errorf("only %d datagrams in 90 s", i)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if q := dropTotal(t, sb, program.BpfbridgeDropReasonDROP_NAT_QUOTA); q == 0 {
		t.Error("the flood was never held to its budget (no nat-quota drop)")
	}
	out, in := natEntries(t, sb)
	t.Logf("after the flood: %d/%d translations", out, in)
	if out >= 262144 {
		t.Errorf("the flood filled the table: %d translations", out)
	}
	start := time.Now()
	seen, err := sandbox.WhoAmI(other.ns, "tcp", server, time.Second)
	if err != nil {
		t.Fatalf("another container after the flood: %v (nat-exhausted %d, nat-quota %d)", err,
			dropTotal(t, sb, program.BpfbridgeDropReasonDROP_NAT_EXHAUSTED), dropTotal(t, sb, program.BpfbridgeDropReasonDROP_NAT_QUOTA))
	}
	t.Logf("connected in %v, seen as %v", time.Since(start), seen)
	// DEL of the calm one beside the flood's translations (timing is only
	// reported: the machine's load decides it).
	start = time.Now()
	if err := n.del(other.ns, other.id, "eth0"); err != nil {
		t.Fatal(err)
	}
	t.Logf("DEL beside %d translations took %v", out, time.Since(start))
}

// tcpSegment is what the capture learnt of a TCP segment.
type tcpSegment struct {
	src, dst netip.AddrPort
	seq, ack uint32
	payload  int
	flags    uint8
}

func parseTCP4(f []byte) (tcpSegment, bool) {
	if len(f) < 14+20+20 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_IP || f[14+9] != unix.IPPROTO_TCP {
		return tcpSegment{}, false
	}
	ip := f[14:]
	ihl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if len(ip) < ihl+20 || total > len(ip) {
		return tcpSegment{}, false
	}
	tcp := ip[ihl:total]
	doff := int(tcp[12]>>4) * 4
	return tcpSegment{
		src:     netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), binary.BigEndian.Uint16(tcp[0:])),
		dst:     netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), binary.BigEndian.Uint16(tcp[2:])),
		seq:     binary.BigEndian.Uint32(tcp[4:]),
		ack:     binary.BigEndian.Uint32(tcp[8:]),
		payload: len(tcp) - doff,
		flags:   tcp[13],
	}, true
}

// rst4 is an IPv4 TCP RST from src to dst with sequence number seq.
func rst4(src, dst netip.AddrPort, seq uint32) []byte {
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12], tcp[13] = 5<<4, 0x04
	s, d := src.Addr().As4(), dst.Addr().As4()
	pseudo := append(append(append([]byte{}, s[:]...), d[:]...), 0, unix.IPPROTO_TCP, 0, 20)
	binary.BigEndian.PutUint16(tcp[16:], inetChecksum(append(pseudo, tcp...)))
	ip := []byte{0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, unix.IPPROTO_TCP, 0, 0}
	ip = append(append(ip, s[:]...), d[:]...)
	binary.BigEndian.PutUint16(ip[10:], inetChecksum(ip))
	return append(ip, tcp...)
}

func inetChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// TestMasqueradeBlindRST: an idle established connection survives 5,000
// RSTs from an off-path attacker who knows the 4-tuple but not the
// sequence numbers: they change nothing in the flow's state, and the
// connection still carries data afterwards.
func TestMasqueradeBlindRST(t *testing.T) {
	sb, n, _ := newMasqNetwork(t, 8082)
	c := n.attach("idle")
	server := netip.AddrPortFrom(sb.Internet4, 9200)
	var ln net.Listener
	if err := sb.External.Do(func() (err error) { ln, err = net.Listen("tcp4", server.String()); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			accepted <- conn
		}
	}()
	// The server's segments to the container, seen on the outside.
	var mu sync.Mutex
	var last tcpSegment
	startCapture(t, sb.External, "", func(f []byte) {
		if s, ok := parseTCP4(f); ok && s.src == server {
			mu.Lock()
			last = s
			mu.Unlock()
		}
	})
	var conn net.Conn
	if err := c.ns.Do(func() (err error) { conn, err = net.DialTimeout("tcp4", server.String(), 3*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	srv := <-accepted
	defer srv.Close()
	go io.Copy(srv, srv)
	// One echoed byte each way: the server's next sequence number is known.
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	seg := last
	mu.Unlock()
	if !seg.dst.IsValid() {
		t.Fatal("no segment of the server captured")
	}
	next := seg.seq + uint32(seg.payload)
	raw, err := rawSocket(sb.External)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(raw)
	to := &unix.SockaddrInet4{Addr: seg.dst.Addr().As4()}
	for i := range uint32(5000) {
		// Half the sequence space away from the window, and on.
		if err := unix.Sendto(raw, rst4(server, seg.dst, next+1<<31+i*1000), 0, to); err != nil {
			t.Fatalf("RST %d: %v", i, err)
		}
	}
	// Past the second after which a closing flow gives up its port.
	time.Sleep(1500 * time.Millisecond)
	flows, err := openDatapath(t, sb).Flows()
	if err != nil {
		t.Fatal(err)
	}
	state := ""
	for _, f := range flows {
		if f.Container.Addr() == c.ip && f.Remote == server {
			state = f.State
		}
	}
	if state != "established" {
		t.Errorf("after 5000 blind RSTs the flow is %q, want established", state)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "still here" {
		t.Errorf("the connection after the RSTs: %q, %v", buf, err)
	}
}

// rawSocket is an IPv4 raw socket in ns that sends whole IP packets.
func rawSocket(ns *sandbox.NetNS) (fd int, err error) {
	err = ns.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		return err
	})
	return fd, err
}

// synRetrans is TcpExt's TCPSynRetrans of the namespace ns.
func synRetrans(t *testing.T, ns *sandbox.NetNS) uint64 {
	t.Helper()
	var v uint64
	err := ns.Do(func() error {
		// thread-self: /proc/self/net is the thread group leader's namespace.
		f, err := os.Open("/proc/thread-self/net/netstat")
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			names := strings.Fields(sc.Text())
			if !sc.Scan() {
				break
			}
			values := strings.Fields(sc.Text())
			for i, name := range names {
				if name == "TCPSynRetrans" && i < len(values) {
					v, err = strconv.ParseUint(values[i], 10, 64)
					return err
				}
			}
		}
		return errors.New("no TCPSynRetrans in /proc/net/netstat")
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestMasqueradeNodeBesideContainer: while a container opens connections to
// a server as fast as it can, the node opens 500 from its uplink address to
// the same server and port. They share the node's address and the
// ephemeral port range: every one of the node's succeeds, and the container
// never retransmits a SYN (no SYN of it was dropped).
func TestMasqueradeNodeBesideContainer(t *testing.T) {
	sb, n, _ := newMasqNetwork(t, 8083)
	c := n.attach("busy")
	server, stop, err := sandbox.ServeTCPEcho(sb.External, netip.AddrPortFrom(sb.Internet4, 9300))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	retransBefore := synRetrans(t, c.ns)
	var (
		wg       sync.WaitGroup
		made     atomic.Int64
		floodErr atomic.Value
	)
	for range 2 {
		wg.Go(func() {
			_ = c.ns.Do(func() error {
				for end := time.Now().Add(5 * time.Second); time.Now().Before(end); {
					conn, err := net.DialTimeout("tcp4", server.String(), 3*time.Second)
					if err != nil {
						floodErr.Store(err)
						return nil
					}
					conn.Close()
					made.Add(1)
				}
				return nil
			})
		})
	}
	local := &net.TCPAddr{IP: sb.NodeUplink4.Addr().AsSlice()}
	var failed []string
	err = sb.InNode(func() error {
		d := net.Dialer{LocalAddr: local, Timeout: 3 * time.Second}
		for i := range 500 {
			conn, err := d.Dial("tcp4", server.String())
			if err != nil {
				failed = append(failed, fmt.Sprintf("%d: %v", i, err))
				continue
			}
			conn.Close()
		}
		return nil
	})
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if len(failed) > 0 {
		t.Errorf("%d of the node's 500 connections failed: %v", len(failed), failed[:min(len(failed), 5)])
	}
	if e := floodErr.Load(); e != nil {
		t.Errorf("the container's connections: %v", e)
	}
	if r := synRetrans(t, c.ns) - retransBefore; r != 0 {
		t.Errorf("the container retransmitted %d SYNs", r)
	}
	t.Logf("the container opened %d connections meanwhile", made.Load())
}

// TestMasqueradeConfigRefused: a port range reaching into the privileged
// ports, more exclusions than the node's map holds, and a budget beyond the
// table's shared half are refused with code 7 before anything changes: not
// the node's sysctls, not its maps.
func TestMasqueradeConfigRefused(t *testing.T) {
	sb, n, _ := newMasqNetwork(t, 8084)
	n.attach("first")
	sysctls := func() []string {
		var vs []string
		for _, k := range []string{"net.ipv4.ip_local_reserved_ports", "net.ipv4.ip_local_port_range"} {
			v, err := sb.Node.Sysctl(k)
			if err != nil {
				t.Fatal(err)
			}
			vs = append(vs, v)
		}
		return vs
	}
	sysBefore, mapsBefore := sysctls(), mapEntries(t, sb)
	excludes := make([]string, 5000)
	for i := range excludes {
		excludes[i] = fmt.Sprintf("%q", netip.AddrFrom4([4]byte{100, 64 + byte(i>>8), byte(i), 0}).String()+"/24")
	}
	for _, tc := range []struct{ name, extra, key string }{
		{"portRange 1-65535", `"masquerade": {"portRange": "1-65535"}`, "masquerade.portRange"},
		{"5000 excludes", `"masquerade": {"exclude": [` + strings.Join(excludes, ",") + `]}`, "masquerade.exclude"},
		{"a share above the shared pool", `"masquerade": {"flowsPerContainer": 200000}`, "masquerade.flowsPerContainer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := newNetwork(t, sb, masqConf("masq", "br-masq", t.TempDir(), masqRanges4, tc.extra), bins.PluginDir())
			ns, err := sb.NewContainer("bad" + strconv.Itoa(len(tc.name)))
			if err != nil {
				t.Fatal(err)
			}
			_, err = bad.add(ns, "bad", "eth0")
			if code := cniCode(err); code != 7 || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("ADD: code %d (%v), want 7 naming %s", code, err, tc.key)
			}
		})
	}
	if got := sysctls(); strings.Join(got, " ") != strings.Join(sysBefore, " ") {
		t.Errorf("sysctls changed: %v -> %v", sysBefore, got)
	}
	if got := mapEntries(t, sb); fmt.Sprint(got) != fmt.Sprint(mapsBefore) {
		t.Errorf("maps changed: %v -> %v", mapsBefore, got)
	}
}
