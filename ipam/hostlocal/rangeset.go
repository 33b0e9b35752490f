package hostlocal

import (
	"iter"
	"math/big"
	"net/netip"
	"strings"
)

// ipRange is one validated entry of a range set: the addresses start..end
// (inclusive) of subnet, with the subnet's gateway.
type ipRange struct {
	key     string // config path for messages, e.g. ipam.ranges[0][1]
	subnet  netip.Prefix
	start   netip.Addr
	end     netip.Addr
	gateway netip.Addr
}

// contains reports whether ip lies in start..end. Addr.Compare orders the
// families apart, so an address of the other family is never contained.
func (r *ipRange) contains(ip netip.Addr) bool {
	return r.start.Compare(ip) <= 0 && ip.Compare(r.end) <= 0
}

func (r *ipRange) overlaps(o *ipRange) bool {
	return r.contains(o.start) || r.contains(o.end) || o.contains(r.start)
}

// size is the number of allocatable addresses: the range minus its gateway.
func (r *ipRange) size() *big.Int {
	start, end := r.start.As16(), r.end.As16()
	n := new(big.Int).Sub(new(big.Int).SetBytes(end[:]), new(big.Int).SetBytes(start[:]))
	n.Add(n, big.NewInt(1))
	if r.contains(r.gateway) {
		n.Sub(n, big.NewInt(1))
	}
	return n
}

// rangeSet is a pool of one address family; each range set yields one
// address per attachment.
type rangeSet struct {
	key    string // config path for messages, e.g. ipam.ranges[0]
	ranges []ipRange
}

// find returns the range that contains ip, or nil.
func (s *rangeSet) find(ip netip.Addr) *ipRange {
	for i := range s.ranges {
		if s.ranges[i].contains(ip) {
			return &s.ranges[i]
		}
	}
	return nil
}

// subnets lists the subnets of the set, for messages.
func (s *rangeSet) subnets() string {
	var out []string
	for _, r := range s.ranges {
		out = append(out, r.subnet.String())
	}
	return strings.Join(out, ", ")
}

// candidates yields every allocatable address of the set once, in the
// reference allocator's round-robin order: starting after last if the set
// contains it, else at the first range's start; walking each range to its end
// and wrapping to the next range's start; skipping each range's gateway.
// Keeping this order lets us and the reference continue each other's
// sequence through last_reserved_ip.
func (s *rangeSet) candidates(last netip.Addr) iter.Seq2[netip.Addr, *ipRange] {
	return func(yield func(netip.Addr, *ipRange) bool) {
		ri, ip := 0, s.ranges[0].start
		for i := range s.ranges {
			if s.ranges[i].contains(last) {
				ri, ip = s.next(i, last)
				break
			}
		}
		first := ip
		for {
			r := &s.ranges[ri]
			if ip != r.gateway && !yield(ip, r) {
				return
			}
			ri, ip = s.next(ri, ip)
			if ip == first {
				return
			}
		}
	}
}

// next is the position after ip in range ri, wrapping to the next range.
func (s *rangeSet) next(ri int, ip netip.Addr) (int, netip.Addr) {
	if ip == s.ranges[ri].end {
		ri = (ri + 1) % len(s.ranges)
		return ri, s.ranges[ri].start
	}
	return ri, ip.Next()
}

// full reports whether allocated (every address of the network) takes every
// allocatable address of the set.
func (s *rangeSet) full(allocated []netip.Addr) bool {
	used := int64(0)
	for _, ip := range allocated {
		if r := s.find(ip); r != nil && ip != r.gateway {
			used++
		}
	}
	capacity := new(big.Int)
	for i := range s.ranges {
		capacity.Add(capacity, s.ranges[i].size())
	}
	return capacity.Cmp(big.NewInt(used)) <= 0
}
