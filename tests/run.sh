#!/usr/bin/env bash
# Every check CI runs, in order: formatting, lints (warnings denied), the engine
# core built for the browser (wasm32-unknown-unknown), the plugins workspace, then
# all tests. Installs what it needs itself; works on a fresh clone of a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-unknown-unknown

cargo fmt --all --check
cargo fmt --all --check --manifest-path plugins/Cargo.toml
cargo clippy --workspace --all-targets --locked -- -D warnings
# The plugins and their SDK: as shipped (wasm32) and as their unit tests run (native).
cargo clippy --manifest-path plugins/Cargo.toml --workspace --locked --target wasm32-unknown-unknown -- -D warnings
cargo clippy --manifest-path plugins/Cargo.toml --workspace --all-targets --locked -- -D warnings
cargo build -p callsync-core -p callsync-session --target wasm32-unknown-unknown --locked
cargo test --manifest-path plugins/Cargo.toml --workspace --locked
cargo test --workspace --locked
