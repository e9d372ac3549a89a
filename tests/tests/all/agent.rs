//! The node agent end to end, as root with real containers: a busybox image built by the
//! test and pushed to a real registry on loopback, pods applied with kubectl and run by
//! youki's libcontainer, their output read back with `kubectl logs`.

use std::io::{BufRead as _, Read as _};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::{
    Kubectl, TestCluster, TestRegistry, assert_matches, eventually, push_busybox_image,
};

/// A registry with the busybox image, and a cluster whose agent pulls from it.
struct Setup {
    cluster: TestCluster,
    image: String,
    registry: TestRegistry,
}

fn setup() -> Setup {
    setup_with(&[])
}

/// [`setup`] with more flags for the server.
fn setup_with(flags: &[&str]) -> Setup {
    let registry = TestRegistry::start().unwrap();
    let image = push_busybox_image(&registry, "v1").unwrap();
    let mut args = vec!["--image-insecure-registry", &registry.host];
    args.extend(flags);
    let cluster = TestCluster::start_with_agent(&args).unwrap();
    Setup {
        cluster,
        image,
        registry,
    }
}

fn pod_json(kubectl: &Kubectl, name: &str) -> Value {
    serde_json::from_str(&kubectl.ok(&["get", "pod", name, "-o", "json"])).unwrap()
}

/// Waits until `check` holds for the pod, and returns the pod.
fn wait_pod(kubectl: &Kubectl, name: &str, secs: u64, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = eventually(Duration::from_secs(secs), || {
        let run = kubectl.run(&["get", "pod", name, "-o", "json"]);
        if run.code != 0 {
            return None;
        }
        last = serde_json::from_str(&run.stdout).ok()?;
        check(&last).then(|| last.clone())
    });
    found.unwrap_or_else(|| panic!("pod {name} never got there; last seen:\n{last:#}"))
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn pod(name: &str, image: &str, policy: &str, command: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: {policy}\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", {command:?}]\n{extra}"
    )
}

#[test]
fn a_pod_runs_to_completion_and_its_output_is_in_kubectl_logs() {
    let s = setup();
    let kubectl = s.cluster.kubectl();
    // The agent registered the machine as a Ready node with its capacity and a Lease.
    let node: Value = serde_json::from_str(&kubectl.ok(&["get", "nodes", "-o", "json"])).unwrap();
    let node = &node["items"][0];
    let name = node["metadata"]["name"].as_str().unwrap().to_owned();
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/os"], "linux");
    assert_eq!(
        node["metadata"]["labels"]["kubernetes.io/hostname"],
        name.as_str()
    );
    assert_eq!(node["status"]["capacity"]["pods"], "110");
    let ready = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True", "{node:#}");
    kubectl.ok(&["get", "lease", "-n", "kube-node-lease", &name]);

    kubectl.apply(
        &pod(
            "hello",
            &s.image,
            "Never",
            "echo hello from $(hostname); echo second line; cat /sys/class/net/lo/flags",
            "    env: [{name: GREETING, value: hi}]\n",
        ),
        &[],
    );
    let done = wait_pod(&kubectl, "hello", 60, |p| phase(p) == "Succeeded");
    let status = &done["status"]["containerStatuses"][0];
    assert_eq!(status["state"]["terminated"]["exitCode"], 0, "{done:#}");
    assert_eq!(status["state"]["terminated"]["reason"], "Completed");
    assert!(
        status["imageID"].as_str().unwrap().contains("@sha256:"),
        "{status}"
    );
    assert_eq!(done["status"]["qosClass"], "BestEffort");
    // The shim removed the container's cgroup and libcontainer's state before it recorded
    // the exit: nothing is left under the pod's cgroup in any hierarchy.
    let uid = done["metadata"]["uid"].as_str().unwrap();
    let hierarchies: Vec<std::path::PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path())
        .chain([std::path::PathBuf::from("/sys/fs/cgroup")])
        .collect();
    for pod_cgroup in hierarchies
        .iter()
        .map(|h| h.join(format!("skiff/pod{uid}")))
    {
        let left: Vec<_> = std::fs::read_dir(&pod_cgroup)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
    let state = s.cluster.data_dir().join("agent/youki");
    let left: Vec<_> = std::fs::read_dir(&state).unwrap().flatten().collect();
    assert!(
        left.is_empty(),
        "libcontainer state left in {}: {left:?}",
        state.display()
    );
    let logs = kubectl.ok(&["logs", "hello"]);
    // Hostname = pod name; the pod's own network namespace has lo up (IFF_UP|IFF_LOOPBACK).
    assert_eq!(logs, "hello from hello\nsecond line\n0x9\n");
    assert_eq!(kubectl.ok(&["logs", "hello", "--tail", "1"]), "0x9\n");
    let stamped = kubectl.ok(&["logs", "hello", "--timestamps", "--tail", "2"]);
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 2, "{stamped}");
    assert!(
        lines[0].ends_with(" second line") && lines[0].contains('T'),
        "{stamped}"
    );
    // The pod's events, in kubelet's reasons.
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=hello",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    for reason in ["Scheduled", "Pulling", "Pulled", "Created", "Started"] {
        assert!(events.contains(reason), "{reason} missing from {events}");
    }
    // An init container runs first, in order, and the app container sees its env.
    kubectl.apply(
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: init}}\nspec:\n  restartPolicy: Never\n  initContainers:\n  - {{name: first, image: {img}, command: [sh, -c, 'echo first']}}\n  containers:\n  - name: main\n    image: {img}\n    command: [sh, -c, 'echo $NAME $NODE $(id -u)']\n    securityContext: {{runAsUser: 65534}}\n    env:\n    - {{name: NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}\n    - {{name: NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}\n",
            img = s.image
        ),
        &[],
    );
    let done = wait_pod(&kubectl, "init", 60, |p| phase(p) == "Succeeded");
    assert_eq!(
        done["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );
    assert_eq!(kubectl.ok(&["logs", "init", "-c", "first"]), "first\n");
    assert_eq!(
        kubectl.ok(&["logs", "init"]),
        format!("init {name} 65534\n")
    );
}

#[test]
fn a_failing_container_backs_off_and_its_previous_run_has_logs() {
    let s = setup();
    let kubectl = s.cluster.kubectl();
    kubectl.apply(
        &pod(
            "crash",
            &s.image,
            "Always",
            "echo run $(date +%s%N); exit 3",
            "",
        ),
        &[],
    );
    let crashing = wait_pod(&kubectl, "crash", 60, |p| {
        let c = &p["status"]["containerStatuses"][0];
        c["restartCount"].as_i64().unwrap_or(0) >= 2
            && c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    let c = &crashing["status"]["containerStatuses"][0];
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 3, "{c}");
    assert_eq!(c["lastState"]["terminated"]["reason"], "Error");
    assert!(
        c["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .starts_with("back-off "),
        "{c}"
    );
    assert_eq!(phase(&crashing), "Running");
    let now = kubectl.ok(&["logs", "crash"]);
    let previous = kubectl.ok(&["logs", "crash", "--previous"]);
    assert!(
        now.starts_with("run ") && previous.starts_with("run "),
        "{now} / {previous}"
    );
    assert_ne!(now, previous);
    let table = kubectl.ok(&["get", "pod", "crash"]);
    assert!(table.contains("CrashLoopBackOff"), "{table}");
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=crash",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(events.contains("BackOff"), "{events}");
}

#[test]
fn a_memory_limit_gives_oom_killed() {
    let s = setup();
    let kubectl = s.cluster.kubectl();
    kubectl.apply(
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: oom}}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {}\n    command: [dd, if=/dev/zero, of=/dev/shm/fill, bs=1M, count=64]\n    resources: {{limits: {{memory: 16Mi}}}}\n",
            s.image
        ),
        &[],
    );
    let done = wait_pod(&kubectl, "oom", 60, |p| phase(p) == "Failed");
    let t = &done["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{done:#}");
    assert_eq!(t["exitCode"], 137);
    // A memory limit alone (its request defaults to it) is Burstable: cpu has none.
    assert_eq!(done["status"]["qosClass"], "Burstable");
    // The pod's own cgroup is limited too (its only container's limit), as the kubelet's.
    let uid = done["metadata"]["uid"].as_str().unwrap();
    let unified = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let file = if unified {
        format!("/sys/fs/cgroup/skiff/pod{uid}/memory.max")
    } else {
        format!("/sys/fs/cgroup/memory/skiff/pod{uid}/memory.limit_in_bytes")
    };
    let limit = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(limit.trim(), (16 << 20).to_string());
}

