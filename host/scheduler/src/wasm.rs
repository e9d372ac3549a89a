//! Wasm plugins behind the framework's [`Plugin`] trait: the adapter feeds the plugin's own
//! cache, makes one batched call per pod per extension point, and applies the plugin's
//! failure policy when a call fails.

use std::sync::Arc;

use skiff_plugin_host::{
    Limits, PluginError, PluginInfo, PreFilterResult, SchedulerInstance, SchedulerPre,
};
use tracing::warn;

use crate::cache::{Cache, Change};
use crate::framework::{Plugin, PreFilter, Rejection};
use crate::model::PodInfo;

/// What to do with a pod when the plugin fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    /// The pod is not scheduled this time (it is retried with backoff).
    Fail,
    /// The plugin is skipped for this pod.
    Ignore,
}

/// Which extension points a Wasm plugin takes part in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Points {
    /// PreFilter.
    pub pre_filter: bool,
    /// Filter.
    pub filter: bool,
    /// PreScore.
    pub pre_score: bool,
    /// Score.
    pub score: bool,
    /// NormalizeScore.
    pub normalize: bool,
    /// Reserve and Unreserve.
    pub reserve: bool,
}

impl Points {
    /// Every extension point of the world.
    pub const ALL: Points = Points {
        pre_filter: true,
        filter: true,
        pre_score: true,
        score: true,
        normalize: true,
        reserve: true,
    };

    /// Parses kube-scheduler's names (`PreFilter`, `Filter`, `PreScore`, `Score`,
    /// `NormalizeScore`, `Reserve`); `None` names an unknown one.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Points, String> {
        let mut p = Points {
            pre_filter: false,
            filter: false,
            pre_score: false,
            score: false,
            normalize: false,
            reserve: false,
        };
        for name in names {
            match name {
                "PreFilter" => p.pre_filter = true,
                "Filter" => p.filter = true,
                "PreScore" => p.pre_score = true,
                "Score" => p.score = true,
                "NormalizeScore" => p.normalize = true,
                "Reserve" => p.reserve = true,
                other => return Err(other.to_owned()),
            }
        }
        Ok(p)
    }
}

/// How a Plugin object configures a Wasm scheduler plugin.
#[derive(Clone, Debug)]
pub struct WasmSpec {
    /// The Plugin object's name.
    pub name: String,
    /// `spec.config` as JSON text.
    pub config: String,
    /// `spec.failurePolicy`.
    pub failure_policy: FailurePolicy,
    /// `spec.scheduler.extensionPoints`.
    pub points: Points,
    /// `spec.scheduler.weight`.
    pub weight: i64,
    /// `spec.scheduler.replaces`: built-ins switched off while this plugin is loaded.
    pub replaces: Vec<String>,
    /// `spec.limits`.
    pub limits: Limits,
    /// `metadata.generation` of the object this came from.
    pub generation: i64,
}

/// Called with every failed call, for the Plugin's status and events.
pub type Reporter = Arc<dyn Fn(&WasmSpec, &PluginError) + Send + Sync>;

/// A loaded Wasm scheduler plugin.
pub struct WasmPlugin {
    spec: WasmSpec,
    pre: SchedulerPre,
    instance: Option<SchedulerInstance>,
    /// Whether the instance got this cycle's pod (`begin`).
    begun: bool,
    /// Where the last cycle's pod was placed, not yet told: the next `begin` carries it, or
    /// `assume` before any other call.
    pending: Option<u32>,
    info: PluginInfo,
    reasons: Vec<(Arc<str>, bool)>,
    report: Reporter,
}

