//! The controllers, end to end through kubectl: namespaces and their ServiceAccounts.

use std::time::Duration;

use skiff_tests::{TestCluster, assert_matches, eventually};

const HELD: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: held
  finalizers: [example.com/hold]
data: {a: b}
";

#[test]
fn a_deleted_namespace_loses_its_content_then_goes() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    k.ok(&["create", "namespace", "doomed"]);
    k.run_stdin(&["-n", "doomed", "apply", "-f", "-"], HELD);
    k.ok(&[
        "-n",
        "doomed",
        "create",
        "configmap",
        "plain",
        "--from-literal=x=y",
    ]);
    k.ok(&[
        "-n",
        "doomed",
        "create",
        "secret",
        "generic",
        "s",
        "--from-literal=x=y",
    ]);
    k.ok(&["delete", "namespace", "doomed", "--wait=false"]);
    assert_matches(&k.ok(&["get", "ns", "doomed"]), r"^doomed +Terminating");
    // A namespace being deleted takes no new objects.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: busybox}]}\n";
    let refused = k.run_stdin(&["-n", "doomed", "create", "-f", "-"], pod);
    assert_matches(&refused.stderr, "because it is being terminated");
    // Everything without a finalizer goes; what holds the namespace is named in its status.
    let held = eventually(Duration::from_secs(20), || {
        let conditions = k.ok(&[
            "get",
            "ns",
            "doomed",
            "-o",
            r#"jsonpath={range .status.conditions[*]}{.type}={.status}: {.message}{"\n"}{end}"#,
        ]);
        let content = k.ok(&["-n", "doomed", "get", "configmaps,secrets", "-o", "name"]);
        (content.trim() == "configmap/held"
            && conditions.contains("NamespaceFinalizersRemaining=True"))
        .then_some(conditions)
    })
    .expect("the namespace's content was not deleted down to the held object");
    assert_matches(
        &held,
        r"NamespaceContentRemaining=True: Some resources are remaining: configmaps\. has 1 resource instances",
    );
    assert_matches(
        &held,
        r"NamespaceFinalizersRemaining=True: Some content in the namespace has finalizers remaining: example\.com/hold in 1 resource instances",
    );
    // Its finalizer removed, the last object goes, and then the namespace.
    k.ok(&[
        "-n",
        "doomed",
        "patch",
        "configmap",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    k.ok(&["wait", "--for=delete", "namespace/doomed", "--timeout=30s"]);
    assert_matches(
        &k.fail(&["get", "ns", "doomed"]),
        r#"namespaces "doomed" not found"#,
    );
    // The name is free again, for a new, empty namespace.
    k.ok(&["create", "namespace", "doomed"]);
    assert_eq!(
        k.ok(&["-n", "doomed", "get", "configmaps", "-o", "name"]),
        ""
    );
}

#[test]
fn every_namespace_gets_a_default_serviceaccount_from_the_server_or_a_controller_manager() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    let has_default = |ns: &str| {
        eventually(Duration::from_secs(20), || {
            k.run(&["-n", ns, "get", "serviceaccount", "default", "-o", "name"])
                .stdout
                .contains("serviceaccount/default")
                .then_some(())
        })
        .is_some()
    };
    for ns in ["default", "kube-system", "kube-public"] {
        assert!(has_default(ns), "no default serviceaccount in {ns}");
    }
    k.ok(&["create", "namespace", "team-a"]);
    assert!(has_default("team-a"));
    // Deleted, it comes back.
    k.ok(&["-n", "team-a", "delete", "serviceaccount", "default"]);
    assert!(has_default("team-a"));

    // The same controller run by `skiff controller-manager`, beside a server that runs
    // every controller but that one.
    let c = TestCluster::start_with(&["--controllers", "*,-serviceaccount-controller"]).unwrap();
    let k = c.kubectl();
    k.ok(&["create", "namespace", "team-b"]);
    assert_eq!(
        k.run(&["-n", "team-b", "get", "serviceaccount", "default"])
            .code,
        1,
        "the server made a default serviceaccount with its controller disabled"
    );
    let mut manager = std::process::Command::new(skiff_tests::skiff_binary())
        .args([
            "controller-manager",
            "--controllers",
            "serviceaccount-controller",
        ])
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let made = eventually(Duration::from_secs(20), || {
        k.run(&[
            "-n",
            "team-b",
            "get",
            "serviceaccount",
            "default",
            "-o",
            "name",
        ])
        .stdout
        .contains("serviceaccount/default")
        .then_some(())
    });
    let _ = manager.kill();
    let _ = manager.wait();
    assert!(
        made.is_some(),
        "skiff controller-manager made no default serviceaccount"
    );
    let bad = std::process::Command::new(skiff_tests::skiff_binary())
        .args(["controller-manager", "--controllers", "*,-nope"])
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert_matches(
        &String::from_utf8_lossy(&bad.stderr),
        r#"unknown controller "nope""#,
    );
}