#[test]
fn graceful_delete_signals_the_container_and_finishes_the_delete() {
    let s = setup();
    let kubectl = s.cluster.kubectl();
    kubectl.apply(
        &pod(
            "graceful",
            &s.image,
            "Always",
            "trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
            "",
        ),
        &[],
    );
    wait_pod(&kubectl, "graceful", 60, |p| {
        phase(p) == "Running" && kubectl.run(&["logs", "graceful"]).stdout.contains("ready")
    });
    let ready = pod_json(&kubectl, "graceful");
    let ready_cond = ready["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap();
    assert_eq!(ready_cond["status"], "True", "{ready:#}");
    let started = Instant::now();
    // kubectl waits for the object to be gone: the agent stopped the container and
    // finished the deletion, well within the 5 s grace period (the trap exits at once).
    kubectl.ok(&["delete", "pod", "graceful", "--timeout=30s"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_ne!(kubectl.run(&["get", "pod", "graceful"]).code, 0);
    // A container that ignores SIGTERM is killed once the grace period is over.
    kubectl.apply(
        &pod(
            "stubborn",
            &s.image,
            "Always",
            "trap '' TERM; while true; do sleep 0.1; done",
            "",
        ),
        &[],
    );
    wait_pod(&kubectl, "stubborn", 60, |p| phase(p) == "Running");
    let started = Instant::now();
    kubectl.ok(&[
        "delete",
        "pod",
        "stubborn",
        "--grace-period=2",
        "--timeout=30s",
    ]);
    // Not before the grace period; and done well within kubectl's 30 s, which a container
    // that outlived its SIGKILL would exceed (the bound is wide for the emulated v2 guest).
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(25),
        "{took:?}"
    );
}

#[test]
fn a_missing_image_backs_off_pulling() {
    let s = setup();
    let kubectl = s.cluster.kubectl();
    let missing = s.image.replace("busybox:v1", "missing:v1");
    kubectl.apply(&pod("nopull", &missing, "Always", "true", ""), &[]);
    let waiting = wait_pod(&kubectl, "nopull", 60, |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff"
    });
    assert_eq!(phase(&waiting), "Pending");
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=nopull",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains(&format!("Failed to pull image \"{missing}\"")),
        "{events}"
    );
    assert!(events.contains("Back-off pulling image"), "{events}");
}

#[test]
fn a_restarted_agent_re_adopts_its_containers_and_cleans_up_deleted_pods() {
    let mut s = setup();
    let kubectl = s.cluster.kubectl();
    kubectl.apply(
        &pod(
            "long",
            &s.image,
            "Always",
            "echo started; exec sleep 1000",
            "",
        ),
        &[],
    );
    kubectl.apply(
        &pod("doomed", &s.image, "Always", "exec sleep 1000", ""),
        &[],
    );
    let before = wait_pod(&kubectl, "long", 60, |p| phase(p) == "Running");
    wait_pod(&kubectl, "doomed", 60, |p| phase(p) == "Running");
    let id = before["status"]["containerStatuses"][0]["containerID"].clone();
    // The server (and its agent) dies; the containers don't.
    s.cluster.kill9().unwrap();
    // Back without its agent, "doomed" is removed from the API for good.
    let insecure = ["--image-insecure-registry", s.registry.host.as_str()];
    s.cluster
        .start_again_with(&[&insecure[..], &["--disable-agent"]].concat())
        .unwrap();
    let kubectl = s.cluster.kubectl();
    // (kubectl warns that a forced delete doesn't wait for the node.)
    let forced = kubectl.run(&["delete", "pod", "doomed", "--grace-period=0", "--force"]);
    assert_eq!(forced.code, 0, "{forced:?}");
    s.cluster.kill9().unwrap();
    s.cluster.start_again_with(&insecure).unwrap();
    let kubectl = s.cluster.kubectl();
    // The same container, not restarted, and its log is still there.
    std::thread::sleep(Duration::from_secs(2));
    let after = wait_pod(&kubectl, "long", 30, |p| phase(p) == "Running");
    let c = &after["status"]["containerStatuses"][0];
    assert_eq!(c["containerID"], id, "{c}");
    assert_eq!(c["restartCount"], 0);
    assert_eq!(kubectl.ok(&["logs", "long"]), "started\n");
    // The deleted pod's container is gone: one shim is left, for "long".
    let containers = s.cluster.dir.path().join("agent/containers");
    let left = eventually(Duration::from_secs(20), || {
        let n = std::fs::read_dir(&containers).unwrap().count();
        (n == 1).then_some(n)
    });
    assert_eq!(
        left,
        Some(1),
        "containers left: {:?}",
        std::fs::read_dir(&containers).unwrap().collect::<Vec<_>>()
    );
}

