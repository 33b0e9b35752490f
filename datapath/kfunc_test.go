package datapath

import (
	"bytes"
	"os"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// The walk of the raw BTF must find the IDs cilium/ebpf's full decoder
// finds: for the programs' kernel functions and for functions spread over
// the whole type section, so that a miscounted record kind shows. It walks
// the BTF as ADD maps it, which must be the file's bytes.
func TestBTFFuncIDsMatchTheDecoder(t *testing.T) {
	read, err := os.ReadFile(vmlinuxBTF)
	if err != nil {
		t.Skipf("no kernel BTF: %v", err)
	}
	raw, release, err := readVmlinuxBTF()
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if !bytes.Equal(raw, read) {
		t.Fatalf("readVmlinuxBTF: %d bytes unlike the file's %d", len(raw), len(read))
	}
	spec, err := embeddedSpec()
	if err != nil {
		t.Fatal(err)
	}
	names := kfuncNames(spec)
	if len(names) == 0 {
		t.Fatal("the embedded programs call no kernel function: the fast path's conntrack lookup is gone?")
	}
	for _, n := range []string{"tcp_v4_rcv", "bpf_prog_test_run_skb", "__netif_receive_skb", "ip6_route_input", "bpf_skb_ct_alloc"} {
		names[n] = true
	}
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	got, err := btfFuncIDs(raw, names)
	if err != nil {
		t.Fatal(err)
	}
	for n := range names {
		var fn *btf.Func
		if err := kernel.TypeByName(n, &fn); err != nil {
			if _, found := got[n]; found {
				t.Errorf("%s: the walk found ID %d, the decoder nothing (%v)", n, got[n], err)
			}
			continue
		}
		want, err := kernel.TypeID(fn)
		if err != nil {
			t.Fatal(err)
		}
		if got[n] != want {
			t.Errorf("%s: the walk found ID %d, the decoder %d", n, got[n], want)
		}
	}
}

// A blob the walk cannot read is refused, never read past its end.
func TestBTFFuncIDsRefusesBrokenBlobs(t *testing.T) {
	raw, err := os.ReadFile(vmlinuxBTF)
	if err != nil {
		t.Skipf("no kernel BTF: %v", err)
	}
	names := map[string]bool{"tcp_v4_rcv": true}
	for name, blob := range map[string][]byte{
		"empty":     nil,
		"header":    raw[:24],
		"truncated": raw[:len(raw)/2],
		"not BTF":   append([]byte{0, 0}, raw[2:]...),
	} {
		if ids, err := btfFuncIDs(blob, names); err == nil {
			t.Errorf("%s: no error, IDs %v", name, ids)
		}
	}
}

// After resolveKfuncs no instruction refers to a kernel function by name
// (the loader would decode the kernel's BTF for it), and each call and
// address load carries the function's ID.
func TestResolveKfuncsLeavesNoNamedReference(t *testing.T) {
	if _, err := os.Stat(vmlinuxBTF); err != nil {
		t.Skipf("no kernel BTF: %v", err)
	}
	embedded, err := embeddedSpec()
	if err != nil {
		t.Fatal(err)
	}
	spec := embedded.Copy()
	if !resolveKfuncs(spec) {
		t.Fatal("the kernel functions were not all found in vmlinux")
	}
	ids, names := kfuncIDs(), kfuncNames(embedded)
	resolved := 0
	for pname, p := range spec.Programs {
		original := embedded.Programs[pname].Instructions
		for i, ins := range p.Instructions {
			if names[ins.Reference()] {
				t.Errorf("%s insn %d still refers to %s", pname, i, ins.Reference())
			}
			if n := original[i].Reference(); names[n] {
				resolved++
				if ins.Constant != int64(ids[n]) || ins.OpCode != original[i].OpCode {
					t.Errorf("%s insn %d: %v, want %v with ID %d", pname, i, ins, original[i], ids[n])
				}
			}
		}
	}
	if resolved == 0 {
		t.Error("no instruction was resolved")
	}
}
