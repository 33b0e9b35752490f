package program

import (
	"crypto/sha256"
	"encoding/hex"
)

// Tag identifies this build's programs: the first 12 hex digits of the
// SHA-256 of the embedded object. The control plane pins each program set
// under its tag and records it per endpoint (endpoint_meta.prog_tag, 15
// characters at most), so that an upgrade can tell which endpoints still run
// older programs. Hex digits only: bpffs refuses names with dots.
func Tag() string {
	sum := sha256.Sum256(_BpfbridgeBytes)
	return hex.EncodeToString(sum[:6])
}
