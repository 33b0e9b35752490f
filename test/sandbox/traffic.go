package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

const (
	// serverConnTimeout bounds how long an echo server serves one TCP
	// connection, so that a stuck client cannot hold it forever.
	serverConnTimeout = 30 * time.Second
	// udpResendInterval is how long UDPEcho waits for a reply before it
	// sends the datagram again.
	udpResendInterval = 200 * time.Millisecond
)

// All sockets below are created inside n.Do and used after it returns: a
// socket belongs to the namespace it was created in, whichever thread uses
// it later. Every address is a literal, so net never resolves names or dials
// in parallel on other goroutines (which would run outside n).

// Ping sends count ICMP echo requests (ICMPv6 for an IPv6 dst) from inside n
// to dst, one at a time, and waits up to timeout for the reply to each. It
// returns how many replies came back; lost echoes only lower that count,
// while err reports a failure to send or receive, such as no route to dst.
func Ping(n *NetNS, dst netip.Addr, count int, timeout time.Duration) (received int, err error) {
	if count < 1 || count > 0xffff {
		return 0, fmt.Errorf("sandbox: ping count %d out of range", count)
	}
	dst = dst.Unmap()
	network, laddr, proto := "ip4:icmp", "0.0.0.0", 1
	var request, reply icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.Is6() {
		network, laddr, proto = "ip6:ipv6-icmp", "::", 58
		request, reply = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	var (
		c    *icmp.PacketConn
		zone string
	)
	err = n.Do(func() (err error) {
		if zone, err = ZoneIndex(dst.Zone()); err != nil {
			return err
		}
		c, err = icmp.ListenPacket(network, laddr)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("sandbox: ping %s from %s: %w", dst, n.Name, err)
	}
	defer c.Close()

	// A raw socket sees every ICMP message of the namespace, including the
	// replies to concurrent Pings, so replies are matched on a random ID.
	id := rand.IntN(1 << 16)
	peer := &net.IPAddr{IP: dst.AsSlice(), Zone: zone}
	buf := make([]byte, 1500)
	for seq := 1; seq <= count; seq++ {
		msg := icmp.Message{Type: request, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("bpfbridge sandbox")}}
		// For ICMPv6 the kernel fills in the checksum, which covers a
		// pseudo-header Marshal(nil) cannot know.
		wb, err := msg.Marshal(nil)
		if err != nil {
			return received, err
		}
		if _, err := c.WriteTo(wb, peer); err != nil {
			return received, fmt.Errorf("sandbox: ping %s from %s: %w", dst, n.Name, err)
		}
		ok, err := awaitEchoReply(c, buf, proto, reply, peer, id, seq, time.Now().Add(timeout))
		if err != nil {
			return received, fmt.Errorf("sandbox: ping %s from %s: %w", dst, n.Name, err)
		}
		if ok {
			received++
		}
	}
	return received, nil
}

// ZoneIndex is the zone of a scoped IPv6 address (an interface name) as the
// interface's index, looked up in the calling thread's namespace. Go looks
// names up on whatever thread sends, which need not be in the namespace
// whose interface the address names.
func ZoneIndex(zone string) (string, error) {
	if zone == "" {
		return "", nil
	}
	ifc, err := net.InterfaceByName(zone)
	if err != nil {
		return "", err
	}
	return strconv.Itoa(ifc.Index), nil
}

// awaitEchoReply reads from c until the echo reply (id, seq) from peer
// arrives, reporting false if deadline passes first.
func awaitEchoReply(c *icmp.PacketConn, buf []byte, proto int, reply icmp.Type, peer *net.IPAddr, id, seq int, deadline time.Time) (bool, error) {
	if err := c.SetReadDeadline(deadline); err != nil {
		return false, err
	}
	for {
		nr, from, err := c.ReadFrom(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		m, err := icmp.ParseMessage(proto, buf[:nr])
		if err != nil || m.Type != reply {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		if ok && e.ID == id && e.Seq == seq && from.(*net.IPAddr).IP.Equal(peer.IP) {
			return true, nil
		}
	}
}

// ServeTCPEcho listens on addr inside n (port 0 picks a free port) and
// echoes every connection's bytes back until the client half-closes. It
// returns the bound address and stop, which closes the listener and all
// connections and waits for them; stop may be called more than once.
func ServeTCPEcho(n *NetNS, addr netip.AddrPort) (bound netip.AddrPort, stop func(), err error) {
	ln, err := n.ListenTCP(addr)
	if err != nil {
		return netip.AddrPort{}, nil, err
	}

	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		closed bool
		conns  = map[net.Conn]struct{}{}
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // the listener was closed by stop
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				return
			}
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				c.SetDeadline(time.Now().Add(serverConnTimeout))
				io.Copy(c, c)
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			})
		}
	})
	stop = sync.OnceFunc(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return unmap(ln.Addr().(*net.TCPAddr).AddrPort()), stop, nil
}

// TCPEcho connects from inside n to an echo server at dst, sends payload,
// half-closes and checks that exactly payload comes back, all within timeout.
func TCPEcho(n *NetNS, dst netip.AddrPort, payload []byte, timeout time.Duration) error {
	return echo(n, "tcp", dst, payload, timeout, func(conn net.Conn, deadline time.Time) ([]byte, error) {
		c := conn.(*net.TCPConn)
		if err := c.SetDeadline(deadline); err != nil {
			return nil, err
		}
		// Write concurrently with reading: a payload larger than the socket
		// buffers would otherwise fill both directions and stall.
		werr := make(chan error, 1)
		go func() {
			_, err := c.Write(payload)
			if err == nil {
				err = c.CloseWrite()
			}
			werr <- err
		}()
		got, err := io.ReadAll(c)
		return got, errors.Join(err, <-werr)
	})
}

