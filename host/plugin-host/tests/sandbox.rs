//! The sandbox against real components: the plugins of `plugins/`, built to wasm32-wasip2
//! by scripts/test.sh before the tests run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use skiff_plugin_host::{Config, ErrorKind, Host, Limits, Node, Pod, PreFilterResult, Resources};

fn component(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the plugins first (scripts/test.sh does: \
             cargo build --release --manifest-path plugins/Cargo.toml)",
            path.display()
        )
    })
}

fn resources(milli_cpu: i64, memory: i64, pods: i64) -> Resources {
    Resources {
        milli_cpu,
        memory,
        ephemeral_storage: 0,
        pods,
        scalar: Vec::new(),
    }
}

fn node(name: &str, labels: &[(&str, &str)]) -> Node {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    Node {
        name: name.into(),
        labels,
        allocatable: resources(4000, 8 << 30, 110),
        taints: Vec::new(),
        unschedulable: false,
    }
}

fn pod(name: &str, app: &str) -> Pod {
    Pod {
        uid: format!("uid-{name}"),
        namespace: "default".into(),
        name: name.into(),
        labels: vec![("app".into(), app.into())],
        annotations: Vec::new(),
        requests: resources(100, 1 << 20, 1),
        non_zero_requests: (100, 1 << 20),
        node_selector: Vec::new(),
        tolerations: Vec::new(),
        priority: 0,
        node_name: None,
        json: None,
    }
}

fn host() -> Host {
    Host::new(Config::default()).expect("the engine starts")
}

fn probe(host: &Host, config: &str, limits: Limits) -> skiff_plugin_host::SchedulerInstance {
    let loaded = host.load("probe", &component("probe")).unwrap();
    let pre = host.scheduler("probe", &loaded).unwrap();
    let mut instance = pre.instantiate(limits).unwrap();
    instance.init(config).unwrap();
    instance
        .upsert_node(0, &node("a", &[("pool", "a")]))
        .unwrap();
    instance
}

#[test]
fn zone_spread_filters_by_the_pods_it_was_fed() {
    let host = host();
    let loaded = host.load("zone-spread", &component("zone_spread")).unwrap();
    let pre = host.scheduler("zone-spread", &loaded).unwrap();
    let mut plugin = pre.instantiate(Limits::default()).unwrap();
    let info = plugin.init("{}").unwrap();
    assert!(info.wants_pods);
    assert_eq!(info.reasons.len(), 2);
    let zone = "topology.kubernetes.io/zone";
    plugin.upsert_node(0, &node("n0", &[(zone, "z1")])).unwrap();
    plugin.upsert_node(1, &node("n1", &[(zone, "z2")])).unwrap();
    plugin.upsert_node(2, &node("n2", &[])).unwrap();
    plugin.upsert_pod(0, &pod("web-0", "web")).unwrap();

    let next = pod("web-1", "web");
    plugin.begin(&next, None).unwrap();
    assert_eq!(plugin.pre_filter().unwrap(), PreFilterResult::Proceed);
    // z1 already has one web pod: placing another there would make the skew 2.
    assert_eq!(plugin.filter(&[0, 1, 2]).unwrap(), vec![1, 0, 2]);
    // Pods of other apps are not counted; pods without the label are skipped entirely.
    plugin.begin(&pod("db-0", "db"), None).unwrap();
    plugin.pre_filter().unwrap();
    assert_eq!(plugin.filter(&[0, 1]).unwrap(), vec![0, 0]);
    let mut unlabelled = pod("x", "x");
    unlabelled.labels.clear();
    plugin.begin(&unlabelled, None).unwrap();
    assert_eq!(plugin.pre_filter().unwrap(), PreFilterResult::Skip);
    // Once the first pod is gone, z1 is fine again.
    plugin.remove_pod("uid-web-0").unwrap();
    plugin.begin(&next, None).unwrap();
    plugin.pre_filter().unwrap();
    assert_eq!(plugin.filter(&[0, 1]).unwrap(), vec![0, 0]);
    // The cycle's pod, assumed on z2, counts there from now on.
    plugin.assume(1).unwrap();
    plugin.begin(&pod("web-2", "web"), None).unwrap();
    plugin.pre_filter().unwrap();
    assert_eq!(plugin.filter(&[0, 1]).unwrap(), vec![0, 1]);
    // The next `begin` can carry where web-2 went (z1): z1 and z2 are even again, and the
    // zone without the label still doesn't fit.
    plugin.begin(&pod("web-3", "web"), Some(0)).unwrap();
    plugin.pre_filter().unwrap();
    assert_eq!(plugin.filter(&[0, 1, 2]).unwrap(), vec![0, 0, 2]);
    // The counts follow the nodes: with z2 gone (and web-1 with it), z1 is the only zone, so
    // its one pod is no skew; a node joining a new zone z9 makes z1 the fuller one.
    plugin.remove_node(1).unwrap();
    plugin.begin(&pod("web-4", "web"), None).unwrap();
    plugin.pre_filter().unwrap();
    assert_eq!(plugin.filter(&[0]).unwrap(), vec![0]);
    plugin.upsert_node(2, &node("n2", &[(zone, "z9")])).unwrap();
    plugin.begin(&pod("web-4", "web"), None).unwrap();
    plugin.pre_filter().unwrap();
    assert_eq!(plugin.filter(&[0, 2]).unwrap(), vec![1, 0]);
}

