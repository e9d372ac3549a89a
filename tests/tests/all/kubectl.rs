//! The real kubectl (1.32) against a real skiff server: the commands of the acceptance
//! table that need only the API.

use std::time::Duration;

use skiff_tests::{TestCluster, assert_matches, assert_no_warnings, eventually};

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web-pod
  labels: {app: web, tier: frontend}
spec:
  containers:
  - name: nginx
    image: nginx:1.25
    ports: [{containerPort: 80}]
";

const NODE: &str = "apiVersion: v1
kind: Node
metadata:
  name: acc-node
  labels: {node-role.kubernetes.io/worker: \"\"}
";

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        ports: [{containerPort: 80}]
";

#[test]
fn version_discovery_and_cluster_info() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    assert_matches(&k.ok(&["version"]), r"^Server Version: v1\.32\.");
    let resources = k.ok(&["api-resources"]);
    assert_matches(&resources, r"^pods +po +v1 +true +Pod");
    assert_matches(
        &resources,
        r"^deployments +deploy +apps/v1 +true +Deployment",
    );
    assert_matches(
        &resources,
        r"^customresourcedefinitions +crd,crds +apiextensions\.k8s\.io/v1 +false",
    );
    assert_matches(
        &k.ok(&["api-resources", "-o", "wide"]),
        "create,delete,deletecollection,get,list,patch,update,watch",
    );
    let versions = k.ok(&["api-versions"]);
    for gv in [
        "apps/v1",
        "batch/v1",
        "autoscaling/v2",
        "rbac.authorization.k8s.io/v1",
        "coordination.k8s.io/v1",
    ] {
        assert_matches(&versions, &format!("^{}$", regex::escape(gv)));
    }
    assert_matches(
        &k.ok(&["cluster-info"]),
        "Kubernetes control plane is running at",
    );
    // The built-in namespaces and the kubernetes Service exist from the start.
    let ns = k.ok(&["get", "namespaces"]);
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert_matches(&ns, &format!(r"^{n} +Active +\d+s"));
    }
    assert_matches(
        &k.ok(&["get", "svc", "kubernetes"]),
        r"^kubernetes +ClusterIP +10\.96\.0\.1 +<none> +443/TCP +",
    );
    assert_matches(
        &k.ok(&["get", "priorityclasses"]),
        r"^system-node-critical +2000001000 ",
    );
    assert_matches(
        &k.fail(&["get", "frobnicators"]),
        "doesn't have a resource type",
    );
}

