#!/usr/bin/env bash
# Builds the page: the engine (core + client session) to WebAssembly, its
# bindings with wasm-bindgen, then the page with Vite into clients/web/dist.
# Installs what it needs: the wasm32 target, wasm-bindgen-cli at exactly the
# crate's version (built from crates.io: no prebuilt binary can be downloaded
# here), and the npm packages from the lock file.
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$(cd ../.. && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
# Tools live outside the clone, like the target directory, so CI reuses them.
TOOLS="${CALLSYNC_TOOLS:-/var/tmp/callsync-tools}"
WASM_BINDGEN_VERSION="$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' engine/Cargo.toml)"
export PATH="$TOOLS/bin:$PATH"

rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || rustup target add wasm32-unknown-unknown
if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $WASM_BINDGEN_VERSION"; then
    echo "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION into $TOOLS" >&2
    cargo install --locked --quiet wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --root "$TOOLS"
fi
cargo build --locked --quiet -p callsync-web --target wasm32-unknown-unknown --profile web
wasm-bindgen --target web --out-dir src/pkg \
    "$CARGO_TARGET_DIR/wasm32-unknown-unknown/web/callsync_web.wasm"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build
echo "built the page into $(pwd)/dist" >&2
