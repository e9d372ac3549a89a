//! The scheduler end to end: simulated Node objects (no agent), pods through the API, the
//! built-in plugins' messages, and Wasm plugins hot-loaded from Plugin objects.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::client;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};
use skiff_tests::{Kubectl, TestCluster, TestRegistry, eventually, skiff_binary};

fn component(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: scripts/test.sh builds the plugins",
        path.display()
    );
    path.canonicalize().unwrap().display().to_string()
}

fn nodes(kubectl: &Kubectl, specs: &[(&str, &str, &str)]) {
    nodes_for(kubectl, specs, 110);
}

/// Simulated nodes that each take up to `pods` pods.
fn nodes_for(kubectl: &Kubectl, specs: &[(&str, &str, &str)], pods: u32) {
    for (name, pool, extra) in specs {
        kubectl.apply(
            &format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/hostname: {name}, pool: {pool}}}\n{extra}status:\n  capacity: {{cpu: '4', memory: 8Gi, pods: '{pods}'}}\n  allocatable: {{cpu: '4', memory: 8Gi, pods: '{pods}'}}\n"
            ),
            &[],
        );
    }
}

fn plugin(kubectl: &Kubectl, name: &str, component_name: &str, extra: &str) {
    kubectl.apply(
        &format!(
            "apiVersion: skiff.dev/v1alpha1\nkind: Plugin\nmetadata:\n  name: {name}\nspec:\n  kind: scheduler\n  component: {{file: {}}}\n{extra}",
            component(component_name)
        ),
        &[],
    );
}

fn status(kubectl: &Kubectl, plugin: &str) -> Value {
    let out = kubectl.ok(&["get", "plugin", plugin, "-o", "json"]);
    serde_json::from_str::<Value>(&out).unwrap()["status"].clone()
}

fn ready(kubectl: &Kubectl, plugin: &str, generation: i64) -> Value {
    eventually(Duration::from_secs(20), || {
        let s = status(kubectl, plugin);
        (s["observedGeneration"] == generation).then_some(s)
    })
    .unwrap_or_else(|| panic!("plugin {plugin} never observed generation {generation}"))
}

fn node_of(kubectl: &Kubectl, pod: &str) -> Option<String> {
    let n = kubectl.ok(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"]);
    (!n.trim().is_empty()).then(|| n.trim().to_owned())
}

/// Waits for the pod to be bound and returns its node.
fn bound_node(kubectl: &Kubectl, pod: &str, timeout_secs: u64) -> String {
    eventually(Duration::from_secs(timeout_secs), || node_of(kubectl, pod))
        .unwrap_or_else(|| panic!("pod {pod} was not bound within {timeout_secs} s"))
}

fn run_pod(kubectl: &Kubectl, name: &str, overrides: &str) {
    let mut args = vec!["run", name, "--image=busybox", "--restart=Never"];
    let o = format!("--overrides={overrides}");
    if !overrides.is_empty() {
        args.push(&o);
    }
    kubectl.ok(&args);
}

fn event_message(kubectl: &Kubectl, object: &str, reason: &str) -> Option<String> {
    eventually(Duration::from_secs(15), || {
        let out = kubectl.ok(&[
            "get",
            "events",
            "-A",
            "--field-selector",
            &format!("involvedObject.name={object},reason={reason}"),
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        (!out.trim().is_empty()).then(|| out.trim().to_owned())
    })
}

#[test]
fn built_in_plugins_place_pods_and_explain_failures() {
    let cluster = TestCluster::start().unwrap();
    let kubectl = cluster.kubectl();
    nodes(
        &kubectl,
        &[
            ("n1", "a", ""),
            (
                "n2",
                "b",
                "spec:\n  taints: [{key: dedicated, value: gpu, effect: NoSchedule}]\n",
            ),
            ("n3", "c", "spec:\n  unschedulable: true\n"),
        ],
    );
    // nodeSelector and resources: only n1 is free of taints and cordons.
    run_pod(&kubectl, "plain", "");
    let node = bound_node(&kubectl, "plain", 15);
    assert_eq!(node, "n1");
    let scheduled = event_message(&kubectl, "plain", "Scheduled").unwrap();
    assert_eq!(scheduled, "Successfully assigned default/plain to n1");

    // A toleration opens n2; a nodeSelector for it then lands there.
    run_pod(
        &kubectl,
        "tolerant",
        r#"{"spec":{"nodeSelector":{"pool":"b"},"tolerations":[{"key":"dedicated","operator":"Equal","value":"gpu","effect":"NoSchedule"}]}}"#,
    );
    assert_eq!(bound_node(&kubectl, "tolerant", 15), "n2");

    // Too big for any node: the message counts nodes per reason, as kube-scheduler does.
    run_pod(
        &kubectl,
        "huge",
        r#"{"spec":{"containers":[{"name":"huge","image":"busybox","resources":{"requests":{"cpu":"8"}}}]}}"#,
    );
    let message = event_message(&kubectl, "huge", "FailedScheduling").unwrap();
    assert_eq!(
        message,
        "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were unschedulable. preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling."
    );
    let condition = kubectl.ok(&[
        "get",
        "pod",
        "huge",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="PodScheduled")].status} {.status.conditions[?(@.type=="PodScheduled")].reason}"#,
    ]);
    assert_eq!(condition.trim(), "False Unschedulable");

    // A new node with room makes the parked pod schedulable without a retry from the user.
    kubectl.apply(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: n4\nstatus:\n  allocatable: {cpu: '16', memory: 8Gi, pods: '110'}\n",
        &[],
    );
    assert_eq!(bound_node(&kubectl, "huge", 30), "n4");
}

