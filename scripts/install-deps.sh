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
  python3-venv
  # tests/registry_auth.rs: htpasswd, the JWT token service (Debian's
  # /usr/bin/python3), a CA for HTTPS, a network namespace, a pty (script).
  apache2-utils
  python3-jwt
  python3-cryptography
  openssl
  iproute2
  bsdutils
  containernetworking-plugins
  hey
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

# kubernetes-validate (PyPI), which checks deploy/kubernetes against the
# Kubernetes schemas offline, in a private venv under target/tools.
install_kubernetes_validate() {
  local root venv
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  venv="$root/target/tools/kv-venv"
  [[ -x "$venv/bin/kubernetes-validate" ]] && return 0
  command -v python3 >/dev/null 2>&1 || die "python3 not found (needed for kubernetes-validate)"
  echo "install-deps: installing kubernetes-validate into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv failed: apt-get install python3-venv"
  "$venv/bin/pip" install -q "kubernetes-validate==1.37.0" </dev/null >&2 ||
    die "pip install kubernetes-validate failed"
}

if [[ ${#missing[@]} -eq 0 ]]; then
  install_kubernetes_validate
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

install_kubernetes_validate
echo "install-deps: done" >&2