/// A ConfigMap owned by `owner` (its uid), blocking its owner's foreground deletion.
fn dependent(name: &str, owner_uid: &str, finalizers: &str) -> String {
    format!(
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}
  finalizers: [{finalizers}]
  ownerReferences:
  - {{apiVersion: v1, kind: ConfigMap, name: owner, uid: {owner_uid}, blockOwnerDeletion: true}}
"
    )
}

#[test]
fn cascading_deletes_in_the_background_the_foreground_and_orphaning() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    let gone = |name: &str| {
        eventually(Duration::from_secs(20), || {
            (k.run(&["get", "configmap", name]).code != 0).then_some(())
        })
        .is_some()
    };
    let owner = || {
        k.ok(&["create", "configmap", "owner"]);
        k.ok(&[
            "get",
            "configmap",
            "owner",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
    };

    // Background (kubectl's default): the owner goes at once, its dependents after it.
    let uid = owner();
    k.run_stdin(&["apply", "-f", "-"], &dependent("a", &uid, ""));
    k.run_stdin(&["apply", "-f", "-"], &dependent("b", &uid, ""));
    k.ok(&["delete", "configmap", "owner"]);
    assert!(gone("a") && gone("b"), "background: dependents were left");

    // Foreground: the owner stays, marked, until its blocking dependents are gone.
    let uid = owner();
    k.run_stdin(
        &["apply", "-f", "-"],
        &dependent("c", &uid, "example.com/hold"),
    );
    k.run_stdin(&["apply", "-f", "-"], &dependent("d", &uid, ""));
    k.ok(&[
        "delete",
        "configmap",
        "owner",
        "--cascade=foreground",
        "--wait=false",
    ]);
    assert!(gone("d"), "foreground: a dependent was not deleted");
    let marked = k.ok(&[
        "get",
        "configmap",
        "owner",
        "-o",
        "jsonpath={.metadata.finalizers} {.metadata.deletionTimestamp}",
    ]);
    assert_matches(&marked, r#"^\["foregroundDeletion"\] \d{4}-"#);
    let held = k.ok(&[
        "get",
        "configmap",
        "c",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(!held.is_empty(), "the held dependent was not deleted");
    k.ok(&[
        "patch",
        "configmap",
        "c",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    assert!(gone("c") && gone("owner"), "foreground: the owner stayed");

    // Orphan: the owner goes, its dependents stay without the reference.
    let uid = owner();
    k.run_stdin(&["apply", "-f", "-"], &dependent("e", &uid, ""));
    k.ok(&["delete", "configmap", "owner", "--cascade=orphan"]);
    assert!(gone("owner"));
    let refs = k.ok(&[
        "get",
        "configmap",
        "e",
        "-o",
        "jsonpath={.metadata.ownerReferences}",
    ]);
    assert_eq!(refs, "", "the orphan kept its owner reference");

    // A dependent created with an owner that doesn't exist is collected.
    k.run_stdin(
        &["apply", "-f", "-"],
        &dependent("f", "00000000-0000-0000-0000-000000000000", ""),
    );
    assert!(gone("f"), "a dependent of a missing owner was kept");
    // An object with two owners loses only the missing one.
    let uid = owner();
    let two = format!(
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: g
  ownerReferences:
  - {{apiVersion: v1, kind: ConfigMap, name: owner, uid: {uid}}}
  - {{apiVersion: v1, kind: ConfigMap, name: ghost, uid: 00000000-0000-0000-0000-000000000001}}
"
    );
    k.run_stdin(&["apply", "-f", "-"], &two);
    let kept = eventually(Duration::from_secs(20), || {
        let names = k.ok(&[
            "get",
            "configmap",
            "g",
            "-o",
            "jsonpath={.metadata.ownerReferences[*].name}",
        ]);
        (names == "owner").then_some(())
    });
    assert!(kept.is_some(), "the missing owner's reference stayed");
}

const RS: &str = "apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, tier: front}}
    spec: {containers: [{name: c, image: busybox}]}
";

#[test]
fn replicasets_create_adopt_release_and_delete_pods_to_reach_their_replicas() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    let pods = |selector: &str| -> Vec<String> {
        let out = k.ok(&["get", "pods", "-l", selector, "-o", "name"]);
        out.lines().map(str::to_owned).collect()
    };
    let settle = |selector: &str, n: usize| {
        eventually(Duration::from_secs(20), || {
            (pods(selector).len() == n).then_some(())
        })
        .unwrap_or_else(|| panic!("{selector}: {:?}, not {n}", pods(selector)));
    };
    // An orphan the selector matches is adopted rather than a new pod made for it.
    k.run_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: stray, labels: {app: web}}\nspec: {containers: [{name: c, image: busybox}]}\n",
    );
    k.apply(RS, &[]);
    settle("app=web", 3);
    let owners = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].controller} {end}"#,
    ]);
    assert_eq!(owners.trim(), "web/true web/true web/true");
    assert!(pods("app=web").contains(&"pod/stray".to_owned()));
    let status = eventually(Duration::from_secs(20), || {
        let s = k.ok(&[
            "get",
            "rs",
            "web",
            "-o",
            "jsonpath={.status.replicas} {.status.fullyLabeledReplicas} {.status.observedGeneration}",
        ]);
        // The adopted pod lacks the template's tier label.
        (s == "3 2 1").then_some(())
    });
    assert!(
        status.is_some(),
        "{}",
        k.ok(&["get", "rs", "web", "-o", "yaml"])
    );
    // Scaled down: the extra pods go; scaled up: new ones come.
    k.ok(&["scale", "rs", "web", "--replicas=1"]);
    settle("app=web", 1);
    k.ok(&["scale", "rs", "web", "--replicas=2"]);
    settle("app=web", 2);
    // A pod relabelled out of the selector is released and replaced.
    let first = pods("app=web")[0].clone();
    k.ok(&["label", &first, "app=gone", "--overwrite"]);
    settle("app=web", 2);
    let released = k.ok(&["get", &first, "-o", "jsonpath={.metadata.ownerReferences}"]);
    assert_eq!(released, "", "the released pod kept its controller");
    // A deleted pod is replaced.
    let second = pods("app=web")[0].clone();
    k.ok(&["delete", &second, "--wait=false"]);
    settle("app=web", 2);
    assert!(!pods("app=web").contains(&second));
    // What it did, in its events.
    let described = k.ok(&["describe", "rs", "web"]);
    assert_matches(&described, r"SuccessfulCreate .*Created pod: web-");
    assert_matches(&described, r"SuccessfulDelete .*Deleted pod: ");
    // Deleting it deletes its pods (the garbage collector), but not the released one.
    k.ok(&["delete", "rs", "web"]);
    settle("app=web", 0);
    assert_eq!(pods("app=gone").len(), 1);
}

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  replicas: 2
  progressDeadlineSeconds: 3
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec: {containers: [{name: c, image: busybox:1}]}
";

