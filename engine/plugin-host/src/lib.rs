//! The plugin host: runs result-rule plugins (WebAssembly components built for the
//! `callsync:rules@1.0.0` WIT API in `plugins/wit`) with wasmtime, sandboxed.
//!
//! Owns: compiling a plugin once per content hash (in memory, and on disk when given
//! a cache directory), a fresh instance per call from an `InstancePre`, and the
//! limits every call runs under — fuel (a deterministic cap on work: the same plugin
//! on the same inputs runs out at the same point on every device), an epoch deadline
//! (a wall-clock backstop), a memory limit that traps on a refused grow, and a small
//! wasm stack. Checking a plugin file before install ([`PluginHost::inspect`]: no
//! imports, a supported API version, settings accepted, a smoke evaluation of every
//! result type and option) and every answer after a call (see
//! [`callsync_core::plugin::check_decision`]).
//! Does not own: where plugins come from or which one a tenant uses (the tenant's
//! configuration document), or what to do when a call fails (the engine falls back
//! and marks the decision for an admin's look).
//!
//! A trapped instance is never reused: each call instantiates afresh, so a plugin
//! that failed once cannot leave state that changes the next answer.

mod cache;

pub use cache::MAX_CACHED_FILES;
mod convert;
pub mod decide;
mod error;
pub use callsync_core::holidays;
pub mod install;
mod package;
pub mod zone;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use callsync_core::Timestamp;
use callsync_core::plugin::{
    API_INTERFACE, API_PACKAGE, ContentHash, Decision, Pick, PluginInfo, Refusal, RuleInputs,
    SUPPORTED_API_VERSIONS, Setting, check_decision, check_info,
};
use callsync_core::result_type::{OptionKind, ResultTypeSpec, TimeEntry};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

pub use error::{Failure, PluginError};
pub use package::{content_hash, to_component};

mod bindings {
    //! Generated from `plugins/wit`.
    wasmtime::component::bindgen!({
        path: "../../plugins/wit",
        world: "plugin",
    });
}

use bindings::exports::callsync::rules::result_rules as wit;

/// Most compiled plugins a host keeps loaded …
const MAX_LOADED: usize = 64;
/// … and how long one stays loaded unused: a build no tenant has run for this
/// long is forgotten when another loads (its next use loads it again from the
/// disk cache, well under a millisecond), so the map shrinks back after a
/// burst of installs or rollbacks.
const LOADED_IDLE: std::time::Duration = std::time::Duration::from_secs(600);

/// Memory kept mapped between instances (see `PluginHost::new`).
const KEEP_RESIDENT_BYTES: usize = 256 << 10;

/// How often the epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The limits every plugin call runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fuel per call (about one unit per WebAssembly instruction).
    pub fuel: u64,
    /// Wall-clock time per call.
    pub deadline: Duration,
    /// Linear memory per instance, in bytes.
    pub memory_bytes: usize,
    /// WebAssembly stack, in bytes.
    pub stack_bytes: usize,
    /// Largest plugin file accepted, in bytes.
    pub max_file_bytes: usize,
    /// Instances that may run at once (the pooling allocator's slots): calls past
    /// this fail with [`Failure::Instantiate`] rather than wait.
    pub concurrent_calls: u32,
}

impl Default for Limits {
    /// The shipped plugins use under 1 % of this fuel per evaluation (see the
    /// README); memory is the 1 MiB guest stack plus room to spare.
    fn default() -> Self {
        Self {
            fuel: 20_000_000,
            deadline: Duration::from_millis(250),
            memory_bytes: 16 << 20,
            stack_bytes: 256 << 10,
            max_file_bytes: 2 << 20,
            concurrent_calls: 32,
        }
    }
}

