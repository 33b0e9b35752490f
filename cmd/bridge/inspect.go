package main

import (
	"encoding"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bpfbridge/bpfbridge/datapath"
	"github.com/bpfbridge/bpfbridge/ipam/store"
)

// `bridge inspect` shows the node's datapath to an operator, as bpftool
// does for any eBPF program but in bpfbridge's terms: endpoints, drop
// reasons, decoded maps. It only reads: it opens existing state and never
// creates any, so running it cannot change what it looks at.

const inspectUsage = `Usage: bridge inspect <object> [verb] [flags]

Shows this node's bpfbridge datapath. Read-only; needs root (CAP_BPF and
CAP_NET_ADMIN). Run it in the network namespace of the node's bridges.

Objects:
  prog                        bpfbridge's programs: id, name, kernel tag, build,
                              and where each is attached (interface, direction,
                              tcx or legacy cls_bpf); run count and time while
                              kernel.bpf_stats_enabled=1, "-" otherwise
  link                        per interface, which of bpfbridge's programs are
  net                         attached at ingress and egress (tcx links and
                              cls_bpf filters, as the kernel reports them)
  map list                    the maps pinned in <bpffs>/bpfbridge/maps/v<layout>/
  map dump <name>             a map's entries, keys and values decoded
      --per-cpu               also show each CPU's value of a per-CPU map
  endpoint list               every container attachment: container id, ifname,
                              network, IPs, MAC, host veth, isolation, attach
                              mode, traffic each way, drops
  endpoint show <container-id>[/<ifname>]
                              one container's attachments in detail, with
                              drops by reason
  stats                       drops by reason: node totals (including packets on
                              veths without an endpoint), per network, per
                              endpoint
  ct list                     masquerade connection tracking entries
  nat list                    masquerade translations
  portmap list                published ports: host address:port ("*": every
                              node address), container address:port, protocol,
                              owner, packets translated to the container
  monitor                     stream drop events as they happen, until Ctrl-C
      --endpoint <container-id>[/<ifname>]   only this endpoint's drops (monitor) or flows (ct, nat)
      --reason <reason>[,<reason>…]          only these reasons
      --count N               stop after N events
      --duration D            stop after D (e.g. 30s, 5m)
  ipam                        addresses allocated by host-local, per network;
                              "stale" marks one whose container is gone (no
                              endpoint on this node, or its netns no longer exists)
      --data-dir DIR          the host-local store (default /var/lib/cni/networks)

Flags (any command):
  -j, --json                  JSON for programs (snake_case fields; monitor
                              writes one object per line)
  --bpffs DIR                 the node's bpffs (default $BPFBRIDGE_BPFFS, else
                              /sys/fs/bpf)

Drop reasons: ` + "%s" + `

Exit status: 0 on success, 1 on an error (not root, no bpffs, no bpfbridge
state on this node), 2 on a usage error.
`

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// inspectCommand is one `bridge inspect` command.
type inspectCommand struct {
	words []string // object and verb
	args  []string // names of its positional arguments
	flags []string // the command-specific flags it takes
	run   func(in *inspector, args []string) error
}

// inspectCommands are every command; "net" is "link" by another name.
var inspectCommands = []inspectCommand{
	{words: []string{"prog"}, run: (*inspector).prog},
	{words: []string{"link"}, run: (*inspector).link},
	{words: []string{"net"}, run: (*inspector).link},
	{words: []string{"map", "list"}, run: (*inspector).mapList},
	{words: []string{"map", "dump"}, args: []string{"<name>"}, flags: []string{"per-cpu"}, run: (*inspector).mapDump},
	{words: []string{"endpoint", "list"}, run: (*inspector).endpointList},
	{words: []string{"endpoint", "show"}, args: []string{"<container-id>[/<ifname>]"}, run: (*inspector).endpointShow},
	{words: []string{"stats"}, run: (*inspector).stats},
	{words: []string{"ct", "list"}, flags: []string{"endpoint"}, run: (*inspector).ctList},
	{words: []string{"nat", "list"}, flags: []string{"endpoint"}, run: (*inspector).natList},
	{words: []string{"portmap", "list"}, run: (*inspector).portmapList},
	{words: []string{"monitor"}, flags: []string{"endpoint", "reason", "count", "duration"}, run: (*inspector).monitor},
	{words: []string{"ipam"}, flags: []string{"data-dir"}, run: (*inspector).ipam},
}

