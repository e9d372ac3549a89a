//! A node agent joins a cluster with only the server's URL and the join token: its client
//! and serving certificates come from CertificateSigningRequests, the bootstrap token can
//! do nothing else, and `kubectl logs` and `exec` reach the joined node through its own
//! serving certificate.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use skiff_tests::{
    Kubectl, TestCluster, TestRegistry, assert_matches, eventually, push_busybox_image,
};

/// A `skiff agent` process with its own data directory; killed, and its containers
/// removed, when dropped.
struct Agent {
    child: Option<Child>,
    dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    fn start(dir: tempfile::TempDir, args: &[&str]) -> Agent {
        let mut child = Command::new(skiff_tests::skiff_binary())
            .arg("agent")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--node-name", "joined", "--agent-port", "0"])
            .args(args)
            .env_remove("KUBECONFIG")
            .env("SKIFF_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Agent {
            child: Some(child),
            dir,
            log,
        }
    }

    fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for the process to exit and returns whether it succeeded.
    fn wait(&mut self) -> bool {
        let mut child = self.child.take().unwrap();
        let status = eventually(Duration::from_secs(30), || child.try_wait().unwrap());
        status.expect("the agent did not exit").success()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        skiff_tests::remove_containers(self.dir.path());
    }
}

fn csrs(kubectl: &Kubectl) -> Vec<Value> {
    let list: Value = serde_json::from_str(&kubectl.ok(&["get", "csr", "-o", "json"])).unwrap();
    list["items"].as_array().unwrap().clone()
}

/// A kubeconfig that authenticates with `token` only.
fn token_kubeconfig(cluster: &TestCluster, token: &str, path: &Path) {
    let admin = std::fs::read_to_string(cluster.kubeconfig()).unwrap();
    let ca = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .unwrap();
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, namespace: default}}\ncurrent-context: c\n",
            cluster.addr
        ),
    )
    .unwrap();
}

