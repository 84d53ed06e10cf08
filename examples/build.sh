#!/usr/bin/env bash
# Builds the example guests into $OUT (default: <workspace>/target/examples):
#   $OUT/*.wasm         WASI preview1 modules compiled from examples/*/*.c
#   $OUT/trap-debug.wasm  trap.c with DWARF, for backtraces with file and line
#   $OUT/p2/*.wasm      the same programs as preview 2 command components
#   $OUT/p2/net.wasm    sockets/net.c: a component that uses wasi:sockets
#   $OUT/p2/hello-http.wasm  http/hello-http.c: a wasi:http/proxy component
#   $OUT/p2/hello-py.wasm  http-py/app.py: the same, in Python (componentize-py)
#   $OUT/bad/*.wasm     broken or hostile inputs for error-path tests
#   $OUT/native/hello   hello.c as a static Linux binary (runc comparison)
#   $OUT/native/pause   native/pause.c, a pod sandbox program (static Linux)
#   $OUT/native/wagi-cgi  wagi/wagi.c as a static Linux CGI program (benchmark)
# Every run rebuilds everything and produces the same bytes, but for
# hello-py.wasm (its interpreter snapshot holds a random hash seed).
#
# Needs (Debian): clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32 wabt gcc libc6-dev;
# and the Rust toolchain, for oci-artifact (componentize) and wit-bindgen (C
# bindings for wasi:http, installed into target/tools on first use)
set -euo pipefail

EXAMPLES="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$EXAMPLES")"
OUT="${OUT:-$ROOT/target/examples}"
CLANG="${CLANG:-clang-14}"
CC="${CC:-cc}"

die() {
    echo "build.sh: $*" >&2
    exit 1
}

# Check the toolchain up front, naming the package that provides what is missing.
command -v "$CLANG" >/dev/null || die "$CLANG not found: apt-get install -y clang-14"
command -v wasm-ld-14 >/dev/null || die "wasm-ld-14 not found: apt-get install -y lld-14"
command -v wat2wasm >/dev/null || die "wat2wasm not found: apt-get install -y wabt"
command -v "$CC" >/dev/null || die "$CC not found: apt-get install -y gcc libc6-dev"
[[ -f /usr/lib/wasm32-wasi/libc.a && -f /usr/include/wasm32-wasi/stdio.h ]] ||
    die "wasi-libc not found (/usr/lib/wasm32-wasi/libc.a): apt-get install -y wasi-libc"
[[ -f "$("$CLANG" --target=wasm32-wasi --rtlib=compiler-rt -print-libgcc-file-name)" ]] ||
    die "wasm32 compiler-rt builtins not found: apt-get install -y libclang-rt-14-dev-wasm32"

mkdir -p "$OUT/bad" "$OUT/native"
OUT="$(cd "$OUT" && pwd)" # absolute, as the build runs from $EXAMPLES

