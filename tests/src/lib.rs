//! The end-to-end test kit: a [`TestCluster`] runs the real `skiff server` binary on
//! `127.0.0.1` with its own data directory, and [`Kubectl`] runs the real kubectl against it
//! with a fresh discovery cache.
//!
//! The binary is `target/debug/skiff` next to the test executable (the test script builds
//! it first); `SKIFF_BIN` overrides the path.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where the skiff binary is.
pub fn skiff_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SKIFF_BIN") {
        return PathBuf::from(path);
    }
    // target/debug/deps/<test> → target/debug/skiff
    let exe = std::env::current_exe().expect("the test executable has a path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    dir.join("skiff")
}

/// A running `skiff server` process.
pub struct TestCluster {
    /// The data directory (certificates, kubeconfig, database).
    pub dir: tempfile::TempDir,
    /// The address the API listens on.
    pub addr: SocketAddr,
    extra_args: Vec<String>,
    child: Option<Child>,
    /// Everything the server wrote to stderr, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
    /// kubectl's discovery cache for this cluster.
    cache: tempfile::TempDir,
    /// Whether the server runs its node agent (real containers).
    agent: bool,
}

impl TestCluster {
    /// Starts a server on a free port.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Starts a server with extra flags, without its node agent (tests make simulated
    /// nodes).
    pub fn start_with(extra_args: &[&str]) -> Result<Self> {
        Self::start_inner(extra_args, false)
    }

    /// Starts a server with its node agent: the machine is the cluster's one node and pods
    /// run in real containers. The agent's HTTPS port is picked by the kernel.
    pub fn start_with_agent(extra_args: &[&str]) -> Result<Self> {
        Self::start_inner(extra_args, true)
    }