#[test]
fn an_infinite_loop_is_stopped_at_its_deadline() {
    let host = host();
    let limits = Limits {
        call_timeout: Duration::from_millis(50),
        ..Limits::default()
    };
    let mut plugin = probe(&host, r#"{"fault": "loop"}"#, limits.clone());
    plugin.begin(&pod("p", "a"), None).unwrap();
    let started = Instant::now();
    let err = plugin.filter(&[0]).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert_eq!(err.export, "filter");
    assert!(took < Duration::from_secs(2), "stopped after {took:?}");
    // The trapped instance can't be entered again; a fresh one works.
    assert!(plugin.is_poisoned());
    assert_eq!(plugin.filter(&[0]).unwrap_err().kind, ErrorKind::Poisoned);
    let mut fresh = probe(&host, r#"{"requireLabel": "pool=a"}"#, limits);
    fresh.begin(&pod("p", "a"), None).unwrap();
    assert_eq!(fresh.filter(&[0]).unwrap(), vec![0]);
}

#[test]
fn unbounded_allocation_hits_the_memory_cap() {
    let host = host();
    let limits = Limits {
        memory_bytes: 16 << 20,
        call_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let mut plugin = probe(&host, r#"{"fault": "alloc"}"#, limits);
    plugin.begin(&pod("p", "a"), None).unwrap();
    let err = plugin.filter(&[0]).unwrap_err();
    assert_eq!(err.kind, ErrorKind::MemoryLimit, "{err}");
}

#[test]
fn a_guest_panic_is_a_trap_with_the_guest_message() {
    let host = host();
    let mut plugin = probe(
        &host,
        r#"{"fault": "trap", "faultIn": "score"}"#,
        Limits::default(),
    );
    plugin.begin(&pod("p", "a"), None).unwrap();
    assert_eq!(plugin.filter(&[0]).unwrap(), vec![0]);
    let err = plugin.score(&[0]).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Trap);
    assert!(
        err.detail.contains("probe plugin asked to trap"),
        "{}",
        err.detail
    );
}

#[test]
fn fuel_bounds_a_loop_when_enabled() {
    let host = Host::new(Config {
        fuel: true,
        ..Config::default()
    })
    .unwrap();
    let limits = Limits {
        fuel: Some(10_000_000),
        call_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let mut plugin = probe(&host, r#"{"fault": "loop"}"#, limits);
    plugin.begin(&pod("p", "a"), None).unwrap();
    let err = plugin.filter(&[0]).unwrap_err();
    assert_eq!(err.kind, ErrorKind::OutOfFuel, "{err}");
}

#[test]
fn wrong_exports_and_garbage_are_refused_before_use() {
    let host = host();
    let loaded = host.load("wrong", &component("wrong_world")).unwrap();
    let err = host.scheduler("wrong", &loaded).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Link);
    assert!(
        err.detail.contains("skiff:plugin/scheduler"),
        "{}",
        err.detail
    );

    let err = host
        .load("garbage", b"\0asm\x0d\0\x01\0not really")
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Compile);
}

#[test]
fn a_refused_config_is_an_init_error() {
    let host = host();
    let loaded = host.load("probe", &component("probe")).unwrap();
    let pre = host.scheduler("probe", &loaded).unwrap();
    let mut plugin = pre.instantiate(Limits::default()).unwrap();
    let err = plugin.init(r#"{"fault": "reject-init"}"#).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Init);
    let err = pre
        .instantiate(Limits::default())
        .unwrap()
        .init(r#"{"unknown": 1}"#)
        .unwrap_err();
    assert!(err.detail.contains("unknown field"), "{}", err.detail);
}

#[test]
fn compiled_components_are_reused_from_the_disk_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        cache_dir: Some(dir.path().to_owned()),
        ..Config::default()
    };
    let bytes = component("bin_packing");
    let cold = Host::new(config.clone())
        .unwrap()
        .load("bin-packing", &bytes)
        .unwrap();
    assert!(!cold.from_cache());
    let warm_host = Host::new(config).unwrap();
    let warm = warm_host.load("bin-packing", &bytes).unwrap();
    assert!(warm.from_cache());
    assert_eq!(warm.digest(), cold.digest());
    assert!(warm.digest().starts_with("sha256:"));
    // The cached artifact is a working plugin.
    let pre = warm_host.scheduler("bin-packing", &warm).unwrap();
    let mut plugin = pre.instantiate(Limits::default()).unwrap();
    plugin.init("{}").unwrap();
    plugin.upsert_node(0, &node("a", &[])).unwrap();
    plugin.upsert_node(1, &node("b", &[])).unwrap();
    plugin.upsert_pod(1, &pod("big", "x")).unwrap();
    plugin.begin(&pod("p", "a"), None).unwrap();
    let scores = plugin.score(&[0, 1]).unwrap();
    assert!(scores[1] > scores[0], "{scores:?}");
}

#[test]
fn metrics_count_calls_and_errors() {
    let host = host();
    let mut plugin = probe(&host, r#"{"fault": "trap"}"#, Limits::default());
    plugin.begin(&pod("p", "a"), None).unwrap();
    let _ = plugin.filter(&[0]);
    let mut registry = prometheus_client::registry::Registry::default();
    host.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"plugin_errors_total{plugin="probe",export="filter",kind="trap"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"plugin_calls_total{plugin="probe",export="init"} 1"#),
        "{text}"
    );
}