#[test]
fn kubectl_exec_runs_commands_in_the_container_and_returns_their_exit_codes() {
    let s = setup();
    let kubectl = s.cluster.kubectl();
    kubectl.apply(
        &pod(
            "shell",
            &s.image,
            "Always",
            "echo up; exec sleep 1000",
            "    env: [{name: WHO, value: skiff}]\n",
        ),
        &[],
    );
    wait_pod(&kubectl, "shell", 60, |p| phase(p) == "Running");
    // The container's environment and namespaces: its hostname is the pod's name.
    assert_eq!(
        kubectl.ok(&["exec", "shell", "--", "sh", "-c", "echo $WHO $(hostname)"]),
        "skiff shell\n"
    );
    let failed = kubectl.run(&[
        "exec",
        "shell",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(failed.code, 3, "{failed:?}");
    assert_eq!(failed.stdout, "out\n");
    assert!(
        failed.stderr.contains("err\n")
            && failed
                .stderr
                .contains("command terminated with exit code 3"),
        "{failed:?}"
    );
    // stdin reaches the process, and its end is an EOF.
    let run = kubectl.run_stdin(
        &["exec", "-i", "shell", "--", "sh", "-c", "wc -l"],
        "a\nb\nc\n",
    );
    assert_eq!((run.code, run.stdout.trim()), (0, "3"), "{run:?}");
    // The SPDY fallback gives the same.
    let spdy = [("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")];
    let failed = kubectl.run_env(
        &["exec", "shell", "--", "sh", "-c", "echo spdy; exit 4"],
        &spdy,
    );
    assert_eq!(
        (failed.code, failed.stdout.as_str()),
        (4, "spdy\n"),
        "{failed:?}"
    );
    let ok = kubectl.run_env(&["exec", "shell", "--", "true"], &spdy);
    assert_eq!(ok.code, 0, "{ok:?}");
    let missing = kubectl.run(&["exec", "shell", "--", "no-such-command"]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("no-such-command"), "{missing:?}");
    // With a terminal (kubectl needs one of its own: `script` gives it a pty).
    let tty = std::process::Command::new("script")
        .args([
            "-qec",
            &format!(
                "kubectl --kubeconfig {} exec -it shell -- sh -c 'test -t 0 && echo on-a-tty'",
                s.cluster.kubeconfig().display()
            ),
            "/dev/null",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&tty.stdout);
    assert!(
        out.contains("on-a-tty"),
        "{out} {}",
        String::from_utf8_lossy(&tty.stderr)
    );
}

#[test]
fn kubectl_attach_and_run_reach_a_containers_own_stdio() {
    let s = setup();
    let kubectl = s.cluster.kubectl();
    // `kubectl run -i --rm`: the pod gets a stdin (stdinOnce), kubectl attaches to it,
    // types, reads the answer and deletes the pod.
    let run = kubectl.run_stdin(
        &[
            "run",
            "asker",
            "--image",
            &s.image,
            "--restart=Never",
            "-i",
            "--rm",
            "--command",
            "--",
            "sh",
            "-c",
            "read name; echo hello $name",
        ],
        "skiff\n",
    );
    assert!(run.stdout.contains("hello skiff\n"), "{run:?}");
    let gone = eventually(Duration::from_secs(30), || {
        (kubectl.run(&["get", "pod", "asker"]).code != 0).then_some(())
    });
    assert!(gone.is_some(), "kubectl run --rm deletes the pod");
    // Without stdin: the output from the moment of attaching, live, until the container
    // ends (it ticks until told to stop), in both of kubectl's protocols.
    let spdy = [("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")];
    for (name, env) in [("ticker", &[][..]), ("ticker-spdy", &spdy[..])] {
        kubectl.apply(
            &pod(
                name,
                &s.image,
                "Never",
                "until [ -f /tmp/stop ]; do echo tick; sleep 0.3; done; echo stopped",
                "",
            ),
            &[],
        );
        wait_pod(&kubectl, name, 60, |p| phase(p) == "Running");
        let mut attach = kubectl.spawn_env(&["attach", name], env);
        let mut stdout = std::io::BufReader::new(attach.stdout.take().expect("piped"));
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        kubectl.ok(&["exec", name, "--", "touch", "/tmp/stop"]);
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        let finished = attach.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&finished.stderr);
        assert_eq!(first, "tick\n", "{name}: {stderr}");
        assert!(rest.ends_with("stopped\n"), "{name}: {rest:?} {stderr}");
        assert!(finished.status.success(), "{name}: {stderr}");
    }
    // A terminal: an interactive shell, typed into through `kubectl attach -it` (script
    // gives kubectl a pty); `exit` ends the container.
    kubectl.apply(
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: term}}\nspec:\n  restartPolicy: Never\n  containers:\n  - {{name: main, image: {}, command: [sh], stdin: true, tty: true}}\n",
            s.image
        ),
        &[],
    );
    wait_pod(&kubectl, "term", 60, |p| phase(p) == "Running");
    let mut script = std::process::Command::new("script")
        .args([
            "-qec",
            &format!(
                "kubectl --kubeconfig {} attach -it term",
                s.cluster.kubeconfig().display()
            ),
            "/dev/null",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = script.stdin.take().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    std::io::Write::write_all(&mut input, b"echo answer-$((6*7))\r").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    std::io::Write::write_all(&mut input, b"exit\r").unwrap();
    let out = script.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("answer-42"), "{text}");
    let done = wait_pod(&kubectl, "term", 30, |p| phase(p) == "Succeeded");
    assert_eq!(
        done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );
}