/// Without a node no pod becomes ready: what the deployment controller does about
/// templates, pauses and deadlines shows in its ReplicaSets and conditions.
#[test]
fn deployments_pause_restart_recreate_and_report_a_missed_progress_deadline() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    let sets = || {
        k.ok(&["get", "rs", "-l", "app=app", "-o", "jsonpath={range .items[*]}{.spec.template.spec.containers[0].image}={.spec.replicas} {end}"])
    };
    k.apply(DEPLOY, &[]);
    assert!(
        eventually(Duration::from_secs(20), || (sets().trim() == "busybox:1=2")
            .then_some(()))
        .is_some(),
        "{}",
        sets()
    );
    // No pod gets ready: the rollout misses its deadline, and rollout status says so.
    let status = k.run(&["rollout", "status", "deployment/app", "--timeout=30s"]);
    assert_ne!(status.code, 0);
    assert_matches(
        &status.stderr,
        r#"deployment "app" exceeded its progress deadline"#,
    );
    let reason = k.ok(&[
        "get",
        "deploy",
        "app",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Progressing")].reason}"#,
    ]);
    assert_eq!(reason, "ProgressDeadlineExceeded");
    assert_matches(
        &k.ok(&["describe", "deploy", "app"]),
        r"ProgressDeadlineExceeded",
    );

    // Paused, a new template waits; resumed, it rolls out.
    k.ok(&["rollout", "pause", "deployment/app"]);
    k.ok(&["set", "image", "deployment/app", "c=busybox:2"]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sets().trim(), "busybox:1=2");
    let paused = k.ok(&[
        "get",
        "deploy",
        "app",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Progressing")].reason}"#,
    ]);
    assert_eq!(paused, "DeploymentPaused");
    k.ok(&["rollout", "resume", "deployment/app"]);
    assert!(
        eventually(Duration::from_secs(20), || sets()
            .contains("busybox:2=")
            .then_some(()))
        .is_some(),
        "{}",
        sets()
    );
    // A restart is a new template too (an annotation on it).
    k.ok(&["rollout", "restart", "deployment/app"]);
    assert!(
        eventually(Duration::from_secs(20), || {
            let annotated = k.ok(&[
                "get",
                "rs",
                "-l",
                "app=app",
                "-o",
                "jsonpath={.items[*].spec.template.metadata.annotations}",
            ]);
            annotated
                .contains("kubectl.kubernetes.io/restartedAt")
                .then_some(())
        })
        .is_some()
    );

    // Recreate: every old ReplicaSet at zero before the new one has pods.
    k.ok(&[
        "patch",
        "deployment/app",
        "--type=merge",
        "-p",
        r#"{"spec":{"strategy":{"type":"Recreate","rollingUpdate":null}}}"#,
    ]);
    k.ok(&["set", "image", "deployment/app", "c=busybox:3"]);
    let recreated = eventually(Duration::from_secs(20), || {
        let now = sets();
        let sizes: Vec<(&str, i32)> = now
            .split_whitespace()
            .filter_map(|s| s.split_once('='))
            .map(|(i, n)| (i, n.parse().unwrap_or(-1)))
            .collect();
        (sizes.iter().any(|(i, n)| *i == "busybox:3" && *n == 2)
            && sizes
                .iter()
                .filter(|(i, _)| *i != "busybox:3")
                .all(|(_, n)| *n == 0))
        .then_some(())
    });
    assert!(recreated.is_some(), "{}", sets());
    let images = || {
        k.ok(&[
            "get",
            "pods",
            "-l",
            "app=app",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ])
    };
    assert!(
        eventually(Duration::from_secs(20), || {
            (images().trim() == "busybox:3 busybox:3").then_some(())
        })
        .is_some(),
        "{}",
        images()
    );
}

