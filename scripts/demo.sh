#!/usr/bin/env bash
# The demo: runs the hello guest through containerd with
#     ctr run --rm --runtime io.containerd.wasmtime.v1 ...
# It installs missing packages, builds the shim, the example guest and its
# image, starts a private containerd in a temporary folder (or, with
# --system, uses the system's at /run/containerd/containerd.sock), and shows
# the guest's output. Needs root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:/root/.cargo/bin:$PATH"
SYSTEM=0
[[ "${1:-}" == "--system" ]] && SYSTEM=1

step() { echo "==> $*" >&2; }

step "installing packages"
bash scripts/install-deps.sh </dev/null
step "building (the first build of Wasmtime takes several minutes)"
cargo build --release --locked -p shim-wasmtime -p oci-artifact-cli
bash examples/build.sh >/dev/null
bash examples/images.sh >/dev/null

SHIM="$ROOT/target/release/containerd-shim-wasmtime-v1"
IMAGE=docker.io/wasmtime-examples/hello:latest

if [[ $SYSTEM -eq 1 ]]; then
    SOCK=/run/containerd/containerd.sock
    NS=default
    # The runtime by absolute path: nothing needs installing for the demo.
    RUNTIME="$SHIM"
else
    DIR="$(mktemp -d /tmp/wasm-demo.XXXX)"
    SOCK="$DIR/c.sock"
    NS=demo
    mkdir -p "$DIR/bin"
    ln -s "$SHIM" "$DIR/bin/containerd-shim-wasmtime-v1"
    printf 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n[plugins."io.containerd.internal.v1.opt"]\n  path = "%s/opt"\n' "$DIR" >"$DIR/config.toml"
    step "starting a private containerd in $DIR"
    PATH="$DIR/bin:$PATH" containerd --root "$DIR/root" --state "$DIR/state" --address "$SOCK" \
        --config "$DIR/config.toml" >"$DIR/containerd.log" 2>&1 &
    CONTAINERD_PID=$!
    trap 'kill $CONTAINERD_PID 2>/dev/null; wait $CONTAINERD_PID 2>/dev/null; rm -rf "$DIR"' EXIT
    for _ in $(seq 100); do
        ctr -a "$SOCK" version >/dev/null 2>&1 && break
        sleep 0.1
    done
    RUNTIME=io.containerd.wasmtime.v1
fi

step "importing $IMAGE"
ctr -a "$SOCK" -n "$NS" images import --all-platforms target/examples/images/hello.tar >/dev/null
step "ctr run --rm --runtime $RUNTIME $IMAGE hello-demo"
ctr -a "$SOCK" -n "$NS" run --rm --runtime "$RUNTIME" "$IMAGE" "hello-demo-$$" </dev/null