#[test]
fn an_agent_joins_with_a_url_and_a_token_and_gets_its_own_certificates() {
    let registry = TestRegistry::start().unwrap();
    let image = push_busybox_image(&registry, "v1").unwrap();
    let cluster = TestCluster::start().unwrap();
    let kubectl = cluster.kubectl();
    let server = format!("https://{}", cluster.addr);
    let token = std::fs::read_to_string(cluster.dir.path().join("join-token"))
        .unwrap()
        .trim()
        .to_owned();
    let (pin, bootstrap) = token.rsplit_once(':').unwrap();

    // A token pinning another CA is refused before the token is sent anywhere.
    let wrong_pin = format!("sha256:{}:{bootstrap}", "0".repeat(64));
    let mut refused = Agent::start(
        tempfile::tempdir().unwrap(),
        &["--server", &server, "--token", &wrong_pin],
    );
    assert!(!refused.wait());
    assert!(
        refused.logs().contains("refusing to join"),
        "{}",
        refused.logs()
    );
    // A token with a wrong secret is not accepted.
    let wrong_secret = format!("{pin}:{}.0000000000000000", &bootstrap[..6]);
    let mut unauthorized = Agent::start(
        tempfile::tempdir().unwrap(),
        &["--server", &server, "--token", &wrong_secret],
    );
    assert!(!unauthorized.wait());
    assert!(
        unauthorized.logs().contains("Unauthorized"),
        "{}",
        unauthorized.logs()
    );
    assert!(csrs(&kubectl).is_empty());

    // The bootstrap token itself may ask for certificates and nothing else.
    let token_only = cluster.dir.path().join("bootstrap.kubeconfig");
    token_kubeconfig(&cluster, bootstrap, &token_only);
    let as_bootstrap = Kubectl::with_kubeconfig(&token_only);
    let forbidden = as_bootstrap.fail(&["get", "pods"]);
    assert!(
        forbidden.contains("cannot list resource \"pods\""),
        "{forbidden}"
    );
    as_bootstrap.ok(&["get", "csr"]);

    let mut agent = Agent::start(
        tempfile::tempdir().unwrap(),
        &[
            "--server",
            &server,
            "--token",
            &token,
            "--node-ip",
            "127.0.0.1",
            "--image-insecure-registry",
            &registry.host,
        ],
    );
    let ready = eventually(Duration::from_secs(60), || {
        let node: Value =
            serde_json::from_str(&kubectl.run(&["get", "node", "joined", "-o", "json"]).stdout)
                .ok()?;
        let conditions = node.pointer("/status/conditions")?.as_array()?.clone();
        conditions
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(node)
    });
    assert!(
        ready.is_some(),
        "the joined node never got Ready:\n{}",
        agent.logs()
    );
    // Two requests, both approved and issued: a client certificate asked for with the
    // bootstrap token, a serving certificate asked for by the node itself.
    let issued = eventually(Duration::from_secs(30), || {
        let all = csrs(&kubectl);
        (all.len() == 2
            && all
                .iter()
                .all(|c| c.pointer("/status/certificate").is_some()))
        .then_some(all)
    })
    .unwrap_or_else(|| panic!("{:#?}\n{}", csrs(&kubectl), agent.logs()));
    let by_signer = |signer: &str| {
        issued
            .iter()
            .find(|c| c["spec"]["signerName"] == signer)
            .unwrap()
            .clone()
    };
    let client = by_signer("kubernetes.io/kube-apiserver-client-kubelet");
    assert_eq!(
        client["spec"]["username"],
        format!("system:bootstrap:{}", &bootstrap[..6])
    );
    let serving = by_signer("kubernetes.io/kubelet-serving");
    assert_eq!(serving["spec"]["username"], "system:node:joined");
    let table = kubectl.ok(&["get", "csr"]);
    assert_eq!(table.matches("Approved,Issued").count(), 2, "{table}");
    let kubelet = std::fs::read_to_string(agent.dir.path().join("pki/kubeconfig.yaml")).unwrap();
    assert!(kubelet.contains("client-certificate-data"), "{kubelet}");
    assert!(
        !kubelet.contains(bootstrap),
        "the bootstrap token is not kept"
    );

    // Logs and exec reach the joined node: the API server verified its serving certificate.
    kubectl.apply(
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: on-joined}}\nspec:\n  nodeName: joined\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {image}\n    command: [sh, -c, 'echo hello from $(hostname); exec sleep 1000']\n"
        ),
        &[],
    );
    let logs = eventually(Duration::from_secs(60), || {
        let run = kubectl.run(&["logs", "on-joined"]);
        (run.code == 0 && !run.stdout.is_empty()).then_some(run.stdout)
    });
    assert_eq!(
        logs.as_deref(),
        Some("hello from on-joined\n"),
        "{}",
        agent.logs()
    );
    assert_eq!(
        kubectl.ok(&["exec", "on-joined", "--", "sh", "-c", "echo $((6*7))"]),
        "42\n"
    );

    // A restarted agent needs no token: it keeps its certificates.
    agent.stop();
    let dir = std::mem::replace(&mut agent.dir, tempfile::tempdir().unwrap());
    let again = Agent::start(dir, &["--server", &server, "--node-ip", "127.0.0.1"]);
    let back = eventually(Duration::from_secs(60), || {
        let run = kubectl.run(&["exec", "on-joined", "--", "echo", "back"]);
        (run.code == 0).then_some(run.stdout)
    });
    assert_eq!(back.as_deref(), Some("back\n"), "{}", again.logs());
    assert_eq!(csrs(&kubectl).len(), 2, "no new certificate requests");

    // Deleting the token's Secret revokes it.
    kubectl.ok(&[
        "delete",
        "secret",
        "-n",
        "kube-system",
        &format!("bootstrap-token-{}", &bootstrap[..6]),
    ]);
    let revoked = as_bootstrap.fail(&["get", "csr"]);
    assert!(revoked.contains("Unauthorized"), "{revoked}");
    kubectl.ok(&["delete", "pod", "on-joined", "--wait=false"]);
}

