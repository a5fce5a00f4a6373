//! From the file an admin hands in to the component the host runs.
//!
//! Owns: telling a WebAssembly module from a component from anything else, the
//! "imports nothing" rule for modules (checked before wrapping, so the error names
//! what was imported), wrapping a `wit-bindgen` module into a component with
//! `wit-component`, and content hashes.

use callsync_core::plugin::ContentHash;
use wasmparser::{Parser, Payload};

use crate::PluginError;

/// SHA-256 of `bytes`.
pub fn content_hash(bytes: &[u8]) -> ContentHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    ContentHash::from_bytes(out)
}

/// The component to run for a plugin file: the file itself if it is a component;
/// a module built with `wit-bindgen` (e.g. by `cargo build --target
/// wasm32-unknown-unknown`) wrapped into one. Refuses anything else, and modules
/// that import anything.
pub fn to_component(file: &[u8], max_bytes: usize) -> Result<Vec<u8>, PluginError> {
    if file.len() > max_bytes {
        return Err(PluginError::TooLarge {
            size: file.len(),
            max: max_bytes,
        });
    }
    if Parser::is_component(file) {
        return Ok(file.to_vec());
    }
    if !Parser::is_core_wasm(file) {
        return Err(PluginError::NotWasm);
    }
    let imports = module_imports(file)?;
    if !imports.is_empty() {
        return Err(PluginError::Imports(imports));
    }
    wit_component::ComponentEncoder::default()
        .module(file)
        .and_then(|encoder| encoder.validate(true).encode())
        .map_err(|err| PluginError::Invalid(format!("{err:#}")))
}

/// `module::name` of every import of a core module.
fn module_imports(module: &[u8]) -> Result<Vec<String>, PluginError> {
    let mut names = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.map_err(|err| PluginError::Invalid(err.to_string()))?;
        if let Payload::ImportSection(section) = payload {
            for import in section.into_imports() {
                let import = import.map_err(|err| PluginError::Invalid(err.to_string()))?;
                names.push(format!("{}::{}", import.module, import.name));
            }
        }
    }
    Ok(names)
}