/// The events about one object, as `reason: message` lines.
fn events_of(kubectl: &Kubectl, object: &str) -> String {
    kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={object}"),
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ])
}

/// The seeds' taints and tolerations (000:2298-2324) and node status (000:2715-2720) through
/// kubectl's own commands, profiles by schedulerName, and pods that name their node.
#[test]
fn kubectl_taint_cordon_and_profiles_steer_the_scheduler() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "profiles:\n- schedulerName: default-scheduler\n- schedulerName: no-taints\n  disabled: [TaintToleration]\n",
    )
    .unwrap();
    let cluster =
        TestCluster::start_with(&["--scheduler-config", config.path().to_str().unwrap()]).unwrap();
    let kubectl = cluster.kubectl();
    nodes(
        &kubectl,
        &[("n1", "a", ""), ("n2", "b", ""), ("n3", "c", "")],
    );

    // The seed's taint, on every node: only the seed's two tolerations get in.
    for n in ["n1", "n2", "n3"] {
        let out = kubectl.ok(&["taint", "nodes", n, "key1=value1:NoSchedule"]);
        assert_eq!(out.trim(), format!("node/{n} tainted"));
    }
    run_pod(&kubectl, "untolerated", "");
    assert_eq!(
        event_message(&kubectl, "untolerated", "FailedScheduling").unwrap(),
        "0/3 nodes are available: 3 node(s) had untolerated taint {key1: value1}. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
    run_pod(
        &kubectl,
        "equal",
        r#"{"spec":{"tolerations":[{"key":"key1","operator":"Equal","value":"value1","effect":"NoSchedule"}]}}"#,
    );
    run_pod(
        &kubectl,
        "exists",
        r#"{"spec":{"tolerations":[{"key":"key1","operator":"Exists","effect":"NoSchedule"}]}}"#,
    );
    bound_node(&kubectl, "equal", 15);
    bound_node(&kubectl, "exists", 15);
    // The seed's untaint: the parked pod goes to the one node without it.
    let out = kubectl.ok(&["taint", "nodes", "n3", "key1=value1:NoSchedule-"]);
    assert_eq!(out.trim(), "node/n3 untainted");
    assert_eq!(bound_node(&kubectl, "untolerated", 30), "n3");

    // Cordon: SchedulingDisabled keeps new pods off until uncordoned.
    assert_eq!(kubectl.ok(&["cordon", "n3"]).trim(), "node/n3 cordoned");
    run_pod(&kubectl, "waits", "");
    assert_eq!(
        event_message(&kubectl, "waits", "FailedScheduling").unwrap(),
        "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) had untolerated taint {key1: value1}. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
    assert_eq!(
        node_of(&kubectl, "untolerated").as_deref(),
        Some("n3"),
        "cordon doesn't evict"
    );
    assert_eq!(kubectl.ok(&["uncordon", "n3"]).trim(), "node/n3 uncordoned");
    assert_eq!(bound_node(&kubectl, "waits", 30), "n3");

    // A profile without TaintToleration places pods that asked for it on tainted nodes.
    run_pod(
        &kubectl,
        "profiled",
        r#"{"spec":{"schedulerName":"no-taints","nodeSelector":{"pool":"a"}}}"#,
    );
    assert_eq!(bound_node(&kubectl, "profiled", 15), "n1");
    // A pod for a scheduler that isn't running is left alone, as kube-scheduler does; so is
    // a pod that names its node (the node's agent takes it, taint or not).
    run_pod(
        &kubectl,
        "elsewhere",
        r#"{"spec":{"schedulerName":"someone-else"}}"#,
    );
    run_pod(&kubectl, "pinned", r#"{"spec":{"nodeName":"n2"}}"#);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node_of(&kubectl, "elsewhere"), None);
    assert_eq!(events_of(&kubectl, "elsewhere"), "");
    assert_eq!(node_of(&kubectl, "pinned").as_deref(), Some("n2"));
    assert_eq!(events_of(&kubectl, "pinned"), "");
    // Scheduled events name the profile that placed the pod.
    let from = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=profiled,reason=Scheduled",
        "-o",
        "jsonpath={.items[0].reportingComponent}",
    ]);
    assert_eq!(from.trim(), "no-taints");
}