#[test]
fn pods_are_created_listed_selected_and_shown_like_kubernetes() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    k.ok(&["create", "namespace", "acc"]);
    assert_matches(&k.apply(NODE, &[]), "node/acc-node created");
    let first = k.run_stdin(&["-n", "acc", "create", "-f", "-"], POD);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_matches(&first.stdout, "pod/web-pod created");
    let again = k.run_stdin(&["-n", "acc", "create", "-f", "-"], POD);
    assert_eq!(again.code, 1);
    assert_matches(&again.stderr, "AlreadyExists");
    let table = k.ok(&["-n", "acc", "get", "pods"]);
    assert_matches(&table, r"^NAME +READY +STATUS +RESTARTS +AGE");
    assert_matches(&table, r"^web-pod +0/1 +Pending +0 +[0-9]+[smhd]");
    assert_matches(
        &k.ok(&["-n", "acc", "get", "pods", "-o", "wide"]),
        r"IP +NODE +NOMINATED NODE +READINESS GATES",
    );
    assert_matches(
        &k.ok(&["-n", "acc", "get", "pod", "web-pod", "-o", "yaml"]),
        "^kind: Pod$",
    );
    assert_matches(
        &k.ok(&["-n", "acc", "get", "pod", "web-pod", "-o", "json"]),
        r#""kind": "Pod""#,
    );
    assert_matches(
        &k.ok(&["-n", "acc", "get", "pods", "-o", "json"]),
        r#""kind": "List""#,
    );
    assert_matches(
        &k.ok(&["-n", "acc", "get", "pods", "-o", "name"]),
        "^pod/web-pod$",
    );
    assert_matches(
        &k.ok(&[
            "-n",
            "acc",
            "get",
            "pods",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ]),
        "^web-pod$",
    );
    // Server defaults the kubelet and describe rely on.
    let yaml = k.ok(&["-n", "acc", "get", "pod", "web-pod", "-o", "yaml"]);
    for line in [
        "protocol: TCP",
        "imagePullPolicy: IfNotPresent",
        "restartPolicy: Always",
        "dnsPolicy: ClusterFirst",
        "schedulerName: default-scheduler",
        "terminationGracePeriodSeconds: 30",
        "serviceAccountName: default",
        "phase: Pending",
        "qosClass: BestEffort",
    ] {
        assert!(yaml.contains(line), "missing {line:?} in:\n{yaml}");
    }
    assert_matches(
        &k.ok(&["-n", "acc", "get", "pods", "-l", "app=web"]),
        "web-pod",
    );
    assert_matches(
        &k.ok(&[
            "-n",
            "acc",
            "get",
            "pods",
            "-l",
            "app in (web,db),tier!=backend",
        ]),
        "web-pod",
    );
    let none = k.run(&["-n", "acc", "get", "pods", "-l", "app=nope"]);
    assert_matches(&none.stderr, "No resources found in acc namespace.");
    assert_matches(
        &k.ok(&[
            "-n",
            "acc",
            "get",
            "pods",
            "--field-selector",
            "status.phase=Pending",
        ]),
        "web-pod",
    );
    assert_matches(
        &k.ok(&[
            "-n",
            "acc",
            "get",
            "pods",
            "--field-selector",
            "metadata.name=web-pod",
        ]),
        "web-pod",
    );
    assert_matches(
        &k.fail(&[
            "-n",
            "acc",
            "get",
            "pods",
            "--field-selector",
            "spec.bogus=x",
        ]),
        "field label not supported",
    );
    let all = k.ok(&["get", "pods", "-A"]);
    assert_matches(&all, r"^NAMESPACE +NAME +READY +STATUS");
    assert_matches(&all, r"^acc +web-pod +0/1 +Pending");
    assert_matches(
        &k.ok(&["-n", "acc", "get", "pods", "--show-labels"]),
        "app=web,tier=frontend",
    );
    assert_matches(
        &k.ok(&["-n", "acc", "get", "pods", "-L", "app"]),
        r"AGE +APP",
    );
    assert_matches(
        &k.ok(&["-n", "acc", "get", "pods", "--sort-by=.metadata.name"]),
        "web-pod",
    );
    assert_matches(
        &k.ok(&["-n", "acc", "get", "pods", "--chunk-size=1"]),
        "web-pod",
    );
    assert_matches(
        &k.fail(&["-n", "acc", "get", "pod", "nope"]),
        r#"Error from server \(NotFound\): pods "nope" not found"#,
    );
    let nodes = k.ok(&["get", "nodes"]);
    assert_matches(&nodes, r"^acc-node +Unknown +worker +[0-9]+[smhd]");
    assert_matches(
        &k.ok(&["get", "nodes", "-o", "wide"]),
        r"INTERNAL-IP +EXTERNAL-IP +OS-IMAGE",
    );
    let described = k.ok(&["-n", "acc", "describe", "pod", "web-pod"]);
    assert_matches(&described, r"^Name: +web-pod");
    assert_matches(&described, "^Containers:");
    assert_matches(&described, r"Port: +80/TCP");
}

#[test]
fn watch_shows_changes_without_warnings() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    k.run_stdin(&["create", "-f", "-"], POD);
    let watcher = {
        let k = k.clone();
        std::thread::spawn(move || k.run(&["get", "pods", "-w", "--request-timeout=6s"]))
    };
    std::thread::sleep(Duration::from_millis(1500));
    k.ok(&["label", "pod", "web-pod", "watched=yes"]);
    k.ok(&["label", "pod", "web-pod", "again=yes"]);
    let run = watcher.join().unwrap();
    assert_matches(&run.stdout, r"^NAME +READY +STATUS +RESTARTS +AGE");
    let rows = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("web-pod"))
        .count();
    assert!(
        rows >= 3,
        "expected the initial row and one per change:\n{}",
        run.stdout
    );
    assert!(!run.stderr.contains("very short watch"), "{}", run.stderr);
    // A single object: the synthetic ADDED is swallowed and changes follow.
    let one = {
        let k = k.clone();
        std::thread::spawn(move || k.run(&["get", "pod", "web-pod", "-w", "--request-timeout=4s"]))
    };
    std::thread::sleep(Duration::from_millis(1500));
    k.ok(&["annotate", "pod", "web-pod", "x=1"]);
    let run = one.join().unwrap();
    assert!(
        run.stdout
            .lines()
            .filter(|l| l.starts_with("web-pod"))
            .count()
            >= 2,
        "{}",
        run.stdout
    );
}

