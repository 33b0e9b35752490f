package program

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"

	"github.com/cilium/ebpf"
)

// variant is the build variant, empty (0) in every release. A test build
// sets it with the linker,
//
//	go build -ldflags "-X github.com/bpfbridge/bpfbridge/datapath/program.variant=1"
//
// to get programs that differ from this build's, as a newer release's
// would, for the upgrade test: LoadSpec writes it into the programs'
// bpfbridge_variant (bpf/bpfbridge.c) and Tag includes it. The verdicts
// stay the same.
var variant string

// variantValue is variant as bpfbridge_variant holds it; a value that is no
// number fails LoadSpec, so a broken test build cannot pass for a release.
func variantValue() (uint32, error) {
	if variant == "" {
		return 0, nil
	}
	v, err := strconv.ParseUint(variant, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("build variant %q: %w", variant, err)
	}
	return uint32(v), nil
}

// LoadSpec returns the embedded programs as this build loads them: with
// its variant set.
func LoadSpec() (*ebpf.CollectionSpec, error) {
	v, err := variantValue()
	if err != nil {
		return nil, err
	}
	spec, err := LoadBpfbridge()
	if err != nil {
		return nil, err
	}
	if err := spec.Variables[BpfbridgeVarBpfbridgeVariant].Set(v); err != nil {
		return nil, fmt.Errorf("set the build variant: %w", err)
	}
	return spec, nil
}

// Tag identifies this build's programs: the first 12 hex digits of the
// SHA-256 of the embedded object and the variant. The control plane pins
// each program set under its tag and records it per endpoint
// (endpoint_meta.prog_tag, 15 characters at most), so that an upgrade can
// tell which endpoints still run older programs. Hex digits only: bpffs
// refuses names with dots.
func Tag() string {
	v, _ := variantValue() // a bad variant fails LoadSpec before a tag is used
	h := sha256.New()
	h.Write(_BpfbridgeBytes)
	_ = binary.Write(h, binary.LittleEndian, v)
	return hex.EncodeToString(h.Sum(nil)[:6])
}