/// PriorityClasses as the Priority admission plugin keeps them: one global default, which
/// pods without a class get; pods that spell out another priority are refused; values above
/// a billion and `system-` names are the system's.
#[test]
fn priority_classes_give_defaults_and_guard_pod_priorities() {
    let cluster = TestCluster::start().unwrap();
    let kubectl = cluster.kubectl();
    let class = |name: &str, value: i64, default: bool| {
        format!(
            "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata:\n  name: {name}\nvalue: {value}\nglobalDefault: {default}\n"
        )
    };
    kubectl.apply(&class("normal", 1000, true), &[]);
    run_pod(&kubectl, "plain", "");
    let got = kubectl.ok(&[
        "get",
        "pod",
        "plain",
        "-o",
        "jsonpath={.spec.priorityClassName} {.spec.priority} {.spec.preemptionPolicy}",
    ]);
    assert_eq!(got.trim(), "normal 1000 PreemptLowerPriority");

    let refused = kubectl.run_stdin(&["apply", "-f", "-"], &class("another", 5, true));
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains(r#"priorityclasses.scheduling.k8s.io "another" is forbidden: PriorityClass normal is already marked as default. Only one default can exist"#),
        "{}",
        refused.stderr
    );
    let spelled = kubectl.run_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: spelled\nspec:\n  priorityClassName: normal\n  priority: 5\n  containers: [{name: c, image: busybox}]\n",
    );
    assert!(
        spelled.stderr.contains(r#"pods "spelled" is forbidden: the integer value of priority (5) must not be provided in pod spec; priority admission controller computed 1000 from the given PriorityClass name"#),
        "{}",
        spelled.stderr
    );
    let too_high = kubectl.run_stdin(
        &["apply", "-f", "-"],
        &class("urgent", 2_000_000_000, false),
    );
    assert!(
        too_high.stderr.contains(
            "value: Forbidden: maximum allowed value of a user defined priority is 1000000000"
        ),
        "{}",
        too_high.stderr
    );
    // The value is fixed once pods may carry it.
    let changed = kubectl.run_stdin(&["apply", "-f", "-"], &class("normal", 2000, true));
    assert!(
        changed
            .stderr
            .contains("value: Forbidden: may not be changed in an update."),
        "{}",
        changed.stderr
    );
    // The system's classes are there, with their values.
    let system = kubectl.ok(&[
        "get",
        "priorityclass",
        "system-node-critical",
        "-o",
        "jsonpath={.value}",
    ]);
    assert_eq!(system.trim(), "2000001000");
}

/// The seed's pod affinity and anti-affinity examples (002:955-993, F5/F6 in the inventory)
/// with their YAML mistakes corrected: next to, and away from, the pods labelled security=S1.
#[test]
fn the_seed_pod_affinity_examples_place_pods_by_the_security_label() {
    let cluster = TestCluster::start().unwrap();
    let kubectl = cluster.kubectl();
    nodes(
        &kubectl,
        &[("n1", "a", ""), ("n2", "b", ""), ("n3", "c", "")],
    );
    kubectl.ok(&[
        "run",
        "s1",
        "--image=busybox",
        "--restart=Never",
        "--labels=security=S1",
    ]);
    let s1 = bound_node(&kubectl, "s1", 15);
    let example = |name: &str, kind: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers: [{{name: c, image: busybox}}]\n  affinity:\n    {kind}:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - labelSelector:\n          matchExpressions:\n          - key: security\n            operator: In\n            values:\n            - S1\n        topologyKey: kubernetes.io/hostname\n"
        )
    };
    for i in 0..3 {
        kubectl.apply(&example(&format!("affinity-{i}"), "podAffinity"), &[]);
        kubectl.apply(&example(&format!("anti-{i}"), "podAntiAffinity"), &[]);
    }
    for i in 0..3 {
        assert_eq!(bound_node(&kubectl, &format!("affinity-{i}"), 15), s1);
        assert_ne!(bound_node(&kubectl, &format!("anti-{i}"), 15), s1);
    }
    // With the S1 pod gone, affinity has nothing to be next to (the first pod of a group
    // only places itself when it matches its own selector).
    let deleted = kubectl.run(&["delete", "pod", "s1", "--grace-period=0", "--force"]);
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    kubectl.apply(&example("affinity-late", "podAffinity"), &[]);
    assert_eq!(
        event_message(&kubectl, "affinity-late", "FailedScheduling").unwrap(),
        "0/3 nodes are available: 3 node(s) didn't match pod affinity rules. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
}