// ServeUDPEcho listens on addr inside n (port 0 picks a free port) and sends
// every datagram back to its sender. It returns the bound address and stop,
// which closes the socket and waits for the server; stop may be called more
// than once.
func ServeUDPEcho(n *NetNS, addr netip.AddrPort) (bound netip.AddrPort, stop func(), err error) {
	c, err := n.ListenUDP(addr)
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	// Replies must leave from the address each datagram was sent to. On a
	// wildcard socket the kernel would otherwise pick the source by route,
	// the uplink address for a datagram sent to an address on lo, say, and
	// the client's connected socket would drop the reply.
	var serve func()
	if addr.Addr().Unmap().Is4() {
		p := ipv4.NewPacketConn(c)
		err = p.SetControlMessage(ipv4.FlagDst, true)
		serve = func() {
			echoFromDst(p, func(cm *ipv4.ControlMessage) *ipv4.ControlMessage { return &ipv4.ControlMessage{Src: cm.Dst} })
		}
	} else {
		p := ipv6.NewPacketConn(c)
		err = p.SetControlMessage(ipv6.FlagDst, true)
		serve = func() {
			echoFromDst(p, func(cm *ipv6.ControlMessage) *ipv6.ControlMessage { return &ipv6.ControlMessage{Src: cm.Dst} })
		}
	}
	if err != nil {
		c.Close()
		return netip.AddrPort{}, nil, fmt.Errorf("sandbox: UDP echo server in %s: %w", n.Name, err)
	}
	var wg sync.WaitGroup
	wg.Go(serve)
	stop = sync.OnceFunc(func() {
		c.Close()
		wg.Wait()
	})
	return unmap(c.LocalAddr().(*net.UDPAddr).AddrPort()), stop, nil
}

// datagramConn is what x/net's ipv4.PacketConn and ipv6.PacketConn have in
// common; CM is the family's ControlMessage.
type datagramConn[CM any] interface {
	ReadFrom(b []byte) (int, *CM, net.Addr, error)
	WriteTo(b []byte, cm *CM, dst net.Addr) (int, error)
}

// echoFromDst sends every datagram p reads back to its sender, with the
// control message reply makes of the datagram's (its destination as the
// source), until p is closed.
func echoFromDst[CM any](p datagramConn[CM], reply func(*CM) *CM) {
	buf := make([]byte, 64<<10)
	for {
		nr, cm, from, err := p.ReadFrom(buf)
		if err != nil {
			return // stop closed the socket
		}
		if cm != nil {
			p.WriteTo(buf[:nr], reply(cm), from) // best effort, as UDP is
		}
	}
}

// UDPEcho sends payload from inside n to a UDP echo server at dst and checks
// that the reply is exactly payload. UDP may drop a datagram, so it resends
// every 200ms until a reply arrives or timeout passes.
func UDPEcho(n *NetNS, dst netip.AddrPort, payload []byte, timeout time.Duration) error {
	return echo(n, "udp", dst, payload, timeout, func(c net.Conn, deadline time.Time) ([]byte, error) {
		buf := make([]byte, len(payload)+1) // one spare byte exposes a longer reply
		for time.Now().Before(deadline) {
			if _, err := c.Write(payload); err != nil {
				return nil, err
			}
			next := time.Now().Add(udpResendInterval)
			if next.After(deadline) {
				next = deadline
			}
			if err := c.SetReadDeadline(next); err != nil {
				return nil, err
			}
			nr, err := c.Read(buf)
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return buf[:nr], err
			}
		}
		return nil, fmt.Errorf("no reply within %v", timeout)
	})
}

// echo connects from inside n to the proto ("tcp", "udp") echo server at
// dst, has exchange send payload and return the reply before deadline, and
// checks that the reply is exactly payload.
func echo(n *NetNS, proto string, dst netip.AddrPort, payload []byte, timeout time.Duration,
	exchange func(c net.Conn, deadline time.Time) ([]byte, error)) error {
	deadline := time.Now().Add(timeout)
	var c net.Conn
	err := n.Do(func() (err error) {
		d := net.Dialer{Deadline: deadline}
		c, err = d.Dial(network(proto, dst.Addr()), dst.String())
		return err
	})
	if err != nil {
		return echoError(proto, dst, n, err)
	}
	defer c.Close()
	got, err := exchange(c, deadline)
	if err != nil {
		return echoError(proto, dst, n, err)
	}
	if !bytes.Equal(got, payload) {
		return echoError(proto, dst, n, fmt.Errorf("got %d bytes back that differ from the %d sent", len(got), len(payload)))
	}
	return nil
}

// echoError is a failed echo of proto to dst from n.
func echoError(proto string, dst netip.AddrPort, n *NetNS, err error) error {
	return fmt.Errorf("sandbox: %s echo %s from %s: %w", strings.ToUpper(proto), dst, n.Name, err)
}

// network picks "tcp4"/"udp4" or "tcp6"/"udp6" for addr, so that an IPv4
// wildcard is not silently turned into a dual-stack IPv6 socket.
func network(proto string, addr netip.Addr) string {
	if addr.Unmap().Is4() {
		return proto + "4"
	}
	return proto + "6"
}

// unmap undoes the IPv4-mapped form in which net reports IPv4 addresses.
func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