const DS: &str = "apiVersion: apps/v1
kind: DaemonSet
metadata: {name: logger}
spec:
  selector: {matchLabels: {app: logger}}
  template:
    metadata: {labels: {app: logger}}
    spec:
      nodeSelector: {pool: a}
      containers: [{name: c, image: busybox:1}]
";

/// Simulated nodes (no agent): where the DaemonSet's pods go, and its revisions.
#[test]
fn daemonsets_follow_nodes_their_selector_and_taints_and_roll_back_by_revision() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    for (name, pool) in [("n1", "a"), ("n2", "a"), ("n3", "b")] {
        k.apply(
            &format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{pool: {pool}}}}}\nstatus:\n  allocatable: {{cpu: '4', memory: 8Gi, pods: '20'}}\n"
            ),
            &[],
        );
    }
    k.apply(DS, &[]);
    // Each pod is pinned to its node by name, and tolerates what daemons tolerate. (With
    // no agent, deleted pods stay, terminating, and are left out.)
    let placed = || {
        let mut v: Vec<String> = k
            .live_pods("app=logger")
            .iter()
            .map(|p| {
                let terms = &p["spec"]["affinity"]["nodeAffinity"]
                    ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
                let node = terms[0]["matchFields"][0]["values"][0].as_str().unwrap();
                let image = p["spec"]["containers"][0]["image"].as_str().unwrap();
                format!("{node}={image}")
            })
            .collect();
        v.sort();
        v.join(" ")
    };
    let settle = |want: &str| {
        eventually(Duration::from_secs(20), || (placed() == want).then_some(()))
            .unwrap_or_else(|| panic!("pods on {}, not {want}", placed()));
    };
    settle("n1=busybox:1 n2=busybox:1");
    let tolerations = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=logger",
        "-o",
        "jsonpath={.items[0].spec.tolerations[*].key}",
    ]);
    assert_matches(&tolerations, "node.kubernetes.io/unschedulable");
    assert_matches(&tolerations, "node.kubernetes.io/unreachable");
    let counts = || {
        k.ok(&[
            "get",
            "ds",
            "logger",
            "-o",
            "jsonpath={.status.desiredNumberScheduled}/{.status.currentNumberScheduled}/{.status.updatedNumberScheduled}/{.status.numberMisscheduled}",
        ])
    };
    assert!(
        eventually(Duration::from_secs(20), || (counts() == "2/2/2/0")
            .then_some(()))
        .is_some(),
        "{}",
        counts()
    );
    assert_matches(
        &k.ok(&["get", "ds", "logger"]),
        r"(?m)^logger +2 +2 +0 +2 +0 +pool=a +",
    );
    // A node that comes to match gets one; a NoExecute taint and a node leaving take
    // theirs away; a cordon leaves it.
    k.ok(&["label", "node", "n3", "pool=a", "--overwrite"]);
    settle("n1=busybox:1 n2=busybox:1 n3=busybox:1");
    k.ok(&["cordon", "n3"]);
    k.ok(&["taint", "node", "n2", "dedicated=db:NoExecute"]);
    settle("n1=busybox:1 n3=busybox:1");
    k.ok(&["delete", "node", "n1"]);
    settle("n3=busybox:1");

    // A new image rolls out as revision 2; undo brings back revision 1's as revision 3.
    k.ok(&["taint", "node", "n2", "dedicated-"]);
    settle("n2=busybox:1 n3=busybox:1");
    k.ok(&["set", "image", "ds/logger", "c=busybox:2"]);
    settle("n2=busybox:2 n3=busybox:2");
    let history = k.ok(&["rollout", "history", "ds/logger"]);
    assert_matches(&history, r"(?m)^1 +");
    assert_matches(&history, r"(?m)^2 +");
    assert_matches(
        &k.ok(&["rollout", "history", "ds/logger", "--revision=1"]),
        r"Image:\s+busybox:1",
    );
    assert_matches(&k.ok(&["rollout", "undo", "ds/logger"]), "rolled back");
    settle("n2=busybox:1 n3=busybox:1");
    let revisions = k.ok(&[
        "get",
        "controllerrevisions",
        "-l",
        "app=logger",
        "-o",
        "jsonpath={range .items[*]}{.revision} {end}",
    ]);
    let mut revisions: Vec<&str> = revisions.split_whitespace().collect();
    revisions.sort();
    assert_eq!(revisions, ["2", "3"]);
    // OnDelete: a new template waits for the pods to be deleted.
    k.ok(&[
        "patch",
        "ds/logger",
        "-p",
        r#"{"spec":{"updateStrategy":{"type":"OnDelete","rollingUpdate":null}}}"#,
    ]);
    k.ok(&["set", "image", "ds/logger", "c=busybox:3"]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(placed(), "n2=busybox:1 n3=busybox:1");
    k.ok(&["delete", "pods", "-l", "app=logger", "--wait=false"]);
    settle("n2=busybox:3 n3=busybox:3");
}

