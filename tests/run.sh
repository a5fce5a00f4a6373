#!/usr/bin/env bash
# Every check CI runs, in order: formatting, lints (warnings denied), the engine
# core built for the browser (wasm32-unknown-unknown), then all tests.
# Installs what it needs itself; works on a fresh clone of a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-unknown-unknown

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build -p callsync-core --target wasm32-unknown-unknown --locked
cargo test --workspace --locked
