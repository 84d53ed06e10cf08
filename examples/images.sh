#!/usr/bin/env bash
# Turns each example module into an OCI image layout tar with one tar layer,
# which `ctr images import` takes:
#   target/examples/images/<name>.tar  ->  docker.io/wasmtime-examples/<name>:latest
# The bad inputs become images too (bad-<name>), so tests can run them.
# Builds are reproducible: the same module gives the same digests.
# Needs examples/build.sh to have run, and the oci-artifact CLI (built here).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/target/examples}"
CLI="${OCI_ARTIFACT:-$ROOT/target/release/oci-artifact}"
if [[ ! -x "$CLI" ]]; then
    cargo build --release -q -p oci-artifact-cli --manifest-path "$ROOT/Cargo.toml"
fi
mkdir -p "$OUT/images"

shopt -s nullglob
for wasm in "$OUT"/*.wasm; do
    name="$(basename "$wasm" .wasm)"
    "$CLI" build "$wasm" --name "docker.io/wasmtime-examples/$name:latest" -o "$OUT/images/$name.tar" >/dev/null
done
# Components: docker.io/wasmtime-examples/<name>-p2 (config os wasip2).
for wasm in "$OUT"/p2/*.wasm; do
    name="$(basename "$wasm" .wasm)"
    "$CLI" build "$wasm" --module-name "$name.wasm" --name "docker.io/wasmtime-examples/$name-p2:latest" \
        -o "$OUT/images/$name-p2.tar" >/dev/null
done
# Bad inputs: the builder refuses what is not wasm, so these layers are made
# with --force-any, which only skips that check.
for wasm in "$OUT"/bad/*.wasm; do
    name="bad-$(basename "$wasm" .wasm)"
    "$CLI" build "$wasm" --force-any --module-name "$(basename "$wasm")" \
        --name "docker.io/wasmtime-examples/$name:latest" -o "$OUT/images/$name.tar" >/dev/null
done
# The same hello program as a static Linux binary, for runc comparisons.
if [[ -x "$OUT/native/hello" ]]; then
    "$CLI" build "$OUT/native/hello" --native linux/amd64 \
        --name docker.io/wasmtime-examples/hello-native:latest -o "$OUT/images/hello-native.tar" >/dev/null
fi
# pause, the pod sandbox for the CRI tests.
if [[ -x "$OUT/native/pause" ]]; then
    "$CLI" build "$OUT/native/pause" --native linux/amd64 --module-name pause \
        --name docker.io/wasmtime-examples/pause:latest -o "$OUT/images/pause.tar" >/dev/null
fi
# busybox, for the runc baseline: `ctr run IMAGE ID /busybox echo hi`.
if [[ -x /bin/busybox ]]; then
    "$CLI" build /bin/busybox --native linux/amd64 --module-name busybox \
        --name docker.io/wasmtime-examples/busybox:latest -o "$OUT/images/busybox.tar" >/dev/null
fi
echo "images in $OUT/images"