fn condition(pod: &Value, kind: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_owned()
}

#[test]
fn probes_restart_unhealthy_containers_and_gate_readiness() {
    let s = setup();
    let kubectl = s.cluster.kubectl();
    // Healthy for about 2 s, then the liveness probe fails and the container restarts.
    kubectl.apply(
        &pod(
            "liveness",
            &s.image,
            "Always",
            "touch /tmp/healthy; sleep 2; rm /tmp/healthy; exec sleep 1000",
            "    livenessProbe: {exec: {command: [cat, /tmp/healthy]}, periodSeconds: 1, failureThreshold: 1}\n",
        ),
        &[],
    );
    // Ready only while /tmp/ready exists; an httpGet probe on busybox httpd must pass too.
    // The exec probe gets 10 s: in the emulated v2 guest an exec can take over a second.
    kubectl.apply(
        &pod(
            "readiness",
            &s.image,
            "Always",
            "httpd -p 8080 -h /www; exec sleep 1000",
            "    ports: [{name: web, containerPort: 8080}]\n    readinessProbe: {exec: {command: [test, -f, /tmp/ready]}, periodSeconds: 1, failureThreshold: 1, timeoutSeconds: 10}\n    livenessProbe: {httpGet: {path: /index.html, port: web}, periodSeconds: 1}\n    startupProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}\n",
        ),
        &[],
    );
    let restarted = wait_pod(&kubectl, "liveness", 60, |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    });
    assert_eq!(
        restarted["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 137,
        "{restarted:#}"
    );
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=liveness",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains("Liveness probe failed"), "{events}");
    assert!(
        events.contains("failed liveness probe, will be restarted"),
        "{events}"
    );

    let running = wait_pod(&kubectl, "readiness", 60, |p| {
        phase(p) == "Running" && p["status"]["containerStatuses"][0]["started"] == true
    });
    assert_eq!(condition(&running, "Ready"), "False", "{running:#}");
    assert_eq!(running["status"]["containerStatuses"][0]["ready"], false);
    kubectl.ok(&["exec", "readiness", "--", "touch", "/tmp/ready"]);
    wait_pod(&kubectl, "readiness", 30, |p| {
        condition(p, "Ready") == "True" && condition(p, "ContainersReady") == "True"
    });
    kubectl.ok(&["exec", "readiness", "--", "rm", "/tmp/ready"]);
    let unready = wait_pod(&kubectl, "readiness", 30, |p| {
        condition(p, "Ready") == "False"
    });
    // The httpGet liveness probe kept passing: no restart.
    assert_eq!(
        unready["status"]["containerStatuses"][0]["restartCount"], 0,
        "{unready:#}"
    );
    // An exec probe that times out is killed, not left to pile up with the next ones.
    kubectl.apply(
        &pod(
            "slow-probe",
            &s.image,
            "Always",
            "exec sleep 1000",
            "    readinessProbe: {exec: {command: [sleep, '30']}, periodSeconds: 1, timeoutSeconds: 1}\n",
        ),
        &[],
    );
    wait_pod(&kubectl, "slow-probe", 60, |p| phase(p) == "Running");
    std::thread::sleep(Duration::from_secs(6));
    let probes = kubectl.ok(&[
        "exec",
        "slow-probe",
        "--",
        "sh",
        "-c",
        "ps | grep -c '[s]leep 30' || true",
    ]);
    // Left alive, six or more would run by now; at most the current probe and the one being
    // killed may overlap (on a slow, emulated host the kill can land after the next start).
    let count: u32 = probes.trim().parse().unwrap();
    assert!(count <= 2, "{count} probe commands still run");
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=slow-probe",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains("timed out"), "{events}");
}

#[test]
fn graceful_delete_runs_the_prestop_hook_first() {
    let s = setup();
    let kubectl = s.cluster.kubectl();
    // The hook tells a listener of the test's on the host's loopback (a hostNetwork pod
    // shares it) before the container gets its SIGTERM.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    kubectl.apply(
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: hooked}}\nspec:\n  hostNetwork: true\n  terminationGracePeriodSeconds: 10\n  containers:\n  - name: main\n    image: {}\n    command: [sh, -c, \"trap 'exit 0' TERM; while true; do sleep 0.1; done\"]\n    lifecycle:\n      postStart: {{exec: {{command: [sh, -c, 'echo started > /tmp/post']}}}}\n      preStop: {{exec: {{command: [sh, -c, 'echo prestop-ran | nc 127.0.0.1 {port}']}}}}\n",
            s.image
        ),
        &[],
    );
    let running = wait_pod(&kubectl, "hooked", 60, |p| phase(p) == "Running");
    // hostNetwork: the pod's IP is the node's.
    assert_eq!(running["status"]["podIP"], "127.0.0.1");
    assert_eq!(
        kubectl.ok(&["exec", "hooked", "--", "cat", "/tmp/post"]),
        "started\n"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            let mut got = String::new();
            let _ = conn.read_to_string(&mut got);
            let _ = tx.send(got);
        }
    });
    kubectl.ok(&["delete", "pod", "hooked", "--timeout=60s"]);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        "prestop-ran\n"
    );
}

/// GET `path` from `127.0.0.1:port` over plain HTTP/1.0; the whole answer.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

