#!/usr/bin/env bash
# Fetch the containerd versions the tests run against, without touching the
# system's apt state, and print one line per version:
#
#     <version> <bin-dir>
#
# e.g.
#     1.6.20 /usr/bin
#     1.7.24 /work/main/target/containerd/1.7.24/usr/bin
#     2.1.9 /work/main/target/containerd/2.1.9/usr/bin
#
# <bin-dir> holds `containerd`, `ctr` and the matching `containerd-shim-runc-v2`.
# <version> is what `containerd --version` reports (Debian suffixes removed).
#
# 1.6.x is the system's containerd (Debian bookworm, installed by
# scripts/install-deps.sh). 1.7.24 comes from Debian trixie and 2.1.9 from
# Debian sid: their .deb is fetched with a private apt configuration (private
# sources list, lists and cache folders) and unpacked with `dpkg -x` into
#     ${CONTAINERD_CACHE:-<workspace>/target/containerd}/<version>/
# If a suite no longer has the pinned version, what the suite has is used and a
# warning is printed. Nothing is downloaded when the cache already holds a
# working binary. Messages go to stderr; stdout carries only the list above.
#
# Environment:
#   CONTAINERD_CACHE   cache folder (default <workspace>/target/containerd)
#   DEBIAN_MIRROR      Debian mirror URI (default: from the system's apt sources)
#   DEBIAN_KEYRING     keyring for Signed-By (default: from the system's apt sources)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CONTAINERD_CACHE:-$ROOT/target/containerd}

# pinned-version  Debian-suite
PINS=(
  "1.7.24 trixie"
  "2.1.9 sid"
)
SYSTEM_BIN=/usr/bin

log()  { echo "fetch-containerd: $*" >&2; }
warn() { echo "fetch-containerd: warning: $*" >&2; }
die()  { echo "fetch-containerd: error: $*" >&2; exit 1; }