/// Runs plugins. One per process; cheap to share behind an `Arc`.
pub struct PluginHost {
    engine: Engine,
    limits: Limits,
    cache: Option<cache::DiskCache>,
    /// Loaded plugins, with when each was last used.
    loaded: Mutex<HashMap<ContentHash, (Arc<LoadedPlugin>, std::time::Instant)>>,
    /// Components compiled by this host (not found in memory or on disk).
    compiles: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("limits", &self.limits)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// A plugin file that passed every check of [`PluginHost::inspect`].
#[derive(Debug, Clone)]
pub struct Inspected {
    /// The component (the file itself, or the module wrapped into one).
    pub component: Vec<u8>,
    /// SHA-256 of `component`.
    pub hash: ContentHash,
    /// What the plugin declares with the settings given.
    pub info: PluginInfo,
}

/// A host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// wasmtime refused the configuration.
    #[error("the WebAssembly engine could not start: {0}")]
    Engine(String),
    /// The cache directory could not be created.
    #[error("plugin cache directory {path}: {source}")]
    Cache {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl PluginHost {
    /// A host with these limits, caching compiled plugins in `cache_dir` if given.
    pub fn new(limits: Limits, cache_dir: Option<&Path>) -> Result<Self, HostError> {
        // A fresh instance per call costs a memory set-up each time; the pooling
        // allocator keeps memory slots mapped and resets them instead.
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(limits.concurrent_calls)
            .total_core_instances(limits.concurrent_calls * 2)
            .total_memories(limits.concurrent_calls)
            .total_tables(limits.concurrent_calls * 2)
            .max_memory_size(limits.memory_bytes)
            // Reset the first pages a plugin touches with a memset rather than
            // returning them to the kernel, which costs page faults on every call.
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES);
        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(limits.stack_bytes)
            .wasm_component_model(true);
        let engine = Engine::new(&config).map_err(|err| HostError::Engine(err.to_string()))?;
        let weak = engine.weak();
        // The epoch clock: stops by itself once the engine is gone.
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|err| HostError::Engine(err.to_string()))?;
        let cache = cache_dir
            .map(|dir| {
                cache::DiskCache::new(dir).map_err(|source| HostError::Cache {
                    path: dir.display().to_string(),
                    source,
                })
            })
            .transpose()?;
        Ok(Self {
            engine,
            limits,
            cache,
            loaded: Mutex::new(HashMap::new()),
            compiles: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The limits calls run under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How many components this host has compiled, rather than found loaded or
    /// in its disk cache (what a restart with a warm cache should keep at zero).
    pub fn compiles(&self) -> u64 {
        self.compiles.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn compile(&self, component: &[u8]) -> Result<Component, PluginError> {
        self.compiles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Component::new(&self.engine, component)
            .map_err(|err| PluginError::Invalid(format!("{err:#}")))
    }

    /// Checks a plugin file before install: a module or component of at most
    /// [`Limits::max_file_bytes`], importing nothing, exporting a supported version
    /// of the rules API, accepting `settings`, declaring valid result types, and
    /// answering a smoke evaluation of every result type and option (a recall or
    /// restriction a day after `now`) with valid decisions. Leaves the plugin
    /// compiled and cached.
    pub fn inspect(
        &self,
        file: &[u8],
        settings: &[Setting],
        inputs_at: impl Fn(Timestamp) -> RuleInputs,
        now: Timestamp,
    ) -> Result<Inspected, PluginError> {
        let component = to_component(file, self.limits.max_file_bytes)?;
        let hash = content_hash(&component);
        // Installing a build this process already runs, or compiled before (new
        // settings, a rollback) needs no compile; the checks on its answers run again.
        let was_loaded = self.loaded(&hash).is_some();
        let (plugin, compiled) = match self.loaded(&hash) {
            Some(plugin) => (plugin, None),
            None => {
                let cached = self
                    .cache
                    .as_ref()
                    .and_then(|cache| cache.load(&self.engine, &hash));
                let fresh = cached.is_none();
                let compiled = match cached {
                    Some(compiled) => compiled,
                    None => self.compile(&component)?,
                };
                check_shape(&self.engine, &compiled)?;
                let plugin = self.prepare(hash, compiled.clone())?;
                (plugin, fresh.then_some(compiled))
            }
        };
        let checked = plugin
            .describe(settings)
            .and_then(|answer| {
                answer.map_err(|refusal| PluginError::SettingsRefused {
                    plugin: plugin.name(),
                    refusal,
                })
            })
            .and_then(|info| {
                smoke_test(&plugin, &info, settings, inputs_at, now)?;
                Ok(info)
            });
        let info = match checked {
            Ok(info) => info,
            Err(err) => {
                // A refused build is not kept loaded (unless it was before).
                if !was_loaded {
                    self.unload(&hash);
                }
                return Err(err);
            }
        };
        if let (Some(cache), Some(compiled)) = (&self.cache, compiled) {
            cache.store(&hash, &compiled);
        }
        Ok(Inspected {
            component,
            hash,
            info,
        })
    }

    /// The plugin whose component is `component` (hash `hash`), ready to call:
    /// from memory if loaded, else from the disk cache, else compiled (and cached).
    /// The component is checked as at install, so a cached or synced file that is
    /// not a valid plugin is refused here too.
    pub fn load(
        &self,
        hash: ContentHash,
        component: &[u8],
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        if let Some(plugin) = self.loaded(&hash) {
            return Ok(plugin);
        }
        if content_hash(component) != hash {
            return Err(PluginError::Invalid(format!(
                "the component's bytes do not hash to {}",
                hash.short()
            )));
        }
        let from_disk = self
            .cache
            .as_ref()
            .and_then(|cache| cache.load(&self.engine, &hash));
        let compiled = match from_disk {
            Some(compiled) => compiled,
            None => {
                let compiled = self.compile(component)?;
                if let Some(cache) = &self.cache {
                    cache.store(&hash, &compiled);
                }
                compiled
            }
        };
        check_shape(&self.engine, &compiled)?;
        self.prepare(hash, compiled)
    }

    /// A plugin already loaded in this process.
    pub fn loaded(&self, hash: &ContentHash) -> Option<Arc<LoadedPlugin>> {
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (plugin, used) = loaded.get_mut(hash)?;
        *used = std::time::Instant::now();
        Some(plugin.clone())
    }

    /// How many plugins are loaded.
    pub fn loaded_count(&self) -> usize {
        self.loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    fn unload(&self, hash: &ContentHash) {
        self.loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(hash);
    }

    /// Forgets every loaded plugin (the disk cache stays): for measuring loads.
    pub fn unload_all(&self) {
        self.loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }

    fn prepare(
        &self,
        hash: ContentHash,
        compiled: Component,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let linker: Linker<Sandbox> = Linker::new(&self.engine);
        let failed = |err: wasmtime::Error| PluginError::Failed {
            plugin: hash.short(),
            function: "instantiate",
            failure: Failure::Instantiate(format!("{err:#}")),
        };
        let instance_pre = linker.instantiate_pre(&compiled).map_err(failed)?;
        let pre = bindings::PluginPre::new(instance_pre).map_err(failed)?;
        let plugin = Arc::new(LoadedPlugin {
            engine: self.engine.clone(),
            limits: self.limits,
            hash,
            name: OnceLock::new(),
            pre,
        });
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = std::time::Instant::now();
        loaded.retain(|_, (_, used)| now.duration_since(*used) < LOADED_IDLE);
        if loaded.len() >= MAX_LOADED {
            // Bounded: a host serving many tenants forgets the build used least
            // recently; its next use loads it again from the disk cache.
            if let Some(evicted) = loaded
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(hash, _)| *hash)
            {
                loaded.remove(&evicted);
            }
        }
        loaded.insert(hash, (plugin.clone(), now));
        Ok(plugin)
    }
}

/// Imports nothing; exports the rules interface at a supported version.
fn check_shape(engine: &Engine, component: &Component) -> Result<(), PluginError> {
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    if !imports.is_empty() {
        return Err(PluginError::Imports(imports));
    }
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let prefix = format!("{API_PACKAGE}/{API_INTERFACE}@");
    let Some(version) = exports.iter().find_map(|name| name.strip_prefix(&prefix)) else {
        return Err(PluginError::NoRulesExport(exports));
    };
    if !SUPPORTED_API_VERSIONS.contains(&version) {
        return Err(PluginError::UnsupportedApi {
            found: version.to_owned(),
        });
    }
    Ok(())
}

/// Every result type with every option it offers, picked as a user would (a time a
/// day after `now` where the form asks for one), must validate without failing and
/// evaluate to a valid decision.
fn smoke_test(
    plugin: &LoadedPlugin,
    info: &PluginInfo,
    settings: &[Setting],
    inputs_at: impl Fn(Timestamp) -> RuleInputs,
    now: Timestamp,
) -> Result<(), PluginError> {
    let mut inputs = inputs_at(now);
    inputs.settings = settings.to_vec();
    let tomorrow = now.plus_millis(86_400_000).ceil_to_option_step();
    for spec in &info.result_types {
        for &option in &spec.options {
            let at = match (option, spec.time_entry) {
                (OptionKind::None, _) | (_, TimeEntry::Computed) => None,
                _ => Some(tomorrow),
            };
            let pick = Pick {
                result_type: spec.id.clone(),
                option,
                at,
                customer_status: None,
            };
            // A refusal is an answer; only failing to answer fails the smoke test.
            let _ = plugin.validate(&pick, &inputs)?;
            plugin.evaluate(&pick, &inputs, spec)?;
        }
    }
    Ok(())
}

/// A compiled plugin, ready to instantiate.
pub struct LoadedPlugin {
    engine: Engine,
    limits: Limits,
    hash: ContentHash,
    name: OnceLock<String>,
    pre: bindings::PluginPre<Sandbox>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name())
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// What one instance may use; the store's data.
struct Sandbox {
    memory_bytes: usize,
    memory_refused: bool,
}

impl wasmtime::ResourceLimiter for Sandbox {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_refused = true;
            return Err(wasmtime::format_err!(
                "memory limit: {desired} bytes wanted, {} allowed",
                self.memory_bytes
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 10_000)
    }

    fn instances(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        16
    }

    fn memories(&self) -> usize {
        4
    }
}

impl LoadedPlugin {
    /// SHA-256 of the component.
    pub fn hash(&self) -> ContentHash {
        self.hash
    }

    /// `id@version` once the plugin described itself, else its short hash.
    pub fn name(&self) -> String {
        self.name
            .get()
            .cloned()
            .unwrap_or_else(|| self.hash.short())
    }

    /// Runs `call` in a fresh instance under the limits.
    fn call<R>(
        &self,
        function: &'static str,
        call: impl FnOnce(&bindings::Plugin, &mut Store<Sandbox>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let mut store = Store::new(
            &self.engine,
            Sandbox {
                memory_bytes: self.limits.memory_bytes,
                memory_refused: false,
            },
        );
        store.limiter(|sandbox| sandbox);
        let ticks = (self.limits.deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        let fail = |failure| PluginError::Failed {
            plugin: self.name(),
            function,
            failure,
        };
        store
            .set_fuel(self.limits.fuel)
            .map_err(|err| fail(Failure::Instantiate(err.to_string())))?;
        let result = self
            .pre
            .instantiate(&mut store)
            .and_then(|instance| call(&instance, &mut store));
        result.map_err(|err| fail(self.classify(&err, &store)))
    }

    fn classify(&self, err: &wasmtime::Error, store: &Store<Sandbox>) -> Failure {
        if store.data().memory_refused {
            return Failure::OutOfMemory(self.limits.memory_bytes);
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => Failure::OutOfFuel(self.limits.fuel),
            Some(Trap::Interrupt) => Failure::Deadline(self.limits.deadline.as_millis() as u64),
            Some(Trap::StackOverflow) => Failure::StackOverflow,
            Some(trap) => Failure::Trapped(trap.to_string()),
            None => Failure::Trapped(format!("{err:#}")),
        }
    }

    /// What the plugin declares with these settings, or its refusal of them.
    pub fn describe(
        &self,
        settings: &[Setting],
    ) -> Result<Result<PluginInfo, Refusal>, PluginError> {
        let settings = convert::settings(settings);
        let answer = self.call("describe", |plugin, store| {
            plugin
                .callsync_rules_result_rules()
                .call_describe(store, &settings)
        })?;
        let invalid = |answer| PluginError::Failed {
            plugin: self.name(),
            function: "describe",
            failure: Failure::InvalidAnswer(answer),
        };
        match answer {
            Err(refusal) => Ok(Err(convert::refusal(refusal))),
            Ok(info) => {
                let info = convert::plugin_info(info).map_err(invalid)?;
                check_info(&info).map_err(invalid)?;
                let _ = self.name.set(format!("{}@{}", info.id, info.version));
                Ok(Ok(info))
            }
        }
    }

    /// The plugin's check of a pick: `Ok(Err(refusal))` when it refuses it.
    pub fn validate(
        &self,
        pick: &Pick,
        inputs: &RuleInputs,
    ) -> Result<Result<(), Refusal>, PluginError> {
        let pick = convert::pick(pick);
        let context = convert::context(inputs);
        let answer = self.call("validate", |plugin, store| {
            plugin
                .callsync_rules_result_rules()
                .call_validate(store, &pick, &context)
        })?;
        Ok(answer.map_err(convert::refusal))
    }

    /// The plugin's decision on a saved result of type `spec`, checked: an option
    /// the type offers (or none), a time on the 5-minute step after the save.
    pub fn evaluate(
        &self,
        pick: &Pick,
        inputs: &RuleInputs,
        spec: &ResultTypeSpec,
    ) -> Result<Decision, PluginError> {
        let wit_pick = convert::pick(pick);
        let context = convert::context(inputs);
        let answer = self.call("evaluate", |plugin, store| {
            plugin
                .callsync_rules_result_rules()
                .call_evaluate(store, &wit_pick, &context)
        })?;
        let invalid = |answer| PluginError::Failed {
            plugin: self.name(),
            function: "evaluate",
            failure: Failure::InvalidAnswer(answer),
        };
        let decision = convert::decision(answer).map_err(invalid)?;
        check_decision(&decision, spec, inputs.saved_at).map_err(invalid)?;
        Ok(decision)
    }

    /// Fuel one evaluation uses: for measuring how far below the limit a plugin is.
    pub fn evaluate_fuel(&self, pick: &Pick, inputs: &RuleInputs) -> Result<u64, PluginError> {
        let wit_pick = convert::pick(pick);
        let context = convert::context(inputs);
        let limit = self.limits.fuel;
        self.call("evaluate", |plugin, store| {
            plugin
                .callsync_rules_result_rules()
                .call_evaluate(&mut *store, &wit_pick, &context)?;
            Ok(limit - store.get_fuel()?)
        })
    }
}