/// Makes an instance and brings its cache up to date with the scheduler's.
fn fresh(
    spec: &WasmSpec,
    pre: &SchedulerPre,
    cache: &Cache,
) -> Result<(SchedulerInstance, PluginInfo), PluginError> {
    let mut instance = pre.instantiate(spec.limits.clone())?;
    let info = instance.init(&spec.config)?;
    for (slot, node) in cache.nodes() {
        instance.upsert_node(slot, &node.info.wasm)?;
        if info.wants_pods {
            for pod in node.pods.values() {
                instance.upsert_pod(slot, &pod.placed_on(node.info.name(), info.wants_pod_json))?;
            }
        }
    }
    Ok((instance, info))
}

impl WasmPlugin {
    /// Instantiates the plugin, initialises it and replays the cache into it. An error
    /// here means the plugin is not used (a working older version stays).
    pub fn new(
        spec: WasmSpec,
        pre: SchedulerPre,
        cache: &Cache,
        report: Reporter,
    ) -> Result<Self, PluginError> {
        let (instance, info) = fresh(&spec, &pre, cache)?;
        let reasons = info
            .reasons
            .iter()
            .map(|r| (Arc::from(r.message.as_str()), r.unresolvable))
            .collect();
        Ok(WasmPlugin {
            spec,
            pre,
            instance: Some(instance),
            begun: false,
            pending: None,
            info,
            reasons,
            report,
        })
    }

    /// The spec it was loaded with.
    pub fn spec(&self) -> &WasmSpec {
        &self.spec
    }

    /// The component digest.
    pub fn digest(&self) -> &str {
        self.pre.digest()
    }

    /// Drops the instance; the next call makes a fresh one.
    fn drop_instance(&mut self) {
        self.instance = None;
        self.begun = false;
        // A fresh instance gets the placement with the rest of the cache.
        self.pending = None;
    }

    /// Tells the instance where the last cycle's pod went, before a call that is not `begin`.
    fn flush(&mut self) {
        let Some(slot) = self.pending.take() else {
            return;
        };
        if let Some(instance) = self.instance.as_mut().filter(|i| !i.is_poisoned())
            && let Err(e) = instance.assume(slot)
        {
            (self.report)(&self.spec, &e);
            self.drop_instance();
        }
    }

    /// The live instance, re-made (and re-fed) if the last one failed, with the cycle's pod.
    fn instance(
        &mut self,
        pod: &PodInfo,
        cache: &Cache,
    ) -> Result<&mut SchedulerInstance, PluginError> {
        if self.instance.as_ref().is_none_or(|i| i.is_poisoned()) {
            self.drop_instance();
            let (instance, _) = fresh(&self.spec, &self.pre, cache)?;
            self.instance = Some(instance);
        }
        let instance = self.instance.as_mut().expect("just made");
        if !self.begun {
            instance.begin(pod.for_wasm(self.info.wants_pod_json), self.pending.take())?;
            self.begun = true;
        }
        Ok(instance)
    }

    /// Runs a call of `pod`'s cycle; on failure reports it, drops the instance and applies
    /// the policy (`ignored` is the answer that means "no opinion").
    fn guard<T>(
        &mut self,
        pod: &PodInfo,
        cache: &Cache,
        ignored: impl FnOnce() -> T,
        f: impl FnOnce(&mut SchedulerInstance) -> Result<T, PluginError>,
    ) -> Result<T, PluginError> {
        let result = self.instance(pod, cache).and_then(f);
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                (self.report)(&self.spec, &e);
                if self.instance.as_ref().is_some_and(|i| i.is_poisoned()) {
                    self.drop_instance();
                }
                match self.spec.failure_policy {
                    FailurePolicy::Ignore => Ok(ignored()),
                    FailurePolicy::Fail => Err(e),
                }
            }
        }
    }

    fn rejection(&self, code: u16) -> Rejection {
        let (reason, unresolvable) = self.reasons[code as usize - 1].clone();
        Rejection {
            reasons: vec![reason],
            unresolvable,
        }
    }
}

impl Plugin for WasmPlugin {
    fn name(&self) -> &str {
        &self.spec.name
    }
    fn filters(&self) -> bool {
        self.spec.points.pre_filter || self.spec.points.filter
    }
    fn scores(&self) -> bool {
        self.spec.points.score
    }

