//! skiff's sandboxed WebAssembly plugin host.
//!
//! Plugins are WebAssembly components targeting the worlds of `wit/` (package
//! `skiff:plugin@0.1.0`). This crate is the only one that sees wasmtime: it owns the
//! [`Host`] (one engine per process, with the pooling allocator, epoch deadlines, optional
//! fuel and a memory cap per instance), compiles components once into an on-disk cache keyed
//! by their digest and the engine's configuration, checks that a component matches its world
//! before anything uses it, and hands out typed instances whose calls return
//! [`PluginError`] on a trap, a timeout or a broken answer. Callers never see a
//! `wasmtime::Error`.
//!
//! Start with [`Host::new`], then [`Host::load`] a component and
//! [`Host::scheduler`] to check it against the `scheduler-plugin` world:
//!
//! ```no_run
//! use skiff_plugin_host::{Config, Host, Limits};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let host = Host::new(Config::default())?;
//! let bytes = std::fs::read("zone_spread.wasm")?;
//! let loaded = host.load("zone-spread", &bytes)?;
//! let pre = host.scheduler("zone-spread", &loaded)?;
//! let mut instance = pre.instantiate(Limits::default())?;
//! let info = instance.init("{}")?;
//! println!("{} reasons, digest {}", info.reasons.len(), loaded.digest());
//! # Ok(())
//! # }
//! ```

mod bindings;
mod error;
mod metrics;
mod scheduler;
mod store;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest as _;
use tracing::{debug, warn};
use wasmtime::component::Linker;
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use error::{ErrorKind, HostError, PluginError};
pub use metrics::Metrics;
pub use scheduler::{
    Node, PluginInfo, Pod, PreFilterResult, Reason, Resources, SchedulerInstance, SchedulerPre,
    Taint, TaintEffect, Toleration,
};
use store::State;

/// How the host sandboxes plugins. Per-plugin [`Limits`] may tighten these, never exceed
/// the pool's `max_memory_bytes`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where compiled components are cached (`None`: compile every time).
    pub cache_dir: Option<PathBuf>,
    /// The largest memory any instance may have, in bytes (sizes the pooling allocator).
    /// Default 256 MiB, enough for Python and JavaScript guests.
    pub max_memory_bytes: usize,
    /// How many plugin instances may exist at once. Default 128.
    pub max_instances: u32,
    /// The epoch tick: deadlines are counted in ticks, so they are this precise. Default 5 ms.
    pub tick: Duration,
    /// Whether fuel metering is compiled in, so [`Limits::fuel`] can be used. It slows
    /// compute-heavy guests by ~45 %, so it is off by default.
    pub fuel: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cache_dir: None,
            max_memory_bytes: 256 << 20,
            max_instances: 128,
            tick: Duration::from_millis(5),
            fuel: false,
        }
    }
}

/// The limits of one plugin instance.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The memory cap, in bytes. Default 64 MiB.
    pub memory_bytes: usize,
    /// How long one call may run. Default 100 ms.
    pub call_timeout: Duration,
    /// Fuel per call (roughly, wasm instructions); only with [`Config::fuel`].
    pub fuel: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_millis(100),
            fuel: None,
        }
    }
}

/// A compiled component, ready to be checked against a world.
#[derive(Clone)]
pub struct Loaded {
    component: wasmtime::component::Component,
    digest: String,
    from_cache: bool,
    elapsed: Duration,
}

impl Loaded {
    /// `sha256:<hex>` of the component's bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether it came from the compile cache (on disk or in memory).
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// How long compiling or loading took.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }
}

