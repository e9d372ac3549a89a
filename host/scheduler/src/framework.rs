//! The scheduling framework: one [`Plugin`] trait for built-in and Wasm plugins, profiles of
//! weighted plugins, and one scheduling cycle (filter → score → select → reserve).

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::Rng;
use skiff_plugin_host::PluginError;

use crate::cache::{Cache, Change, NodeState};
use crate::model::PodInfo;

/// The highest score a plugin may give a node.
pub const MAX_NODE_SCORE: i64 = 100;

/// Why a node doesn't fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// What the FailedScheduling message counts ("Insufficient cpu"); usually one.
    pub reasons: Vec<Arc<str>>,
    /// Whether preempting pods could never help (kube's UnschedulableAndUnresolvable).
    pub unresolvable: bool,
}

impl Rejection {
    /// A rejection for one reason.
    pub fn new(reason: &Arc<str>, unresolvable: bool) -> Self {
        Rejection {
            reasons: vec![reason.clone()],
            unresolvable,
        }
    }
}

/// What a plugin's pre-filter decided.
#[derive(Debug)]
pub enum PreFilter {
    /// Go on.
    Proceed,
    /// The plugin has nothing to say about this pod: skip its filter and score.
    Skip,
    /// Skip this plugin's filter; its score still runs (kube-scheduler's PreFilter Skip).
    SkipFilter,
    /// Only these slots can fit.
    Only(Vec<u32>),
    /// No node fits.
    Reject(Rejection),
}

/// A scheduling plugin, built in or Wasm. Methods default to "no opinion", so a plugin
/// implements what it needs; per-node methods serve plugins that judge nodes one at a time,
/// the batched ones serve plugins (Wasm) that judge all candidates in one call.
pub trait Plugin: Send {
    /// The plugin's name (`NodeResourcesFit`, or the Plugin object's name).
    fn name(&self) -> &str;
    /// Whether it takes part in filtering.
    fn filters(&self) -> bool;
    /// Whether it takes part in scoring.
    fn scores(&self) -> bool;

    /// Whether taking pods off a node can lift this plugin's rejections, judged by
    /// `filter_node` on the node as given: preemption then tries nodes it rejected.
    fn preemptible(&self) -> bool {
        false
    }

    /// Told of every cache change (for plugins that keep their own cache).
    fn observe(&mut self, _cache: &Cache, _change: &Change) {}

    /// A scheduling cycle starts; its pod comes with each extension point.
    fn begin_cycle(&mut self) {}

    /// The pod of this profile's last cycle was placed: `change` is its `PodPlaced`. By
    /// default the same as any placement.
    fn assumed(&mut self, cache: &Cache, change: &Change) {
        self.observe(cache, change);
    }

    /// Runs once per pod before filtering.
    fn pre_filter(&mut self, _pod: &PodInfo, _cache: &Cache) -> Result<PreFilter, PluginError> {
        Ok(PreFilter::Proceed)
    }

    /// Judges one node.
    fn filter_node(&self, _pod: &PodInfo, _node: &NodeState) -> Option<Rejection> {
        None
    }

    /// Judges every candidate; `out[i]` is for `candidates[i]`.
    fn filter(
        &mut self,
        pod: &PodInfo,
        cache: &Cache,
        candidates: &[u32],
        out: &mut Vec<Option<Rejection>>,
    ) -> Result<(), PluginError> {
        out.clear();
        out.extend(candidates.iter().map(|&slot| {
            cache
                .node(slot)
                .and_then(|node| self.filter_node(pod, node))
        }));
        Ok(())
    }

    /// Runs once per pod before scoring; `false` skips this plugin's score.
    fn pre_score(
        &mut self,
        _pod: &PodInfo,
        _cache: &Cache,
        _feasible: &[u32],
    ) -> Result<bool, PluginError> {
        Ok(true)
    }

