//! Scheduler plugins: checking a component against the `scheduler-plugin` world, and typed
//! instances whose every call runs under the plugin's limits.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::Store;

use crate::bindings::{SchedulerPlugin, SchedulerPluginPre};
use crate::metrics::CallMetrics;
use crate::store::State;
use crate::{ErrorKind, Host, Limits, Loaded, Metrics, PluginError, describe};

pub use crate::bindings::exports::skiff::plugin::scheduler::{PluginInfo, PreFilterResult, Reason};
pub use crate::bindings::skiff::plugin::types::{
    Node, Pod, Resources, Taint, TaintEffect, Toleration,
};

/// A component checked against the `scheduler-plugin` world and pre-linked: making an
/// instance from it takes microseconds. Cheap to clone.
#[derive(Clone)]
pub struct SchedulerPre {
    plugin: Arc<str>,
    pre: SchedulerPluginPre<State>,
    digest: String,
    metrics: Metrics,
    tick: std::time::Duration,
    fuel_enabled: bool,
    max_memory: usize,
}

impl std::fmt::Debug for SchedulerPre {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerPre")
            .field("plugin", &self.plugin)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// Checks that `loaded` is a scheduler plugin (its imports are satisfiable and it
    /// exports `skiff:plugin/scheduler` with the right signatures) and pre-links it.
    pub fn scheduler(&self, plugin: &str, loaded: &Loaded) -> Result<SchedulerPre, PluginError> {
        let link_error = |e: wasmtime::Error| PluginError {
            plugin: plugin.to_owned(),
            export: "link",
            kind: ErrorKind::Link,
            detail: describe(&e),
        };
        let pre = self
            .linker
            .instantiate_pre(&loaded.component)
            .map_err(link_error)?;
        let pre = SchedulerPluginPre::new(pre).map_err(link_error)?;
        Ok(SchedulerPre {
            plugin: plugin.into(),
            pre,
            digest: loaded.digest.clone(),
            metrics: self.metrics.clone(),
            tick: self.config.tick,
            fuel_enabled: self.config.fuel,
            max_memory: self.config.max_memory_bytes,
        })
    }
}

impl SchedulerPre {
    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The component's digest.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Makes a fresh instance with these limits. Call [`SchedulerInstance::init`] next.
    pub fn instantiate(&self, limits: Limits) -> Result<SchedulerInstance, PluginError> {
        let memory = limits.memory_bytes.min(self.max_memory);
        let mut store = Store::new(self.pre.engine(), State::new(self.plugin.clone(), memory));
        store.limiter(|s| &mut s.limiter);
        let ticks = limits
            .call_timeout
            .as_nanos()
            .div_ceil(self.tick.as_nanos().max(1))
            .max(1) as u64;
        store.set_epoch_deadline(ticks);
        let fuel = if self.fuel_enabled {
            // Without a budget, a fuel-enabled store can't run at all.
            Some(limits.fuel.unwrap_or(u64::MAX))
        } else {
            None
        };
        if let Some(fuel) = fuel {
            store
                .set_fuel(fuel)
                .map_err(|e| self.error("instantiate", ErrorKind::Trap, describe(&e)))?;
        }
        let started = Instant::now();
        let bindings = self.pre.instantiate(&mut store).map_err(|e| {
            let err = classify(&self.plugin, "instantiate", &store, &e);
            self.metrics.call(
                &self.plugin,
                "instantiate",
                started.elapsed(),
                Some(&err.kind),
            );
            err
        })?;
        self.metrics
            .call(&self.plugin, "instantiate", started.elapsed(), None);
        Ok(SchedulerInstance {
            plugin: self.plugin.clone(),
            store,
            bindings,
            metrics: self.metrics.clone(),
            hot: Vec::new(),
            ticks,
            fuel,
            reasons: 0,
            poisoned: false,
        })
    }

    fn error(&self, export: &'static str, kind: ErrorKind, detail: String) -> PluginError {
        PluginError {
            plugin: self.plugin.to_string(),
            export,
            kind,
            detail,
        }
    }
}