/// The plugin host: one per process.
pub struct Host {
    engine: Engine,
    linker: Linker<State>,
    config: Config,
    metrics: Metrics,
    /// Components by digest, so re-applying a Plugin doesn't even touch the disk. A std
    /// Mutex: held only to look up or insert.
    compiled: Mutex<HashMap<String, wasmtime::component::Component>>,
    /// Identifies the engine configuration in cache file names.
    engine_hash: u64,
    ticker: Option<std::thread::JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The in-memory cache keeps at most this many compiled components.
const MEMORY_CACHE: usize = 64;

impl Host {
    /// Makes the engine and starts its epoch ticker thread.
    pub fn new(config: Config) -> Result<Self, HostError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances.saturating_mul(8))
            .total_memories(config.max_instances.saturating_mul(2))
            .total_tables(config.max_instances.saturating_mul(4))
            .total_stacks(config.max_instances)
            .max_memory_size(config.max_memory_bytes);
        let mut wasm = wasmtime::Config::new();
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .consume_fuel(config.fuel);
        let engine = Engine::new(&wasm).map_err(|e| HostError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| HostError::Engine(e.to_string()))?;
        bindings::SchedulerPlugin::add_to_linker::<State, wasmtime::component::HasSelf<State>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| HostError::Engine(e.to_string()))?;
        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir).map_err(|source| HostError::CacheDir {
                path: dir.clone(),
                source,
            })?;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = hasher.finish();

        // Deadlines are counted in epoch ticks. The thread holds only a weak reference, and
        // stops when the host is dropped.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let weak = engine.weak();
        let tick = config.tick;
        let stopping = stop.clone();
        let ticker = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| HostError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Host {
            engine,
            linker,
            config,
            metrics: Metrics::default(),
            compiled: Mutex::new(HashMap::new()),
            engine_hash,
            ticker: Some(ticker),
            stop,
        })
    }

    /// The host's metrics, to register on a `/metrics` endpoint.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The host's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Compiles a component, or loads it from the cache. Slow on a miss (tens of ms for a
    /// Rust plugin, seconds for Python): call it off any hot path.
    pub fn load(&self, plugin: &str, bytes: &[u8]) -> Result<Loaded, PluginError> {
        let started = Instant::now();
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        let remembered = self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
            .cloned();
        if let Some(component) = remembered {
            return Ok(self.loaded(plugin, component, digest, true, started));
        }
        let path = self.config.cache_dir.as_ref().map(|dir| {
            dir.join(format!(
                "{}-{:016x}.cwasm",
                digest.trim_start_matches("sha256:"),
                self.engine_hash
            ))
        });
        if let Some(path) = &path
            && path.exists()
        {
            // SAFETY: the cache directory holds only artifacts this host serialized itself
            // (named by the digest of their source and the engine configuration), and
            // wasmtime checks the artifact's header and engine compatibility on load.
            #[expect(
                unsafe_code,
                reason = "loading our own precompiled artifact, see above"
            )]
            let cached =
                unsafe { wasmtime::component::Component::deserialize_file(&self.engine, path) };
            match cached {
                Ok(component) => {
                    self.remember(&digest, &component);
                    return Ok(self.loaded(plugin, component, digest, true, started));
                }
                Err(e) => warn!(
                    plugin.name = plugin,
                    cache.path = %path.display(),
                    error = %e,
                    "unusable compile cache entry; compiling again"
                ),
            }
        }
        let component =
            wasmtime::component::Component::new(&self.engine, bytes).map_err(|e| PluginError {
                plugin: plugin.to_owned(),
                export: "compile",
                kind: ErrorKind::Compile,
                detail: describe(&e),
            })?;
        if let Some(path) = &path {
            self.write_cache(plugin, path, &component);
        }
        self.remember(&digest, &component);
        Ok(self.loaded(plugin, component, digest, false, started))
    }

    fn loaded(
        &self,
        plugin: &str,
        component: wasmtime::component::Component,
        digest: String,
        from_cache: bool,
        started: Instant,
    ) -> Loaded {
        let elapsed = started.elapsed();
        self.metrics.load(plugin, from_cache, elapsed);
        debug!(plugin.name = plugin, plugin.digest = %digest, from_cache, elapsed.us = elapsed.as_micros() as u64, "component loaded");
        Loaded {
            component,
            digest,
            from_cache,
            elapsed,
        }
    }

    fn remember(&self, digest: &str, component: &wasmtime::component::Component) {
        let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if compiled.len() >= MEMORY_CACHE
            && let Some(evict) = compiled.keys().next().cloned()
        {
            compiled.remove(&evict);
        }
        compiled.insert(digest.to_owned(), component.clone());
    }

    /// A cache write that fails only costs a recompile later, so it is logged, not returned.
    fn write_cache(
        &self,
        plugin: &str,
        path: &std::path::Path,
        component: &wasmtime::component::Component,
    ) {
        let result = component
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|bytes| {
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(&tmp, path)
            });
        if let Err(e) = result {
            warn!(plugin.name = plugin, cache.path = %path.display(), error = &e as &dyn std::error::Error, "cannot write the compile cache");
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}

/// A wasmtime error and its causes, on one line.
fn describe(e: &wasmtime::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