# Guests. -s strips names and custom sections, so no path or timestamp leaks
# into the output. Run from $EXAMPLES with relative paths for the same reason.
cd "$EXAMPLES"
for src in */*.c; do
    [[ "$src" == native/* || "$src" == sockets/* || "$src" == http/* ]] && continue # built below
    name="$(basename "$src" .c)"
    echo "wasm   $OUT/$name.wasm"
    "$CLANG" --target=wasm32-wasi -O2 -Wall -Wextra -s -o "$OUT/$name.wasm" "$src"
done

# trap.c again, keeping its DWARF (-g, not stripped), so that traps show file
# and line. The prefix map keeps the checkout's path out of the module.
echo "wasm   $OUT/trap-debug.wasm (with DWARF)"
"$CLANG" --target=wasm32-wasi -O0 -g -fdebug-prefix-map="$EXAMPLES"=. -Wall -Wextra \
    -o "$OUT/trap-debug.wasm" trap/trap.c

# The same programs as WASI preview 2 command components: each module wrapped
# with Wasmtime's preview 1 command adapter by `oci-artifact componentize`.
# Builds the CLI when it is missing or stale (a no-op when it is current).
if [[ -z "${OCI_ARTIFACT:-}" ]]; then
    command -v cargo >/dev/null || die "cargo not found: the Rust toolchain builds oci-artifact"
    cargo build --release --locked -q -p oci-artifact-cli --manifest-path "$ROOT/Cargo.toml"
fi
CLI="${OCI_ARTIFACT:-${CARGO_TARGET_DIR:-$ROOT/target}/release/oci-artifact}"
mkdir -p "$OUT/p2"
for src in */*.c; do
    [[ "$src" == native/* || "$src" == sockets/* || "$src" == http/* ]] && continue
    name="$(basename "$src" .c)"
    echo "p2     $OUT/p2/$name.wasm"
    "$CLI" componentize "$OUT/$name.wasm" -o "$OUT/p2/$name.wasm" >/dev/null
done

# net.c imports wasi:sockets directly: its module carries the world that
# declares those imports (sockets/world.wit, beside the WASI WIT of the
# wasmtime-wasi release in Cargo.lock) before the adapter wraps it.
# The source folder of a crate in Cargo.lock, as cargo fetched it.
crate_dir() {
    cargo metadata --format-version 1 --locked --manifest-path "$ROOT/Cargo.toml" |
        python3 -c 'import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == sys.argv[1]:
        print(os.path.dirname(p["manifest_path"]))' "$1"
}
WASI_WIT="$(crate_dir wasmtime-wasi)/src/p2/wit/deps"
[[ -d "$WASI_WIT" ]] || die "the WASI WIT of wasmtime-wasi was not found (cargo fetch?)"
rm -rf "$OUT/wit" && mkdir -p "$OUT/wit" "$OUT/core"
cp sockets/world.wit "$OUT/wit/" && cp -r "$WASI_WIT" "$OUT/wit/deps"
echo "p2     $OUT/p2/net.wasm (wasi:sockets)"
"$CLANG" --target=wasm32-wasi -O2 -Wall -Wextra -s -o "$OUT/core/net.wasm" sockets/net.c
"$CLI" componentize "$OUT/core/net.wasm" --wit "$OUT/wit" --world net -o "$OUT/p2/net.wasm" >/dev/null

# HTTP functions: C against wit-bindgen's C bindings for the wasi:http/proxy
# world (the WIT of the wasmtime-wasi-http release in Cargo.lock), built as a
# reactor and wrapped with the preview 1 proxy adapter.
WIT_BINDGEN_VERSION=0.63.0
WIT_BINDGEN="$ROOT/target/tools/wit-bindgen/bin/wit-bindgen"
if [[ ! -x "$WIT_BINDGEN" ]] || [[ "$("$WIT_BINDGEN" --version)" != *" $WIT_BINDGEN_VERSION"* ]]; then
    echo "tool   wit-bindgen $WIT_BINDGEN_VERSION (cargo install, C backend only)"
    cargo install -q --locked --force wit-bindgen-cli --version "$WIT_BINDGEN_VERSION" \
        --no-default-features --features c --root "$ROOT/target/tools/wit-bindgen" ||
        die "cargo install wit-bindgen-cli failed"
fi
HTTP_WIT="$(crate_dir wasmtime-wasi-http)/wit"
[[ -d "$HTTP_WIT" ]] || die "the WIT of wasmtime-wasi-http was not found (cargo fetch?)"
PROXY_WORLD="$(sed -n 's/^ *include \(wasi:http\/proxy@[0-9.]*\);/\1/p' "$HTTP_WIT/world.wit")"
[[ -n "$PROXY_WORLD" ]] || die "no wasi:http/proxy world in $HTTP_WIT/world.wit"
rm -rf "$OUT/bindings/proxy" && mkdir -p "$OUT/bindings/proxy"
"$WIT_BINDGEN" c --world "$PROXY_WORLD" --out-dir "$OUT/bindings/proxy" "$HTTP_WIT" >/dev/null
for src in http/*.c; do
    name="$(basename "$src" .c)"
    echo "p2     $OUT/p2/$name.wasm (wasi:http/proxy)"
    "$CLANG" --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -s \
        -I "$OUT/bindings/proxy" -o "$OUT/core/$name.wasm" "$src" \
        "$OUT/bindings/proxy/proxy.c" "$OUT/bindings/proxy/proxy_component_type.o"
    "$CLI" componentize "$OUT/core/$name.wasm" --adapter proxy -o "$OUT/p2/$name.wasm" >/dev/null
done

# An HTTP function in Python, against the same proxy world: componentize-py
# (PyPI, pinned, in a venv under target/tools on first use) bundles CPython,
# pre-initialized with the app imported, into one component of about 18 MB.
# Its bytes differ from run to run (the interpreter's snapshot holds a random
# hash seed). Built from a copy in $OUT, as the interpreter writes __pycache__
# beside the app.
COMPONENTIZE_PY_VERSION=0.25.1
COMPONENTIZE_PY_VENV="$ROOT/target/tools/componentize-py"
COMPONENTIZE_PY="$COMPONENTIZE_PY_VENV/bin/componentize-py"
if [[ ! -x "$COMPONENTIZE_PY" ]] ||
    [[ "$("$COMPONENTIZE_PY" --version 2>/dev/null)" != "componentize-py $COMPONENTIZE_PY_VERSION" ]]; then
    echo "tool   componentize-py $COMPONENTIZE_PY_VERSION (pip, in a venv)"
    rm -rf "$COMPONENTIZE_PY_VENV"
    python3 -m venv "$COMPONENTIZE_PY_VENV" || die "python3 -m venv failed: apt-get install -y python3-venv"
    "$COMPONENTIZE_PY_VENV/bin/pip" install -q "componentize-py==$COMPONENTIZE_PY_VERSION" </dev/null ||
        die "pip install componentize-py==$COMPONENTIZE_PY_VERSION failed"
fi
rm -rf "$OUT/py" && mkdir -p "$OUT/py" && cp http-py/app.py "$OUT/py/"
echo "p2     $OUT/p2/hello-py.wasm (componentize-py)"
"$COMPONENTIZE_PY" -q -d "$HTTP_WIT" -w "$PROXY_WORLD" componentize -p "$OUT/py" app -o "$OUT/p2/hello-py.wasm" ||
    die "componentize-py could not build http-py/app.py"

# Broken inputs. component.wat is documentation only: wat2wasm cannot encode
# components, so its binary form is written by hand below.
for wat in bad/*.wat; do
    name="$(basename "$wat" .wat)"
    [[ "$name" == component ]] && continue
    echo "wat    $OUT/bad/$name.wasm"
    wat2wasm "$wat" -o "$OUT/bad/$name.wasm"
done
echo "bad    $OUT/bad/{not-wasm,truncated,empty,component}.wasm"
cp bad/not-wasm.txt "$OUT/bad/not-wasm.wasm"
head -c 20 "$OUT/hello.wasm" >"$OUT/bad/truncated.wasm"
: >"$OUT/bad/empty.wasm"
printf '\0asm\x0d\x00\x01\x00' >"$OUT/bad/component.wasm"

# Native twin of hello for comparing against runc. Stripped so the binary does
# not depend on where the checkout lives.
echo "native $OUT/native/hello"
"$CC" -O2 -Wall -Wextra -static -s -o "$OUT/native/hello" hello/hello.c
# The WAGI example as a Linux program, for busybox httpd's cgi-bin in the
# benchmark: the container way to answer one request per process.
echo "native $OUT/native/wagi-cgi"
"$CC" -O2 -Wall -Wextra -static -s -o "$OUT/native/wagi-cgi" wagi/wagi.c
# A pod sandbox ("pause") program: Linux containers beside wasm ones.
echo "native $OUT/native/pause"
"$CC" -O2 -Wall -Wextra -static -s -o "$OUT/native/pause" native/pause.c