/// Turns a failed call into a [`PluginError`], naming the limit it hit.
fn classify(
    plugin: &str,
    export: &'static str,
    store: &Store<State>,
    e: &wasmtime::Error,
) -> PluginError {
    let trap = e.downcast_ref::<wasmtime::Trap>().copied();
    let (kind, detail) = match trap {
        Some(wasmtime::Trap::Interrupt) => (ErrorKind::Timeout, "stopped at its deadline".into()),
        Some(wasmtime::Trap::OutOfFuel) => (ErrorKind::OutOfFuel, "fuel exhausted".into()),
        _ if store.data().limiter.hit => (
            ErrorKind::MemoryLimit,
            format!(
                "memory growth refused at the cap (guest said: {})",
                store.data().last_stderr_line().unwrap_or_default()
            ),
        ),
        Some(trap) => {
            let said = store
                .data()
                .last_stderr_line()
                .map(|l| format!(" (guest said: {l})"))
                .unwrap_or_default();
            (ErrorKind::Trap, format!("{trap}{said}"))
        }
        None => (ErrorKind::Trap, describe(e)),
    };
    PluginError {
        plugin: plugin.to_owned(),
        export,
        kind,
        detail,
    }
}

/// One instance of a scheduler plugin. Not `Sync`: one per scheduling thread.
///
/// Any failed call (a trap, a timeout, the memory cap) poisons the instance: later calls fail
/// with [`ErrorKind::Poisoned`], and the owner makes a fresh one from the [`SchedulerPre`].
pub struct SchedulerInstance {
    plugin: Arc<str>,
    store: Store<State>,
    bindings: SchedulerPlugin,
    metrics: Metrics,
    /// Each export's metrics, looked up on its first call.
    hot: Vec<(&'static str, CallMetrics)>,
    ticks: u64,
    fuel: Option<u64>,
    /// How many reason codes `init` declared.
    reasons: usize,
    poisoned: bool,
}

impl std::fmt::Debug for SchedulerInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerInstance")
            .field("plugin", &self.plugin)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl SchedulerInstance {
    /// Whether an earlier call failed and the instance must be replaced.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    fn invalid(&self, export: &'static str, detail: String) -> PluginError {
        PluginError {
            plugin: self.plugin.to_string(),
            export,
            kind: ErrorKind::InvalidResult,
            detail,
        }
    }

