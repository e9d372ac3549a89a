//! The resource metrics API, metrics.k8s.io/v1beta1, as metrics-server serves it (what
//! `kubectl top` and the HorizontalPodAutoscaler read): every node agent's
//! `/metrics/resource` is scraped once a resolution period; memory is the working set of
//! the last scrape, CPU the rate between the last two.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::http::{Method, Response, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use skiff_core::labels::Selector;
use skiff_core::registry::collection_prefix;
use skiff_core::status::ApiError;
use skiff_store::ListOptions;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::ApiServer;
use crate::http::{self, Body};
use crate::rest::{Ctx, store_error, to_value};

/// CPU seconds and working-set bytes.
type Reading = (f64, f64);
/// A pod's usage: when read, over what window (ms), and each container's cores and bytes.
type PodUsage = (i64, i64, Vec<(String, f64, f64)>);

/// One scrape of one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// When it was read (milliseconds since the epoch).
    pub at_ms: i64,
    /// The node's own usage.
    pub node: Option<Reading>,
    /// Each container's, by namespace, pod and container.
    pub containers: HashMap<(String, String, String), Reading>,
}

/// The last two scrapes of each node.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    /// A std Mutex: held only to swap or copy samples.
    by_node: Mutex<HashMap<String, (Option<Sample>, Sample)>>,
}

/// Reads the Prometheus text of `/metrics/resource`.
pub fn parse(text: &str, at_ms: i64) -> Sample {
    let mut sample = Sample {
        at_ms,
        ..Default::default()
    };
    let mut node = (None, None);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => continue,
        };
        let (labels, values) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((labels, values)) => (labels, values),
                None => continue,
            },
            None => ("", rest),
        };
        let Some(value) = values
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let label = |key: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
            })
        };
        match name {
            "node_cpu_usage_seconds_total" => node.0 = Some(value),
            "node_memory_working_set_bytes" => node.1 = Some(value),
            "container_cpu_usage_seconds_total" | "container_memory_working_set_bytes" => {
                let (Some(ns), Some(pod), Some(c)) =
                    (label("namespace"), label("pod"), label("container"))
                else {
                    continue;
                };
                let entry = sample
                    .containers
                    .entry((ns, pod, c))
                    .or_insert((f64::NAN, f64::NAN));
                if name.contains("cpu") {
                    entry.0 = value;
                } else {
                    entry.1 = value;
                }
            }
            _ => {}
        }
    }
    if let (Some(cpu), Some(memory)) = node {
        sample.node = Some((cpu, memory));
    }
    sample
        .containers
        .retain(|_, (cpu, memory)| !cpu.is_nan() && !memory.is_nan());
    sample
}

/// Cores used between two readings and the working set of the later, if the counter
/// did not go back (a restarted container starts its count again).
fn rate(prev: Reading, last: Reading, seconds: f64) -> Option<(f64, f64)> {
    (seconds > 0.0 && last.0 >= prev.0).then(|| ((last.0 - prev.0) / seconds, last.1))
}

fn cpu_quantity(cores: f64) -> String {
    format!("{}n", (cores * 1e9).round() as u64)
}

fn memory_quantity(bytes: f64) -> String {
    let bytes = bytes.max(0.0) as u64;
    if bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

/// A Go duration for `window`: `15s`, `15.002s`.
fn window(ms: i64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.3}s", ms as f64 / 1000.0)
    }
}

fn time_of(ms: i64) -> String {
    skiff_core::time::format_time(jiff::Timestamp::from_millisecond(ms).unwrap_or_default())
}

impl Samples {
    fn record(&self, node: &str, sample: Sample) {
        let mut all = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        let prev = all.remove(node).map(|(_, last)| last);
        all.insert(node.to_owned(), (prev, sample));
    }

