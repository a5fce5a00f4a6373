//! Builds the `plugins/` workspace for `wasm32-unknown-unknown` (release) and tells
//! the crate where the modules are.
//!
//! The plugins are a cargo workspace of their own (their `wit-bindgen` would add a
//! second WIT parser to the host's build), so this runs cargo on it, as a child,
//! into a target directory under `OUT_DIR`, sharing the parent's jobserver.

use std::path::PathBuf;
use std::process::Command;

/// Crates of the plugins workspace whose modules this crate embeds.
const PLUGINS: &[&str] = &[
    "standard",
    "business-hours",
    "hostile",
    "hostile-wasi",
    "hostile-import",
    "api-v2",
    "example",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let plugins = manifest_dir.join("../../plugins");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let target_dir = out_dir.join("plugins-target");
    for path in ["Cargo.toml", "Cargo.lock", ".cargo", "wit", "sdk"]
        .iter()
        .copied()
        .chain(PLUGINS.iter().copied())
    {
        println!("cargo:rerun-if-changed={}", plugins.join(path).display());
    }

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    // From inside plugins/, so its `.cargo/config.toml` (the guest stack size)
    // applies as it does for an author building there.
    command
        .current_dir(&plugins)
        .arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--target=wasm32-unknown-unknown")
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for package in PLUGINS {
        command.arg("-p").arg(format!("callsync-plugin-{package}"));
    }
    // What the parent build set for itself must not leak into the guest build
    // (clippy's wrapper, host flags, the parent's target directory).
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(var);
    }
    let status = match command.status() {
        Ok(status) => status,
        Err(err) => panic!("could not run cargo to build plugins/: {err}"),
    };
    if !status.success() {
        panic!(
            "building plugins/ for wasm32-unknown-unknown failed ({status}); \
             is the target installed? `rustup target add wasm32-unknown-unknown`"
        );
    }
    let modules = target_dir.join("wasm32-unknown-unknown/release");
    for package in PLUGINS {
        let file = modules.join(format!(
            "callsync_plugin_{}.wasm",
            package.replace('-', "_")
        ));
        let var = format!(
            "CALLSYNC_PLUGIN_{}",
            package.replace('-', "_").to_ascii_uppercase()
        );
        println!("cargo:rustc-env={var}={}", file.display());
    }
}