    fn start_inner(extra_args: &[&str], agent: bool) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut cluster = TestCluster {
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            log: Arc::default(),
            cache: tempfile::tempdir()?,
            agent,
        };
        cluster.spawn(0)?;
        if agent {
            cluster.wait_node_ready()?;
        }
        Ok(cluster)
    }

    /// Waits for the built-in agent's node to report Ready. The server says it is ready
    /// before its agent has registered: the Node is created first and its status (capacity,
    /// conditions) is written after, as the kubelet does, which takes seconds under emulation.
    fn wait_node_ready(&self) -> Result<()> {
        let kubectl = self.kubectl();
        let ready = eventually(Duration::from_secs(60), || {
            let run = kubectl.run(&["get", "nodes", "-o", "json"]);
            let nodes: serde_json::Value = serde_json::from_str(&run.stdout).ok()?;
            nodes["items"]
                .as_array()?
                .iter()
                .flat_map(|n| n["status"]["conditions"].as_array().into_iter().flatten())
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                .then_some(())
        });
        match ready {
            Some(()) => Ok(()),
            None => bail!("the agent's node never became Ready:\n{}", self.logs()),
        }
    }

    fn spawn(&mut self, port: u16) -> Result<()> {
        let binary = skiff_binary();
        if !binary.exists() {
            bail!(
                "{} is missing: run `cargo build -p skiff` first (scripts/test.sh does)",
                binary.display()
            );
        }
        let mut child = Command::new(&binary)
            .arg("server")
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--port")
            .arg(port.to_string())
            .args(if self.agent {
                &["--agent-port", "0"][..]
            } else {
                &["--disable-agent"][..]
            })
            .args(&self.extra_args)
            .env(
                "SKIFF_LOG",
                std::env::var("SKIFF_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let (ready_tx, ready_rx) = mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("skiff server ready")
                    && let Some(addr) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("listen.address="))
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = ready_tx.send(addr);
                }
                log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        self.child = Some(child);
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => {
                self.addr = addr;
                Ok(())
            }
            Err(_) => bail!("skiff server did not become ready:\n{}", self.logs()),
        }
    }

    /// The server's data directory (its built-in agent's is `agent/` in it).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far.
    pub fn logs(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// The admin kubeconfig the server wrote.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig.yaml")
    }

    /// A kubectl for this cluster.
    pub fn kubectl(&self) -> Kubectl {
        Kubectl {
            kubeconfig: self.kubeconfig(),
            cache: self.cache.path().to_owned(),
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()?;
            if !status.success() {
                bail!("kill -TERM failed");
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait()? {
                    if !status.success() {
                        bail!("skiff server exited with {status}:\n{}", self.logs());
                    }
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!(
                        "skiff server did not stop within 20 s of SIGTERM:\n{}",
                        self.logs()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Kills the server with SIGKILL (no chance to clean up).
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// Starts a stopped or killed server again on the same port and data directory, with
    /// possibly different extra flags.
    pub fn start_again_with(&mut self, extra_args: &[&str]) -> Result<()> {
        self.extra_args = extra_args.iter().map(|s| (*s).to_owned()).collect();
        self.start_again()
    }

    /// Starts a stopped or killed server again on the same port and data directory.
    pub fn start_again(&mut self) -> Result<()> {
        let port = self.addr.port();
        // The port may linger briefly after a kill; retry binding for a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn(port) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    if let Some(mut c) = self.child.take() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.agent {
            remove_containers(&self.dir.path().join("agent"));
        }
    }
}

/// Kills what the agent with data directory `dir` left running (containers outlive their
/// agent by design), unmounts its root filesystems and namespace files, and removes its
/// cgroups, so the temporary directory can go.
pub fn remove_containers(dir: &Path) {
    let containers = dir.join("containers");
    let mut cgroups = Vec::new();
    for entry in std::fs::read_dir(&containers)
        .into_iter()
        .flatten()
        .flatten()
    {
        let read = |name: &str| -> Option<serde_json::Value> {
            serde_json::from_slice(&std::fs::read(entry.path().join(name)).ok()?).ok()
        };
        if let Some(state) = read("state.json") {
            for key in ["pid", "shimPid"] {
                if let Some(pid) = state[key].as_i64() {
                    let _ = Command::new("kill")
                        .arg("-9")
                        .arg(pid.to_string())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        if let Some(path) = read("config.json")
            .and_then(|c| c.pointer("/linux/cgroupsPath")?.as_str().map(str::to_owned))
        {
            cgroups.push(path);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let prefix = dir.display().to_string();
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
    for path in cgroups {
        let rel = path.trim_start_matches('/');
        let parent = Path::new(rel)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(hierarchy.path().join(rel));
            let _ = std::fs::remove_dir(hierarchy.path().join(&parent));
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(rel));
    }
}

/// Builds a small image from Debian's busybox-static (`/usr/bin/busybox` and its applets,
/// `/etc/passwd`, a `/www/index.html`) with umoci, and pushes it to `registry` as
/// `<registry>/test/busybox:<tag>` with skopeo; returns the reference.
pub fn push_busybox_image(registry: &TestRegistry, tag: &str) -> Result<String> {
    let work = tempfile::tempdir()?;
    let image = busybox_layout(work.path(), tag)?;
    let reference = format!("{}/test/busybox:{tag}", registry.host);
    run_tool(
        Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{image}"))
            .arg(format!("docker://{reference}")),
    )?;
    Ok(reference)
}

fn run_tool(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Builds the busybox image as an OCI image layout in `work` with umoci; returns
/// `<layout>:<tag>` (what skopeo's `oci:` transport takes).
pub fn busybox_layout(work: &Path, tag: &str) -> Result<String> {
    for tool in ["/usr/bin/busybox", "/usr/bin/umoci", "/usr/bin/skopeo"] {
        if !Path::new(tool).exists() {
            bail!("{tool} is missing: scripts/test.sh installs busybox-static, umoci and skopeo");
        }
    }
    let layout = work.join("layout");
    let bundle = work.join("bundle");
    let run = run_tool;
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image"]).arg(&image))?;
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(&image)
        .arg(&bundle))?;
    let root = bundle.join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "www"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox"))?;
    let list = Command::new("/usr/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        // The binary itself is in the list; linking it to itself would replace it.
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnobody:x:65534:\n")?;
    std::fs::write(root.join("www/index.html"), "<h1>hello from skiff</h1>\n")?;
    run(Command::new("chmod").arg("1777").arg(root.join("tmp")))?;
    run(Command::new("umoci")
        .args(["repack", "--image"])
        .arg(&image)
        .arg(&bundle))?;
    run(Command::new("umoci")
        .args(["config", "--image"])
        .arg(&image)
        .args(["--config.cmd", "/bin/sh", "--config.env", "PATH=/bin"]))?;
    Ok(image)
}

/// The result of a kubectl run.
#[derive(Debug)]
pub struct Run {
    /// The exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The real kubectl, pointed at one cluster with its own discovery cache.
#[derive(Clone, Debug)]
pub struct Kubectl {
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    /// A kubectl using another kubeconfig (another user, say), with a discovery cache
    /// beside it.
    pub fn with_kubeconfig(kubeconfig: &Path) -> Kubectl {
        Kubectl {
            kubeconfig: kubeconfig.to_owned(),
            cache: kubeconfig.with_extension("cache"),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("/usr/bin/kubectl");
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", &self.cache)
            .env_remove("KUBECTL_REMOTE_COMMAND_WEBSOCKETS")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs kubectl with `env` extra environment variables.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run::from(cmd.output().expect("kubectl runs"))
    }

    /// Starts kubectl with `env` extra environment variables, its output piped, without
    /// waiting for it.
    pub fn spawn_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().expect("kubectl runs")
    }

    /// Runs kubectl.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    /// Runs kubectl with `input` on its standard input.
    pub fn run_stdin(&self, args: &[&str], input: &str) -> Run {
        use std::io::Write;
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl runs");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())
            .expect("kubectl reads its input");
        Run::from(child.wait_with_output().expect("kubectl finishes"))
    }

    /// Runs kubectl, expecting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(
            run.code, 0,
            "kubectl {args:?} failed:\n{}{}",
            run.stdout, run.stderr
        );
        assert_no_warnings(args, &run.stderr);
        run.stdout
    }

    /// Applies YAML from a string, expecting success; returns stdout.
    pub fn apply(&self, yaml: &str, extra: &[&str]) -> String {
        let mut args = vec!["apply", "-f", "-"];
        args.extend_from_slice(extra);
        let run = self.run_stdin(&args, yaml);
        assert_eq!(
            run.code, 0,
            "kubectl {args:?} failed:\n{}{}",
            run.stdout, run.stderr
        );
        run.stdout
    }

    /// Runs kubectl, expecting failure; returns stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_ne!(
            run.code, 0,
            "kubectl {args:?} should have failed:\n{}",
            run.stdout
        );
        run.stderr
    }

    /// The pods `selector` selects that are not being deleted (with no agent to finish a
    /// deletion, or one that stopped, deleted pods stay), as JSON.
    pub fn live_pods(&self, selector: &str) -> Vec<serde_json::Value> {
        let out = self.ok(&["get", "pods", "-l", selector, "-o", "json"]);
        let list: serde_json::Value = serde_json::from_str(&out).expect("a pod list");
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .cloned()
            .collect()
    }
}

/// Fails if kubectl printed client-side warnings (`Warning:` lines or klog `W…` lines such
/// as `very short watch`).
pub fn assert_no_warnings(args: &[&str], stderr: &str) {
    let klog = regex::Regex::new(r"^[WE]\d{4} ").expect("valid regex");
    for line in stderr.lines() {
        assert!(
            !line.starts_with("Warning:") && !klog.is_match(line),
            "kubectl {args:?} warned: {line}\n{stderr}"
        );
    }
}

/// Asserts that `text` has a line matching the (multi-line mode) regex.
#[track_caller]
pub fn assert_matches(text: &str, pattern: &str) {
    let re = regex::RegexBuilder::new(pattern)
        .multi_line(true)
        .build()
        .expect("valid regex");
    assert!(re.is_match(text), "expected /{pattern}/ in:\n{text}");
}

/// Polls `check` until it returns `Some`, for at most `timeout`.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A real OCI registry (Debian's `docker-registry`, the CNCF distribution) on a free
/// loopback port, with its storage in a temporary directory; stopped on drop.
pub struct TestRegistry {
    /// `127.0.0.1:port`, the registry part of references and the `--insecure-registry` value.
    pub host: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Starts the registry on a port the kernel picks and waits until it answers `GET /v2/`.
    pub fn start() -> Result<Self> {
        let binary = Path::new("/usr/bin/docker-registry");
        if !binary.exists() {
            bail!("/usr/bin/docker-registry is missing: scripts/test.sh installs docker-registry");
        }
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n",
                dir.path().join("data").display()
            ),
        )?;
        let mut child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting docker-registry")?;
        // It logs `msg="listening on 127.0.0.1:PORT"` once bound; the rest of its log is kept
        // for the error message.
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("msg=\"listening on ").nth(1)
                    && let Some(host) = rest.split('"').next()
                {
                    let _ = tx.send(Ok(host.to_owned()));
                }
                seen.push(line);
            }
            let _ = tx.send(Err(seen.join("\n")));
        });
        let host = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(host)) => host,
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                let log = match outcome {
                    Ok(Err(log)) => log,
                    _ => "(no output in 10 s)".to_owned(),
                };
                bail!("docker-registry did not start:\n{log}");
            }
        };
        if eventually(Duration::from_secs(10), || answers_v2(&host).then_some(())).is_none() {
            let _ = child.kill();
            bail!("docker-registry at {host} does not answer GET /v2/");
        }
        Ok(TestRegistry {
            host,
            child,
            _dir: dir,
        })
    }
}

/// Whether an HTTP registry at `host` answers `GET /v2/` with 200.
fn answers_v2(host: &str) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(
            format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
