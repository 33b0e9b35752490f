package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/version"
)

const usage = `Usage: bridge [--version | --help]

bridge is bpfbridge's CNI plugin. Container runtimes run it with CNI_COMMAND
set (ADD, DEL, CHECK, GC, STATUS, VERSION) and the network config on stdin.

Options:
  --version   print the version, commit and supported CNI versions
  --help      print this help
`

// runCLI serves a person running the plugin binary with arguments and
// returns the exit code.
func runCLI(args []string) int {
	switch args[0] {
	case "--version", "-v", "version":
		printVersion(os.Stdout)
		return 0
	case "--help", "-h", "help":
		fmt.Print(usage)
		return 0
	default:
		fmt.Fprintf(os.Stderr, "bridge: unknown argument %q\n\n%s", args[0], usage)
		return 2
	}
}

func printVersion(w io.Writer) {
	fmt.Fprintln(w, about())
	fmt.Fprintf(w, "CNI protocol versions supported: %s\n", strings.Join(version.All.SupportedVersions(), ", "))
}
