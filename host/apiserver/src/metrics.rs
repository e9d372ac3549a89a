//! Prometheus metrics of the API server, served on `/metrics`.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabels {
    verb: String,
}

/// Request counters and latencies.
pub(crate) struct Metrics {
    /// A std Mutex: encoding takes it briefly; recording does not need it.
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<VerbLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<VerbLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let mut registry = Registry::with_prefix("apiserver");
        registry.register(
            "request",
            "API requests by HTTP method and status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "API request latency by HTTP method",
            latency.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            latency,
        }
    }
}

impl Metrics {
    pub(crate) fn observe(&self, verb: &str, code: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                verb: verb.to_owned(),
                code,
            })
            .inc();
        self.latency
            .get_or_create(&VerbLabels {
                verb: verb.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn render(&self, extra: Option<&Mutex<Registry>>) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
        if let Some(extra) = extra {
            let extra = extra.lock().unwrap_or_else(|p| p.into_inner());
            let _ = prometheus_client::encoding::text::encode_registry(&mut out, &extra);
        }
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}