// inspector runs one command against the node's datapath.
type inspector struct {
	dp    *datapath.Datapath
	bpffs string
	json  bool
	out   io.Writer

	// Command-specific flags.
	perCPU   bool
	endpoint string
	reasons  string
	count    int
	duration time.Duration
	dataDir  string
}

// runInspect serves `bridge inspect` and returns the exit status.
func runInspect(args []string) int {
	in := &inspector{out: os.Stdout}
	err := in.main(args)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		fmt.Printf(inspectUsage, reasonNames())
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(os.Stderr, "bridge inspect: %v (see bridge inspect --help)\n", err)
		return 2
	default:
		fmt.Fprintf(os.Stderr, "bridge inspect: %v\n", err)
		return 1
	}
}

func (in *inspector) main(args []string) error {
	fs := flag.NewFlagSet("bridge inspect", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by runInspect
	fs.StringVar(&in.bpffs, "bpffs", envOr(envBPFFS, datapath.DefaultBPFFS), "")
	fs.BoolVar(&in.json, "j", false, "")
	fs.BoolVar(&in.json, "json", false, "")
	fs.BoolVar(&in.perCPU, "per-cpu", false, "")
	fs.StringVar(&in.endpoint, "endpoint", "", "")
	fs.StringVar(&in.reasons, "reason", "", "")
	fs.IntVar(&in.count, "count", 0, "")
	fs.DurationVar(&in.duration, "duration", 0, "")
	fs.StringVar(&in.dataDir, "data-dir", store.DefaultDataDir, "")
	words, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	if err != nil {
		return usageError{err.Error()}
	}
	cmd, rest, err := findCommand(words)
	if err != nil {
		return err
	}
	if err := checkFlags(fs, cmd); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("bridge inspect needs root (CAP_BPF and CAP_NET_ADMIN): run it with sudo")
	}
	if !datapath.IsBPFFS(in.bpffs) {
		return fmt.Errorf("no bpffs is mounted at %s: point --bpffs (or BPFBRIDGE_BPFFS) at the node's bpffs", in.bpffs)
	}
	in.dp, err = datapath.OpenExisting(datapath.Options{BPFFS: in.bpffs})
	if errors.Is(err, datapath.ErrNoState) {
		return fmt.Errorf("no bpfbridge state on this node (nothing under %s/bpfbridge): no container was attached since the bpffs was mounted", in.bpffs)
	}
	if err != nil {
		return err
	}
	defer in.dp.Close()
	return cmd.run(in, rest)
}