#[test]
fn label_annotate_and_patch_types() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    k.run_stdin(&["create", "-f", "-"], POD);
    assert_matches(&k.ok(&["label", "pod", "web-pod", "env=prod"]), "labeled");
    assert_matches(
        &k.ok(&["label", "pod", "web-pod", "env=dev", "--overwrite"]),
        "labeled",
    );
    assert_matches(
        &k.fail(&["label", "pod", "web-pod", "env=qa"]),
        "already has a value",
    );
    assert_matches(&k.ok(&["label", "pod", "web-pod", "env-"]), "unlabeled");
    assert_matches(
        &k.ok(&["annotate", "pod", "web-pod", "note=hello world"]),
        "annotated",
    );
    assert_eq!(
        k.ok(&[
            "get",
            "pod",
            "web-pod",
            "-o",
            "jsonpath={.metadata.annotations.note}"
        ]),
        "hello world"
    );
    k.apply(DEPLOY, &[]);
    assert_matches(
        &k.ok(&["patch", "deploy", "web", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.27"}]}}}}"#]),
        "patched",
    );
    let ports = k.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].ports[0].containerPort}",
    ]);
    assert_eq!(
        ports, "80",
        "strategic merge kept the port of the merged container"
    );
    let merge = [
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"x":"y"}}}"#,
    ];
    assert_matches(&k.ok(&merge), r"patched$");
    assert_matches(&k.ok(&merge), r"patched \(no change\)");
    assert_matches(
        &k.ok(&[
            "patch",
            "deploy",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/replicas","value":3}]"#,
        ]),
        "patched",
    );
    let bad = k.fail(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/nope/x","value":1}]"#,
    ]);
    assert_matches(&bad, "(?i)invalid");
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "3"
    );
}

#[test]
fn apply_edit_replace_scale_and_server_side_apply() {
    // The API's own behaviour: no deployment controller writing statuses meanwhile.
    let c = TestCluster::start_with(&["--controllers", "*,-deployment-controller"]).unwrap();
    let k = c.kubectl();
    assert_matches(&k.apply(DEPLOY, &[]), "deployment.apps/web created");
    assert_matches(&k.apply(DEPLOY, &[]), "deployment.apps/web unchanged");
    let v2 = DEPLOY.replace("nginx:1.25", "nginx:1.26");
    assert_matches(&k.apply(&v2, &[]), "deployment.apps/web configured");
    assert_matches(&k.ok(&["get", "deploy", "web"]), r"^web +0/2 +0 +0 +");
    assert_matches(
        &k.ok(&["get", "deploy", "web", "-o", "wide"]),
        r"CONTAINERS +IMAGES +SELECTOR",
    );
    // generation bumps on spec changes only.
    let generation = || {
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.generation}",
        ])
    };
    assert_eq!(generation(), "2");
    k.ok(&["label", "deploy", "web", "touched=yes"]);
    assert_eq!(generation(), "2");
    assert_matches(
        &k.ok(&["scale", "deployment", "web", "--replicas=3"]),
        "scaled",
    );
    assert_eq!(generation(), "3");
    assert_matches(
        &k.ok(&[
            "scale",
            "deployment",
            "web",
            "--replicas=2",
            "--current-replicas=3",
        ]),
        "scaled",
    );
    assert_matches(
        &k.fail(&[
            "scale",
            "deployment",
            "web",
            "--replicas=2",
            "--current-replicas=5",
        ]),
        "Expected replicas to be 5",
    );
    // Edit through a scripted editor; a status change in the edit is ignored.
    let edit = k.run_env(
        &["edit", "deploy/web"],
        &[(
            "EDITOR",
            "sed -i -e s/replicas:\\ 2/replicas:\\ 4/ -e s/^status:.*/status:\\ {replicas:\\ 99}/",
        )],
    );
    assert_eq!(edit.code, 0, "{}", edit.stderr);
    assert_matches(&edit.stdout, "edited");
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "4"
    );
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.status.replicas}"]),
        ""
    );
    let cancelled = k.run_env(&["edit", "deploy/web"], &[("EDITOR", "true")]);
    assert_matches(
        &format!("{}{}", cancelled.stdout, cancelled.stderr),
        "Edit cancelled, no changes made",
    );
    // replace
    let mut yaml = k.ok(&["get", "deploy", "web", "-o", "yaml"]);
    yaml = yaml.replace("replicas: 4", "replicas: 1");
    let replaced = k.run_stdin(&["replace", "-f", "-"], &yaml);
    assert_eq!(replaced.code, 0, "{}", replaced.stderr);
    assert_matches(&replaced.stdout, "replaced");
    // A stale resourceVersion conflicts.
    let stale = k.run_stdin(&["replace", "-f", "-"], &yaml);
    assert_matches(&stale.stderr, "Conflict");
    // Server-side apply: created, conflicting with the client-side owner, forced.
    let ssa = DEPLOY.replace("name: web\n", "name: web-ssa\n");
    assert_matches(&k.apply(&ssa, &["--server-side"]), "serverside-applied");
    let conflict = k.run_stdin(
        &["apply", "--server-side", "-f", "-"],
        &v2.replace("replicas: 2", "replicas: 5"),
    );
    assert_eq!(conflict.code, 1);
    assert_matches(
        &conflict.stderr,
        r#"conflict with "kubectl-(client-side-apply|edit|replace)" using apps/v1: \.spec\.replicas"#,
    );
    assert_matches(
        &k.apply(
            &v2.replace("replicas: 2", "replicas: 5"),
            &["--server-side", "--force-conflicts"],
        ),
        "serverside-applied",
    );
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "5"
    );
    let owners = k.ok(&[
        "get",
        "deploy",
        "web",
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    assert!(owners.contains("kubectl"), "{owners}");
}

#[test]
fn explain_uses_the_openapi_documents() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    assert_matches(&k.ok(&["explain", "pods"]), r"^KIND: +Pod");
    assert_matches(
        &k.ok(&["explain", "pods.spec.containers"]),
        r"^FIELD: +containers",
    );
    assert_matches(
        &k.ok(&["explain", "deployment.spec.strategy"]),
        "RollingUpdate",
    );
    assert_matches(
        &k.ok(&["explain", "cronjobs.spec.jobTemplate"]),
        r"^FIELD: +jobTemplate",
    );
}

