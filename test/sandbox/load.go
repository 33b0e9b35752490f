package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The load generators below measure the path from a client namespace to a
// server they start inside a server namespace, each for at most d; ctx ends
// them early. The client is usually a container, the server another
// container or Sandbox.External (at Internet4). As in traffic.go, sockets are
// opened inside the namespaces and used afterwards from any goroutine.

const (
	// streamChunk is the size of each TCPStream write: iperf3's default, so
	// that the two measure the same thing.
	streamChunk = 128 << 10
	// dialTimeout bounds every connection setup; on these links a handshake
	// takes microseconds, so hitting it means the path is broken.
	dialTimeout = 3 * time.Second
	// udpDrain is how long UDPRate keeps counting after the sender stops,
	// for datagrams still queued on the way.
	udpDrain = 100 * time.Millisecond
)

// TCPStream sends from client over one TCP connection to a sink listening at
// addr inside server, as fast as it can for d, and returns the throughput
// the sink received, in bits per second.
func TCPStream(ctx context.Context, client, server *NetNS, addr netip.Addr, d time.Duration) (bitsPerSecond float64, err error) {
	c, s, err := tcpPair(client, server, netip.AddrPortFrom(addr, 0), netip.AddrPort{})
	if err != nil {
		return 0, err
	}
	defer s.Close()
	received := make(chan int64, 1)
	go func() {
		// Reads as large as the writes, as iperf3's receiver does;
		// io.Discard would read 8 KiB at a time and make the receiver,
		// not the path, the bottleneck.
		buf := make([]byte, streamChunk)
		var n int64
		for {
			nr, err := s.Read(buf)
			n += int64(nr)
			if err != nil {
				break
			}
		}
		received <- n
	}()
	start := time.Now()
	deadline := start.Add(d)
	// A write blocks while the socket buffer is full; the deadline bounds it.
	c.SetWriteDeadline(deadline)
	chunk := make([]byte, streamChunk)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		if _, err = c.Write(chunk); err != nil {
			break
		}
	}
	c.Close()
	n := <-received // the sink returns at the FIN, after every byte sent
	elapsed := time.Since(start)
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, fmt.Errorf("sandbox: TCP stream to %s from %s: %w", addr, client.Name, err)
	}
	return float64(n*8) / elapsed.Seconds(), ctx.Err()
}

// TCPRequestResponse times 1-byte request/response exchanges over one TCP
// connection from client to an echo server at addr inside server, one
// after the other, for d and at most max exchanges, and returns each
// round trip.
func TCPRequestResponse(ctx context.Context, client, server *NetNS, addr netip.Addr, d time.Duration, max int) ([]time.Duration, error) {
	return TCPRequestResponseAt(ctx, client, server, netip.AddrPortFrom(addr, 0), netip.AddrPort{}, d, max)
}

// TCPRequestResponseAt is [TCPRequestResponse] with the echo server
// listening at listen inside server (port 0: any free port) and the client
// connecting to dial, which a translation on the way (a published port)
// takes to listen; a zero dial is the listener's own address.
func TCPRequestResponseAt(ctx context.Context, client, server *NetNS, listen, dial netip.AddrPort, d time.Duration, max int) ([]time.Duration, error) {
	c, s, err := tcpPair(client, server, listen, dial)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	defer s.Close()
	go func() {
		buf := make([]byte, 1)
		for {
			if _, err := io.ReadFull(s, buf); err != nil {
				return
			}
			if _, err := s.Write(buf); err != nil {
				return
			}
		}
	}()
	deadline := time.Now().Add(d)
	// A lost peer must not stall the loop past d.
	c.SetDeadline(deadline.Add(dialTimeout))
	buf := make([]byte, 1)
	var rtts []time.Duration
	for len(rtts) < max && ctx.Err() == nil && time.Now().Before(deadline) {
		start := time.Now()
		if _, err := c.Write(buf); err != nil {
			return rtts, fmt.Errorf("sandbox: TCP request to %s from %s: %w", c.RemoteAddr(), client.Name, err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return rtts, fmt.Errorf("sandbox: TCP response from %s to %s: %w", c.RemoteAddr(), client.Name, err)
		}
		rtts = append(rtts, time.Since(start))
	}
	return rtts, ctx.Err()
}

// TCPConnectRate opens and closes TCP connections from client to a server at
// addr inside server, one after the other, for d, and returns how many
// completed per second. The client closes each connection with a reset
// (SO_LINGER 0), so that no TIME_WAIT state piles up and exhausts its ports;
// what is measured is the handshake through the datapath, connection
// tracking and NAT included.
func TCPConnectRate(ctx context.Context, client, server *NetNS, addr netip.Addr, d time.Duration) (perSecond float64, err error) {
	return TCPConnectRateAt(ctx, client, server, netip.AddrPortFrom(addr, 0), netip.AddrPort{}, d)
}

// TCPConnectRateAt is [TCPConnectRate] with the server listening at listen
// and the client connecting to dial, as for [TCPRequestResponseAt].
func TCPConnectRateAt(ctx context.Context, client, server *NetNS, listen, dial netip.AddrPort, d time.Duration) (perSecond float64, err error) {
	ln, err := server.ListenTCP(listen)
	if err != nil {
		return 0, err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed
			}
			// The server waits for the client's reset rather than closing
			// first, which would leave it in TIME_WAIT.
			wg.Go(func() {
				c.SetDeadline(time.Now().Add(dialTimeout))
				io.Copy(io.Discard, c)
				c.Close()
			})
		}
	})
	dst := dialAddr(ln, dial)
	count := 0
	start := time.Now()
	deadline := start.Add(d)
	// The whole loop runs inside client, so each socket is created there
	// without a namespace switch per connection.
	err = client.Do(func() error {
		dialer := net.Dialer{Timeout: dialTimeout}
		for ctx.Err() == nil && time.Now().Before(deadline) {
			c, err := dialer.DialContext(ctx, "tcp", dst)
			if err != nil {
				return err
			}
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
			count++
		}
		return ctx.Err()
	})
	if err != nil {
		return 0, fmt.Errorf("sandbox: TCP connect to %s from %s: %w", dst, client.Name, err)
	}
	return float64(count) / time.Since(start).Seconds(), nil
}

