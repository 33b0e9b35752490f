//go:build faultinject

package main

import (
	"fmt"
	"os"
)

// envFailAfter names the ADD step after which a faultinject build fails.
const envFailAfter = "BPFBRIDGE_FAIL_AFTER"

// failAfter fails ADD right after step when BPFBRIDGE_FAIL_AFTER names it,
// so that tests can check the rollback of every step. Only test builds
// (-tags faultinject) have it.
func failAfter(step string) error {
	if os.Getenv(envFailAfter) == step {
		return fmt.Errorf("injected failure after step %q", step)
	}
	return nil
}
