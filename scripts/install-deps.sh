#!/usr/bin/env bash
# Install, only when missing, the Debian packages this project needs to build
# guests and run the tests. Quiet unless something has to be installed or fails.
#
# Note: the containerd package's postinst starts containerd.service only when
# systemd is running (/run/systemd/system exists). In CI containers it is not,
# so no system daemon is started; the tests run a private containerd anyway.
set -euo pipefail

PACKAGES=(
  containerd
  runc
  clang-14
  lld-14
  wasi-libc
  libclang-rt-14-dev-wasm32
  wabt
  protobuf-compiler
  docker-registry
  skopeo
  busybox-static
  util-linux
)

die() { echo "install-deps: error: $*" >&2; exit 1; }

command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found; this script supports Debian only"

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "installed" ]]; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || die "not root and sudo is not available; missing packages: ${missing[*]}"
  SUDO=(sudo)
fi

echo "install-deps: installing missing packages: ${missing[*]}" >&2

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT

if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$log" 2>&1; then
  cat "$log" >&2
  die "apt-get update failed"
fi
if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
     "${missing[@]}" </dev/null >"$log" 2>&1; then
  cat "$log" >&2
  die "apt-get install failed for: ${missing[*]}"
fi

# Check that everything really is installed now.
still=()
for pkg in "${missing[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "installed" ]] || still+=("$pkg")
done
[[ ${#still[@]} -eq 0 ]] || die "still not installed after apt-get install: ${still[*]}"

echo "install-deps: done" >&2
