# shellcheck shell=bash disable=SC2034
# Sourced by scripts/image.sh and scripts/image-test.sh: installs podman and runc when they
# are missing and defines `pm`, podman with the settings this kind of host needs.
#
# Why these settings (Debian 12, podman 4.3, a VM with a hybrid cgroup v1/v2 layout and no
# systemd as PID 1):
#   --runtime runc            crun (podman's default) refuses the hybrid cgroup layout
#   --cgroup-manager cgroupfs no systemd to create the container's cgroups
#   --storage-driver vfs      works on any filesystem (no overlay mount needed)
#   containers.conf           default_ulimits = [] (setrlimit for podman's default ulimits is
#                             denied here), events to a file (no journald)
#   --network host            for `podman run` (the test): no CNI bridge/iptables needed
# RULEGATE_PODMAN_FLAGS replaces the global flags (e.g. "--storage-driver overlay" on a host
# whose podman storage already uses overlay: a store keeps the driver it was created with).
# Nothing is written to /etc: the config is passed with CONTAINERS_CONF.

_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$_repo/deploy/container/containers.conf}
read -r -a PODMAN_FLAGS <<<"${RULEGATE_PODMAN_FLAGS:---runtime runc --cgroup-manager cgroupfs --storage-driver vfs}"

pm() { podman "${PODMAN_FLAGS[@]}" "$@"; }

# Installs podman and runc with apt when missing (sudo only when not root). Returns non-zero,
# with the reason in PODMAN_PROBLEM, when they cannot be installed.
podman_install() {
  PODMAN_PROBLEM=""
  local need=()
  command -v podman >/dev/null || need+=(podman)
  command -v runc >/dev/null || need+=(runc)
  ((${#need[@]})) || return 0
  if ! command -v apt-get >/dev/null; then
    PODMAN_PROBLEM="${need[*]} missing and no apt-get to install them"
    return 1
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { PODMAN_PROBLEM="${need[*]} missing; not root and no sudo to install them"; return 1; }
    sudo="sudo"
  fi
  printf '[image] installing %s with apt\n' "${need[*]}" >&2
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
    --no-install-recommends "${need[@]}" >/dev/null; }; then
    PODMAN_PROBLEM="apt-get install ${need[*]} failed"
    return 1
  fi
  if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
    PODMAN_PROBLEM="podman or runc still missing after apt-get install"
    return 1
  fi
}