#[test]
fn pod_affinity_and_topology_spread_place_pods_by_their_neighbours() {
    let cluster = TestCluster::start().unwrap();
    let kubectl = cluster.kubectl();
    nodes(
        &kubectl,
        &[("n1", "a", ""), ("n2", "b", ""), ("n3", "c", "")],
    );
    let anti = r#"{"metadata":{"labels":{"app":"web"}},"spec":{"affinity":{"podAntiAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":[{"labelSelector":{"matchLabels":{"app":"web"}},"topologyKey":"kubernetes.io/hostname"}]}}}}"#;
    let mut used = std::collections::BTreeSet::new();
    for name in ["web-1", "web-2", "web-3"] {
        run_pod(&kubectl, name, anti);
        used.insert(bound_node(&kubectl, name, 15));
    }
    assert_eq!(
        used.len(),
        3,
        "anti-affinity spreads one per node: {used:?}"
    );
    run_pod(&kubectl, "web-4", anti);
    assert_eq!(
        event_message(&kubectl, "web-4", "FailedScheduling").unwrap(),
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
    );
    // A deleted neighbour frees its node for the parked pod.
    let freed = node_of(&kubectl, "web-1").unwrap();
    // Forced, as a node agent would confirm it (kubectl warns that it doesn't wait).
    let deleted = kubectl.run(&["delete", "pod", "web-1", "--grace-period=0", "--force"]);
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    assert_eq!(bound_node(&kubectl, "web-4", 30), freed);

    // Affinity across namespaces chosen by label: next to the database of team red.
    kubectl.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: red\n  labels: {team: red}\n",
        &[],
    );
    kubectl.ok(&[
        "run",
        "db",
        "-n",
        "red",
        "--image=busybox",
        "--restart=Never",
        "--labels=app=db",
    ]);
    let db_node = eventually(Duration::from_secs(15), || {
        let n = kubectl.ok(&[
            "get",
            "pod",
            "db",
            "-n",
            "red",
            "-o",
            "jsonpath={.spec.nodeName}",
        ]);
        (!n.trim().is_empty()).then(|| n.trim().to_owned())
    })
    .expect("db bound");
    run_pod(
        &kubectl,
        "near-db",
        r#"{"spec":{"affinity":{"podAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":[{"labelSelector":{"matchLabels":{"app":"db"}},"namespaceSelector":{"matchLabels":{"team":"red"}},"topologyKey":"kubernetes.io/hostname"}]}}}}"#,
    );
    assert_eq!(bound_node(&kubectl, "near-db", 15), db_node);

    // DoNotSchedule spread over the pools with maxSkew 1: six pods, two per pool.
    let spread = r#"{"metadata":{"labels":{"app":"spread"}},"spec":{"topologySpreadConstraints":[{"maxSkew":1,"topologyKey":"pool","whenUnsatisfiable":"DoNotSchedule","labelSelector":{"matchLabels":{"app":"spread"}}}]}}"#;
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..6 {
        let name = format!("spread-{i}");
        run_pod(&kubectl, &name, spread);
        *per_node.entry(bound_node(&kubectl, &name, 15)).or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{per_node:?}"
    );
}

/// A pod asking for `cpu` with a priority class.
fn prioritized(kubectl: &Kubectl, name: &str, class: &str, cpu: &str) -> skiff_tests::Run {
    kubectl.run(&[
        "run",
        name,
        "--image=busybox",
        "--restart=Never",
        &format!(
            r#"--overrides={{"spec":{{"priorityClassName":"{class}","containers":[{{"name":"{name}","image":"busybox","resources":{{"requests":{{"cpu":"{cpu}"}}}}}}]}}}}"#
        ),
    ])
}