#[test]
fn kubectl_port_forward_reaches_a_busybox_httpd() {
    let s = setup();
    let kubectl = s.cluster.kubectl();
    kubectl.apply(
        &pod(
            "web",
            &s.image,
            "Always",
            "exec httpd -f -p 8080 -h /www",
            "",
        ),
        &[],
    );
    wait_pod(&kubectl, "web", 60, |p| phase(p) == "Running");
    // kubectl 1.32 tries a WebSocket carrying SPDY first; the second run forces plain SPDY.
    for websockets in ["true", "false"] {
        let local = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = kubectl.spawn_env(
            &[
                "port-forward",
                "pod/web",
                &format!("{local}:8080"),
                "--address",
                "127.0.0.1",
            ],
            &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)],
        );
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().unwrap().unwrap();
        assert!(
            first.starts_with(&format!("Forwarding from 127.0.0.1:{local} -> 8080")),
            "{first}"
        );
        // Two connections, one after the other, over the same session.
        for _ in 0..2 {
            let answer = http_get(local, "/index.html").unwrap();
            assert!(
                answer.starts_with("HTTP/1.0 200 OK") || answer.starts_with("HTTP/1.1 200 OK"),
                "{answer}"
            );
            assert!(answer.ends_with("<h1>hello from skiff</h1>\n"), "{answer}");
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn images_imported_offline_run_with_pull_policy_never() {
    // No registry: the images come as a `docker save` archive and an OCI layout archive,
    // both written by skopeo, and are imported beside the running agent.
    let cluster = TestCluster::start_with_agent(&[]).unwrap();
    let kubectl = cluster.kubectl();
    let work = tempfile::tempdir().unwrap();
    let layout = skiff_tests::busybox_layout(work.path(), "v1").unwrap();
    let docker_save = work.path().join("docker-save.tar");
    let oci_archive = work.path().join("oci.tar");
    for (destination, name) in [
        (
            format!(
                "docker-archive:{}:example.com/offline/busybox:v1",
                docker_save.display()
            ),
            "docker",
        ),
        (
            format!(
                "oci-archive:{}:example.com/offline/busybox:v2",
                oci_archive.display()
            ),
            "oci",
        ),
    ] {
        let out = std::process::Command::new("skopeo")
            .args(["copy", &format!("oci:{layout}"), &destination])
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
    }
    let data_dir = cluster.dir.path().join("agent");
    let skiff = |args: &[&str]| {
        let out = std::process::Command::new(skiff_tests::skiff_binary())
            .arg("image")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let imported = skiff(&["import", docker_save.to_str().unwrap()]);
    assert!(
        imported.contains("imported example.com/offline/busybox:v1"),
        "{imported}"
    );
    let imported = skiff(&["import", oci_archive.to_str().unwrap()]);
    assert!(
        imported.contains("imported example.com/offline/busybox:v2"),
        "{imported}"
    );
    let listed = skiff(&["ls"]);
    for tag in ["v1", "v2"] {
        assert!(
            listed.contains(&format!("example.com/offline/busybox:{tag}")),
            "{listed}"
        );
    }
    for tag in ["v1", "v2"] {
        kubectl.apply(
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: offline-{tag}}}\nspec:\n  restartPolicy: Never\n  containers:\n  - {{name: main, image: 'example.com/offline/busybox:{tag}', imagePullPolicy: Never, command: [sh, -c, 'echo offline {tag}']}}\n"
            ),
            &[],
        );
    }
    for tag in ["v1", "v2"] {
        let name = format!("offline-{tag}");
        wait_pod(&kubectl, &name, 60, |p| phase(p) == "Succeeded");
        assert_eq!(kubectl.ok(&["logs", &name]), format!("offline {tag}\n"));
    }
    // An image that is not there, with pullPolicy Never, is ErrImageNeverPull.
    kubectl.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: missing}\nspec:\n  containers:\n  - {name: main, image: 'example.com/offline/busybox:v3', imagePullPolicy: Never}\n",
        &[],
    );
    let waiting = wait_pod(&kubectl, "missing", 60, |p| {
        p.pointer("/status/containerStatuses/0/state/waiting/reason")
            .is_some()
    });
    assert_eq!(
        waiting["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ErrImageNeverPull",
        "{waiting:#}"
    );
}

/// The seed's nginx Deployment (M1), its image swapped for the test's busybox running a
/// loop that ends at SIGTERM.
fn seed_deployment(image: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/seeds/M1.yaml");
    let seed = std::fs::read_to_string(path).unwrap();
    let command = r#"command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]"#;
    let replaced = seed.replacen(
        "image: nginx:1.7.9",
        &format!("image: {image}\n        {command}\n        imagePullPolicy: IfNotPresent"),
        1,
    );
    assert_ne!(replaced, seed, "the seed's image line moved");
    replaced
}

/// Follows the deployment's pods through `kubectl get -w` and keeps the fewest that were
/// ready (and not being deleted) at any moment once `all` were (the initial list arrives
/// one pod at a time), and every image seen.
struct ReadyWatch {
    child: std::process::Child,
    seen: std::thread::JoinHandle<(usize, std::collections::BTreeSet<String>)>,
}

impl ReadyWatch {
    fn start(kubectl: &Kubectl, selector: &str, all: usize) -> Self {
        let mut child = kubectl.spawn_env(
            &[
                "get",
                "pods",
                "-l",
                selector,
                "-w",
                "--output-watch-events",
                "-o",
                "json",
            ],
            &[],
        );
        let stdout = child.stdout.take().unwrap();
        let seen = std::thread::spawn(move || {
            let mut ready = std::collections::BTreeMap::<String, bool>::new();
            let mut fewest = usize::MAX;
            let mut armed = false;
            let mut images = std::collections::BTreeSet::new();
            for event in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
                let Ok(event) = event else { break };
                let pod = &event["object"];
                let name = pod["metadata"]["name"].as_str().unwrap_or("").to_owned();
                if let Some(image) = pod
                    .pointer("/spec/containers/0/image")
                    .and_then(Value::as_str)
                {
                    images.insert(image.to_owned());
                }
                let is_ready = event["type"] != "DELETED"
                    && pod["metadata"]["deletionTimestamp"].is_null()
                    && pod["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True");
                ready.insert(name, is_ready);
                let now = ready.values().filter(|r| **r).count();
                armed |= now >= all;
                if armed {
                    fewest = fewest.min(now);
                }
            }
            (fewest, images)
        });
        ReadyWatch { child, seen }
    }

    fn stop(mut self) -> (usize, std::collections::BTreeSet<String>) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.seen.join().unwrap()
    }
}