// parseInterspersed parses flags wherever they stand among the words, as
// operators type them (`endpoint show -j ctr`), and returns the words.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var words []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return words, nil
		}
		words = append(words, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// findCommand returns the command words name and its arguments.
func findCommand(words []string) (*inspectCommand, []string, error) {
	if len(words) == 0 {
		return nil, nil, usagef("missing object")
	}
	for i := range inspectCommands {
		c := &inspectCommands[i]
		if len(words) < len(c.words) || !slices.Equal(words[:len(c.words)], c.words) {
			continue
		}
		rest := words[len(c.words):]
		if len(rest) != len(c.args) {
			return nil, nil, usagef("usage: bridge inspect %s", strings.Join(slices.Concat(c.words, c.args), " "))
		}
		return c, rest, nil
	}
	return nil, nil, usagef("unknown command %q", strings.Join(words, " "))
}

// checkFlags rejects command-specific flags given to another command.
func checkFlags(fs *flag.FlagSet, cmd *inspectCommand) error {
	var err error
	fs.Visit(func(f *flag.Flag) {
		global := f.Name == "bpffs" || f.Name == "j" || f.Name == "json"
		if !global && !slices.Contains(cmd.flags, f.Name) && err == nil {
			err = usagef("--%s does not apply to %s", f.Name, strings.Join(cmd.words, " "))
		}
	})
	return err
}

func reasonNames() string {
	var names []string
	for _, r := range datapath.DropReasons() {
		names = append(names, r.String())
	}
	return strings.Join(names, ", ")
}

// emit writes v as indented JSON with --json, else calls table with an
// aligned table writer.
func (in *inspector) emit(v any, table func(w io.Writer)) error {
	if in.json {
		enc := json.NewEncoder(in.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	w := tabwriter.NewWriter(in.out, 0, 0, 2, ' ', 0)
	table(w)
	return w.Flush()
}

// emitRead emits what get reads from the datapath, as the commands that
// show one datapath view do; table writes the view as a table.
func emitRead[T any](in *inspector, get func() (T, error), table func(io.Writer, T)) error {
	v, err := get()
	if err != nil {
		return err
	}
	return in.emit(v, func(w io.Writer) { table(w, v) })
}

// row writes one tab-separated table row.
func row(w io.Writer, cells ...any) {
	for i, c := range cells {
		if i > 0 {
			io.WriteString(w, "\t")
		}
		fmt.Fprint(w, c)
	}
	io.WriteString(w, "\n")
}

// dash stands in for an empty cell.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// endpointName is how tables name an attachment.
func endpointName(containerID, ifname string) string { return containerID + "/" + ifname }

// splitEndpoint parses "<container-id>[/<ifname>]"; ifname is empty when
// not given.
func splitEndpoint(s string) (containerID, ifname string) {
	containerID, ifname, _ = strings.Cut(s, "/")
	return containerID, ifname
}

// fields renders a decoded map key or value as "name=value" pairs, named
// by the JSON field names, nested structs as "outer.inner".
func fields(v any) string {
	var out []string
	flatten(&out, "", reflect.ValueOf(v))
	return strings.Join(out, " ")
}

func flatten(out *[]string, prefix string, v reflect.Value) {
	if v.Kind() == reflect.Interface || v.Kind() == reflect.Pointer {
		if v.IsNil() {
			*out = append(*out, prefix+"-")
			return
		}
		v = v.Elem()
	}
	if v.Kind() == reflect.Struct && !isText(v) {
		t := v.Type()
		for i := range t.NumField() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
			if !t.Field(i).IsExported() || name == "-" {
				continue
			}
			if name == "" {
				name = t.Field(i).Name
			}
			flatten(out, prefix+name+".", v.Field(i))
		}
		return
	}
	*out = append(*out, strings.TrimSuffix(prefix, ".")+"="+text(v))
}

// isText reports whether v prints as text of its own (addresses, MACs).
func isText(v reflect.Value) bool {
	_, ok := v.Interface().(encoding.TextMarshaler)
	return ok
}

// text renders a leaf: text marshalers as their text, lists comma-joined,
// maps as key:value lists in key order.
func text(v reflect.Value) string {
	if tm, ok := v.Interface().(encoding.TextMarshaler); ok {
		b, err := tm.MarshalText()
		if err != nil {
			return "?"
		}
		return dash(string(b))
	}
	switch v.Kind() {
	case reflect.Slice, reflect.Array:
		if v.Len() == 0 {
			return "-"
		}
		parts := make([]string, v.Len())
		for i := range v.Len() {
			parts[i] = text(v.Index(i))
		}
		return strings.Join(parts, ",")
	case reflect.Map:
		keys := v.MapKeys()
		slices.SortFunc(keys, func(a, b reflect.Value) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%v:%s", k, text(v.MapIndex(k)))
		}
		return strings.Join(parts, ",")
	case reflect.String:
		return dash(v.String())
	}
	return fmt.Sprint(v.Interface())
}
