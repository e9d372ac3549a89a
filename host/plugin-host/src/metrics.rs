//! Per-plugin Prometheus metrics: calls, errors by kind, timeouts, call latency, load time.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ErrorKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    plugin: String,
    export: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    plugin: String,
    export: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoadLabels {
    plugin: String,
    /// `compile` or `cache`.
    source: &'static str,
}

/// One export's call counter and latency histogram, looked up once so that an instance's
/// calls cost no label hashing or allocation. Cloning shares them.
#[derive(Clone, Debug)]
pub(crate) struct CallMetrics {
    calls: Counter,
    latency: Histogram,
}

impl CallMetrics {
    pub(crate) fn record(&self, elapsed: Duration) {
        self.calls.inc();
        self.latency.observe(elapsed.as_secs_f64());
    }
}

/// The host's metrics. Cloning shares the counters.
#[derive(Clone)]
pub struct Metrics {
    calls: Family<CallLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    timeouts: Family<CallLabels, Counter>,
    latency: Family<CallLabels, Histogram>,
    loads: Family<LoadLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            calls: Family::default(),
            errors: Family::default(),
            timeouts: Family::default(),
            // 1 µs .. ~0.5 s: plugin calls are meant to be micro- to milliseconds.
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1e-6, 2.5, 15))
            }),
            // 50 µs .. ~30 s: a cache hit to a large Python component's compile.
            loads: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(5e-5, 3.0, 13))
            }),
        }
    }
}

impl Metrics {
    /// Registers the metrics (prefixed `plugin_`) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("plugin");
        r.register("calls", "Calls into plugins by export", self.calls.clone());
        r.register(
            "errors",
            "Failed plugin calls by export and kind",
            self.errors.clone(),
        );
        r.register(
            "timeouts",
            "Plugin calls stopped at their deadline",
            self.timeouts.clone(),
        );
        r.register(
            "call_duration_seconds",
            "Latency of plugin calls by export",
            self.latency.clone(),
        );
        r.register(
            "load_duration_seconds",
            "Time to compile or load a plugin component from the cache",
            self.loads.clone(),
        );
    }

    /// The counter and histogram of one plugin's export.
    pub(crate) fn for_call(&self, plugin: &str, export: &'static str) -> CallMetrics {
        let labels = CallLabels {
            plugin: plugin.to_owned(),
            export,
        };
        CallMetrics {
            calls: self.calls.get_or_create(&labels).clone(),
            latency: self.latency.get_or_create(&labels).clone(),
        }
    }

    pub(crate) fn call(
        &self,
        plugin: &str,
        export: &'static str,
        elapsed: Duration,
        error: Option<&ErrorKind>,
    ) {
        self.for_call(plugin, export).record(elapsed);
        if let Some(kind) = error {
            let labels = CallLabels {
                plugin: plugin.to_owned(),
                export,
            };
            if *kind == ErrorKind::Timeout {
                self.timeouts.get_or_create(&labels).inc();
            }
            self.errors
                .get_or_create(&ErrorLabels {
                    plugin: plugin.to_owned(),
                    export,
                    kind: kind.as_str(),
                })
                .inc();
        }
    }

    pub(crate) fn load(&self, plugin: &str, cached: bool, elapsed: Duration) {
        self.loads
            .get_or_create(&LoadLabels {
                plugin: plugin.to_owned(),
                source: if cached { "cache" } else { "compile" },
            })
            .observe(elapsed.as_secs_f64());
    }
}
