package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// The fast path calls two kernel functions (bpf_skb_ct_lookup and
// bpf_ct_release, bpf/fastpath.h). A program calls a kernel function by its
// BTF ID, which the loader finds in the running kernel's BTF: cilium/ebpf
// decodes the kernel's BTF for it, and with it every type reachable from the
// function's signature (struct sk_buff and most of the kernel's networking
// types), to check the signature against the program's. That took 50–75 ms
// of a fresh node's first ADD here, on one CPU, more than verifying
// from_container. The ID alone is a walk of the raw BTF (mapping and walking
// it ≈ 2 ms, started at the beginning of ADD by Prefetch), and the kernel
// checks the call's arguments against the function's BTF itself when it
// verifies the program. So the programs' kernel-function references are
// resolved here from vmlinux's BTF; where one is not in vmlinux (a kernel
// that builds conntrack as a module) or is ambiguous, the loader resolves
// them as before.

// vmlinuxBTF is where the kernel exposes its own BTF.
const vmlinuxBTF = "/sys/kernel/btf/vmlinux"

// kfuncIDs are the BTF IDs, in vmlinux, of the kernel functions the
// embedded programs call, read once per process; nil when any of them is
// not in vmlinux or the BTF cannot be read.
var kfuncIDs = sync.OnceValue(func() map[string]btf.TypeID {
	spec, err := embeddedSpec()
	if err != nil {
		return nil
	}
	names := kfuncNames(spec)
	if len(names) == 0 {
		return nil
	}
	raw, release, err := readVmlinuxBTF()
	if err != nil {
		return nil
	}
	defer release()
	ids, err := btfFuncIDs(raw, names)
	if err != nil || len(ids) != len(names) {
		return nil
	}
	return ids
})

// readVmlinuxBTF maps the kernel's BTF into memory (Linux 6.16 and later
// allow it), or reads it where it cannot be mapped: a read of sysfs moves
// a page per system call, ≈ 5 ms for vmlinux's 5.5 MB here, where the
// mapping takes 0.1 ms. release gives the memory back.
func readVmlinuxBTF() (raw []byte, release func(), err error) {
	f, err := os.Open(vmlinuxBTF)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if size := st.Size(); size > 0 && size < math.MaxInt32 {
		if raw, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_PRIVATE); err == nil {
			return raw, func() { _ = unix.Munmap(raw) }, nil
		}
	}
	raw, err = io.ReadAll(f)
	return raw, func() {}, err
}

// kfuncNames are the kernel functions spec's programs may call: the
// functions of its .ksyms section.
func kfuncNames(spec *ebpf.CollectionSpec) map[string]bool {
	var ksyms *btf.Datasec
	if spec.Types == nil || spec.Types.TypeByName(".ksyms", &ksyms) != nil {
		return nil
	}
	names := map[string]bool{}
	for _, v := range ksyms.Vars {
		if fn, ok := v.Type.(*btf.Func); ok {
			names[fn.Name] = true
		}
	}
	return names
}

// resolveKfuncs points spec's references to kernel functions at their
// vmlinux BTF IDs, so that loading spec needs none of the kernel's types.
// It reports false, leaving spec as it was, when they are not all known.
func resolveKfuncs(spec *ebpf.CollectionSpec) bool {
	ids := kfuncIDs()
	if ids == nil {
		return false
	}
	for _, p := range spec.Programs {
		for i, ins := range p.Instructions {
			id, ok := ids[ins.Reference()]
			if !ok {
				continue
			}
			// A call's offset 0 names vmlinux's BTF. A load of the
			// function's address (the programs test a weak symbol for
			// existence) gets the ID, never 0, as the loader sets it too.
			if !ins.IsKfuncCall() && !ins.OpCode.IsDWordLoad() {
				continue
			}
			// The loader recognises a kernel function reference by
			// metadata of its own: a new instruction without it, keeping
			// the source line and function the old one carried.
			resolved := asm.Instruction{OpCode: ins.OpCode, Dst: ins.Dst, Src: ins.Src, Constant: int64(id)}
			resolved = resolved.WithSource(ins.Source())
			if fn := btf.FuncMetadata(&ins); fn != nil {
				resolved = btf.WithFuncMetadata(resolved, fn)
			}
			p.Instructions[i] = resolved
		}
	}
	return true
}

// btfFuncIDs finds the IDs of the named functions (BTF_KIND_FUNC) in raw,
// a kernel's BTF blob (in the machine's byte order): it walks the type
// section record by record, decoding nothing but each record's length and,
// for functions, the name. It meets some 60,000 functions among 127,000
// types in vmlinux; a name's first byte turns most of them away.
func btfFuncIDs(raw []byte, names map[string]bool) (map[string]btf.TypeID, error) {
	const headerLen = 24
	bo := binary.NativeEndian
	if len(raw) < headerLen || bo.Uint16(raw) != 0xeb9f {
		return nil, errors.New("not BTF in the machine's byte order")
	}
	hdrLen := bo.Uint32(raw[4:])
	typeOff, typeLen := bo.Uint32(raw[8:]), bo.Uint32(raw[12:])
	strOff, strLen := bo.Uint32(raw[16:]), bo.Uint32(raw[20:])
	body := raw[min(uint64(hdrLen), uint64(len(raw))):]
	if uint64(typeOff)+uint64(typeLen) > uint64(len(body)) || uint64(strOff)+uint64(strLen) > uint64(len(body)) {
		return nil, errors.New("BTF sections out of bounds")
	}
	types, strs := body[typeOff:typeOff+typeLen], body[strOff:strOff+strLen]
	var first [256]bool
	for n := range names {
		if n != "" {
			first[n[0]] = true
		}
	}
	found := map[string]btf.TypeID{}
	for id, pos := btf.TypeID(1), 0; pos < len(types); id++ {
		const recordLen = 12
		if pos+recordLen > len(types) {
			return nil, fmt.Errorf("BTF type %d truncated", id)
		}
		info := bo.Uint32(types[pos+4:])
		kind, vlen := (info>>24)&0x1f, int(info&0xffff)
		if off := int64(bo.Uint32(types[pos:])); kind == btfKindFunc && off < int64(len(strs)) && first[strs[off]] {
			name := strs[off:]
			if end := bytes.IndexByte(name, 0); end >= 0 && names[string(name[:end])] {
				n := string(name[:end])
				if _, twice := found[n]; twice {
					return nil, fmt.Errorf("BTF has more than one function %s", n)
				}
				found[n] = id
			}
		}
		extra, ok := btfKindExtra(kind, vlen)
		if !ok {
			return nil, fmt.Errorf("BTF type %d: unknown kind %d", id, kind)
		}
		pos += recordLen + extra
	}
	return found, nil
}

// btfKindFunc is BTF_KIND_FUNC.
const btfKindFunc = 12

// btfKindExtra is how many bytes follow a type record of kind with vlen
// members (include/uapi/linux/btf.h).
func btfKindExtra(kind uint32, vlen int) (int, bool) {
	switch kind {
	case 2, 7, 8, 9, 10, 11, 12, 16, 18: // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
		return 0, true
	case 1, 14, 17: // INT, VAR, DECL_TAG
		return 4, true
	case 3: // ARRAY
		return 12, true
	case 4, 5, 15, 19: // STRUCT, UNION, DATASEC, ENUM64
		return 12 * vlen, true
	case 6, 13: // ENUM, FUNC_PROTO
		return 8 * vlen, true
	}
	return 0, false
}
