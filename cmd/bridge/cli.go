package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/version"

	"github.com/bpfbridge/bpfbridge/datapath"
)

const usage = `Usage: bridge [--version | --help]
       bridge datapath load [--bpffs DIR]
       bridge datapath upgrade [--bpffs DIR]
       bridge inspect <object> [verb] [flags]

bridge is bpfbridge's CNI plugin. Container runtimes run it with CNI_COMMAND
set (ADD, DEL, CHECK, GC, STATUS, VERSION) and the network config on stdin.

Commands:
  datapath load      load, verify and pin this binary's eBPF programs and the
                     node's maps now, at install time, so that the first
                     container does not wait for them; endpoints of an older
                     build move onto them as with upgrade (idempotent)
  datapath upgrade   move every endpoint on this node onto this binary's eBPF
                     programs now (ADD and CHECK do it on their own when they
                     find programs of an older build)
  inspect            show the node's datapath, read-only: programs, links, maps,
                     endpoints, drop statistics, live drop events, IPAM
                     allocations (bridge inspect --help for details)

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
	case "datapath":
		return runDatapath(args[1:])
	case "inspect":
		return runInspect(args[1:])
	default:
		fmt.Fprintf(os.Stderr, "bridge: unknown argument %q\n\n%s", args[0], usage)
		return 2
	}
}

func printVersion(w io.Writer) {
	fmt.Fprintln(w, about())
	fmt.Fprintf(w, "CNI protocol versions supported: %s\n", strings.Join(version.All.SupportedVersions(), ", "))
}

// runDatapath serves `bridge datapath load` and `bridge datapath upgrade`.
func runDatapath(args []string) int {
	if len(args) == 0 || (args[0] != "upgrade" && args[0] != "load") {
		fmt.Fprintf(os.Stderr, "bridge: usage: bridge datapath {load|upgrade} [--bpffs DIR]\n")
		return 2
	}
	fs := flag.NewFlagSet("bridge datapath "+args[0], flag.ContinueOnError)
	bpffs := fs.String("bpffs", envOr(envBPFFS, datapath.DefaultBPFFS), "mount point of the bpffs holding the node's state")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	dp, err := datapath.Open(datapath.Options{BPFFS: *bpffs, Masquerade: args[0] == "load"})
	if err != nil {
		fmt.Fprintf(os.Stderr, "bridge: %v\n", err)
		return 1
	}
	defer dp.Close()
	if args[0] == "load" {
		err = dp.LoadAllPrograms()
		if err == nil {
			fmt.Printf("programs of %s loaded in %s\n", about(), dp.Dir())
		}
	}
	// Programs new on the node are where its endpoints must move: load
	// does what the first ADD after an install would have done.
	if err == nil && (args[0] == "upgrade" || dp.NeedsUpgrade()) {
		var moved int
		moved, err = dp.Upgrade()
		fmt.Printf("moved %d endpoint(s) onto programs of %s\n", moved, about())
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bridge: %v\n", err)
		return 1
	}
	return 0
}

func envOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}
