package sandbox

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// ServeWhoAmI answers, inside n, every TCP connection and every UDP datagram
// to addr with the address:port they came from, followed by a newline: how
// a server sees its clients, e.g. through masquerade.
func ServeWhoAmI(n *NetNS, addr netip.AddrPort) (stop func(), err error) {
	return serveLines(n, addr, func(from string) string { return from })
}

// ServeTagged is ServeWhoAmI answering "<tag> <address:port>": which server
// got the traffic, and from where.
func ServeTagged(n *NetNS, addr netip.AddrPort, tag string) (stop func(), err error) {
	return serveLines(n, addr, func(from string) string { return tag + " " + from })
}

// serveLines answers TCP and UDP to addr inside n with line(client)+"\n".
func serveLines(n *NetNS, addr netip.AddrPort, line func(from string) string) (stop func(), err error) {
	ln, err := openIn(n, "whoami server", addr, func() (net.Listener, error) { return net.Listen("tcp", addr.String()) })
	if err != nil {
		return nil, err
	}
	_, stopUDP, err := ServeUDP(n, addr, func(_ []byte, from net.Addr) []byte { return []byte(line(from.String()) + "\n") })
	if err != nil {
		ln.Close()
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, line(c.RemoteAddr().String()))
			c.Close()
		}
	}()
	return func() { ln.Close(); stopUDP() }, nil
}

// ServeUDP answers, inside n, every datagram to addr (port 0 picks a free
// port; a wildcard address serves both families) with what answer returns
// for it. It returns the bound address and stop, which closes the socket.
func ServeUDP(n *NetNS, addr netip.AddrPort, answer func(req []byte, from net.Addr) []byte) (bound netip.AddrPort, stop func(), err error) {
	pc, err := openIn(n, "UDP server", addr, func() (net.PacketConn, error) { return net.ListenPacket("udp", addr.String()) })
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			nr, from, err := pc.ReadFrom(buf)
			if err != nil {
				return // stop closed the socket
			}
			_, _ = pc.WriteTo(answer(buf[:nr], from), from) // best effort, as UDP is
		}
	}()
	return unmap(pc.LocalAddr().(*net.UDPAddr).AddrPort()), func() { pc.Close() }, nil
}

// WhoAmI asks the ServeWhoAmI server at dst, over network "tcp" or "udp"
// from inside n, which address it saw.
func WhoAmI(n *NetNS, network string, dst netip.AddrPort, timeout time.Duration) (netip.AddrPort, error) {
	var conn net.Conn
	err := n.Do(func() (err error) { conn, err = net.DialTimeout(network, dst.String(), timeout); return err })
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if network == "udp" {
		if _, err := conn.Write([]byte("?")); err != nil {
			return netip.AddrPort{}, err
		}
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.ParseAddrPort(strings.TrimSpace(line))
}