#[test]
fn higher_priority_pods_preempt_lower_ones_through_priority_classes() {
    let cluster = TestCluster::start().unwrap();
    let kubectl = cluster.kubectl();
    nodes(&kubectl, &[("n1", "a", ""), ("n2", "b", "")]);
    for (name, value, policy) in [
        ("low", 10, "PreemptLowerPriority"),
        ("high", 1000, "PreemptLowerPriority"),
        ("polite", 1000, "Never"),
    ] {
        kubectl.apply(
            &format!("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata:\n  name: {name}\nvalue: {value}\npreemptionPolicy: {policy}\n"),
            &[],
        );
    }
    // Priority admission: an unknown class is refused; a known one sets spec.priority.
    let refused = prioritized(&kubectl, "stray", "nope", "1");
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .stderr
            .contains("pods \"stray\" is forbidden: no PriorityClass with name nope was found"),
        "{}",
        refused.stderr
    );
    let mut victims = HashMap::new();
    for name in ["low-1", "low-2"] {
        assert_eq!(prioritized(&kubectl, name, "low", "3").code, 0);
        victims.insert(bound_node(&kubectl, name, 15), name);
    }
    assert_eq!(victims.len(), 2, "one low pod per node");
    assert_eq!(
        kubectl.ok(&["get", "pod", "low-1", "-o", "jsonpath={.spec.priority}"]),
        "10"
    );

    // preemptionPolicy Never: it waits instead of evicting.
    assert_eq!(prioritized(&kubectl, "polite", "polite", "2").code, 0);
    let message = event_message(&kubectl, "polite", "FailedScheduling").unwrap();
    assert!(
        message.ends_with("preemption: not eligible due to preemptionPolicy=Never."),
        "{message}"
    );
    kubectl.ok(&["delete", "pod", "polite", "--wait=false"]);

    // A higher priority pod evicts one low pod and is nominated for its node.
    assert_eq!(prioritized(&kubectl, "urgent", "high", "2").code, 0);
    let uid = kubectl.ok(&["get", "pod", "urgent", "-o", "jsonpath={.metadata.uid}"]);
    let nominated = eventually(Duration::from_secs(15), || {
        let n = kubectl.ok(&[
            "get",
            "pod",
            "urgent",
            "-o",
            "jsonpath={.status.nominatedNodeName}",
        ]);
        (!n.trim().is_empty()).then(|| n.trim().to_owned())
    })
    .expect("urgent is nominated");
    let victim = victims[&nominated];
    let preempted = event_message(&kubectl, victim, "Preempted").unwrap();
    assert_eq!(
        preempted,
        format!("Preempted by pod {} on node {nominated}", uid.trim())
    );
    let marked = kubectl.ok(&[
        "get",
        "pod",
        victim,
        "-o",
        r#"jsonpath={.metadata.deletionTimestamp} {.status.conditions[?(@.type=="DisruptionTarget")].reason}"#,
    ]);
    assert!(
        marked.trim().ends_with(" PreemptionByScheduler"),
        "{marked}"
    );
    // The other low pod is untouched.
    let other = victims.values().find(|v| **v != victim).unwrap();
    assert_eq!(
        kubectl.ok(&[
            "get",
            "pod",
            other,
            "-o",
            "jsonpath={.metadata.deletionTimestamp}"
        ]),
        ""
    );
    // The victim's node agent would confirm the deletion; with simulated nodes the test does.
    let deleted = kubectl.run(&["delete", "pod", victim, "--grace-period=0", "--force"]);
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    assert_eq!(bound_node(&kubectl, "urgent", 30), nominated);
}