    /// Scores one node.
    fn score_node(&self, _pod: &PodInfo, _node: &NodeState) -> i64 {
        0
    }

    /// Scores every feasible node.
    fn score(
        &mut self,
        pod: &PodInfo,
        cache: &Cache,
        feasible: &[u32],
    ) -> Result<Vec<i64>, PluginError> {
        Ok(feasible
            .iter()
            .map(|&slot| cache.node(slot).map_or(0, |n| self.score_node(pod, n)))
            .collect())
    }

    /// Maps raw scores onto 0..=100.
    fn normalize(
        &mut self,
        _pod: &PodInfo,
        _feasible: &[u32],
        _scores: &mut [i64],
    ) -> Result<(), PluginError> {
        Ok(())
    }

    /// The pod is about to be bound to `slot`; `Err(message)` rejects that node.
    fn reserve(
        &mut self,
        _pod: &PodInfo,
        _cache: &Cache,
        _slot: u32,
    ) -> Result<Result<(), String>, PluginError> {
        Ok(Ok(()))
    }

    /// Undoes a reservation.
    fn unreserve(&mut self, _pod: &PodInfo, _slot: u32) {}
}

/// kube-scheduler's DefaultNormalizeScore: scales to 0..=100 by the maximum, reversed if
/// lower raw scores are better.
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        *s = *s * MAX_NODE_SCORE / max;
        if reverse {
            *s = MAX_NODE_SCORE - *s;
        }
    }
}

/// A plugin in a profile.
pub struct Entry {
    /// The plugin.
    pub plugin: Box<dyn Plugin>,
    /// Its score weight.
    pub weight: i64,
    /// Whether it is a Wasm plugin (from a Plugin object).
    pub wasm: bool,
    /// Built-in plugins this one replaces while it is loaded.
    pub replaces: Vec<String>,
}

/// One profile: the plugins a `schedulerName` runs, in order.
pub struct Profile {
    /// The `schedulerName` it serves.
    pub name: String,
    /// Built-ins then Wasm plugins, in order.
    pub entries: Vec<Entry>,
    /// Percentage of nodes to find feasible before stopping (0: kube's adaptive default).
    pub percentage_of_nodes_to_score: u32,
    /// Where the next cycle starts looking, so sampling rotates over the nodes.
    next_start: usize,
    /// Of the nodes the last cycle judged, how many (feasible, judged): its share of feasible
    /// nodes sizes this cycle's chunks.
    last_yield: (usize, usize),
}

/// Why a pod could not be scheduled.
#[derive(Debug)]
pub enum CycleError {
    /// No node fits: the count of nodes per reason.
    Unschedulable {
        /// How many nodes there were.
        nodes: usize,
        /// Reason → number of nodes.
        reasons: BTreeMap<Arc<str>, usize>,
        /// The nodes only a preemptible plugin rejected: preemption's candidates.
        preemptible: Vec<u32>,
        /// How many nodes were rejected for reasons preemption could in principle lift.
        resolvable: usize,
    },
    /// A plugin with failure policy Fail failed.
    Plugin(PluginError),
    /// A reserve plugin refused the chosen node.
    Reserve {
        /// The plugin.
        plugin: String,
        /// Its message.
        message: String,
    },
}

impl CycleError {
    /// The FailedScheduling message, in kube-scheduler's words.
    pub fn message(&self) -> String {
        match self {
            CycleError::Unschedulable { nodes: 0, .. } => {
                "no nodes available to schedule pods".to_owned()
            }
            CycleError::Unschedulable { nodes, reasons, .. } => {
                histogram(*nodes, reasons.iter().map(|(r, n)| (&**r, *n)))
            }
            CycleError::Plugin(e) => format!("running plugin {:?}: {e}", e.plugin),
            CycleError::Reserve { plugin, message } => {
                format!("running Reserve plugin {plugin:?}: {message}")
            }
        }
    }
}