const STS: &str = "apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 3
  podManagementPolicy: Parallel
  updateStrategy: {type: OnDelete}
  persistentVolumeClaimRetentionPolicy: {whenScaled: Delete, whenDeleted: Retain}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: busybox:1}]}
  volumeClaimTemplates:
  - metadata: {name: www}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
";

/// No node: pods are made and deleted but never run. What shows is their identity, their
/// claims, the order rules and the revisions.
#[test]
fn statefulsets_give_pods_stable_names_and_claims_in_order() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    let names = |what: &str, selector: &str| {
        let out = k.ok(&[
            "get",
            what,
            "-l",
            selector,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {end}",
        ]);
        let mut v: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
        v.sort();
        v.join(" ")
    };
    let settle = |what: &str, selector: &str, want: &str| {
        eventually(Duration::from_secs(20), || {
            (names(what, selector) == want).then_some(())
        })
        .unwrap_or_else(|| panic!("{what}: {}, not {want}", names(what, selector)));
    };
    k.apply(STS, &[]);
    settle("pods", "app=web", "web-0 web-1 web-2");
    settle("pvc", "app=web", "www-web-0 www-web-1 www-web-2");
    let identity = k.ok(&[
        "get",
        "pod",
        "web-1",
        "-o",
        "jsonpath={.spec.hostname}.{.spec.subdomain} {.metadata.labels.statefulset\\.kubernetes\\.io/pod-name} {.metadata.labels.apps\\.kubernetes\\.io/pod-index} {.spec.volumes[?(@.name==\"www\")].persistentVolumeClaim.claimName}",
    ]);
    assert_eq!(identity, "web-1.web web-1 1 www-web-1");
    let revision = k.ok(&[
        "get",
        "sts",
        "web",
        "-o",
        "jsonpath={.status.updateRevision}",
    ]);
    assert_matches(&revision, r"^web-\w+$");
    assert_eq!(
        k.ok(&[
            "get",
            "pod",
            "web-0",
            "-o",
            "jsonpath={.metadata.labels.controller-revision-hash}"
        ]),
        revision
    );
    // Scaled down: the highest go, and their claims with them (whenScaled: Delete).
    k.ok(&["scale", "sts", "web", "--replicas=1"]);
    settle("pods", "app=web", "web-0");
    settle("pvc", "app=web", "www-web-0");
    // OnDelete: a new template reaches a pod only when the pod is deleted.
    k.ok(&["set", "image", "sts/web", "c=busybox:2"]);
    let image = || {
        k.ok(&[
            "get",
            "pod",
            "web-0",
            "-o",
            "jsonpath={.spec.containers[0].image}",
        ])
    };
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(image(), "busybox:1");
    k.ok(&["delete", "pod", "web-0", "--wait=false"]);
    assert!(
        eventually(Duration::from_secs(20), || (image() == "busybox:2")
            .then_some(()))
        .is_some(),
        "web-0 runs {}",
        image()
    );
    let history = k.ok(&["rollout", "history", "sts/web"]);
    assert_matches(&history, r"(?m)^1 +");
    assert_matches(&history, r"(?m)^2 +");
    assert_matches(
        &k.ok(&["describe", "sts", "web"]),
        r"SuccessfulCreate .*create Claim www-web-0 Pod web-0 in StatefulSet web success",
    );

    // OrderedReady: web-0 never gets ready here, so nothing after it is made.
    k.apply(
        &STS.replace("name: web}", "name: ordered}")
            .replace(
                "podManagementPolicy: Parallel",
                "podManagementPolicy: OrderedReady",
            )
            .replace("app: web", "app: ordered"),
        &[],
    );
    settle("pods", "app=ordered", "ordered-0");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(names("pods", "app=ordered"), "ordered-0");
}