#[test]
fn configmaps_deletes_and_dry_runs() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: \"1\", b: \"2\"}\n";
    let created = k.run_stdin(&["create", "-f", "-"], cm);
    assert_matches(&created.stdout, "created");
    assert_matches(&k.ok(&["get", "cm", "cfg"]), r"^cfg +2 +");
    assert_matches(
        &k.ok(&["delete", "configmap", "cfg"]),
        r#"configmap "cfg" deleted"#,
    );
    k.apply(DEPLOY, &[]);
    assert_matches(
        &k.ok(&["delete", "deploy", "web", "--dry-run=server"]),
        r"deleted \(server dry run\)",
    );
    assert_matches(&k.ok(&["get", "deploy", "web"]), "^web ");
    k.run_stdin(&["create", "-f", "-"], POD);
    assert_matches(
        &k.ok(&["delete", "pod", "web-pod"]),
        r#"pod "web-pod" deleted"#,
    );
    assert_matches(&k.fail(&["delete", "pod", "web-pod"]), "NotFound");
    assert_eq!(
        k.ok(&["delete", "pod", "web-pod", "--ignore-not-found"]),
        ""
    );
    k.apply(NODE, &[]);
    assert_matches(&k.ok(&["delete", "node", "acc-node"]), "deleted");
}