/// kube-scheduler's "0/3 nodes are available: 1 Insufficient cpu, 2 ...." from reasons and
/// how many nodes each has, sorted as text; reasons with no nodes are left out.
pub fn histogram<'a>(nodes: usize, reasons: impl IntoIterator<Item = (&'a str, usize)>) -> String {
    let mut parts: Vec<String> = reasons
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{n} {r}"))
        .collect();
    parts.sort();
    format!("0/{nodes} nodes are available: {}.", parts.join(", "))
}

/// The outcome of a cycle.
#[derive(Debug)]
pub struct Decision {
    /// The chosen node's slot.
    pub slot: u32,
    /// How many nodes were judged and found feasible (for metrics and tests).
    pub evaluated: usize,
    /// How many were feasible.
    pub feasible: usize,
}

/// kube-scheduler's default: all nodes up to 100, then 50% minus 1% per 125 nodes, at
/// least 5% and at least 100 nodes.
fn nodes_to_find(all: usize, percentage: u32) -> usize {
    const MIN: usize = 100;
    if all < MIN || percentage >= 100 {
        return all;
    }
    let pct = if percentage == 0 {
        (50 - (all / 125) as i64).max(5) as usize
    } else {
        percentage as usize
    };
    (all * pct / 100).max(MIN)
}

/// Nodes are filtered in chunks, so sampling can stop early without a call per node: each
/// chunk is as many nodes as should hold the feasible ones still wanted, at the share of
/// feasible nodes the last cycle saw (successive pods tend to be alike, so one chunk, and one
/// call per Wasm filter, usually finds them all), within these bounds. The lower bound keeps a
/// cluster where few nodes fit from costing a call per node; the upper one keeps a cycle after
/// one that found few from judging many more nodes than kube-scheduler would.
const MAX_CHUNK: usize = 1024;
const MIN_CHUNK: usize = 64;

/// How many nodes to judge to find `wanted` more feasible ones, when `feasible` of `judged`
/// were before; a sixteenth more, since the share varies from chunk to chunk.
fn chunk_size(wanted: usize, (feasible, judged): (usize, usize)) -> usize {
    let estimate = if feasible == 0 || judged == 0 {
        wanted
    } else {
        (wanted * judged).div_ceil(feasible)
    };
    (estimate + estimate / 16).clamp(MIN_CHUNK, MAX_CHUNK)
}

impl Profile {
    /// An empty profile.
    pub fn new(name: impl Into<String>) -> Self {
        Profile {
            name: name.into(),
            entries: Vec::new(),
            percentage_of_nodes_to_score: 0,
            next_start: 0,
            last_yield: (0, 0),
        }
    }