/// Two nodes on one machine: the server's own and a joined one. Draining the joined node
/// respects a PodDisruptionBudget; stopping its agent gets it marked unreachable, and its
/// pods are evicted and made again on the other node.
#[test]
fn a_drained_or_silent_node_loses_its_pods_to_the_other_node() {
    let registry = TestRegistry::start().unwrap();
    let image = push_busybox_image(&registry, "v1").unwrap();
    let cluster = TestCluster::start_with_agent(&[
        "--image-insecure-registry",
        &registry.host,
        // Above the agents' 10 s lease renewal, below the default 40 s.
        "--node-monitor-grace-period",
        "15s",
    ])
    .unwrap();
    let k = cluster.kubectl();
    let token = std::fs::read_to_string(cluster.dir.path().join("join-token"))
        .unwrap()
        .trim()
        .to_owned();
    let mut agent = Agent::start(
        tempfile::tempdir().unwrap(),
        &[
            "--server",
            &format!("https://{}", cluster.addr),
            "--token",
            &token,
            "--node-ip",
            "127.0.0.1",
            "--image-insecure-registry",
            &registry.host,
        ],
    );
    let ready_nodes = || {
        k.ok(&["get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}"])
    };
    let both = eventually(Duration::from_secs(60), || {
        let nodes = ready_nodes();
        (nodes.matches("=True").count() == 2).then_some(nodes)
    });
    let nodes = both.unwrap_or_else(|| panic!("{}\n{}", ready_nodes(), agent.logs()));
    let home = nodes
        .split_whitespace()
        .map(|n| n.trim_end_matches("=True"))
        .find(|n| *n != "joined")
        .unwrap()
        .to_owned();

    // Two replicas on the joined node (the other is cordoned meanwhile), one of which may
    // be disrupted at a time; they stand an unreachable node for 2 s.
    k.ok(&["cordon", &home]);
    k.apply(
        &format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      tolerations: [{{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}}]\n      containers: [{{name: web, image: {image}, command: [sleep, '600'], readinessProbe: {{exec: {{command: ['true']}}, initialDelaySeconds: 3, periodSeconds: 1, timeoutSeconds: 10}}}}]\n---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {{name: web}}\nspec:\n  minAvailable: 1\n  selector: {{matchLabels: {{app: web}}}}\n"
        ),
        &[],
    );
    let rollout = |what: &str| {
        let run = k.run(&["rollout", "status", "deployment/web", "--timeout=60s"]);
        assert_eq!(
            run.code,
            0,
            "{what}: {run:?}\n{}",
            k.ok(&["get", "pods", "-o", "wide"])
        );
    };
    rollout("on the joined node");
    let placement = || {
        let mut v: Vec<String> = k
            .live_pods("app=web")
            .iter()
            .map(|p| {
                let ready = p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                let node = p["spec"]["nodeName"].as_str().unwrap_or("-");
                format!(
                    "{}/{}",
                    if node == "joined" { "joined" } else { "home" },
                    ready
                )
            })
            .collect();
        v.sort();
        v.join(" ")
    };
    assert_eq!(placement(), "joined/true joined/true");
    let budget = || {
        k.ok(&["get", "pdb", "web", "-o", "jsonpath={.status.currentHealthy}/{.status.desiredHealthy}/{.status.disruptionsAllowed}"])
    };
    assert!(
        eventually(Duration::from_secs(10), || (budget() == "2/1/1")
            .then_some(()))
        .is_some(),
        "{}",
        budget()
    );

    // Drained: one pod at a time, as the budget allows (a replacement is ready 3 s after
    // it starts), each made again on the home node.
    k.ok(&["uncordon", &home]);
    // (kubectl's client retries a 429 by itself after its Retry-After; -v=6 shows it.)
    let drain = k.run(&[
        "drain",
        "joined",
        "--ignore-daemonsets",
        "--timeout=90s",
        "-v=6",
    ]);
    assert_eq!(
        drain.code,
        0,
        "{drain:?}\n{}",
        k.ok(&["get", "pods", "-o", "wide"])
    );
    assert_matches(&drain.stdout, "node/joined drained");
    assert_matches(
        &drain.stderr,
        r"POST https://\S+/pods/web-\S+/eviction 429 Too Many Requests",
    );
    assert_matches(
        &drain.stderr,
        r"POST https://\S+/pods/web-\S+/eviction 201 Created",
    );
    rollout("drained to the home node");
    assert_eq!(placement(), "home/true home/true");

    // Back on the joined node, whose agent then stops: after the grace period and the
    // pods' 2 s the pods are made again at home.
    k.ok(&["uncordon", "joined"]);
    k.ok(&["cordon", &home]);
    k.ok(&["rollout", "restart", "deployment/web"]);
    rollout("restarted on the joined node");
    assert!(
        eventually(Duration::from_secs(30), || (placement()
            == "joined/true joined/true")
            .then_some(()))
        .is_some(),
        "{}",
        placement()
    );
    k.ok(&["uncordon", &home]);
    agent.stop();
    let moved = eventually(Duration::from_secs(60), || {
        (placement() == "home/true home/true").then_some(())
    });
    assert!(
        moved.is_some(),
        "{}\n{}",
        placement(),
        k.ok(&["get", "pods,nodes", "-o", "wide"])
    );
    assert_matches(&k.ok(&["get", "node", "joined"]), r"(?m)^joined +NotReady");
    let taints = k.ok(&[
        "get",
        "node",
        "joined",
        "-o",
        "jsonpath={.spec.taints[*].key}",
    ]);
    assert_matches(&taints, "node.kubernetes.io/unreachable");
}