#[test]
fn a_wasm_plugin_changes_where_pods_land_and_is_swapped_and_unloaded_live() {
    let cluster = TestCluster::start().unwrap();
    let kubectl = cluster.kubectl();
    nodes(
        &kubectl,
        &[("n1", "a", ""), ("n2", "b", ""), ("n3", "c", "")],
    );
    plugin(
        &kubectl,
        "pool",
        "probe",
        "  config: {requireLabel: pool=b}\n",
    );
    let s = ready(&kubectl, "pool", 1);
    assert!(s["digest"].as_str().unwrap().starts_with("sha256:"), "{s}");
    let table = kubectl.ok(&["get", "plugins"]);
    assert!(table.contains("pool   scheduler   True"), "{table}");

    for i in 0..4 {
        run_pod(&kubectl, &format!("p{i}"), "");
    }
    for i in 0..4 {
        assert_eq!(bound_node(&kubectl, &format!("p{i}"), 15), "n2", "pod p{i}");
    }
    // The plugin's own reason shows up in FailedScheduling.
    run_pod(
        &kubectl,
        "elsewhere",
        r#"{"spec":{"nodeSelector":{"pool":"a"}}}"#,
    );
    let message = event_message(&kubectl, "elsewhere", "FailedScheduling").unwrap();
    assert_eq!(
        message,
        "0/3 nodes are available: 1 node(s) didn't have label pool=b, 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );

    // A component with the wrong exports never replaces the working version.
    plugin(
        &kubectl,
        "pool",
        "wrong_world",
        "  config: {requireLabel: pool=b}\n",
    );
    let s = ready(&kubectl, "pool", 2);
    let loaded = s["conditions"].as_array().unwrap();
    assert_eq!(loaded[0]["type"], "Loaded");
    assert_eq!(loaded[0]["status"], "False");
    assert_eq!(loaded[1]["reason"], "PreviousVersion", "{s}");
    assert!(
        s["lastError"]
            .as_str()
            .unwrap()
            .contains("does not match the scheduler-plugin world"),
        "{s}"
    );
    event_message(&kubectl, "pool", "FailedLoad").unwrap();
    run_pod(&kubectl, "still-b", "");
    assert_eq!(bound_node(&kubectl, "still-b", 15), "n2");

    // A new version (here: new config) takes over; the parked pod now fits.
    plugin(
        &kubectl,
        "pool",
        "probe",
        "  config: {requireLabel: pool=a}\n",
    );
    ready(&kubectl, "pool", 3);
    assert_eq!(bound_node(&kubectl, "elsewhere", 30), "n1");
    // Deleting the Plugin unloads it: pods go anywhere again.
    kubectl.ok(&["delete", "plugin", "pool"]);
    run_pod(
        &kubectl,
        "free",
        r#"{"spec":{"nodeSelector":{"pool":"c"}}}"#,
    );
    assert_eq!(bound_node(&kubectl, "free", 15), "n3");
}

/// `skiff plugin push`, checked to succeed; returns its stdout (the manifest URL).
fn push(component_name: &str, reference: &str, registry: &TestRegistry) -> String {
    let out = std::process::Command::new(skiff_binary())
        .args(["plugin", "push", &component(component_name), reference])
        .args(["--insecure-registry", &registry.host])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "skiff plugin push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn oci_plugin(kubectl: &Kubectl, name: &str, reference: &str, extra: &str) {
    kubectl.apply(
        &format!(
            "apiVersion: skiff.dev/v1alpha1\nkind: Plugin\nmetadata:\n  name: {name}\nspec:\n  kind: scheduler\n  component: {{oci: '{reference}'}}\n{extra}"
        ),
        &[],
    );
}

#[test]
fn plugin_components_are_pulled_from_an_oci_registry() {
    let registry = TestRegistry::start().unwrap();
    let v1 = format!("{}/skiff/probe:v1", registry.host);
    let url = push("probe", &v1, &registry);
    assert!(
        url.trim().starts_with(&format!(
            "http://{}/v2/skiff/probe/manifests/sha256:",
            registry.host
        )),
        "{url}"
    );
    let cluster = TestCluster::start_with(&["--insecure-registry", &registry.host]).unwrap();
    let kubectl = cluster.kubectl();
    nodes(&kubectl, &[("n1", "a", ""), ("n2", "b", "")]);

    oci_plugin(&kubectl, "pool", &v1, "  config: {requireLabel: pool=b}\n");
    let pulled = ready(&kubectl, "pool", 1);
    assert_eq!(pulled["conditions"][1]["status"], "True", "{pulled}");
    // The digest is the component's: the same bytes from a file give the same one.
    plugin(
        &kubectl,
        "same",
        "probe",
        "  config: {requireLabel: pool=b}\n",
    );
    assert_eq!(pulled["digest"], ready(&kubectl, "same", 1)["digest"]);
    kubectl.ok(&["delete", "plugin", "same"]);
    run_pod(&kubectl, "p", "");
    assert_eq!(bound_node(&kubectl, "p", 15), "n2");

    // A malformed reference is reported and never retried into success.
    oci_plugin(&kubectl, "malformed", "Not A Reference", "");
    let s = ready(&kubectl, "malformed", 1);
    assert_eq!(s["conditions"][1]["reason"], "LoadFailed", "{s}");
    assert_eq!(
        s["lastError"],
        "spec.component.oci: \"Not A Reference\" is not an OCI reference: invalid reference format"
    );

    // A tag not pushed yet fails with the registry's answer, and loads once it is pushed:
    // registry failures are retried with backoff.
    let v2 = format!("{}/skiff/probe:v2", registry.host);
    oci_plugin(&kubectl, "pool", &v2, "  config: {requireLabel: pool=a}\n");
    let s = ready(&kubectl, "pool", 2);
    let error = s["lastError"].as_str().unwrap();
    assert!(
        error.starts_with(&format!(
            "spec.component.oci: the registry request for {v2} failed"
        )) && error.contains("manifest unknown"),
        "{s}"
    );
    assert_eq!(s["conditions"][1]["reason"], "PreviousVersion", "{s}");
    run_pod(&kubectl, "still-b", "");
    assert_eq!(bound_node(&kubectl, "still-b", 15), "n2");
    push("probe", &v2, &registry);
    // Retries back off (1 s doubling); on a loaded machine the next one may be a while.
    eventually(Duration::from_secs(60), || {
        (status(&kubectl, "pool")["conditions"][0]["status"] == "True").then_some(())
    })
    .expect("the plugin never loaded after its tag was pushed");
    run_pod(&kubectl, "now-a", "");
    assert_eq!(bound_node(&kubectl, "now-a", 15), "n1");

    // Registries not named insecure are spoken to over HTTPS only.
    let server = TestCluster::start().unwrap();
    let strict = server.kubectl();
    oci_plugin(&strict, "tls", &v1, "");
    let s = ready(&strict, "tls", 1);
    let error = s["lastError"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "https://{}/v2/skiff/probe/manifests/v1",
            registry.host
        )),
        "{s}"
    );
}