    fn forget_others(&self, nodes: &[String]) {
        let mut all = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|n, _| nodes.contains(n));
    }

    /// A node's usage: (time, window, cores, bytes).
    fn node(&self, node: &str) -> Option<(i64, i64, f64, f64)> {
        let all = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        let (prev, last) = all.get(node)?;
        let prev = prev.as_ref()?;
        let dt = last.at_ms - prev.at_ms;
        let (cores, bytes) = rate(prev.node?, last.node?, dt as f64 / 1000.0)?;
        Some((last.at_ms, dt, cores, bytes))
    }

    /// A pod's containers' usage: (time, window, [(container, cores, bytes)]), if every
    /// container has two readings.
    fn pod(&self, node: &str, namespace: &str, pod: &str) -> Option<PodUsage> {
        let all = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        let (prev, last) = all.get(node)?;
        let prev = prev.as_ref()?;
        let dt = last.at_ms - prev.at_ms;
        let mut containers = Vec::new();
        for ((ns, p, c), reading) in &last.containers {
            if ns != namespace || p != pod {
                continue;
            }
            let before = prev.containers.get(&(ns.clone(), p.clone(), c.clone()))?;
            let (cores, bytes) = rate(*before, *reading, dt as f64 / 1000.0)?;
            containers.push((c.clone(), cores, bytes));
        }
        containers.sort_by(|a, b| a.0.cmp(&b.0));
        (!containers.is_empty()).then_some((last.at_ms, dt, containers))
    }
}