    fn observe(&mut self, cache: &Cache, change: &Change) {
        self.flush();
        let wants_pods = self.info.wants_pods;
        let json = self.info.wants_pod_json;
        let Some(instance) = self.instance.as_mut().filter(|i| !i.is_poisoned()) else {
            // The next call re-makes the instance from the cache, change included.
            return;
        };
        let result = match change {
            Change::NodeUpserted(slot) => match cache.node(*slot) {
                Some(node) => instance.upsert_node(*slot, &node.info.wasm),
                None => Ok(()),
            },
            Change::NodeRemoved(slot) => instance.remove_node(*slot),
            Change::PodPlaced(slot, pod) if wants_pods => match cache.node(*slot) {
                Some(node) => instance.upsert_pod(*slot, &pod.placed_on(node.info.name(), json)),
                None => Ok(()),
            },
            Change::PodRemoved(uid) if wants_pods => instance.remove_pod(uid),
            Change::PodPlaced(..) | Change::PodRemoved(_) => Ok(()),
        };
        if let Err(e) = result {
            warn!(plugin.name = %self.spec.name, error = &e as &dyn std::error::Error, "plugin failed to take a cache update; it will be re-made");
            (self.report)(&self.spec, &e);
            self.drop_instance();
        }
    }

    fn begin_cycle(&mut self) {
        self.begun = false;
    }

    fn assumed(&mut self, cache: &Cache, change: &Change) {
        let begun = std::mem::take(&mut self.begun);
        let Change::PodPlaced(slot, _) = change else {
            return self.observe(cache, change);
        };
        if !(begun && self.info.wants_pods) {
            return self.observe(cache, change);
        }
        // The instance has the pod from `begin`: only the slot crosses, with the next call.
        if self.instance.as_ref().is_some_and(|i| !i.is_poisoned()) {
            self.pending = Some(*slot);
        }
    }

    fn pre_filter(&mut self, pod: &PodInfo, cache: &Cache) -> Result<PreFilter, PluginError> {
        if !self.spec.points.pre_filter {
            return Ok(PreFilter::Proceed);
        }
        let result = self.guard(pod, cache, || PreFilterResult::Skip, |i| i.pre_filter())?;
        Ok(match result {
            PreFilterResult::Proceed => PreFilter::Proceed,
            PreFilterResult::Skip => PreFilter::Skip,
            PreFilterResult::Only(slots) => PreFilter::Only(slots),
            PreFilterResult::Reject(code) => PreFilter::Reject(self.rejection(code)),
        })
    }

    fn filter(
        &mut self,
        pod: &PodInfo,
        cache: &Cache,
        candidates: &[u32],
        out: &mut Vec<Option<Rejection>>,
    ) -> Result<(), PluginError> {
        out.clear();
        if !self.spec.points.filter {
            out.resize(candidates.len(), None);
            return Ok(());
        }
        let codes = self.guard(
            pod,
            cache,
            || vec![0; candidates.len()],
            |i| i.filter(candidates),
        )?;
        out.extend(
            codes
                .into_iter()
                .map(|c| (c != 0).then(|| self.rejection(c))),
        );
        Ok(())
    }

    fn pre_score(
        &mut self,
        pod: &PodInfo,
        cache: &Cache,
        feasible: &[u32],
    ) -> Result<bool, PluginError> {
        if !self.spec.points.pre_score {
            return Ok(true);
        }
        self.guard(pod, cache, || false, |i| i.pre_score(feasible))
    }

    fn score(
        &mut self,
        pod: &PodInfo,
        cache: &Cache,
        feasible: &[u32],
    ) -> Result<Vec<i64>, PluginError> {
        let normalize = self.spec.points.normalize;
        self.guard(
            pod,
            cache,
            || vec![0; feasible.len()],
            |i| {
                let scores = i.score(feasible)?;
                if normalize {
                    i.normalize_score(feasible, &scores)
                } else {
                    Ok(scores)
                }
            },
        )
    }

