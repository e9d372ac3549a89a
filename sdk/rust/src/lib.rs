//! Write skiff scheduler plugins in Rust.
//!
//! A plugin implements [`SchedulerPlugin`] with typed pods and nodes, one node at a time, and
//! exports it with [`export_scheduler!`]. The SDK does the rest of the `skiff:plugin`
//! `scheduler` interface for it: it keeps the node cache the host feeds (nodes by slot, the
//! pods placed on each and what they request), and turns the host's batched calls (one per
//! pod, covering every candidate node) into calls of the trait per node, inside the sandbox,
//! where calls are cheap.
//!
//! ```no_run
//! use skiff_plugin_sdk::{NodeInfo, Pod, Reason, SchedulerPlugin};
//!
//! /// Keeps pods off nodes labelled `maintenance=true`.
//! struct NoMaintenance;
//!
//! impl SchedulerPlugin for NoMaintenance {
//!     fn init(_config: &str) -> Result<Self, String> {
//!         Ok(NoMaintenance)
//!     }
//!     fn reasons(&self) -> Vec<Reason> {
//!         vec![Reason { message: "node(s) were under maintenance".into(), unresolvable: true }]
//!     }
//!     fn filter(&self, _pod: &Pod, node: &NodeInfo) -> Result<(), u16> {
//!         if node.node.label("maintenance") == Some("true") { Err(1) } else { Ok(()) }
//!     }
//! }
//!
//! skiff_plugin_sdk::export_scheduler!(NoMaintenance);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component a `Plugin` object names.

mod runtime;

#[doc(hidden)]
pub mod bindings {
    //! The generated bindings of the `scheduler-plugin` world.
    #![allow(missing_docs, reason = "generated code")]
    wit_bindgen::generate!({
        world: "scheduler-plugin",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_scheduler_world",
        default_bindings_module: "skiff_plugin_sdk::bindings",
    });
}

pub use bindings::exports::skiff::plugin::scheduler::{PreFilterResult, Reason};
pub use bindings::skiff::plugin::host::log;
pub use bindings::skiff::plugin::types::{
    LogLevel, Node, Pod, Resources, Taint, TaintEffect, Toleration,
};
#[doc(hidden)]
pub use runtime::Runtime;

/// The highest score a node can get after normalization.
pub const MAX_NODE_SCORE: i64 = 100;

/// A node with the pods placed on it, as the SDK's cache holds it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The slot the host names the node by.
    pub slot: u32,
    /// The node.
    pub node: Node,
    /// Pods placed on the node (only fed when the plugin wants pods).
    pub pods: Vec<Pod>,
    /// The sum of those pods' requests.
    pub requested: Resources,
    /// The sum of those pods' [`Pod::non_zero_requests`] (cpu, memory): what
    /// kube-scheduler's allocation scorers count, kept here so a scorer needn't walk the pods.
    pub non_zero_requested: (i64, i64),
}

/// Every node the SDK knows, for plugins that look across nodes (spreading, counting).
pub struct Cluster<'a> {
    nodes: &'a [Option<NodeInfo>],
}

impl<'a> Cluster<'a> {
    /// Every node, in slot order.
    pub fn nodes(&self) -> impl Iterator<Item = &'a NodeInfo> + 'a {
        self.nodes.iter().flatten()
    }

    /// The node in `slot`, if any.
    pub fn node(&self, slot: u32) -> Option<&'a NodeInfo> {
        self.nodes.get(slot as usize).and_then(Option::as_ref)
    }
}

/// A scheduler plugin. Every method but [`init`](Self::init) has a default that has no
/// effect, so a plugin implements only the extension points it uses.
pub trait SchedulerPlugin: Sized + 'static {
    /// Makes the plugin from the Plugin object's `spec.config` (JSON text, `{}` if unset).
    fn init(config: &str) -> Result<Self, String>;

    /// The reasons [`filter`](Self::filter) can give: `Err(n)` means `reasons()[n - 1]`.
    fn reasons(&self) -> Vec<Reason> {
        Vec::new()
    }

    /// Whether the SDK should keep the pods placed on each node ([`NodeInfo::pods`],
    /// [`NodeInfo::requested`] and [`NodeInfo::non_zero_requested`]). Costs a host call per
    /// placed pod, so it is opt-in.
    fn wants_pods(&self) -> bool {
        false
    }

    /// Whether [`Pod::json`] should carry the whole pod as JSON.
    fn wants_pod_json(&self) -> bool {
        false
    }

    /// Keeps the plugin's own sums up to date as the cache changes, so it needn't walk every
    /// node each cycle (the part kube-scheduler's AddPod/RemovePod extensions play): `1` when a
    /// pod joins `node` (placed, assumed, or on a node counted in), `-1` when it leaves
    /// (deleted, moved, unassumed, or on a node counted out). `node` holds the pod meanwhile.
    /// Only called when the plugin [wants pods](Self::wants_pods).
    fn count_pod(&mut self, _node: &NodeInfo, _pod: &Pod, _sign: i64) {}

    /// `1` when a node joins the cache, `-1` when it leaves; a changed node is counted out as
    /// it was and in as it is. A node's pods are counted out before it and in after it.
    fn count_node(&mut self, _node: &NodeInfo, _sign: i64) {}

    /// Called once per pod before filtering, with every node.
    fn pre_filter(&mut self, _pod: &Pod, _cluster: &Cluster<'_>) -> PreFilterResult {
        PreFilterResult::Proceed
    }

    /// Whether `node` fits `pod`: `Ok(())`, or `Err(code)` with a code from
    /// [`reasons`](Self::reasons).
    fn filter(&self, _pod: &Pod, _node: &NodeInfo) -> Result<(), u16> {
        Ok(())
    }

    /// Called once per pod before scoring, with the feasible nodes; `false` skips
    /// [`score`](Self::score).
    fn pre_score(&mut self, _pod: &Pod, _cluster: &Cluster<'_>, _feasible: &[u32]) -> bool {
        true
    }

    /// The node's score for the pod; 0..=100 unless
    /// [`normalize_score`](Self::normalize_score) maps it there.
    fn score(&self, _pod: &Pod, _node: &NodeInfo) -> i64 {
        0
    }

    /// Maps this plugin's raw scores (one per feasible node, in order) onto 0..=100.
    fn normalize_score(&self, _pod: &Pod, _scores: &mut [i64]) {}

    /// The pod is about to be bound to `node`; `Err` rejects the node.
    fn reserve(&mut self, _pod: &Pod, _node: &NodeInfo) -> Result<(), String> {
        Ok(())
    }

    /// A reservation made by [`reserve`](Self::reserve) is undone.
    fn unreserve(&mut self, _pod: &Pod, _node: &NodeInfo) {}
}

