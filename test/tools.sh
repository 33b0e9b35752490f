#!/usr/bin/env bash
# Builds the third-party programs the end-to-end tests need, at the versions
# go.mod requires (keep the two in step):
#
#   OUTDIR/tools/cnitool          github.com/containernetworking/cni/cnitool
#   OUTDIR/tools/crictl           sigs.k8s.io/cri-tools/cmd/crictl, for the CRI
#                                 suite (the module of github.com/kubernetes-sigs/cri-tools)
#   OUTDIR/reference/bridge       upstream bridge plugin, to compare ours with
#   OUTDIR/reference/host-local   upstream host-local IPAM plugin
#   OUTDIR/reference/portmap      upstream portmap, chained after bridge in the
#   OUTDIR/reference/bandwidth    chaining and runtime tests (as users chain them)
#   OUTDIR/reference/loopback     containerd's CRI brings up each pod's lo with it
#
# A program that already exists is left alone; delete it to rebuild.
#
# Usage: test/tools.sh OUTDIR
set -euo pipefail

readonly CNI_VERSION=v1.3.0
readonly PLUGINS_VERSION=v1.9.0
# The CRI API is backward compatible: this crictl drives containerd 1.6's v1
# CRI (Debian 12's).
readonly CRICTL_VERSION=v1.34.0

if [[ $# -ne 1 ]]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
mkdir -p "$1"
out=$(cd "$1" && pwd) # go install wants an absolute GOBIN

# build_tool DIR PACKAGE@VERSION [GO INSTALL FLAGS...]
build_tool() {
	local dir=$1 pkg=$2
	shift 2
	local bin
	bin=$dir/$(basename "${pkg%@*}")
	if [[ -x $bin ]]; then
		echo "tools.sh: $bin exists"
		return
	fi
	echo "tools.sh: building $bin"
	mkdir -p "$dir"
	# pkg@version builds with the tool's own go.mod, not ours, like an
	# upstream release. Without cgo the binaries do not depend on the host's
	# libc and the build needs no C compiler.
	GOBIN=$dir CGO_ENABLED=0 go install "$@" "$pkg"
}

build_tool "$out/tools" "github.com/containernetworking/cni/cnitool@$CNI_VERSION"
build_tool "$out/tools" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
# The plugins report this version, like upstream's release builds, rather
# than "version unknown".
version_flag=-ldflags=-X=github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$PLUGINS_VERSION
build_tool "$out/reference" "github.com/containernetworking/plugins/plugins/main/bridge@$PLUGINS_VERSION" "$version_flag"
build_tool "$out/reference" "github.com/containernetworking/plugins/plugins/ipam/host-local@$PLUGINS_VERSION" "$version_flag"
build_tool "$out/reference" "github.com/containernetworking/plugins/plugins/meta/portmap@$PLUGINS_VERSION" "$version_flag"
build_tool "$out/reference" "github.com/containernetworking/plugins/plugins/meta/bandwidth@$PLUGINS_VERSION" "$version_flag"
build_tool "$out/reference" "github.com/containernetworking/plugins/plugins/main/loopback@$PLUGINS_VERSION" "$version_flag"
