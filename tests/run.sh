#!/usr/bin/env bash
# Every check CI runs, in order: formatting, lints (warnings denied), the engine
# core built for the browser (wasm32-unknown-unknown), the plugins workspace, all
# Rust tests, then the page (built, type-checked) and its tests in Debian's
# Chromium. Installs what it needs itself; works on a fresh clone of a fresh machine.
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
# The exhaustion journeys compare another tenant's latencies with and without an
# attack: they run on their own, one at a time, after everything else, so the
# other journeys' load is not what they measure.
cargo test --workspace --locked -- --skip exhaustion::
cargo test -p callsync --test journeys --locked -- exhaustion:: --test-threads=1

# The browser tests: Debian's Chromium (never a downloaded browser) and a Japanese
# font, so the screenshots are readable; the page built; then real `callsync`
# processes and the page in headless Chromium (playwright-core).
if ! command -v chromium >/dev/null || ! fc-list 2>/dev/null | grep -qi ipagothic; then
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-ipafont-gothic >/dev/null
fi
bash clients/web/build.sh
# The `callsync` binary the browser tests run is the one `cargo test` built.
(cd clients/web && npm test)