#[test]
fn validation_errors_name_the_field() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    let no_containers =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec: {containers: []}\n";
    let run = k.run_stdin(&["create", "-f", "-"], no_containers);
    assert_matches(
        &run.stderr,
        r#"Pod "bad" is invalid: spec\.containers: Required value"#,
    );
    let bad_name = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n";
    let run = k.run_stdin(&["create", "-f", "-"], bad_name);
    assert_matches(
        &run.stderr,
        r#"metadata\.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain"#,
    );
    let bad_label = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok, labels: {\"a b\": c}}\n";
    let run = k.run_stdin(&["create", "-f", "-"], bad_label);
    assert_matches(&run.stderr, r#"metadata\.labels: Invalid value: "a b""#);
    let unknown = DEPLOY.replace("  replicas: 2\n", "  replicas: 2\n  replicaz: 3\n");
    let run = k.run_stdin(&["create", "-f", "-"], &unknown);
    assert_ne!(run.code, 0);
    assert_matches(&run.stderr, r#"unknown field "spec\.replicaz""#);
    let missing_ns = k.run_stdin(&["-n", "nowhere", "create", "-f", "-"], POD);
    assert_matches(&missing_ns.stderr, r#"namespaces "nowhere" not found"#);
    // A body over 3 MiB is refused whole.
    let big = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata: {{blob: \"{}\"}}\n",
        "x".repeat(3 * 1024 * 1024 + 10)
    );
    let run = k.run_stdin(&["create", "-f", "-"], &big);
    assert_ne!(run.code, 0);
    assert_matches(
        &run.stderr,
        "(?i)larger than the limit|too large|RequestEntityTooLarge",
    );
}

#[test]
fn custom_resources_are_served_as_soon_as_their_crd_exists() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    let crd = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: crontabs.stable.example.com}
spec:
  group: stable.example.com
  scope: Namespaced
  names: {plural: crontabs, singular: crontab, kind: CronTab, shortNames: [ct]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              cronSpec: {type: string}
              replicas: {type: integer, minimum: 1, maximum: 10}
          status:
            type: object
            properties:
              replicas: {type: integer}
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns:
    - {name: Spec, type: string, jsonPath: .spec.cronSpec}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
"#;
    let cluster_crd = crd
        .replace("crontabs.stable", "backups.ops")
        .replace("group: stable.example.com", "group: ops.example.com")
        .replace(
            "plural: crontabs, singular: crontab, kind: CronTab, shortNames: [ct]",
            "plural: backups, kind: Backup",
        )
        .replace("scope: Namespaced", "scope: Cluster");
    k.apply(crd, &[]);
    k.apply(&cluster_crd, &[]);
    let ct = "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: nightly}\nspec: {cronSpec: \"0 3 * * *\", replicas: 2}\n";
    assert_matches(
        &k.apply(ct, &[]),
        "crontab.stable.example.com/nightly created",
    );
    assert_matches(&k.ok(&["get", "ct"]), r"^nightly +0 3 \* \* \* +2 +[0-9]+s");
    assert_matches(&k.apply("apiVersion: ops.example.com/v1\nkind: Backup\nmetadata: {name: b1}\nspec: {cronSpec: x}\n", &[]), "created");
    assert_matches(&k.ok(&["get", "backups"]), "^b1 ");
    assert_matches(&k.ok(&["scale", "ct", "nightly", "--replicas=4"]), "scaled");
    assert_eq!(
        k.ok(&["get", "ct", "nightly", "-o", "jsonpath={.spec.replicas}"]),
        "4"
    );
    let invalid = k.run(&[
        "patch",
        "ct",
        "nightly",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":50}}"#,
    ]);
    assert_matches(
        &invalid.stderr,
        r"spec\.replicas: Invalid value: 50: spec\.replicas in body should be less than or equal to 10",
    );
    assert_matches(&k.ok(&["explain", "crontab.spec"]), "cronSpec");
    assert_matches(
        &k.ok(&["delete", "crd", "crontabs.stable.example.com"]),
        "deleted",
    );
    let gone = eventually(Duration::from_secs(10), || {
        let run = c.kubectl().run(&[
            "get",
            "--raw",
            "/apis/stable.example.com/v1/namespaces/default/crontabs",
        ]);
        (run.code != 0).then_some(run.stderr)
    });
    assert!(gone.is_some(), "the CRD's resource is no longer served");
}

#[test]
fn statuses_change_only_through_the_status_subresource() {
    // The API's own behaviour: no deployment controller writing statuses meanwhile.
    let c = TestCluster::start_with(&["--controllers", "*,-deployment-controller"]).unwrap();
    let k = c.kubectl();
    k.apply(DEPLOY, &[]);
    // The main resource ignores status; /status ignores everything else.
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":7}}"#,
    ]);
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.status.replicas}"]),
        ""
    );
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":7},"spec":{"replicas":9}}"#,
    ]);
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.replicas} {.spec.replicas}"
        ]),
        "7 2"
    );
    assert_matches(
        &k.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.generation}",
        ]),
        "^1$",
    );
}

#[test]
fn services_get_cluster_ips_and_node_ports() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 8080, targetPort: 80}]\n";
    k.apply(svc, &[]);
    assert_matches(
        &k.ok(&["get", "svc", "web"]),
        r"^web +ClusterIP +10\.9[6-9]\.[0-9.]+ +<none> +8080/TCP +",
    );
    let np = "apiVersion: v1\nkind: Service\nmetadata: {name: np}\nspec:\n  type: NodePort\n  ports: [{port: 80, nodePort: 32600}]\n";
    k.apply(np, &[]);
    assert_matches(&k.ok(&["get", "svc", "np"]), r"80:32600/TCP");
    let clash = np.replace("name: np", "name: np2");
    let run = k.run_stdin(&["apply", "-f", "-"], &clash);
    assert_matches(&run.stderr, "provided port is already allocated");
    k.ok(&["delete", "svc", "np"]);
    k.apply(&clash, &[]);
    let stderr = k.run(&["get", "svc"]).stderr;
    assert_no_warnings(&["get", "svc"], &stderr);
}

#[test]
fn events_recorded_through_either_api_show_in_describe() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    k.run_stdin(&["create", "-f", "-"], POD);
    let uid = k.ok(&["get", "pod", "web-pod", "-o", "jsonpath={.metadata.uid}"]);
    // Recorded the way kube-rs controllers record: events.k8s.io/v1.
    let event = format!(
        "apiVersion: events.k8s.io/v1
kind: Event
metadata: {{name: web-pod.1, namespace: default}}
eventTime: \"2026-11-22T10:00:00.000000Z\"
reportingController: skiff-test
reportingInstance: test-1
action: Testing
reason: Tested
note: the pod was tested
type: Normal
regarding: {{apiVersion: v1, kind: Pod, name: web-pod, namespace: default, uid: {uid}}}
"
    );
    assert_matches(
        &k.apply(&event, &[]),
        "event.events.k8s.io/web-pod.1 created",
    );
    let table = k.ok(&["get", "events"]);
    assert_matches(&table, r"Normal +Tested +pod/web-pod +the pod was tested");
    let described = k.ok(&["describe", "pod", "web-pod"]);
    assert_matches(&described, r"Normal +Tested .*the pod was tested");
    assert_eq!(
        k.ok(&[
            "get",
            "events.v1.events.k8s.io",
            "web-pod.1",
            "-o",
            "jsonpath={.note}/{.regarding.name}"
        ]),
        "the pod was tested/web-pod"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "events.v1.",
            "web-pod.1",
            "-o",
            "jsonpath={.message}/{.involvedObject.name}"
        ]),
        "the pod was tested/web-pod"
    );
}