#[test]
fn sandbox_faults_are_reported_and_scheduling_goes_on_under_the_failure_policy() {
    let cluster = TestCluster::start().unwrap();
    let kubectl = cluster.kubectl();
    nodes(&kubectl, &[("n1", "a", ""), ("n2", "b", "")]);

    // An infinite loop, failure policy Ignore: stopped at its deadline, pods still placed.
    plugin(
        &kubectl,
        "spinner",
        "probe",
        "  config: {fault: loop}\n  failurePolicy: Ignore\n  limits: {timeoutMilliseconds: 50}\n",
    );
    ready(&kubectl, "spinner", 1);
    run_pod(&kubectl, "survivor", "");
    bound_node(&kubectl, "survivor", 15);
    let s = eventually(Duration::from_secs(15), || {
        let s = status(&kubectl, "spinner");
        s["lastError"].is_string().then_some(s)
    })
    .unwrap();
    assert!(
        s["lastError"]
            .as_str()
            .unwrap()
            .contains("ran past its deadline"),
        "{s}"
    );
    assert!(s["failures"].as_i64().unwrap() >= 1);
    event_message(&kubectl, "spinner", "PluginTimeout").unwrap();
    kubectl.ok(&["delete", "plugin", "spinner"]);

    // Unbounded allocation hits the memory cap.
    plugin(
        &kubectl,
        "hog",
        "probe",
        "  config: {fault: alloc}\n  failurePolicy: Ignore\n  limits: {memoryBytes: 16777216, timeoutMilliseconds: 5000}\n",
    );
    ready(&kubectl, "hog", 1);
    run_pod(&kubectl, "after-hog", "");
    bound_node(&kubectl, "after-hog", 15);
    event_message(&kubectl, "hog", "PluginMemoryLimit").unwrap();
    kubectl.ok(&["delete", "plugin", "hog"]);

    // A trap with failure policy Fail: the pod waits, with the plugin named in its event;
    // removing the plugin lets it through.
    plugin(&kubectl, "crasher", "probe", "  config: {fault: trap}\n");
    ready(&kubectl, "crasher", 1);
    run_pod(&kubectl, "blocked", "");
    let message = event_message(&kubectl, "blocked", "FailedScheduling").unwrap();
    assert!(message.contains("running plugin \"crasher\""), "{message}");
    assert!(message.contains("probe plugin asked to trap"), "{message}");
    let s = status(&kubectl, "crasher");
    assert!(s["lastError"].as_str().unwrap().contains("trapped"), "{s}");
    event_message(&kubectl, "crasher", "PluginFailed").unwrap();
    assert_eq!(node_of(&kubectl, "blocked"), None);
    kubectl.ok(&["delete", "plugin", "crasher"]);
    bound_node(&kubectl, "blocked", 30);

    // A config the plugin refuses is a load failure, not a crash.
    plugin(
        &kubectl,
        "picky",
        "probe",
        "  config: {fault: reject-init}\n",
    );
    let s = ready(&kubectl, "picky", 1);
    assert!(
        s["lastError"]
            .as_str()
            .unwrap()
            .contains("refused its configuration"),
        "{s}"
    );
}

