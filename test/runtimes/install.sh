#!/usr/bin/env bash
# Installs what the real-runtime suites (test/e2e/runtime_*_test.go) need on a
# Debian 12 machine: podman 4.3 (with its CNI backend), containerd 1.6, runc
# and a static busybox for the containers' root filesystem. crictl is built
# from its Go module by test/tools.sh. Nothing is reinstalled when present,
# so a second run costs a few `command -v`.
#
# The suites never use the packages' own CNI configuration: podman gets a
# config directory of the test's own, and containerd runs in a private mount
# namespace with /etc/cni/net.d and /opt/cni/bin bind-mounted over.
#
# Usage: test/runtimes/install.sh
set -euo pipefail

need=()
for pair in podman:podman containerd:containerd runc:runc conmon:conmon busybox:busybox-static; do
	command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
# podman's CNI backend reads its plugins from /usr/lib/cni (Debian's
# containernetworking-plugins); the suites point it at bin/ instead, but
# podman refuses to start without a backend package installed.
if ((${#need[@]} == 0)); then
	echo "runtimes/install.sh: podman, containerd, runc, conmon and busybox are installed"
	exit 0
fi
echo "runtimes/install.sh: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# Another apt-get (a CI step) may hold the dpkg lock: wait for it.
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }
apt_get update -qq
apt_get install -y -qq --no-install-recommends "${need[@]}"
