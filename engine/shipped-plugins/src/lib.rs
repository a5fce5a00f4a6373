//! The result-rule plugins callsync ships, as built from `plugins/`.
//!
//! Owns: the bytes of each plugin's WebAssembly module (built by this crate's build
//! script for `wasm32-unknown-unknown`), so the server can install the standard
//! plugin for a new tenant and tests and benches can load the real thing. A module
//! is what `cargo build --target wasm32-unknown-unknown` produces; the plugin host
//! wraps it into a component on install.
//! Does not own: running or installing plugins (`callsync-plugin-host`).

/// The standard plugin: the manual's result types, recall at the picked time or a
/// fixed delay after the call, restriction until the picked time.
pub const STANDARD: &[u8] = include_bytes!(env!("CALLSYNC_PLUGIN_STANDARD"));

/// The business-hours plugin: as standard, but every recall lands inside business
/// hours (weekdays 10:00–12:00, 13:00–17:00 in the tenant's zone, holidays skipped).
pub const BUSINESS_HOURS: &[u8] = include_bytes!(env!("CALLSYNC_PLUGIN_BUSINESS_HOURS"));

/// The plugin author's guide's example (README): recall two days after the call.
/// Not shipped to tenants; built and installed by the tests so the guide stays true.
pub const EXAMPLE: &[u8] = include_bytes!(env!("CALLSYNC_PLUGIN_EXAMPLE"));

/// Plugins that misbehave on purpose, for containment tests and nothing else.
pub mod hostile {
    /// Standard until a pick's customer status names a misbehaviour (`loop`,
    /// `memory-bomb`, `panic`, `recursion`, `garbage`), or the setting
    /// `describe=<misbehaviour>` asks for it at install.
    pub const MISBEHAVES: &[u8] = include_bytes!(env!("CALLSYNC_PLUGIN_HOSTILE"));
    /// A core module that imports WASI's `fd_write`.
    pub const IMPORTS_WASI: &[u8] = include_bytes!(env!("CALLSYNC_PLUGIN_HOSTILE_WASI"));
    /// A complete rules plugin that also imports `wasi:cli/environment`.
    pub const IMPORTS_ENVIRONMENT: &[u8] = include_bytes!(env!("CALLSYNC_PLUGIN_HOSTILE_IMPORT"));
    /// A plugin for `callsync:rules@2.0.0`, a version this engine does not support.
    pub const API_V2: &[u8] = include_bytes!(env!("CALLSYNC_PLUGIN_API_V2"));
}