# Print the upstream version of the containerd in bin-dir $1 (e.g. "1.7.24"),
# or fail if it does not run or ctr is missing.
bin_version() {
  local dir=$1 out ver
  [[ -x $dir/containerd && -x $dir/ctr ]] || return 1
  out=$("$dir/containerd" --version 2>/dev/null) || return 1
  "$dir/ctr" --version >/dev/null 2>&1 || return 1
  # "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3"
  # "containerd github.com/containerd/containerd/v2 2.1.9+ds1 2.1.9+ds1-5"
  ver=$(awk '{print $3}' <<<"$out")
  ver=${ver#v}
  ver=${ver%%[~+-]*}
  [[ -n $ver ]] || return 1
  echo "$ver"
}

# The mirror URI and keyring of the system's Debian (not -security) source.
debian_source() {
  local uri="" keyring="" f=/etc/apt/sources.list.d/debian.sources
  if [[ -r $f ]]; then
    # deb822: take the first stanza whose URIs end in /debian.
    read -r uri keyring < <(awk '
      function flush() { if (!done && uri ~ /\/debian\/?$/) { print uri, key; done = 1 } uri = ""; key = "" }
      /^[[:space:]]*$/ { flush(); next }
      /^URIs:/       { uri = $2 }
      /^Signed-By:/  { key = $2 }
      END { flush() }' "$f") || true
  fi
  if [[ -z $uri && -r /etc/apt/sources.list ]]; then
    uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\/.*\/debian\/?$/) { print $i; exit } }' \
      /etc/apt/sources.list) || true
  fi
  uri=${DEBIAN_MIRROR:-${uri:-http://deb.debian.org/debian}}
  keyring=${DEBIAN_KEYRING:-${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}}
  [[ -r $keyring ]] || die "Debian keyring $keyring not found (set DEBIAN_KEYRING)"
  echo "${uri%/} $keyring"
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 # one fetch at a time; others wait and then find the cache filled

# --- the system's containerd (1.6) ---------------------------------------------
sys_ver=$(bin_version "$SYSTEM_BIN") ||
  die "the system's containerd/ctr in $SYSTEM_BIN is missing or broken; run scripts/install-deps.sh"
[[ $sys_ver == 1.6.* ]] || warn "the system's containerd is $sys_ver, expected 1.6.x"
results=("$sys_ver $SYSTEM_BIN")

# --- cached versions -----------------------------------------------------------
# A suite's version is looked up in <cache>/<pinned>/, then in the folder named
# in <cache>/.<suite>.version (written when the suite had another version).
declare -A found=()
need=()
for pin in "${PINS[@]}"; do
  read -r want suite <<<"$pin"
  for dir in "$want" "$(cat "$CACHE/.$suite.version" 2>/dev/null || true)"; do
    [[ -n $dir ]] || continue
    if ver=$(bin_version "$CACHE/$dir/usr/bin"); then
      [[ $ver == "$want" ]] || warn "using cached containerd $ver from Debian $suite, not the pinned $want"
      found[$suite]="$ver $CACHE/$dir/usr/bin"
      break
    fi
  done
  [[ -n ${found[$suite]:-} ]] || need+=("$want $suite")
done

# --- download what is missing ----------------------------------------------------
if [[ ${#need[@]} -gt 0 ]]; then
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found"
  command -v dpkg >/dev/null 2>&1 || die "dpkg not found"
  src=$(debian_source) # a subshell: fails the script when debian_source dies
  read -r uri keyring <<<"$src"

  tmp=$(mktemp -d "$CACHE/.tmp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/debs"
  : >"$tmp/sources.list"
  for n in "${need[@]}"; do
    read -r _ suite <<<"$n"
    echo "deb [signed-by=$keyring target=Packages] $uri $suite main" >>"$tmp/sources.list"
  done
  apt_opts=(
    -q
    -oDir::Etc::SourceList="$tmp/sources.list"
    -oDir::Etc::SourceParts=/dev/null
    -oDir::State::Lists="$tmp/lists"
    -oDir::Cache="$tmp/cache"
    -oAcquire::Languages=none
  )
  # The _apt sandbox user cannot write into a root-owned temp folder.
  [[ $(id -u) -ne 0 ]] || apt_opts+=(-oAPT::Sandbox::User=root)

  if ! apt-get "${apt_opts[@]}" update >"$tmp/update.log" 2>&1 ||
     grep -q '^E:' "$tmp/update.log"; then
    cat "$tmp/update.log" >&2
    die "apt-get update of the private Debian sources ($uri) failed"
  fi
  grep '^W:' "$tmp/update.log" >&2 || true

  for n in "${need[@]}"; do
    read -r want suite <<<"$n"
    rm -f "$tmp/debs/"*.deb
    if ! (cd "$tmp/debs" && apt-get "${apt_opts[@]}" download "containerd/$suite") >"$tmp/download.log" 2>&1; then
      cat "$tmp/download.log" >&2
      die "apt-get download containerd/$suite failed"
    fi
    deb=$(ls "$tmp/debs/"containerd_*.deb 2>/dev/null | head -n1)
    [[ -n $deb ]] || die "apt-get download containerd/$suite produced no .deb"
    debver=$(dpkg-deb -f "$deb" Version)

    unpack="$tmp/unpack-$suite"
    mkdir -p "$unpack"
    dpkg -x "$deb" "$unpack" || die "dpkg -x $deb failed"
    ver=$(bin_version "$unpack/usr/bin") ||
      die "containerd $debver from $suite does not run here ($unpack/usr/bin/containerd --version failed)"
    if [[ $ver != "$want" ]]; then
      warn "Debian $suite now has containerd $ver ($debver), not the pinned $want; using $ver"
    fi
    rm -rf "${CACHE:?}/$ver"
    mv "$unpack" "$CACHE/$ver"
    echo "$ver" >"$CACHE/.$suite.version"
    echo "$debver" >"$CACHE/$ver/.debian-version"
    found[$suite]="$ver $CACHE/$ver/usr/bin"
  done
fi

for pin in "${PINS[@]}"; do
  read -r _ suite <<<"$pin"
  results+=("${found[$suite]}")
done
printf '%s\n' "${results[@]}"
