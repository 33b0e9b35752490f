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
	var ln net.Listener
	var pc net.PacketConn
	err = n.Do(func() (err error) {
		if ln, err = net.Listen("tcp", addr.String()); err != nil {
			return err
		}
		if pc, err = net.ListenPacket("udp", addr.String()); err != nil {
			ln.Close()
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sandbox: whoami server in %s: %w", n.Name, err)
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
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(line(from.String())+"\n"), from)
		}
	}()
	return func() { ln.Close(); pc.Close() }, nil
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