#[test]
fn hot_swap_under_load_binds_every_pod_once_and_follows_the_new_version() {
    let cluster = TestCluster::start().unwrap();
    let kubectl = cluster.kubectl();
    let specs: Vec<(String, &str)> = (0..10)
        .map(|i| (format!("n{i}"), if i < 5 { "old" } else { "new" }))
        .collect();
    let specs: Vec<(&str, &str, &str)> = specs.iter().map(|(n, p)| (n.as_str(), *p, "")).collect();
    // Either pool can take every pod: how many the scheduler places before the swap
    // lands depends on the machine's load, and no pod may be left without room.
    nodes_for(&kubectl, &specs, 250);
    plugin(
        &kubectl,
        "lane",
        "probe",
        "  config: {requireLabel: pool=old}\n",
    );
    ready(&kubectl, "lane", 1);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let swapped_at = runtime.block_on(async {
        let client = client(&cluster).await;
        let pods: kube::Api<Pod> = kube::Api::namespaced(client, "default");
        let create = |i: usize| {
            let pods = pods.clone();
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("load-{i:04}")},
                    "spec": {"containers": [{"name": "c", "image": "busybox",
                        "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}}}]}
                }))
                .unwrap();
                pods.create(&PostParams::default(), &pod).await.unwrap();
            }
        };
        use futures::StreamExt;
        futures::stream::iter(0..500)
            .map(create)
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        // Swap while pods are still being created and scheduled.
        let swap = tokio::task::spawn_blocking({
            let kubectl = cluster.kubectl();
            move || {
                plugin(
                    &kubectl,
                    "lane",
                    "probe",
                    "  config: {requireLabel: pool=new}\n",
                );
                ready(&kubectl, "lane", 2);
            }
        });
        futures::stream::iter(500..800)
            .map(create)
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        swap.await.unwrap();
        // Everything created from here on is decided by the new version.
        futures::stream::iter(800..1000)
            .map(create)
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        800
    });

    let pool_of: HashMap<String, &str> = specs
        .iter()
        .map(|(n, p, _)| ((*n).to_owned(), *p))
        .collect();
    // Alone this takes seconds; the bound is wide because on 2 cores the rest of the
    // suite (real containers of the agent tests among it) runs at the same time.
    let bound = eventually(Duration::from_secs(300), || {
        let out = kubectl.ok(&[
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.spec.nodeName}{\"\\n\"}{end}",
        ]);
        let placed: Vec<(String, String)> = out
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(_, n)| !n.is_empty())
            .map(|(p, n)| (p.to_owned(), n.to_owned()))
            .collect();
        (placed.len() == 1000).then_some(placed)
    })
    .expect("all 1000 pods bound");
    for (pod, node) in &bound {
        let i: usize = pod.trim_start_matches("load-").parse().unwrap();
        if i >= swapped_at {
            assert_eq!(
                pool_of[node], "new",
                "{pod} was created after the swap but went to {node}"
            );
        }
    }
    // Exactly one successful binding per pod: one Scheduled event each.
    let scheduled = || {
        runtime.block_on(async {
            let client = client(&cluster).await;
            let events: kube::Api<k8s_openapi::api::core::v1::Event> =
                kube::Api::namespaced(client, "default");
            let list = events
                .list(&ListParams::default().fields("reason=Scheduled"))
                .await
                .unwrap();
            let mut per_pod: HashMap<String, usize> = HashMap::new();
            for e in list.items {
                *per_pod
                    .entry(e.involved_object.name.unwrap_or_default())
                    .or_default() += 1;
            }
            per_pod
        })
    };
    let per_pod = eventually(Duration::from_secs(60), || {
        let per_pod = scheduled();
        (per_pod.len() == 1000).then_some(per_pod)
    })
    .expect("a Scheduled event for every pod");
    // Events written after the count was reached would show a second binding.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(scheduled(), per_pod);
    assert!(per_pod.values().all(|n| *n == 1), "a pod was bound twice");
}