/// Stored objects of a built-in resource, in one namespace or all.
async fn stored(
    server: &ApiServer,
    plural: &str,
    namespace: Option<&str>,
) -> Result<Vec<Value>, ApiError> {
    let registry = server.registry();
    let def = registry
        .get("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
    let list = server
        .store
        .list(ListOptions {
            prefix: collection_prefix(def, namespace),
            ..Default::default()
        })
        .await
        .map_err(store_error)?;
    list.items.iter().map(to_value).collect()
}

/// Scrapes every node's agent once a `period`, until `shutdown`.
pub async fn scrape(server: Arc<ApiServer>, period: Duration, shutdown: CancellationToken) {
    loop {
        if let Err(e) = scrape_once(&server).await {
            warn!(error = %e.message, "reading resource metrics");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

async fn scrape_once(server: &ApiServer) -> Result<(), ApiError> {
    let Some(client) = server.agent_client() else {
        return Ok(());
    };
    let nodes = stored(server, "nodes", None).await?;
    let names: Vec<String> = nodes
        .iter()
        .filter_map(|n| n.pointer("/metadata/name")?.as_str().map(str::to_owned))
        .collect();
    server.usage.forget_others(&names);
    let reads = nodes.iter().filter_map(|node| {
        let name = node.pointer("/metadata/name")?.as_str()?.to_owned();
        let (host, port) = crate::proxy::agent_endpoint(node)?;
        Some(async move {
            let read = async {
                let resp = client.get(&host, port, "/metrics/resource").await?;
                if !resp.status().is_success() {
                    return Err(format!("{}", resp.status()));
                }
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
            };
            let text = tokio::time::timeout(Duration::from_secs(5), read).await;
            (name, text)
        })
    });
    for (node, text) in futures::future::join_all(reads).await {
        match text {
            Ok(Ok(text)) => {
                let now = jiff::Timestamp::now().as_millisecond();
                server.usage.record(&node, parse(&text, now));
            }
            Ok(Err(e)) => debug!(%node, error = %e, "scraping a node agent"),
            Err(_) => debug!(%node, "scraping a node agent timed out"),
        }
    }
    Ok(())
}

/// `GET` on metrics.k8s.io: node and pod usage, one or a list (pods by label selector).
pub(crate) async fn serve(
    ctx: &Ctx,
    method: &Method,
    has_name: bool,
) -> Result<Response<Body>, ApiError> {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed(
            method.as_str(),
            &ctx.def.plural,
        ));
    }
    let selector = Selector::parse(ctx.query.get("labelSelector").unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let name = ctx.path.name.clone();
    let namespace = ctx.path.namespace.clone();
    let usage = &ctx.server.usage;
    let now = skiff_core::time::format_time(jiff::Timestamp::now());
    let mut items = Vec::new();
    let nodes = ctx.def.plural == "nodes";
    let objects = stored(
        &ctx.server,
        if nodes { "nodes" } else { "pods" },
        namespace.as_deref(),
    )
    .await?;
    for o in objects {
        let meta = &o["metadata"];
        let object_name = meta["name"].as_str().unwrap_or_default();
        if name.as_deref().is_some_and(|n| n != object_name) || !selector.matches_object(&o) {
            continue;
        }
        let mut metadata = json!({"name": object_name, "creationTimestamp": now});
        for key in ["namespace", "labels"] {
            if let Some(v) = meta.get(key) {
                metadata[key] = v.clone();
            }
        }
        if nodes {
            if let Some((at, dt, cores, bytes)) = usage.node(object_name) {
                items.push(json!({
                    "kind": "NodeMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
                    "metadata": metadata, "timestamp": time_of(at), "window": window(dt),
                    "usage": {"cpu": cpu_quantity(cores), "memory": memory_quantity(bytes)},
                }));
            }
            continue;
        }
        let node = o
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let ns = meta["namespace"].as_str().unwrap_or_default();
        if let Some((at, dt, containers)) = usage.pod(node, ns, object_name) {
            let containers: Vec<Value> = containers
                .into_iter()
                .map(|(c, cores, bytes)| {
                    json!({"name": c, "usage": {"cpu": cpu_quantity(cores), "memory": memory_quantity(bytes)}})
                })
                .collect();
            items.push(json!({
                "kind": "PodMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": metadata, "timestamp": time_of(at), "window": window(dt),
                "containers": containers,
            }));
        }
    }
    if has_name {
        return match items.pop() {
            Some(item) => Ok(http::json(StatusCode::OK, &item)),
            None => Err(ApiError::not_found(
                "metrics.k8s.io",
                &ctx.def.plural,
                name.as_deref().unwrap_or_default(),
            )),
        };
    }
    let list = json!({
        "kind": ctx.def.list_kind, "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {}, "items": items,
    });
    Ok(http::json(StatusCode::OK, &list))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container=\"c\",namespace=\"default\",pod=\"p\"} 2.5 7
container_memory_working_set_bytes{container=\"c\",namespace=\"default\",pod=\"p\"} 4096 7
node_cpu_usage_seconds_total 100 7
node_memory_working_set_bytes 1e+06 7
";

    #[test]
    fn scrapes_are_read_and_cpu_is_the_rate_between_two() {
        let first = parse(TEXT, 1_000);
        assert_eq!(first.node, Some((100.0, 1e6)));
        let key = ("default".to_owned(), "p".to_owned(), "c".to_owned());
        assert_eq!(first.containers[&key], (2.5, 4096.0));
        let samples = Samples::default();
        samples.record("n", first);
        assert_eq!(samples.node("n"), None, "one scrape is no rate");
        let second = parse(&TEXT.replace("2.5", "4").replace(" 100 ", " 103 "), 16_000);
        samples.record("n", second);
        assert_eq!(samples.node("n"), Some((16_000, 15_000, 0.2, 1e6)));
        let (at, dt, containers) = samples.pod("n", "default", "p").unwrap();
        assert_eq!((at, dt), (16_000, 15_000));
        assert_eq!(containers, [("c".to_owned(), 0.1, 4096.0)]);
        assert_eq!(cpu_quantity(0.1), "100000000n");
        assert_eq!(memory_quantity(4096.0), "4Ki");
        assert_eq!(window(15_000), "15s");
        assert_eq!(window(15_002), "15.002s");
        // A restarted container's counter went back: no rate until the next scrape.
        samples.record("n", parse(&TEXT.replace("2.5", "0.1"), 31_000));
        assert_eq!(samples.pod("n", "default", "p"), None);
    }
}