fn node_with_heartbeat(name: &str) -> String {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ");
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nstatus:\n  allocatable: {{cpu: '4', memory: 8Gi, pods: '20'}}\n  conditions: [{{type: Ready, status: 'True', reason: KubeletReady, lastHeartbeatTime: '{now}', lastTransitionTime: '{now}'}}]\n"
    )
}

/// A simulated node that stops heartbeating: Unknown after the grace period, tainted, and
/// its pods evicted as their tolerations say; a heartbeat brings it back.
#[test]
fn silent_nodes_go_unknown_are_tainted_and_lose_pods_whose_tolerations_run_out() {
    let c = TestCluster::start_with(&["--node-monitor-grace-period", "3s"]).unwrap();
    let k = c.kubectl();
    k.apply(&node_with_heartbeat("n1"), &[]);
    let pod = |name: &str, tolerations: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: n1\n  tolerations: {tolerations}\n  containers: [{{name: c, image: busybox}}]\n"
        )
    };
    k.apply(
        &pod(
            "brief",
            "[{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 1}]",
        ),
        &[],
    );
    k.apply(&pod("patient", "[]"), &[]);
    k.apply(&pod("stubborn", "[{operator: Exists}]"), &[]);
    let ready = || {
        k.ok(&[
            "get",
            "node",
            "n1",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
    };
    let taints = || {
        k.ok(&[
            "get",
            "node",
            "n1",
            "-o",
            "jsonpath={range .spec.taints[*]}{.key}:{.effect} {end}",
        ])
    };
    assert!(
        eventually(Duration::from_secs(20), || (ready() == "Unknown")
            .then_some(()))
        .is_some(),
        "n1 is still {}",
        ready()
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            (taints()
                == "node.kubernetes.io/unreachable:NoSchedule node.kubernetes.io/unreachable:NoExecute ")
                .then_some(())
        })
        .is_some(),
        "{}",
        taints()
    );
    assert_matches(&k.ok(&["get", "node", "n1"]), r"(?m)^n1 +NotReady +");
    let deleting = |name: &str| {
        k.ok(&[
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ])
    };
    assert!(
        eventually(Duration::from_secs(10), || (!deleting("brief").is_empty())
            .then_some(()))
        .is_some(),
        "brief was not evicted"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "pod",
            "brief",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"DisruptionTarget\")].reason}",
        ]),
        "DeletionByTaintManager"
    );
    assert_matches(
        &k.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=brief",
        ]),
        "TaintManagerEviction +pod/brief +Marking for deletion Pod default/brief",
    );
    assert_eq!(deleting("patient"), "", "patient tolerates 300 s");
    assert_eq!(deleting("stubborn"), "");

    // A cordon is a taint too; a heartbeat brings the node back, and the unreachable
    // taints go (the heartbeat goes stale again after the grace period: checked at once).
    k.ok(&["cordon", "n1"]);
    let cordoned = "node.kubernetes.io/unreachable:NoSchedule node.kubernetes.io/unreachable:NoExecute node.kubernetes.io/unschedulable:NoSchedule ";
    assert!(
        eventually(Duration::from_secs(10), || (taints() == cordoned)
            .then_some(()))
        .is_some(),
        "{}",
        taints()
    );
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    k.ok(&[
        "patch",
        "node",
        "n1",
        "--subresource=status",
        "--type=strategic",
        "-p",
        &format!(r#"{{"status":{{"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","lastHeartbeatTime":"{now}"}}]}}}}"#),
    ]);
    assert!(
        eventually(Duration::from_secs(3), || {
            (taints() == "node.kubernetes.io/unschedulable:NoSchedule ").then_some(())
        })
        .is_some(),
        "{}",
        taints()
    );
}