#[test]
fn the_seed_deployment_scales_rolls_out_within_max_unavailable_and_is_undone() {
    let s = setup();
    let k = s.cluster.kubectl();
    let v2 = push_busybox_image(&s.registry, "v2").unwrap();
    k.apply(&seed_deployment(&s.image), &[]);
    let rollout = |what: &str| {
        let run = k.run(&[
            "rollout",
            "status",
            "deployment/nginx-deployment",
            "--timeout=90s",
        ]);
        assert_eq!(run.code, 0, "{what}: {run:?}");
        assert_matches(&run.stdout, "successfully rolled out");
    };
    let ready = || {
        k.ok(&[
            "get",
            "deploy",
            "nginx-deployment",
            "-o",
            "jsonpath={.status.readyReplicas}/{.status.availableReplicas}/{.spec.replicas}",
        ])
    };
    let pods = || {
        let names = k.ok(&[
            "get",
            "pods",
            "-l",
            "app=nginx",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {end}",
        ]);
        names.split_whitespace().count()
    };
    let images_of_pods = || {
        k.ok(&[
            "get",
            "pods",
            "-l",
            "app=nginx",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ])
    };
    rollout("created");
    // 1 → 2 → 4 → 1, each to the point where every pod is available.
    for n in [2, 4, 1] {
        k.ok(&[
            "scale",
            "deployment/nginx-deployment",
            &format!("--replicas={n}"),
        ]);
        rollout(&format!("scaled to {n}"));
        assert_eq!(ready(), format!("{n}/{n}/{n}"));
        assert!(
            eventually(Duration::from_secs(40), || (pods() == n).then_some(())).is_some(),
            "{} pods, not {n}",
            pods()
        );
    }
    let hash_of = |rs: &str| {
        k.ok(&[
            "get",
            "rs",
            rs,
            "-o",
            "jsonpath={.metadata.labels.pod-template-hash}",
        ])
    };
    let first_rs = k.ok(&[
        "get",
        "rs",
        "-l",
        "app=nginx",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    assert_eq!(first_rs, format!("nginx-deployment-{}", hash_of(&first_rs)));

    // A new image, rolled out 3 at a time with one unavailable at most.
    k.ok(&["scale", "deployment/nginx-deployment", "--replicas=3"]);
    k.ok(&[
        "patch",
        "deployment/nginx-deployment",
        "--type=merge",
        "-p",
        r#"{"spec":{"strategy":{"rollingUpdate":{"maxUnavailable":1,"maxSurge":1}}}}"#,
    ]);
    rollout("scaled to 3");
    let watch = ReadyWatch::start(&k, "app=nginx", 3);
    std::thread::sleep(Duration::from_millis(500));
    k.ok(&[
        "set",
        "image",
        "deployment/nginx-deployment",
        &format!("nginx={v2}"),
    ]);
    rollout("rolled to v2");
    let images = images_of_pods();
    assert_eq!(
        images.split_whitespace().filter(|i| *i == v2).count(),
        3,
        "{images}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (fewest, seen) = watch.stop();
    assert!(
        fewest >= 2,
        "only {fewest} pods were ready at one moment (maxUnavailable 1 of 3)"
    );
    assert!(seen.contains(&v2) && seen.contains(&s.image), "{seen:?}");
    let history = k.ok(&["rollout", "history", "deployment/nginx-deployment"]);
    assert_matches(&history, r"(?m)^1 +");
    assert_matches(&history, r"(?m)^2 +");
    let described = k.ok(&["describe", "deployment", "nginx-deployment"]);
    assert_matches(
        &described,
        r"ScalingReplicaSet .*Scaled up replica set nginx-deployment-\w+ from \d+ to \d+",
    );

    // Undone to revision 1: its ReplicaSet is reused, as revision 3.
    let undo = k.ok(&[
        "rollout",
        "undo",
        "deployment/nginx-deployment",
        "--to-revision=1",
    ]);
    assert_matches(&undo, "rolled back");
    rollout("undone");
    assert!(
        eventually(Duration::from_secs(40), || {
            let images = images_of_pods();
            (images.split_whitespace().count() == 3
                && images.split_whitespace().all(|i| i == s.image))
            .then_some(())
        })
        .is_some(),
        "{}",
        images_of_pods()
    );
    let revision = k.ok(&[
        "get",
        "rs",
        &first_rs,
        "-o",
        "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
    ]);
    assert_eq!(revision, "3");
    let history = k.ok(&["rollout", "history", "deployment/nginx-deployment"]);
    assert_matches(&history, r"(?m)^2 +");
    assert_matches(&history, r"(?m)^3 +");
    let condition = k.ok(&[
        "get",
        "deploy",
        "nginx-deployment",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}",
    ]);
    assert_eq!(condition, "NewReplicaSetAvailable");
}

fn job(name: &str, image: &str, command: &str, spec: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n{spec}  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {image}\n        command: [\"sh\", \"-c\", {command:?}]\n"
    )
}

#[test]
fn jobs_run_pods_to_completion_or_failure_and_a_cronjob_starts_one_each_minute() {
    let s = setup();
    let k = s.cluster.kubectl();
    // First, as it has up to a minute to wait.
    k.apply(
        &format!(
            "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: minutely}}\nspec:\n  schedule: \"*/1 * * * *\"\n  timeZone: Etc/UTC\n  successfulJobsHistoryLimit: 1\n  jobTemplate:\n    metadata: {{labels: {{from: minutely}}}}\n    spec:\n      template:\n        spec:\n          restartPolicy: OnFailure\n          containers: [{{name: tick, image: {}, command: [echo, tick]}}]\n",
            s.image
        ),
        &[],
    );
    k.apply(
        &job(
            "indexed",
            &s.image,
            "echo index $JOB_COMPLETION_INDEX on $(hostname)",
            "  completions: 3\n  parallelism: 2\n  completionMode: Indexed\n",
        ),
        &[],
    );
    k.apply(
        &job("doomed", &s.image, "exit 42", "  backoffLimit: 6\n  podFailurePolicy:\n    rules: [{action: FailJob, onExitCodes: {operator: In, values: [42]}}]\n"),
        &[],
    );
    k.apply(
        &job("flaky", &s.image, "exit 1", "  backoffLimit: 0\n"),
        &[],
    );
    k.apply(
        &job("brief", &s.image, "true", "  ttlSecondsAfterFinished: 1\n"),
        &[],
    );
    let wait_for = |job: &str, condition: &str| {
        let run = k.run(&[
            "wait",
            &format!("--for=condition={condition}"),
            &format!("job/{job}"),
            "--timeout=90s",
        ]);
        assert_eq!(
            run.code,
            0,
            "job {job} never {condition}: {run:?}\n{}",
            k.ok(&["get", "job", job, "-o", "yaml"])
        );
    };
    let get = |job: &str, path: &str| k.ok(&["get", "job", job, "-o", &format!("jsonpath={path}")]);

    // Every index runs once, as a pod named and numbered for it.
    wait_for("indexed", "complete");
    assert_eq!(
        get("indexed", "{.status.succeeded}/{.status.completedIndexes}"),
        "3/0-2"
    );
    let logs = k.ok(&["logs", "-l", "job-name=indexed", "--prefix=false"]);
    for i in 0..3 {
        assert_matches(&logs, &format!("(?m)^index {i} on indexed-{i}$"));
    }
    let finalizers = k.ok(&[
        "get",
        "pods",
        "-l",
        "job-name=indexed",
        "-o",
        "jsonpath={.items[*].metadata.finalizers}",
    ]);
    assert_eq!(finalizers, "", "counted pods keep no tracking finalizer");
    assert_matches(
        &k.ok(&["get", "job", "indexed"]),
        r"(?m)^indexed +Complete +3/3 +\d+s",
    );
    assert_matches(
        &k.ok(&["describe", "job", "indexed"]),
        r"SuccessfulCreate .*Created pod: indexed-2-\w+",
    );

    // Exit 42 matches the FailJob rule; exit 1 with no retries exceeds the backoff limit.
    wait_for("doomed", "failed");
    assert_matches(
        &get(
            "doomed",
            "{.status.conditions[?(@.type==\"Failed\")].reason}: {.status.conditions[?(@.type==\"Failed\")].message}",
        ),
        r"^PodFailurePolicy: Container main for pod default/doomed-\w+ failed with exit code 42 matching FailJob rule at index 0$",
    );
    assert_eq!(get("doomed", "{.status.failed}"), "1");
    wait_for("flaky", "failed");
    assert_eq!(
        get(
            "flaky",
            "{.status.conditions[?(@.type==\"Failed\")].reason}/{.status.failed}"
        ),
        "BackoffLimitExceeded/1"
    );
    assert_matches(
        &k.ok(&["get", "job", "flaky"]),
        r"(?m)^flaky +Failed +0/1 +",
    );

    // A second after it finished, the brief job is deleted with its pod.
    let gone = eventually(Duration::from_secs(30), || {
        let job = k.run(&["get", "job", "brief"]);
        let pods = k.ok(&["get", "pods", "-l", "job-name=brief", "-o", "name"]);
        (job.code != 0 && pods.is_empty()).then_some(())
    });
    assert!(
        gone.is_some(),
        "{}",
        k.ok(&["get", "job,pods", "-o", "wide"])
    );

    // The CronJob's job: on a minute, named for it, done, and the CronJob says so.
    let run = eventually(Duration::from_secs(100), || {
        let status = k.ok(&[
            "get",
            "cronjob",
            "minutely",
            "-o",
            "jsonpath={.status.lastScheduleTime} {.status.lastSuccessfulTime}",
        ]);
        let (scheduled, succeeded) = status.split_once(' ')?;
        (!succeeded.is_empty()).then(|| scheduled.to_owned())
    });
    let scheduled = run.unwrap_or_else(|| {
        panic!(
            "the cronjob never ran a job to success:\n{}\n{}",
            k.ok(&["get", "cronjob,jobs,pods", "-o", "wide"]),
            k.ok(&["describe", "cronjob", "minutely"])
        )
    });
    assert_matches(&scheduled, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:00Z$");
    let minutes = scheduled.parse::<jiff::Timestamp>().unwrap().as_second() / 60;
    let job_name = format!("minutely-{minutes}");
    assert_eq!(
        k.ok(&[
            "get",
            "jobs",
            "-l",
            "from=minutely",
            "-o",
            "jsonpath={.items[0].metadata.name}"
        ]),
        job_name
    );
    assert_eq!(
        k.ok(&[
            "get",
            "job",
            &job_name,
            "-o",
            "jsonpath={.metadata.annotations.batch\\.kubernetes\\.io/cronjob-scheduled-timestamp}",
        ]),
        scheduled.replace('Z', "+00:00")
    );
    assert_eq!(k.ok(&["logs", &format!("job/{job_name}")]), "tick\n");
    assert_matches(
        &k.ok(&["describe", "cronjob", "minutely"]),
        &format!("SuccessfulCreate .*Created job {job_name}"),
    );
}

#[test]
fn a_statefulset_starts_in_order_and_rolls_out_from_the_top_down_to_its_partition() {
    let s = setup();
    let k = s.cluster.kubectl();
    let v2 = push_busybox_image(&s.registry, "v2").unwrap();
    k.apply(
        &format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: db}}\nspec:\n  serviceName: db\n  replicas: 3\n  selector: {{matchLabels: {{app: db}}}}\n  template:\n    metadata: {{labels: {{app: db}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: db\n        image: {}\n        command: [sh, -c, 'echo $(hostname) > /tmp/me; exec sleep 600']\n        readinessProbe: {{exec: {{command: [cat, /tmp/me]}}, periodSeconds: 1, timeoutSeconds: 10, failureThreshold: 5}}\n",
            s.image
        ),
        &[],
    );
    let status = |what: &str| {
        let run = k.run(&["rollout", "status", "sts/db", "--timeout=90s"]);
        assert_eq!(
            run.code,
            0,
            "{what}: {run:?}\n{}",
            k.ok(&["get", "pods", "-o", "wide"])
        );
    };
    status("created");
    // Each pod was made only once the one before it was ready.
    let pod = |name: &str| pod_json(&k, name);
    let ready_at = |p: &Value| -> jiff::Timestamp {
        let conditions = p
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .unwrap();
        let ready = conditions.iter().find(|c| c["type"] == "Ready").unwrap();
        ready["lastTransitionTime"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let created_at = |p: &Value| -> jiff::Timestamp {
        p.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .unwrap()
            .parse()
            .unwrap()
    };
    for (before, after) in [("db-0", "db-1"), ("db-1", "db-2")] {
        let (before, after) = (pod(before), pod(after));
        assert!(
            created_at(&after) >= ready_at(&before),
            "{after:#}\nbefore\n{before:#}"
        );
    }
    assert_eq!(k.ok(&["exec", "db-2", "--", "cat", "/tmp/me"]), "db-2\n");

    // A new image with partition 2: only db-2 takes it.
    let images = || {
        k.ok(&[
            "get",
            "pods",
            "-l",
            "app=db",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.spec.containers[0].image} {end}",
        ])
    };
    k.ok(&[
        "patch",
        "sts/db",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":2}}}}"#,
    ]);
    k.ok(&["set", "image", "sts/db", &format!("db={v2}")]);
    status("rolled to the partition");
    let want = format!("db-0={} db-1={} db-2={v2} ", s.image, s.image);
    assert!(
        eventually(Duration::from_secs(30), || (images() == want).then_some(())).is_some(),
        "{}",
        images()
    );
    // Partition 0: the rest follow, top down; the update revision becomes current.
    k.ok(&[
        "patch",
        "sts/db",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#,
    ]);
    status("rolled out");
    let revisions = || {
        k.ok(&["get", "sts", "db", "-o", "jsonpath={.status.currentRevision}={.status.updateRevision} {.status.updatedReplicas}/{.status.readyReplicas}"])
    };
    let done = eventually(Duration::from_secs(30), || {
        let r = revisions();
        let (names, counts) = r.split_once(' ')?;
        let (current, update) = names.split_once('=')?;
        (current == update && counts == "3/3").then_some(())
    });
    assert!(done.is_some(), "{}", revisions());
    assert_eq!(images(), format!("db-0={v2} db-1={v2} db-2={v2} "));
    let db0 = pod("db-0");
    let db1 = pod("db-1");
    assert!(
        created_at(&db0) >= ready_at(&db1),
        "db-0 was replaced before db-1 was ready again"
    );

    // Scaled to 1: db-2 goes, then db-1.
    k.ok(&["scale", "sts/db", "--replicas=1"]);
    status("scaled down");
    assert!(
        eventually(Duration::from_secs(30), || (images()
            == format!("db-0={v2} "))
        .then_some(()))
        .is_some(),
        "{}",
        images()
    );
    assert_matches(
        &k.ok(&["describe", "sts", "db"]),
        "SuccessfulDelete .*delete Pod db-2 in StatefulSet db successful",
    );
}

#[test]
fn kubectl_top_shows_usage_read_from_the_agents_cgroups() {
    let s = setup_with(&["--metric-resolution", "1s"]);
    let (k, image) = (s.cluster.kubectl(), s.image.clone());
    k.apply(
        &pod(
            "burner",
            &image,
            "Always",
            "while :; do :; done",
            "    resources: {requests: {cpu: 100m}}\n",
        ),
        &[],
    );
    wait_pod(&k, "burner", 60, |p| phase(p) == "Running");
    // A busy loop uses most of a core (the machine may be busy too: at least 200m).
    let top = eventually(Duration::from_secs(30), || {
        let run = k.run(&["top", "pod", "burner", "--no-headers"]);
        let cores: u64 = run
            .stdout
            .split_whitespace()
            .nth(1)?
            .strip_suffix('m')?
            .parse()
            .ok()?;
        (cores >= 200).then_some(run.stdout)
    });
    let top = top.unwrap_or_else(|| panic!("{:?}", k.run(&["top", "pod", "burner"])));
    assert_matches(&top, r"^burner +\d+m +\d+Mi");
    let containers = k.ok(&["top", "pod", "burner", "--containers", "--no-headers"]);
    assert_matches(&containers, r"^burner +main +\d+m +\d+Mi");
    let nodes = k.ok(&["top", "node", "--no-headers"]);
    assert_matches(&nodes, r"^\S+ +\d+m +\d+% +\d+Mi +\d+%");
    let raw = k.ok(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/burner",
    ]);
    let metrics: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(metrics["kind"], "PodMetrics");
    assert_matches(metrics["window"].as_str().unwrap(), r"^1(\.\d+)?s$");
    let missing = k.fail(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nope",
    ]);
    assert_matches(&missing, "NotFound|not found");
}

#[test]
fn an_autoscaler_scales_a_cpu_burning_deployment_up_and_back_down() {
    let s = setup_with(&[
        "--metric-resolution",
        "1s",
        "--horizontal-pod-autoscaler-sync-period",
        "2s",
    ]);
    let (k, image) = (s.cluster.kubectl(), s.image.clone());
    // Each pod burns CPU for its first 40 s, then idles: the load ends by itself, and a
    // slow machine's late start still sees it.
    k.apply(
        &format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: burner}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: burner}}}}\n  template:\n    metadata: {{labels: {{app: burner}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: burn\n        image: {image}\n        command: [sh, -c, 'end=$(( $(date +%s) + 40 )); while [ $(date +%s) -lt $end ]; do :; done; exec sleep 3600']\n        resources: {{requests: {{cpu: 100m}}}}\n---\napiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: burner}}\nspec:\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: burner}}\n  minReplicas: 1\n  maxReplicas: 3\n  metrics: [{{type: Resource, resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}}}]\n  behavior: {{scaleDown: {{stabilizationWindowSeconds: 3}}}}\n"
        ),
        &[],
    );
    let replicas = || k.ok(&["get", "deploy", "burner", "-o", "jsonpath={.spec.replicas}"]);
    // Waits for the replicas, then finds the autoscaler's event for them.
    let scaled_to = |n: &str, secs: u64, reason: &str| {
        let done = eventually(Duration::from_secs(secs), || {
            (replicas() == n).then_some(())
        });
        let described = k.ok(&["describe", "hpa", "burner"]);
        assert!(
            done.is_some(),
            "never scaled to {n}: {}\n{described}",
            replicas()
        );
        assert_matches(
            &described,
            &format!(r"SuccessfulRescale +.*New size: {n}; reason: {reason}"),
        );
    };
    scaled_to(
        "3",
        90,
        r"cpu resource utilization \(percentage of request\) above target",
    );
    assert_matches(
        &k.ok(&["get", "hpa", "burner"]),
        r"(?m)^burner +Deployment/burner +cpu: \d+%/50% +1 +3 +\d +",
    );
    // The burn ends; after the 3 s stabilization window it goes back to one.
    scaled_to("1", 120, "All metrics below target");
    let conditions = k.ok(&[
        "get",
        "hpa",
        "burner",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"ScalingActive\")].reason}",
    ]);
    assert_eq!(conditions, "ValidMetricFound");
}