// UDPRate sends size-byte UDP datagrams from client to a receiver at addr
// inside server as fast as one sender can for d, and returns how many
// datagrams per second arrived, and how many were sent.
func UDPRate(ctx context.Context, client, server *NetNS, addr netip.Addr, size int, d time.Duration) (receivedPerSecond float64, sent int, err error) {
	rx, err := server.ListenUDP(netip.AddrPortFrom(addr, 0))
	if err != nil {
		return 0, 0, err
	}
	rx.SetReadBuffer(4 << 20) // capped by the machine's net.core.rmem_max
	var received atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			if _, err := rx.Read(buf); err != nil {
				return // closed
			}
			received.Add(1)
		}
	})
	defer wg.Wait()
	defer rx.Close()

	var tx *net.UDPConn
	err = client.Do(func() (err error) {
		tx, err = net.DialUDP(network("udp", addr), nil, rx.LocalAddr().(*net.UDPAddr))
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("sandbox: UDP to %s from %s: %w", addr, client.Name, err)
	}
	defer tx.Close()
	payload := make([]byte, size)
	start := time.Now()
	deadline := start.Add(d)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		// A full queue on the way drops datagrams silently, so writes only
		// fail when the path itself is broken (an ICMP error, for one).
		if _, err := tx.Write(payload); err != nil {
			return 0, sent, fmt.Errorf("sandbox: UDP to %s from %s: %w", addr, client.Name, err)
		}
		sent++
	}
	elapsed := time.Since(start)
	time.Sleep(udpDrain)
	return float64(received.Load()) / elapsed.Seconds(), sent, ctx.Err()
}

// Percentile returns the p-th percentile (0 < p ≤ 100) of ds by the
// nearest-rank method, or 0 for an empty ds. ds is not modified.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(p/100*float64(len(s))+0.999999) - 1 // ceil(p/100·n) - 1
	return s[min(max(rank, 0), len(s)-1)]
}

// ListenTCP listens on addr (port 0 for any) inside n, in its family.
func (n *NetNS) ListenTCP(addr netip.AddrPort) (*net.TCPListener, error) {
	return openIn(n, "TCP listener", addr, func() (*net.TCPListener, error) {
		return net.ListenTCP(network("tcp", addr.Addr()), net.TCPAddrFromAddrPort(addr))
	})
}

// ListenUDP opens a UDP socket on addr (port 0 for any) inside n, in its
// family.
func (n *NetNS) ListenUDP(addr netip.AddrPort) (*net.UDPConn, error) {
	return openIn(n, "UDP socket", addr, func() (*net.UDPConn, error) {
		return net.ListenUDP(network("udp", addr.Addr()), net.UDPAddrFromAddrPort(addr))
	})
}

// openIn returns the socket open opens inside n, which it stays in; what
// and addr name it in the error.
func openIn[S any](n *NetNS, what string, addr netip.AddrPort, open func() (S, error)) (S, error) {
	var s S
	err := n.Do(func() (err error) { s, err = open(); return err })
	if err != nil {
		return s, fmt.Errorf("sandbox: %s on %s in %s: %w", what, addr, n.Name, err)
	}
	return s, nil
}

// dialAddr is where a client reaches ln: dial, or without one ln's own
// address.
func dialAddr(ln *net.TCPListener, dial netip.AddrPort) string {
	if dial.IsValid() {
		return dial.String()
	}
	return ln.Addr().String()
}

// tcpPair connects client to dial (see dialAddr), which leads to a
// listener at listen inside server, and returns both ends of the
// connection.
func tcpPair(client, server *NetNS, listen, dial netip.AddrPort) (c, s net.Conn, err error) {
	ln, err := server.ListenTCP(listen)
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	dst := dialAddr(ln, dial)
	err = client.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", dst, dialTimeout)
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox: TCP connect to %s from %s: %w", dst, client.Name, err)
	}
	ln.SetDeadline(time.Now().Add(dialTimeout))
	if s, err = ln.Accept(); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("sandbox: TCP accept in %s: %w", server.Name, err)
	}
	return c, s, nil
}