#[test]
fn finalizers_hold_deletion_until_removed() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    k.apply(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, finalizers: [example.com/hold]}\n",
        &[],
    );
    k.ok(&["delete", "cm", "held", "--wait=false"]);
    let state = k.ok(&[
        "get",
        "cm",
        "held",
        "-o",
        "jsonpath={.metadata.deletionTimestamp} {.metadata.finalizers}",
    ]);
    assert_matches(
        &state,
        r#"^\d{4}-\d\d-\d\dT[0-9:]+Z \["example.com/hold"\]$"#,
    );
    // Writes to a deleting object still work; removing the last finalizer deletes it.
    k.ok(&["label", "cm", "held", "still=writable"]);
    k.ok(&[
        "patch",
        "cm",
        "held",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    assert_matches(&k.fail(&["get", "cm", "held"]), "NotFound");
    // A finalizer that is neither standard nor domain-qualified is refused.
    let run = k.run_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad, finalizers: [hold]}\n",
    );
    assert_matches(
        &run.stderr,
        "neither a standard finalizer name nor is it fully qualified",
    );
}

#[test]
fn create_generators_and_auth_commands_send_protobuf_that_is_understood() {
    // kubectl's typed clients send these bodies as application/vnd.kubernetes.protobuf.
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    let get = |args: &[&str]| k.ok(args).trim().to_owned();
    k.ok(&["create", "namespace", "gen"]);
    assert_eq!(
        get(&["get", "ns", "gen", "-o", "jsonpath={.status.phase}"]),
        "Active"
    );

    k.ok(&[
        "-n",
        "gen",
        "create",
        "deployment",
        "web",
        "--image=busybox:1.36",
        "--replicas=0",
        "--port=8080",
    ]);
    assert_eq!(
        get(&[
            "-n",
            "gen",
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].ports[0].containerPort} {.spec.selector.matchLabels.app}"
        ]),
        "0 8080 web",
        "replicas: 0 is a value, not the default"
    );
    k.ok(&[
        "-n",
        "gen",
        "create",
        "configmap",
        "cfg",
        "--from-literal=a=1",
        "--from-literal=empty=",
    ]);
    assert_eq!(
        get(&["-n", "gen", "get", "cm", "cfg", "-o", "jsonpath={.data}"]),
        r#"{"a":"1","empty":""}"#
    );
    k.ok(&[
        "-n",
        "gen",
        "create",
        "secret",
        "generic",
        "pw",
        "--from-literal=password=hunter2",
    ]);
    assert_eq!(
        get(&[
            "-n",
            "gen",
            "get",
            "secret",
            "pw",
            "-o",
            "jsonpath={.data.password}"
        ]),
        "aHVudGVyMg=="
    );
    k.ok(&[
        "-n",
        "gen",
        "create",
        "service",
        "nodeport",
        "np",
        "--tcp=80:8080",
        "--node-port=30080",
    ]);
    assert_eq!(
        get(&[
            "-n",
            "gen",
            "get",
            "svc",
            "np",
            "-o",
            "jsonpath={.spec.type} {.spec.ports[0].nodePort} {.spec.ports[0].targetPort}"
        ]),
        "NodePort 30080 8080"
    );
    k.ok(&[
        "-n",
        "gen",
        "create",
        "job",
        "pi",
        "--image=busybox",
        "--",
        "echo",
        "3.14",
    ]);
    assert_eq!(
        get(&[
            "-n",
            "gen",
            "get",
            "job",
            "pi",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].command}"
        ]),
        r#"["echo","3.14"]"#
    );
    k.ok(&[
        "-n",
        "gen",
        "create",
        "cronjob",
        "tick",
        "--image=busybox",
        "--schedule=*/1 * * * *",
    ]);
    k.ok(&[
        "-n",
        "gen",
        "create",
        "role",
        "reader",
        "--verb=get,list",
        "--resource=pods",
    ]);
    k.ok(&[
        "-n",
        "gen",
        "create",
        "rolebinding",
        "read",
        "--role=reader",
        "--user=alice",
    ]);
    assert_eq!(
        get(&[
            "-n",
            "gen",
            "get",
            "rolebinding",
            "read",
            "-o",
            "jsonpath={.subjects[0].name}"
        ]),
        "alice"
    );
    k.ok(&[
        "-n",
        "gen",
        "create",
        "quota",
        "q",
        "--hard=pods=10,memory=1Gi",
    ]);
    assert_eq!(
        get(&[
            "-n",
            "gen",
            "get",
            "quota",
            "q",
            "-o",
            "jsonpath={.spec.hard.memory}"
        ]),
        "1Gi"
    );
    k.ok(&["create", "priorityclass", "zero", "--value=0"]);
    assert_matches(&k.ok(&["get", "pc", "zero"]), r"^zero +0 +false +");
    k.ok(&[
        "-n",
        "gen",
        "create",
        "pdb",
        "web",
        "--selector=app=web",
        "--min-available=0",
    ]);
    assert_eq!(
        get(&[
            "-n",
            "gen",
            "get",
            "pdb",
            "web",
            "-o",
            "jsonpath={.spec.minAvailable}"
        ]),
        "0"
    );
    // Creating an existing one answers AlreadyExists, as for a JSON body.
    let again = k.fail(&["create", "namespace", "gen"]);
    assert_matches(&again, r#"AlreadyExists.*namespaces "gen" already exists"#);

    assert_eq!(
        get(&["auth", "can-i", "create", "deployments.apps", "-n", "gen"]),
        "yes"
    );
    assert_matches(
        &k.ok(&["auth", "can-i", "--list", "-n", "gen"]),
        r"^\*\.\* +\[\] +\[\] +\[\*\]",
    );
    assert_matches(&k.ok(&["auth", "whoami"]), r"Username +skiff-admin");
}