/// Looks a key up in a sorted `(key, value)` list.
pub fn lookup<'a>(map: &'a [(String, String)], key: &str) -> Option<&'a str> {
    map.binary_search_by(|(k, _)| k.as_str().cmp(key))
        .ok()
        .map(|i| map[i].1.as_str())
}

impl Node {
    /// The value of a label.
    pub fn label(&self, key: &str) -> Option<&str> {
        lookup(&self.labels, key)
    }
}

impl Pod {
    /// The value of a label.
    pub fn label(&self, key: &str) -> Option<&str> {
        lookup(&self.labels, key)
    }

    /// The value of an annotation.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        lookup(&self.annotations, key)
    }
}

impl Resources {
    /// The amount of an extended resource (0 if absent).
    pub fn scalar(&self, name: &str) -> i64 {
        self.scalar
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    }
}

/// Exports a [`SchedulerPlugin`] as the component's `skiff:plugin/scheduler` interface.
///
/// Use it once, at the root of the plugin crate: `skiff_plugin_sdk::export_scheduler!(MyPlugin);`
#[macro_export]
macro_rules! export_scheduler {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __SkiffSchedulerExport;

        ::std::thread_local! {
            static __SKIFF_RUNTIME: ::std::cell::RefCell<$crate::Runtime<$plugin>> =
                ::std::cell::RefCell::new($crate::Runtime::new());
        }

        impl $crate::bindings::exports::skiff::plugin::scheduler::Guest for __SkiffSchedulerExport {
            fn init(
                config: ::std::string::String,
            ) -> ::std::result::Result<
                $crate::bindings::exports::skiff::plugin::scheduler::PluginInfo,
                ::std::string::String,
            > {
                __SKIFF_RUNTIME.with(|rt| rt.borrow_mut().init(&config))
            }
            fn upsert_node(slot: u32, node: $crate::Node) {
                __SKIFF_RUNTIME.with(|rt| rt.borrow_mut().upsert_node(slot, node))
            }
            fn remove_node(slot: u32) {
                __SKIFF_RUNTIME.with(|rt| rt.borrow_mut().remove_node(slot))
            }
            fn upsert_pod(slot: u32, pod: $crate::Pod) {
                __SKIFF_RUNTIME.with(|rt| rt.borrow_mut().upsert_pod(slot, pod))
            }
            fn remove_pod(uid: ::std::string::String) {
                __SKIFF_RUNTIME.with(|rt| rt.borrow_mut().remove_pod(&uid))
            }
            fn begin(pod: $crate::Pod, assumed: Option<u32>) {
                __SKIFF_RUNTIME.with(|rt| rt.borrow_mut().begin(pod, assumed))
            }
            fn pre_filter() -> $crate::PreFilterResult {
                __SKIFF_RUNTIME.with(|rt| rt.borrow_mut().pre_filter())
            }
            fn filter(candidates: ::std::vec::Vec<u32>) -> ::std::vec::Vec<u16> {
                __SKIFF_RUNTIME.with(|rt| rt.borrow().filter(&candidates))
            }
            fn pre_score(candidates: ::std::vec::Vec<u32>) -> bool {
                __SKIFF_RUNTIME.with(|rt| rt.borrow_mut().pre_score(&candidates))
            }
            fn score(candidates: ::std::vec::Vec<u32>) -> ::std::vec::Vec<i64> {
                __SKIFF_RUNTIME.with(|rt| rt.borrow().score(&candidates))
            }
            fn normalize_score(
                _candidates: ::std::vec::Vec<u32>,
                scores: ::std::vec::Vec<i64>,
            ) -> ::std::vec::Vec<i64> {
                __SKIFF_RUNTIME.with(|rt| rt.borrow().normalize_score(scores))
            }
            fn reserve(slot: u32) -> ::std::result::Result<(), ::std::string::String> {
                __SKIFF_RUNTIME.with(|rt| rt.borrow_mut().reserve(slot))
            }
            fn assume(slot: u32) {
                __SKIFF_RUNTIME.with(|rt| rt.borrow_mut().assume(slot))
            }
            fn unreserve(pod: $crate::Pod, slot: u32) {
                __SKIFF_RUNTIME.with(|rt| rt.borrow_mut().unreserve(&pod, slot))
            }
        }

        $crate::bindings::__export_scheduler_world!(__SkiffSchedulerExport with_types_in $crate::bindings);
    };
}