    /// Whether a built-in is replaced by a loaded Wasm plugin.
    fn replaced(&self, name: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.wasm && e.replaces.iter().any(|r| r == name))
    }

    /// The entries that run: all but built-ins a loaded Wasm plugin replaces.
    pub(crate) fn active(&self) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|&i| {
                let e = &self.entries[i];
                e.wasm || !self.replaced(e.plugin.name())
            })
            .collect()
    }

    /// Tells every plugin of a cache change.
    pub fn observe(&mut self, cache: &Cache, change: &Change) {
        for e in &mut self.entries {
            e.plugin.observe(cache, change);
        }
    }

    /// Tells every plugin that the pod of the last cycle was placed (`change`).
    pub fn assumed(&mut self, cache: &Cache, change: &Change) {
        for e in &mut self.entries {
            e.plugin.assumed(cache, change);
        }
    }

    /// Runs one scheduling cycle for `pod`.
    pub fn schedule(&mut self, pod: &PodInfo, cache: &Cache) -> Result<Decision, CycleError> {
        for e in &mut self.entries {
            e.plugin.begin_cycle();
        }
        let all = cache.len();
        if all == 0 {
            return Err(CycleError::Unschedulable {
                nodes: 0,
                reasons: BTreeMap::new(),
                preemptible: Vec::new(),
                resolvable: 0,
            });
        }
        let active = self.active();
        // Per entry: whether its filter is skipped, and whether its score is.
        let mut skip_filter = vec![false; self.entries.len()];
        let mut skip_score = vec![false; self.entries.len()];
        let mut only: Option<Vec<u32>> = None;
        // Which plugins restricted the nodes, for the message about the ones they excluded.
        let mut restricted_by: Vec<String> = Vec::new();
        for &i in &active {
            let e = &mut self.entries[i];
            if !e.plugin.filters() {
                continue;
            }
            match e
                .plugin
                .pre_filter(pod, cache)
                .map_err(CycleError::Plugin)?
            {
                PreFilter::Proceed => {}
                PreFilter::Skip => (skip_filter[i], skip_score[i]) = (true, true),
                PreFilter::SkipFilter => skip_filter[i] = true,
                PreFilter::Only(slots) => {
                    restricted_by.push(e.plugin.name().to_owned());
                    only = Some(match only {
                        None => slots,
                        Some(prev) => prev.into_iter().filter(|s| slots.contains(s)).collect(),
                    })
                }
                PreFilter::Reject(rejection) => {
                    let reasons = rejection.reasons.into_iter().map(|r| (r, all)).collect();
                    return Err(CycleError::Unschedulable {
                        nodes: all,
                        reasons,
                        preemptible: Vec::new(),
                        resolvable: if rejection.unresolvable { 0 } else { all },
                    });
                }
            }
        }
        let universe: Vec<u32> = match &only {
            Some(slots) => slots.clone(),
            None => cache.slots().collect(),
        };
        let want = nodes_to_find(universe.len(), self.percentage_of_nodes_to_score);
        let start = if universe.is_empty() {
            0
        } else {
            self.next_start % universe.len()
        };
        let mut reasons: BTreeMap<Arc<str>, usize> = BTreeMap::new();
        // With a pre-filter restriction, the nodes it excluded count as rejected.
        if only.is_some() && universe.len() < all {
            *reasons
                .entry(Arc::from(format!(
                    "node(s) didn't satisfy plugin(s) [{}]",
                    restricted_by.join(", ")
                )))
                .or_default() += all - universe.len();
        }
        let mut feasible = Vec::new();
        let mut preemptible = Vec::new();
        let mut resolvable = 0;
        let mut evaluated = 0;
        let mut verdicts = Vec::new();
        while evaluated < universe.len() && feasible.len() < want {
            let chunk = chunk_size(want - feasible.len(), self.last_yield);
            let end = (evaluated + chunk).min(universe.len());
            let mut candidates: Vec<u32> = (evaluated..end)
                .map(|k| universe[(start + k) % universe.len()])
                .collect();
            evaluated = end;
            for &i in &active {
                if skip_filter[i] || candidates.is_empty() {
                    continue;
                }
                let e = &mut self.entries[i];
                if !e.plugin.filters() {
                    continue;
                }
                e.plugin
                    .filter(pod, cache, &candidates, &mut verdicts)
                    .map_err(CycleError::Plugin)?;
                let can_preempt = e.plugin.preemptible();
                let mut k = 0;
                candidates.retain(|&slot| {
                    let keep = match verdicts.get(k) {
                        Some(Some(rejection)) => {
                            for r in &rejection.reasons {
                                *reasons.entry(r.clone()).or_default() += 1;
                            }
                            if !rejection.unresolvable {
                                resolvable += 1;
                                if can_preempt {
                                    preemptible.push(slot);
                                }
                            }
                            false
                        }
                        _ => true,
                    };
                    k += 1;
                    keep
                });
            }
            feasible.extend(candidates);
        }
        self.last_yield = (feasible.len(), evaluated);
        // As kube-scheduler, score only as many feasible nodes as were wanted.
        feasible.truncate(want);
        self.next_start = (start + evaluated) % universe.len().max(1);
        if feasible.is_empty() {
            return Err(CycleError::Unschedulable {
                nodes: all,
                reasons,
                preemptible,
                resolvable,
            });
        }
        let slot = if feasible.len() == 1 {
            feasible[0]
        } else {
            self.select(pod, cache, &active, &skip_score, &feasible)?
        };
        self.reserve(pod, cache, &active, slot)?;
        Ok(Decision {
            slot,
            evaluated,
            feasible: feasible.len(),
        })
    }

    fn select(
        &mut self,
        pod: &PodInfo,
        cache: &Cache,
        active: &[usize],
        skip_score: &[bool],
        feasible: &[u32],
    ) -> Result<u32, CycleError> {
        let mut total = vec![0i64; feasible.len()];
        for &i in active {
            let e = &mut self.entries[i];
            if skip_score[i] || !e.plugin.scores() || e.weight == 0 {
                continue;
            }
            if !e
                .plugin
                .pre_score(pod, cache, feasible)
                .map_err(CycleError::Plugin)?
            {
                continue;
            }
            let mut scores = e
                .plugin
                .score(pod, cache, feasible)
                .map_err(CycleError::Plugin)?;
            e.plugin
                .normalize(pod, feasible, &mut scores)
                .map_err(CycleError::Plugin)?;
            if let Some(bad) = scores.iter().find(|s| !(0..=MAX_NODE_SCORE).contains(*s)) {
                return Err(CycleError::Plugin(PluginError {
                    plugin: e.plugin.name().to_owned(),
                    export: "score",
                    kind: skiff_plugin_host::ErrorKind::InvalidResult,
                    detail: format!("score {bad} is outside 0..={MAX_NODE_SCORE}"),
                }));
            }
            for (t, s) in total.iter_mut().zip(&scores) {
                *t += s * e.weight;
            }
        }
        // The highest total wins; ties are broken uniformly at random (reservoir sampling),
        // as kube-scheduler does, so equal nodes share the load.
        let mut rng = rand::rng();
        let mut best = 0;
        let mut ties = 0;
        for k in 0..total.len() {
            if total[k] > total[best] {
                best = k;
                ties = 1;
            } else if total[k] == total[best] {
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = k;
                }
            }
        }
        Ok(feasible[best])
    }

    fn reserve(
        &mut self,
        pod: &PodInfo,
        cache: &Cache,
        active: &[usize],
        slot: u32,
    ) -> Result<(), CycleError> {
        for (n, &i) in active.iter().enumerate() {
            let outcome = self.entries[i].plugin.reserve(pod, cache, slot);
            let failure = match outcome {
                Ok(Ok(())) => continue,
                Ok(Err(message)) => CycleError::Reserve {
                    plugin: self.entries[i].plugin.name().to_owned(),
                    message,
                },
                Err(e) => CycleError::Plugin(e),
            };
            for &j in active[..n].iter().rev() {
                self.entries[j].plugin.unreserve(pod, slot);
            }
            return Err(failure);
        }
        Ok(())
    }

    /// Undoes every plugin's reservation (binding failed).
    pub fn unreserve(&mut self, pod: &PodInfo, slot: u32) {
        for i in self.active().into_iter().rev() {
            self.entries[i].plugin.unreserve(pod, slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_sized_by_the_last_share_of_feasible_nodes() {
        // Nothing seen yet: as many as are wanted, and a sixteenth more.
        assert_eq!(chunk_size(480, (0, 0)), 510);
        // Nine in ten fit: 480 are in about 534 nodes.
        assert_eq!(chunk_size(480, (900, 1000)), 567);
        // Within the bounds either way.
        assert_eq!(chunk_size(3, (900, 1000)), MIN_CHUNK);
        assert_eq!(chunk_size(480, (1, 1000)), MAX_CHUNK);
    }
}