#[test]
fn namespaces_carry_their_name_and_the_built_in_ones_cannot_be_deleted() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    for ns in ["default", "kube-system", "kube-public"] {
        let refused = k.fail(&["delete", "namespace", ns]);
        assert_matches(
            &refused,
            &format!(
                r#"Error from server \(Forbidden\): namespaces "{ns}" is forbidden: this namespace may not be deleted"#
            ),
        );
    }
    k.ok(&["create", "namespace", "team-a"]);
    assert_matches(
        &k.ok(&["get", "ns", "team-a", "--show-labels"]),
        r"^team-a +Active +\S+ +kubernetes\.io/metadata\.name=team-a$",
    );
    assert_eq!(
        k.ok(&[
            "get",
            "ns",
            "-l",
            "kubernetes.io/metadata.name=default",
            "-o",
            "name"
        ]),
        "namespace/default\n"
    );
    // Creating in a terminating namespace names the object refused.
    let held =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, finalizers: [example.com/hold]}\n";
    k.apply(held, &["-n", "team-a"]);
    k.ok(&["delete", "namespace", "team-a", "--wait=false"]);
    let refused = k.fail(&["-n", "team-a", "create", "configmap", "late"]);
    assert_matches(
        &refused,
        r#"configmaps "late" is forbidden: unable to create new content in namespace team-a because it is being terminated"#,
    );
    // The server restarts fine afterwards, and the kubernetes Service and its
    // EndpointSlice exist.
    let mut c = c;
    c.restart().unwrap();
    let k = c.kubectl();
    assert_matches(
        &k.ok(&["get", "endpointslices", "kubernetes"]),
        r"^kubernetes +IPv4 +\d+ +127\.0\.0\.1",
    );
}

