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
use skiff_tests::{Kubectl, TestCluster, TestRegistry, eventually, push_busybox_image};

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
