// Command bridge is bpfbridge's CNI plugin, a drop-in replacement for the
// reference "bridge" plugin with host-local IPAM built in. Run by a container
// runtime (CNI_COMMAND set) it serves the CNI verbs; run by a person with
// arguments it is the operator's command-line tool.
package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/bpfbridge/bpfbridge/datapath/trace"
)

// Set at build time with -ldflags "-X main.buildVersion=… -X main.buildCommit=…".
var (
	buildVersion = "dev"
	buildCommit  = "unknown"
)

func init() {
	// Namespace switches (setns) act on one OS thread; keep main on the
	// thread group leader so the plugin's own namespace never moves.
	runtime.LockOSThread()
}

func main() {
	if os.Getenv("CNI_COMMAND") == "" && len(os.Args) > 1 {
		os.Exit(runCLI(os.Args[1:]))
	}
	collectGarbageLate()
	err := skel.PluginMainFuncsWithError(skel.CNIFuncs{
		Add:    traced("ADD", cmdAdd),
		Del:    traced("DEL", cmdDel),
		Check:  withConf(cmdCheck),
		GC:     withConf(cmdGC),
		Status: withConf(cmdStatus),
	}, version.All, about())
	if err != nil {
		nameBadEnv(err)
		if perr := err.Print(); perr != nil {
			fmt.Fprintln(os.Stderr, "bridge: print error:", perr)
		}
		os.Exit(1)
	}
}

// verbMemoryLimit is the heap at which a CNI verb's process collects
// garbage after all (collectGarbageLate): far above what a verb needs.
const verbMemoryLimit = 256 << 20

// collectGarbageLate turns the garbage collector off until the heap reaches
// verbMemoryLimit, unless GOGC or GOMEMLIMIT say otherwise. A verb lives for
// milliseconds and allocates little: a fresh node's first ADD, the most,
// parses and loads the programs, and loading every program (`bridge
// datapath load`, a superset) peaks at 28 MB resident without a collection
// against 23 MB with them. Those collections took ≈ 10% of that load's
// time on two CPUs, work beside the parse, the maps and the verifier that
// wait for the CPU.
func collectGarbageLate() {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(verbMemoryLimit)
}

// withConf adapts a verb to skel: every verb starts from the network config
// on stdin, and a config that does not parse fails the verb with the CNI
// error loadConf names it by.
func withConf(verb func(*NetConf, *skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		conf, err := loadConf(args.StdinData)
		if err != nil {
			return err
		}
		return verb(conf, args)
	}
}

// traced is withConf for the verbs whose phases can be traced (ADD, DEL):
// the trace covers the whole verb, config included, and is on when
// BPFBRIDGE_TRACE or the config's "trace" key asks for it.
func traced(name string, verb func(*NetConf, *skel.CmdArgs, *trace.Tracer) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) (err error) {
		tr := trace.Start(name)
		defer func() { tr.Finish(err) }()
		conf, err := loadConf(args.StdinData)
		if err != nil {
			return err
		}
		tr.Enable(conf.Trace)
		return verb(conf, args, tr)
	}
}

// nameBadEnv adds the offending variable and value to skel's validation
// errors for CNI_CONTAINERID and CNI_IFNAME, whose messages name neither.
func nameBadEnv(err *types.Error) {
	if err.Code != types.ErrInvalidEnvironmentVariables {
		return
	}
	for _, v := range []struct {
		name     string
		validate func(string) *types.Error
	}{
		{"CNI_CONTAINERID", utils.ValidateContainerID},
		{"CNI_IFNAME", utils.ValidateInterfaceName},
	} {
		if value := os.Getenv(v.name); value != "" && v.validate(value) != nil {
			err.Msg = fmt.Sprintf("%s=%q: %s", v.name, value, err.Msg)
		}
	}
}

func about() string {
	return fmt.Sprintf("bpfbridge bridge %s (commit %s)", buildVersion, buildCommit)
}