#[test]
fn writes_honour_uid_preconditions_grace_periods_and_finalizer_rules() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    k.ok(&["create", "configmap", "u1", "--from-literal=a=b"]);
    // A uid in the body is a precondition.
    let stale = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"u1","uid":"0000-not-it"},"data":{"a":"c"}}"#;
    let run = k.run_stdin(&["replace", "-f", "-"], stale);
    assert_matches(
        &run.stderr,
        r#"Operation cannot be fulfilled on configmaps "u1": Precondition failed: UID in precondition: 0000-not-it, UID in object meta: [0-9a-f-]+"#,
    );
    assert_eq!(k.ok(&["get", "cm", "u1", "-o", "jsonpath={.data.a}"]), "b");

    // A server-side dry run keeps the stored resourceVersion.
    let rv = k.ok(&[
        "get",
        "cm",
        "u1",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    let dry = k.ok(&[
        "patch",
        "cm",
        "u1",
        "--type=merge",
        "-p",
        r#"{"data":{"a":"z"}}"#,
        "--dry-run=server",
        "-o",
        "jsonpath={.metadata.resourceVersion} {.data.a}",
    ]);
    assert_eq!(dry, format!("{rv} z"));

    // A bound pod is deleted gracefully; a second delete may shorten the grace period.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: slow, finalizers: [example.com/keep]}\nspec: {nodeName: somewhere, containers: [{name: c, image: busybox}]}\n";
    k.apply(pod, &[]);
    k.ok(&["delete", "pod", "slow", "--wait=false"]);
    assert_eq!(
        k.ok(&[
            "get",
            "pod",
            "slow",
            "-o",
            "jsonpath={.metadata.deletionGracePeriodSeconds}"
        ]),
        "30"
    );
    let first = k.ok(&[
        "get",
        "pod",
        "slow",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    k.ok(&["delete", "pod", "slow", "--wait=false", "--grace-period=3"]);
    assert_eq!(
        k.ok(&[
            "get",
            "pod",
            "slow",
            "-o",
            "jsonpath={.metadata.deletionGracePeriodSeconds}"
        ]),
        "3"
    );
    let second = k.ok(&[
        "get",
        "pod",
        "slow",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    let parse = |t: &str| t.parse::<jiff::Timestamp>().unwrap();
    assert_eq!(
        (parse(&first) - parse(&second)).get_seconds(),
        27,
        "the deadline moves to the start of the first delete plus 3 s"
    );
    // An object being deleted can lose finalizers but not gain them.
    let refused = k.run(&[
        "patch",
        "pod",
        "slow",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/keep","example.com/more"]}}"#,
    ]);
    assert_matches(
        &refused.stderr,
        r#"metadata\.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers \[\]string\{"example.com/more"\}"#,
    );
}

#[test]
fn health_endpoints_list_their_checks_when_verbose() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    let verbose = k.ok(&["get", "--raw", "/readyz?verbose"]);
    assert_matches(&verbose, r"^\[\+\]ping ok$");
    assert_matches(&verbose, r"^\[\+\]shutdown ok$");
    assert_matches(&verbose, r"^readyz check passed$");
    assert_eq!(k.ok(&["get", "--raw", "/livez/ping"]), "ok");
    assert_matches(&k.fail(&["get", "--raw", "/livez/nonsense"]), "NotFound");
}

#[test]
fn kubectl_autoscale_makes_an_hpa_served_as_autoscaling_v1_and_v2() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    k.ok(&["create", "deployment", "web", "--image=busybox"]);
    assert_matches(
        &k.ok(&[
            "autoscale",
            "deployment",
            "web",
            "--min=2",
            "--max=5",
            "--cpu-percent=60",
        ]),
        "horizontalpodautoscaler.autoscaling/web autoscaled",
    );
    assert_matches(
        &k.ok(&["get", "hpa", "web"]),
        // Below its minimum: the autoscaler scales to 2 without metrics.
        r"^web +Deployment/web +cpu: <unknown>/60% +2 +5 +[0-2] +",
    );
    let replicas = || k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]);
    assert!(
        eventually(Duration::from_secs(20), || (replicas() == "2")
            .then_some(()))
        .is_some(),
        "the deployment has {} replicas, below the autoscaler's minimum",
        replicas()
    );
    let v1 = k.ok(&[
        "get",
        "--raw",
        "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/web",
    ]);
    let v1: serde_json::Value = serde_json::from_str(&v1).unwrap();
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
    assert_eq!(
        k.ok(&[
            "get",
            "horizontalpodautoscalers.v2.autoscaling",
            "web",
            "-o",
            "jsonpath={.spec.metrics[0].resource.target.averageUtilization}"
        ]),
        "60"
    );
    // A v2-only metric survives a v1 client's update (it rides in an annotation there).
    k.ok(&["patch", "horizontalpodautoscalers.v2.autoscaling", "web", "--type=json", "-p",
        r#"[{"op":"add","path":"/spec/metrics/-","value":{"type":"Resource","resource":{"name":"memory","target":{"type":"AverageValue","averageValue":"200Mi"}}}}]"#]);
    k.ok(&[
        "patch",
        "horizontalpodautoscalers.v1.autoscaling",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"maxReplicas":7}}"#,
    ]);
    assert_eq!(
        k.ok(&[
            "get",
            "horizontalpodautoscalers.v2.autoscaling",
            "web",
            "-o",
            "jsonpath={.spec.maxReplicas} {.spec.metrics[1].resource.name}"
        ]),
        "7 memory"
    );
}

#[test]
fn quantities_are_stored_in_canonical_form() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    let quota = "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: q}\nspec: {hard: {cpu: 1000m, requests.cpu: \"0.5\", memory: 1024Mi, pods: \"010\", storage: 1.5Ki}}\n";
    k.apply(quota, &[]);
    assert_eq!(
        k.ok(&["get", "quota", "q", "-o", "jsonpath={.spec.hard}"]),
        r#"{"cpu":"1","memory":"1Gi","pods":"10","requests.cpu":"500m","storage":"1536"}"#
    );
    let bad = quota.replace("1000m", "lots");
    let run = k.run_stdin(&["apply", "-f", "-"], &bad);
    assert_matches(
        &run.stderr,
        r"spec\.hard\.cpu: Invalid value: .lots.: quantities must match the regular expression",
    );
}