    fn reserve(
        &mut self,
        pod: &PodInfo,
        cache: &Cache,
        slot: u32,
    ) -> Result<Result<(), String>, PluginError> {
        if !self.spec.points.reserve {
            return Ok(Ok(()));
        }
        self.guard(pod, cache, || Ok(()), |i| i.reserve(slot))
    }

    fn unreserve(&mut self, pod: &PodInfo, slot: u32) {
        if !self.spec.points.reserve {
            return;
        }
        self.flush();
        if let Some(instance) = self.instance.as_mut().filter(|i| !i.is_poisoned())
            && let Err(e) = instance.unreserve(pod.for_wasm(self.info.wants_pod_json), slot)
        {
            (self.report)(&self.spec, &e);
            self.drop_instance();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtins::tests::node;
    use skiff_plugin_host::{Config, Host};

    fn zone_spread(cache: &Cache) -> WasmPlugin {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/wasm32-wasip2/release/zone_spread.wasm");
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; build the plugins first", path.display()));
        let host = Host::new(Config::default()).unwrap();
        let loaded = host.load("zone-spread", &bytes).unwrap();
        let pre = host.scheduler("zone-spread", &loaded).unwrap();
        let spec = WasmSpec {
            name: "zone-spread".into(),
            config: "{}".into(),
            failure_policy: FailurePolicy::Fail,
            points: Points::ALL,
            weight: 1,
            replaces: Vec::new(),
            limits: Limits::default(),
            generation: 1,
        };
        WasmPlugin::new(spec, pre, cache, Arc::new(|_, e| panic!("{e}"))).unwrap()
    }

    fn web(name: &str) -> Arc<PodInfo> {
        let pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": name,
                         "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c"}]},
        }))
        .unwrap();
        Arc::new(PodInfo::new(Arc::new(pod)))
    }

    /// What the plugin's filter says of every node for `pod`, as a fresh cycle.
    fn verdicts(plugin: &mut WasmPlugin, cache: &Cache, pod: &PodInfo) -> Vec<bool> {
        plugin.begin_cycle();
        plugin.pre_filter(pod, cache).unwrap();
        let mut out = Vec::new();
        let slots: Vec<u32> = cache.slots().collect();
        plugin.filter(pod, cache, &slots, &mut out).unwrap();
        out.iter().map(Option::is_none).collect()
    }

    #[test]
    fn a_placement_reaches_the_plugin_before_any_later_change() {
        let mut cache = Cache::default();
        let zone = |z: &str| serde_json::json!({"topology.kubernetes.io/zone": z});
        cache.upsert_node(node("n1", zone("z1"), serde_json::json!({}), "4"));
        cache.upsert_node(node("n2", zone("z2"), serde_json::json!({}), "4"));
        let mut plugin = zone_spread(&cache);
        let z1 = cache.slot("n1").unwrap();

        // web-a is assumed on n1: the next cycle's `begin` carries it, and z1 is full.
        let a = web("web-a");
        assert_eq!(verdicts(&mut plugin, &cache, &a), [true, true]);
        let change = cache.place(a.clone(), "n1", true).unwrap();
        plugin.assumed(&cache, &change);
        let b = web("web-b");
        let full = verdicts(&mut plugin, &cache, &b);
        assert!(!full[z1 as usize]);

        // web-b is assumed on n2, then its binding fails and it is forgotten before any other
        // cycle: the placement must reach the plugin before the removal, or web-b would stay
        // counted in z2 for good.
        let change = cache.place(b.clone(), "n2", true).unwrap();
        plugin.assumed(&cache, &change);
        let removed = cache.remove_pod(&b.uid).unwrap();
        plugin.observe(&cache, &removed);
        assert_eq!(verdicts(&mut plugin, &cache, &web("web-c")), full);
    }
}