    /// Runs one export under the deadline and fuel budget, with metrics.
    fn call<R>(
        &mut self,
        export: &'static str,
        f: impl FnOnce(&SchedulerPlugin, &mut Store<State>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        if self.poisoned {
            return Err(PluginError {
                plugin: self.plugin.to_string(),
                export,
                kind: ErrorKind::Poisoned,
                detail: "an earlier call failed".into(),
            });
        }
        self.store.set_epoch_deadline(self.ticks);
        if let Some(fuel) = self.fuel {
            // Setting fuel on a fuel-enabled store can't fail.
            let _ = self.store.set_fuel(fuel);
        }
        let started = Instant::now();
        let result = f(&self.bindings, &mut self.store);
        let elapsed = started.elapsed();
        match result {
            Ok(value) => {
                match self.hot.iter().find(|(e, _)| *e == export) {
                    Some((_, m)) => m.record(elapsed),
                    None => {
                        let m = self.metrics.for_call(&self.plugin, export);
                        m.record(elapsed);
                        self.hot.push((export, m));
                    }
                }
                Ok(value)
            }
            Err(e) => {
                self.poisoned = true;
                let err = classify(&self.plugin, export, &self.store, &e);
                self.metrics
                    .call(&self.plugin, export, elapsed, Some(&err.kind));
                Err(err)
            }
        }
    }

    /// `init`: gives the plugin its config; returns what it declared.
    pub fn init(&mut self, config: &str) -> Result<PluginInfo, PluginError> {
        let result = self.call("init", |b, s| {
            b.skiff_plugin_scheduler().call_init(s, config)
        })?;
        match result {
            Ok(info) => {
                self.reasons = info.reasons.len();
                Ok(info)
            }
            Err(message) => Err(PluginError {
                plugin: self.plugin.to_string(),
                export: "init",
                kind: ErrorKind::Init,
                detail: message,
            }),
        }
    }

    /// `upsert-node`.
    pub fn upsert_node(&mut self, slot: u32, node: &Node) -> Result<(), PluginError> {
        self.call("upsert-node", |b, s| {
            b.skiff_plugin_scheduler().call_upsert_node(s, slot, node)
        })
    }

    /// `remove-node`.
    pub fn remove_node(&mut self, slot: u32) -> Result<(), PluginError> {
        self.call("remove-node", |b, s| {
            b.skiff_plugin_scheduler().call_remove_node(s, slot)
        })
    }

    /// `upsert-pod`.
    pub fn upsert_pod(&mut self, slot: u32, pod: &Pod) -> Result<(), PluginError> {
        self.call("upsert-pod", |b, s| {
            b.skiff_plugin_scheduler().call_upsert_pod(s, slot, pod)
        })
    }

    /// `remove-pod`.
    pub fn remove_pod(&mut self, uid: &str) -> Result<(), PluginError> {
        self.call("remove-pod", |b, s| {
            b.skiff_plugin_scheduler().call_remove_pod(s, uid)
        })
    }

    /// `begin`: the pod of the cycle the next calls are about, after placing the previous
    /// cycle's pod on `assumed`.
    pub fn begin(&mut self, pod: &Pod, assumed: Option<u32>) -> Result<(), PluginError> {
        self.call("begin", |b, s| {
            b.skiff_plugin_scheduler().call_begin(s, pod, assumed)
        })
    }

    /// `pre-filter`; a `reject` code is checked against the declared reasons.
    pub fn pre_filter(&mut self) -> Result<PreFilterResult, PluginError> {
        let result = self.call("pre-filter", |b, s| {
            b.skiff_plugin_scheduler().call_pre_filter(s)
        })?;
        if let PreFilterResult::Reject(code) = result
            && (code == 0 || code as usize > self.reasons)
        {
            return Err(self.invalid("pre-filter", format!("unknown reason code {code}")));
        }
        Ok(result)
    }

    /// `filter`: one code per candidate, each 0 or a declared reason.
    pub fn filter(&mut self, candidates: &[u32]) -> Result<Vec<u16>, PluginError> {
        let codes = self.call("filter", |b, s| {
            b.skiff_plugin_scheduler().call_filter(s, candidates)
        })?;
        if codes.len() != candidates.len() {
            return Err(self.invalid(
                "filter",
                format!("{} codes for {} candidates", codes.len(), candidates.len()),
            ));
        }
        if let Some(bad) = codes.iter().find(|c| **c as usize > self.reasons) {
            return Err(self.invalid("filter", format!("unknown reason code {bad}")));
        }
        Ok(codes)
    }

    /// `pre-score`.
    pub fn pre_score(&mut self, candidates: &[u32]) -> Result<bool, PluginError> {
        self.call("pre-score", |b, s| {
            b.skiff_plugin_scheduler().call_pre_score(s, candidates)
        })
    }

    /// `score`: one score per candidate (range checks are the caller's: they depend on
    /// whether `normalize-score` runs).
    pub fn score(&mut self, candidates: &[u32]) -> Result<Vec<i64>, PluginError> {
        let scores = self.call("score", |b, s| {
            b.skiff_plugin_scheduler().call_score(s, candidates)
        })?;
        self.same_length("score", scores, candidates.len())
    }

    /// `normalize-score`.
    pub fn normalize_score(
        &mut self,
        candidates: &[u32],
        scores: &[i64],
    ) -> Result<Vec<i64>, PluginError> {
        let scores = self.call("normalize-score", |b, s| {
            b.skiff_plugin_scheduler()
                .call_normalize_score(s, candidates, scores)
        })?;
        self.same_length("normalize-score", scores, candidates.len())
    }

    fn same_length(
        &self,
        export: &'static str,
        scores: Vec<i64>,
        want: usize,
    ) -> Result<Vec<i64>, PluginError> {
        if scores.len() != want {
            return Err(self.invalid(
                export,
                format!("{} scores for {want} candidates", scores.len()),
            ));
        }
        Ok(scores)
    }

    /// `reserve`: `Ok(Err(message))` when the plugin rejects the node.
    pub fn reserve(&mut self, slot: u32) -> Result<Result<(), String>, PluginError> {
        self.call("reserve", |b, s| {
            b.skiff_plugin_scheduler().call_reserve(s, slot)
        })
    }

    /// `assume`: the cycle's pod was placed on `slot`.
    pub fn assume(&mut self, slot: u32) -> Result<(), PluginError> {
        self.call("assume", |b, s| {
            b.skiff_plugin_scheduler().call_assume(s, slot)
        })
    }

    /// `unreserve`.
    pub fn unreserve(&mut self, pod: &Pod, slot: u32) -> Result<(), PluginError> {
        self.call("unreserve", |b, s| {
            b.skiff_plugin_scheduler().call_unreserve(s, pod, slot)
        })
    }
}
