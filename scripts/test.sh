#!/usr/bin/env bash
# Runs the whole test suite on this machine:
#   1. installs the Debian packages it needs (containerd, runc, clang-14, ...),
#   2. fetches containerd 1.7.24 and 2.1.9 beside the system's 1.6.20,
#   3. builds the shim, the oci-artifact CLI, the example guests and their images,
#   4. runs the unit tests, then the end-to-end tests once per containerd version.
# Needs root: the shim mounts container root filesystems.
#
# Environment:
#   CONTAINERD_VERSIONS  space-separated subset to test, e.g. "1.6.20" (default: all)
#   E2E_FILTER           a cargo test filter for the end-to-end tests
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:/root/.cargo/bin:$PATH"

if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: the end-to-end tests need root (they mount container filesystems)" >&2
    exit 1
fi

step() { echo "==> $*" >&2; }

step "installing packages"
bash scripts/install-deps.sh </dev/null

step "fetching containerd versions"
mapfile -t VERSIONS < <(bash scripts/fetch-containerd.sh)

step "building the shim, the oci-artifact CLI and the node installer"
cargo build --release --locked -p shim-wasmtime -p oci-artifact-cli -p node-installer

# The shim reads images from containerd's content store only: a registry
# client in it would cost memory in every pod (oci-artifact/cli has one).
if cargo tree --locked -p shim-wasmtime -e normal 2>/dev/null | grep -E "^[^a-z]*(oci-client|reqwest|ureq) v"; then
    echo "test.sh: the shim links a registry client (above); keep it in oci-artifact/cli" >&2
    exit 1
fi

step "building example guests and images"
bash examples/build.sh >/dev/null
bash examples/images.sh >/dev/null

LOG="$ROOT/target/test-log.txt"
: >"$LOG"
failed_runs=0
# Runs one cargo test invocation, keeping its output for the summary.
run_tests() {
    if ! "$@" 2>&1 | tee -a "$LOG"; then
        failed_runs=$((failed_runs + 1))
    fi
}

step "unit tests"
run_tests cargo test --release --locked --workspace --exclude e2e

wanted="${CONTAINERD_VERSIONS:-}"
for line in "${VERSIONS[@]}"; do
    read -r version bindir <<<"$line"
    if [[ -n $wanted && " $wanted " != *" $version "* ]]; then
        continue
    fi
    step "end-to-end tests against containerd $version ($bindir)"
    export CONTAINERD_BIN_DIR="$bindir"
    run_tests cargo test --release --locked -p e2e -- --test-threads=2 ${E2E_FILTER:-}
done

# One closing line over every run above, also kept for .ci/run to repeat.
passed=$(grep -o '[0-9]* passed' "$LOG" | awk '{s+=$1} END {print s+0}')
failed=$(grep -o '[0-9]* failed' "$LOG" | awk '{s+=$1} END {print s+0}')
echo "summary: $passed passed, $failed failed" | tee "$ROOT/target/test-summary.txt"
[[ $failed_runs -eq 0 && $failed -eq 0 ]]
