package datapath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/bpfbridge/bpfbridge/datapath/program"
)

// Direction is which way a dropped packet was going (drop_event.direction):
// enum direction in bpf/drop.h, values program.BpfbridgeDirectionDIR_*.
type Direction = program.BpfbridgeDirection

// DropEvent is a dropped packet, as a program reported it.
type DropEvent struct {
	Time      time.Time // wall clock
	Ifindex   int       // host veth
	Reason    program.DropReason
	Direction Direction
	EthProto  uint16 // EtherType
	IPProto   uint8  // IP protocol, 0 when not IP
	SrcMAC    MAC
	DstMAC    MAC
	// Src and Dst are the IP addresses (sender and target for ARP), the
	// zero Addr for other EtherTypes.
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16 // TCP and UDP only
}

// EventReader reads drop events from the node's drop_events ring buffer.
//
// A ring buffer has one consumer position, kept in the map: two readers on
// one node share the events rather than each seeing all of them.
type EventReader struct {
	m     *ebpf.Map
	rd    *ringbuf.Reader
	close sync.Once
	// since: events older than this (CLOCK_MONOTONIC, ns) were waiting
	// in the ring before the reader opened, and are skipped.
	since uint64
}

// DropEvents opens the drop event ring buffer. The reader sees drops from
// now on: the events that wait in the ring from before (nobody was
// reading) are skipped.
func (d *Datapath) DropEvents() (*EventReader, error) {
	// Read-write: the reader advances the consumer position in the map.
	m, err := ebpf.LoadPinnedMap(filepath.Join(d.state.mapsDir(), program.BpfbridgeMapDropEvents), nil)
	if err != nil {
		return nil, fmt.Errorf("open drop events: %w", err)
	}
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("read drop events: %w", err)
	}
	return &EventReader{m: m, rd: rd, since: monotonicNow()}, nil
}

// Read waits for the next drop event. After Close, or once a deadline set
// with SetDeadline passes, it returns an error wrapping os.ErrClosed or
// os.ErrDeadlineExceeded.
func (r *EventReader) Read() (DropEvent, error) {
	for {
		rec, err := r.rd.Read()
		if err != nil {
			return DropEvent{}, err
		}
		var raw program.BpfbridgeDropEvent
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &raw); err != nil {
			return DropEvent{}, fmt.Errorf("decode drop event: %w", err)
		}
		if raw.TimestampNs < r.since {
			continue
		}
		return decodeDropEvent(&raw), nil
	}
}

// SetDeadline bounds how long Read waits; the zero time removes the bound.
func (r *EventReader) SetDeadline(t time.Time) { r.rd.SetDeadline(t) }

// Close stops the reader, interrupting a Read. It may be called again, and
// from another goroutine than Read's.
func (r *EventReader) Close() error {
	var err error
	r.close.Do(func() {
		err = r.rd.Close()
		r.m.Close()
	})
	return err
}

func decodeDropEvent(e *program.BpfbridgeDropEvent) DropEvent {
	ev := DropEvent{
		Time:      monotonicToWall(e.TimestampNs),
		Ifindex:   int(e.Ifindex),
		Reason:    program.DropReason(e.Reason),
		Direction: Direction(e.Direction),
		EthProto:  e.EthProto,
		IPProto:   e.IpProto,
		SrcMAC:    e.SrcMac,
		DstMAC:    e.DstMac,
		SrcPort:   e.Sport,
		DstPort:   e.Dport,
	}
	switch e.EthProto {
	case unix.ETH_P_IP, unix.ETH_P_ARP:
		ev.Src, ev.Dst = tupleAddr(4, e.SrcIp), tupleAddr(4, e.DstIp)
	case unix.ETH_P_IPV6:
		ev.Src, ev.Dst = tupleAddr(6, e.SrcIp), tupleAddr(6, e.DstIp)
	}
	return ev
}

// monotonicToWall converts a CLOCK_MONOTONIC time to wall-clock time. The
// offset between the clocks is taken now, not at boot, so that a wall clock
// stepped since (NTP) does not skew it.
func monotonicToWall(ns uint64) time.Time {
	now := time.Now()
	return now.Add(-time.Duration(monotonicNow() - ns))
}
