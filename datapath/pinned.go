package datapath

import (
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// openPinnedProgram opens the program pinned at path, as
// ebpf.LoadPinnedProgram does but without its feature probe: that probe
// creates a map, and cilium/ebpf's first map or program creation in a
// process looks for a BPF token by parsing /proc/self/mountinfo, which on a
// node holds a mount per container network namespace (/run/netns/*). That
// made opening the programs on every ADD grow with the node's containers
// (0.4 ms at N=1, 3.5 ms at N=1,000 here). The plugin only needs the
// program's file descriptor, which BPF_OBJ_GET gives.
func openPinnedProgram(path string) (*ebpf.Program, error) {
	name, err := unix.BytePtrFromString(path)
	if err != nil {
		return nil, err
	}
	// union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags, path_fd.
	attr := struct {
		pathname  uint64
		bpfFD     uint32
		fileFlags uint32
		pathFD    int32
		_         uint32
	}{pathname: uint64(uintptr(unsafe.Pointer(name)))}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(name)
	if errno != 0 {
		return nil, &os.PathError{Op: "open pinned program", Path: path, Err: errno}
	}
	prog, err := ebpf.NewProgramFromFD(int(fd))
	if err != nil {
		return nil, fmt.Errorf("open pinned program %s: %w", path, err)
	}
	return prog, nil
}
