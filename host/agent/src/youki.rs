//! The real runtime: youki's libcontainer, driven through one `skiff shim run` process per
//! container (see `shim.rs` for why not in-process).

use std::collections::HashMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

use crate::runtime::{
    ContainerConfig, ContainerRuntime, ContainerState, ExecSession, Exit, Listed, PodLimits,
    RuntimeError, Started,
};
use crate::shim::{ExitState, Ready, RunningState};

/// Where the runtime keeps its containers, and the binary that has the `shim` subcommand.
#[derive(Debug, Clone)]
pub struct YoukiConfig {
    /// One directory per container: the bundle (`config.json`), `state.json`, `exit.json`.
    pub dir: PathBuf,
    /// libcontainer's state root.
    pub root: PathBuf,
    /// The `skiff` binary (by default this process's own executable).
    pub shim: PathBuf,
}

/// How long a container may take to be created and started.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs containers with libcontainer through per-container shims.
pub struct YoukiRuntime {
    config: YoukiConfig,
    /// The stdout of each shim this runtime started, which ends once the container's exit
    /// is recorded. Shims adopted after a restart are watched through their PIDs instead.
    outputs: Arc<Mutex<HashMap<String, std::fs::File>>>,
    /// The fork server (`skiff shim server`) the shims come from, started on first use.
    server: Mutex<Option<ShimServer>>,
}

/// A running `skiff shim server` and the agent's end of its request socket.
struct ShimServer {
    process: Child,
    socket: std::os::fd::OwnedFd,
}

impl ShimServer {
    fn start(shim: &Path) -> std::io::Result<ShimServer> {
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        // A server that stops answering must not hold up every start behind it: after
        // this, the request fails and a new server is started.
        rustix::net::sockopt::set_socket_timeout(
            &ours,
            rustix::net::sockopt::Timeout::Recv,
            Some(std::time::Duration::from_secs(10)),
        )?;
        let process = Command::new(shim)
            .arg("shim")
            .arg("server")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(ShimServer {
            process,
            socket: ours,
        })
    }

    /// Ends the server, if any (the shims it forked run on: each has a session of its own).
    fn stop(server: Option<ShimServer>) {
        if let Some(mut server) = server {
            let _ = server.process.kill();
            let _ = server.process.wait();
        }
    }

    /// Has the server fork a shim for `request` with `stdout`; the shim's answer.
    fn fork(&self, request: &[u8], stdout: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Ready> {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let fds = [stdout];
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        rustix::net::sendmsg(
            &self.socket,
            &[std::io::IoSlice::new(request)],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
        let mut answer = [0u8; 4096];
        let n = loop {
            match rustix::net::recv(&self.socket, &mut answer, rustix::net::RecvFlags::empty()) {
                Err(rustix::io::Errno::INTR) => continue,
                other => break other?.0,
            }
        };
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        serde_json::from_slice(&answer[..n]).map_err(std::io::Error::other)
    }
}

impl Drop for YoukiRuntime {
    fn drop(&mut self) {
        ShimServer::stop(
            self.server
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }
}

impl YoukiRuntime {
    /// A runtime keeping its state in `config`'s directories.
    pub fn new(config: YoukiConfig) -> Result<Self, RuntimeError> {
        for dir in [&config.dir, &config.root] {
            std::fs::create_dir_all(dir)
                .map_err(RuntimeError::io(format!("creating {}", dir.display())))?;
        }
        Ok(YoukiRuntime {
            config,
            outputs: Arc::default(),
            server: Mutex::default(),
        })
    }

    /// Forks the shim for `args` from the server (started, or started again if it died),
    /// and returns the read end of the shim's stdout with its answer.
    fn fork_shim(&self, args: &crate::shim::RunArgs) -> std::io::Result<(std::fs::File, Ready)> {
        let request = serde_json::to_vec(args)?;
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let mut server = self.server.lock().unwrap_or_else(|p| p.into_inner());
        let mut retried = false;
        loop {
            let running = server
                .as_mut()
                .is_some_and(|s| matches!(s.process.try_wait(), Ok(None)));
            let current = match server.take() {
                Some(s) if running => server.insert(s),
                gone => {
                    ShimServer::stop(gone);
                    server.insert(ShimServer::start(&self.config.shim)?)
                }
            };
            match current.fork(&request, std::os::fd::AsFd::as_fd(&write)) {
                Ok(ready) => return Ok((std::fs::File::from(read), ready)),
                Err(e) if retried => return Err(e),
                // It died since the check: once more, with a new one.
                Err(_) => {
                    ShimServer::stop(server.take());
                    retried = true;
                }
            }
        }
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.config.dir.join(id)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether the shim that wrote `state` still runs (a PID can be reused after a reboot, so
/// its start time must match too).
fn shim_alive(state: &RunningState) -> bool {
    match state.shim_start {
        Some(start) => crate::shim::process_start(state.shim_pid) == Some(start),
        None => Path::new(&format!("/proc/{}", state.shim_pid)).exists(),
    }
}

fn state_of(dir: &Path) -> ContainerState {
    if let Some(exit) = read_json::<ExitState>(&dir.join("exit.json")) {
        return ContainerState::Exited(exit);
    }
    match read_json::<RunningState>(&dir.join("state.json")) {
        Some(s) if shim_alive(&s) => ContainerState::Running(Started {
            pid: s.pid,
            started_at: s.started_at,
        }),
        _ => ContainerState::Unknown,
    }
}

impl ContainerRuntime for YoukiRuntime {
    fn start(&self, config: ContainerConfig) -> BoxFuture<'_, Result<Started, RuntimeError>> {
        Box::pin(async move {
            let dir = self.container_dir(&config.id);
            std::fs::create_dir_all(&dir)
                .map_err(RuntimeError::io(format!("creating {}", dir.display())))?;
            let spec = serde_json::to_vec(&config.spec)
                .map_err(|e| RuntimeError::Start(format!("encoding the spec: {e}")))?;
            std::fs::write(dir.join("config.json"), spec)
                .map_err(RuntimeError::io("writing config.json"))?;
            let cgroup = config
                .spec
                .linux()
                .as_ref()
                .and_then(|l| l.cgroups_path().clone())
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tty = config
                .spec
                .process()
                .as_ref()
                .and_then(|p| p.terminal())
                .unwrap_or(false);
            let args = crate::shim::RunArgs {
                id: config.id.clone(),
                bundle: dir.clone(),
                root: self.config.root.clone(),
                dir: dir.clone(),
                log: config.log_path.clone(),
                cgroup,
                stdin: config.stdin,
                stdin_once: config.stdin_once,
                tty,
            };
            let (stdout, forked) = self.fork_shim(&args).map_err(RuntimeError::io(format!(
                "starting the shim server {}",
                self.config.shim.display()
            )))?;
            let shim = match forked {
                Ready {
                    pid: Some(pid),
                    error: None,
                } => nix::unistd::Pid::from_raw(pid),
                Ready { error, .. } => return Err(RuntimeError::Start(error.unwrap_or_default())),
            };
            let read = tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                let mut reader = std::io::BufReader::new(stdout);
                // Nothing follows the line until the end, so nothing is left buffered.
                reader
                    .read_line(&mut line)
                    .map(|_| (line, reader.into_inner()))
            });
            // libcontainer can hang (a stuck mount); the pod worker must not.
            let (line, stdout) = match tokio::time::timeout(START_TIMEOUT, read).await {
                Ok(line) => line
                    .map_err(|e| RuntimeError::Start(format!("waiting for the shim: {e}")))?
                    .map_err(RuntimeError::io("reading the shim's answer"))?,
                Err(_) => {
                    let _ = nix::sys::signal::kill(shim, nix::sys::signal::Signal::SIGKILL);
                    return Err(RuntimeError::Start(format!(
                        "the container did not start within {}s",
                        START_TIMEOUT.as_secs()
                    )));
                }
            };
            let ready: Ready = serde_json::from_str(line.trim()).unwrap_or(Ready {
                pid: None,
                error: Some(format!(
                    "the shim exited without an answer: {}",
                    std::fs::read_to_string(dir.join("shim.log"))
                        .unwrap_or_default()
                        .trim()
                )),
            });
            match (ready.pid, ready.error) {
                (Some(pid), None) => {
                    let started_at = read_json::<RunningState>(&dir.join("state.json"))
                        .map(|s| s.started_at)
                        .unwrap_or_else(jiff::Timestamp::now);
                    self.outputs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(config.id.clone(), stdout);
                    debug!(id = %config.id, pid, "container started");
                    Ok(Started { pid, started_at })
                }
                (_, error) => Err(RuntimeError::Start(error.unwrap_or_default())),
            }
        })
    }

    fn wait(&self, id: &str) -> BoxFuture<'static, Result<Exit, RuntimeError>> {
        let dir = self.container_dir(id);
        let id = id.to_owned();
        let outputs = self.outputs.clone();
        Box::pin(async move {
            let state: Option<RunningState> = read_json(&dir.join("state.json"));
            // A shim this runtime started ends its stdout once the exit is recorded.
            let done = outputs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            if let Some(exit) = read_json::<ExitState>(&dir.join("exit.json")) {
                return Ok(exit);
            }
            if let Some(done) = done
                && let Ok(mut done) = tokio::net::unix::pipe::Receiver::from_owned_fd(
                    std::os::fd::OwnedFd::from(done),
                )
            {
                let mut buf = [0u8; 64];
                while matches!(tokio::io::AsyncReadExt::read(&mut done, &mut buf).await, Ok(n) if n > 0)
                {
                }
                if let Some(exit) = read_json::<ExitState>(&dir.join("exit.json")) {
                    return Ok(exit);
                }
            }
            let Some(state) = state else {
                return Err(RuntimeError::NotFound(id));
            };
            let pid = rustix::process::Pid::from_raw(state.shim_pid)
                .ok_or_else(|| RuntimeError::NotFound(id.clone()))?;
            match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK) {
                Ok(fd) if shim_alive(&state) => {
                    // The AsyncFd owns the pidfd for as long as it is registered, which is
                    // the I/O safety `register` asks for.
                    #[allow(
                        deprecated,
                        reason = "AsyncFd::register is unsafe; new is sound for an owned fd"
                    )]
                    let fd = AsyncFd::new(fd).map_err(RuntimeError::io("watching the shim"))?;
                    // Readable once the shim has exited.
                    let _ = fd.readable().await;
                }
                _ => {}
            }
            Ok(
                read_json::<ExitState>(&dir.join("exit.json")).unwrap_or_else(|| {
                    warn!(%id, "the shim exited without recording the container's exit");
                    crate::runtime::lost_exit(Some(state.started_at))
                }),
            )
        })
    }

    fn signal(&self, id: &str, signal: i32, all: bool) -> Result<(), RuntimeError> {
        let dir = self.container_dir(id);
        let state: RunningState = read_json(&dir.join("state.json"))
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        // Without its shim, the container's PID may since belong to another process.
        if read_json::<ExitState>(&dir.join("exit.json")).is_some() || !shim_alive(&state) {
            return Ok(());
        }
        let signal = nix::sys::signal::Signal::try_from(signal)
            .map_err(|e| RuntimeError::Start(format!("signal {signal}: {e}")))?;
        let mut pids = vec![state.pid];
        if all {
            // The init's death kills its PID namespace anyway; the cgroup also holds
            // processes that joined through exec.
            if let Some(cgroup) = read_json::<serde_json::Value>(&dir.join("config.json"))
                .and_then(|c| c.pointer("/linux/cgroupsPath")?.as_str().map(str::to_owned))
            {
                pids.extend(cgroup_pids(&cgroup));
            }
        }
        for pid in pids {
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(RuntimeError::Start(format!("kill {pid}: {e}"))),
            }
        }
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.container_dir(id);
        // A shim that was killed leaves libcontainer's state (and cgroups) behind.
        let state_dir = self.config.root.join(id);
        if state_dir.exists() {
            match libcontainer::container::Container::load(state_dir.clone()) {
                Ok(mut c) => {
                    if let Err(e) = c.delete(true) {
                        warn!(%id, error = %e, "deleting a container left by a lost shim");
                    }
                }
                Err(_) => {
                    let _ = std::fs::remove_dir_all(&state_dir);
                }
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RuntimeError::io(format!("removing {}", dir.display()))(e))
            }
            _ => Ok(()),
        }
    }

    fn exec(&self, id: &str, command: Vec<String>, tty: bool) -> Result<ExecSession, RuntimeError> {
        let dir = self.container_dir(id);
        if read_json::<ExitState>(&dir.join("exit.json")).is_some()
            || !dir.join("state.json").exists()
        {
            return Err(RuntimeError::NotFound(id.to_owned()));
        }
        let result = dir.join(format!("exec-{:016x}.json", rand::random::<u64>()));
        let mut cmd = tokio::process::Command::new(&self.config.shim);
        cmd.arg("shim")
            .arg("exec")
            .arg("--id")
            .arg(id)
            .arg("--root")
            .arg(&self.config.root)
            .arg("--result")
            .arg(&result);
        if tty {
            cmd.arg("--tty");
        }
        cmd.arg("--").args(&command).kill_on_drop(false);
        let mut session = if tty {
            let pty = nix::pty::openpty(None, None)
                .map_err(|e| RuntimeError::Start(format!("opening a pty: {e}")))?;
            let slave = std::fs::File::from(pty.slave);
            let io = |f: &std::fs::File| {
                f.try_clone()
                    .map(Stdio::from)
                    .map_err(RuntimeError::io("duplicating the pty"))
            };
            cmd.stdin(io(&slave)?)
                .stdout(io(&slave)?)
                .stderr(io(&slave)?);
            let master = std::fs::File::from(pty.master);
            let reader = master
                .try_clone()
                .map_err(RuntimeError::io("duplicating the pty"))?;
            let resizer = master
                .try_clone()
                .map_err(RuntimeError::io("duplicating the pty"))?;
            let hanger = master
                .try_clone()
                .map_err(RuntimeError::io("duplicating the pty"))?;
            ExecSession {
                stdin: Some(Box::new(tokio::fs::File::from_std(master))),
                stdout: Some(Box::new(tokio::fs::File::from_std(reader))),
                stderr: None,
                resize: Some(Box::new(move |cols, rows| {
                    let size = rustix::termios::Winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    let _ = rustix::termios::tcsetwinsize(&resizer, size);
                })),
                hangup: Some(Box::new(move || {
                    if let Ok(group) = rustix::termios::tcgetpgrp(&hanger) {
                        let group = nix::unistd::Pid::from_raw(group.as_raw_nonzero().get());
                        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGHUP);
                    }
                })),
                kill: None,
                exit: Box::pin(async { Ok(0) }),
            }
        } else {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            ExecSession {
                stdin: None,
                stdout: None,
                stderr: None,
                resize: None,
                hangup: None,
                kill: None,
                exit: Box::pin(async { Ok(0) }),
            }
        };
        let mut child = cmd.spawn().map_err(RuntimeError::io(format!(
            "starting the shim {}",
            self.config.shim.display()
        )))?;
        // The pty's slave end belongs to the shim now; ours closes with `cmd`.
        drop(cmd);
        let pid_file = result.with_extension("pid");
        let shim_pid = child.id();
        session.kill = Some(Box::new(move || {
            let kill = |pid: i32| {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            };
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                kill(pid);
            }
            if let Some(pid) = shim_pid {
                kill(pid as i32);
            }
        }));
        if !tty {
            session.stdin = child.stdin.take().map(|s| Box::new(s) as _);
            session.stdout = child.stdout.take().map(|s| Box::new(s) as _);
            session.stderr = child.stderr.take().map(|s| Box::new(s) as _);
        }
        session.exit = Box::pin(async move {
            let _ = child.wait().await;
            let outcome: Option<crate::shim::ExecResult> = read_json(&result);
            let _ = std::fs::remove_file(&result);
            let _ = std::fs::remove_file(result.with_extension("pid"));
            match outcome {
                Some(crate::shim::ExecResult {
                    exit_code: Some(code),
                    ..
                }) => Ok(code),
                Some(crate::shim::ExecResult { error: Some(e), .. }) => Err(RuntimeError::Start(e)),
                _ => Err(RuntimeError::Start(
                    "the exec shim exited without a result".into(),
                )),
            }
        });
        Ok(session)
    }

    fn attach(&self, id: &str, stdin: bool) -> Result<ExecSession, RuntimeError> {
        let dir = self.container_dir(id);
        if read_json::<ExitState>(&dir.join("exit.json")).is_some() {
            return Err(RuntimeError::NotFound(id.to_owned()));
        }
        let tty = read_json::<serde_json::Value>(&dir.join("config.json"))
            .and_then(|c| c.pointer("/process/terminal")?.as_bool())
            .unwrap_or(false);
        let stream = crate::attach::connect_in(&dir)
            .map_err(RuntimeError::io(format!("attaching to container {id}")))?;
        Ok(crate::attach::session(stream, stdin, tty))
    }

    fn configure_pod(&self, cgroup: &str, limits: &PodLimits) -> Result<(), RuntimeError> {
        configure_cgroup(cgroup, limits)
            .map_err(RuntimeError::io(format!("configuring the cgroup {cgroup}")))
    }

    fn list(&self) -> Result<Vec<Listed>, RuntimeError> {
        let entries = std::fs::read_dir(&self.config.dir).map_err(RuntimeError::io(format!(
            "reading {}",
            self.config.dir.display()
        )))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let annotations = read_json::<serde_json::Value>(&entry.path().join("config.json"))
                .and_then(|c| serde_json::from_value(c.get("annotations")?.clone()).ok())
                .unwrap_or_default();
            out.push(Listed {
                state: state_of(&entry.path()),
                id,
                annotations,
            });
        }
        Ok(out)
    }
}

/// The cgroup filesystem's mount point.
const CGROUP_FS: &str = "/sys/fs/cgroup";

/// Creates a pod's cgroup and writes its limits, on a host with v1 hierarchies (cpu and
/// memory) or a unified v2 hierarchy (whose controllers are enabled down to it).
fn configure_cgroup(path: &str, limits: &PodLimits) -> std::io::Result<()> {
    let root = Path::new(CGROUP_FS);
    let rel = path.trim_start_matches('/');
    let write = |file: PathBuf, value: String| {
        std::fs::write(&file, value)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", file.display())))
    };
    let period = crate::spec::CPU_PERIOD;
    if root.join("cgroup.controllers").exists() {
        // v2: a controller works in a cgroup only if each ancestor delegates it.
        let mut dir = root.to_path_buf();
        for part in Path::new(rel).components() {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory +pids");
            dir.push(part);
            std::fs::create_dir_all(&dir)?;
        }
        // runc's conversion of shares (2..262144) to a weight (1..10000).
        let weight = 1 + (limits.cpu_shares.clamp(2, 262_144) - 2) * 9999 / 262_142;
        write(dir.join("cpu.weight"), weight.to_string())?;
        let quota = limits.cpu_quota.map_or("max".to_owned(), |q| q.to_string());
        write(dir.join("cpu.max"), format!("{quota} {period}"))?;
        let memory = limits
            .memory_limit
            .map_or("max".to_owned(), |m| m.to_string());
        write(dir.join("memory.max"), memory)?;
        return Ok(());
    }
    let cpu = root.join("cpu").join(rel);
    std::fs::create_dir_all(&cpu)?;
    write(cpu.join("cpu.shares"), limits.cpu_shares.to_string())?;
    write(cpu.join("cpu.cfs_period_us"), period.to_string())?;
    write(
        cpu.join("cpu.cfs_quota_us"),
        limits.cpu_quota.unwrap_or(-1).to_string(),
    )?;
    let memory = root.join("memory").join(rel);
    std::fs::create_dir_all(&memory)?;
    write(
        memory.join("memory.limit_in_bytes"),
        limits.memory_limit.unwrap_or(-1).to_string(),
    )?;
    Ok(())
}

/// The directories of cgroup `path` that exist: one per v1 hierarchy mounted under
/// /sys/fs/cgroup (aliases such as `cpu` for `cpu,cpuacct` are symlinks, so skipped), or
/// the one of a pure v2 host.
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let root = Path::new(CGROUP_FS);
    let rel = path.trim_start_matches('/');
    let mut dirs = Vec::new();
    if root.join("cgroup.controllers").exists() {
        dirs.push(root.join(rel));
    } else if let Ok(hierarchies) = std::fs::read_dir(root) {
        dirs.extend(
            hierarchies
                .flatten()
                .filter(|h| h.file_type().is_ok_and(|t| t.is_dir()))
                .map(|h| h.path().join(rel)),
        );
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// Removes a cgroup directory (a pod's, once its containers are gone) from every
/// hierarchy that has it; busy or missing ones are left.
pub fn remove_cgroup(path: &str) {
    for dir in cgroup_dirs(path) {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Removes the cgroup of a container whose init has exited, as libcontainer's delete does
/// but without its cgroup manager, which on a v1 host rereads mountinfo and resolves the
/// path afresh for each of its twelve controllers: about 1 ms per container here. Whatever
/// is left in it (a process that joined through exec) is killed first; a directory the
/// kernel still holds busy for a moment is retried, for at most about 130 ms.
pub fn remove_container_cgroup(path: &str) -> std::io::Result<()> {
    for dir in cgroup_dirs(path) {
        let kill = dir.join("cgroup.kill");
        if kill.exists() {
            std::fs::write(&kill, "1")?;
        } else {
            for pid in pids_in(&dir) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let mut delay = std::time::Duration::from_millis(1);
        loop {
            match std::fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if delay > std::time::Duration::from_millis(64) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("removing {}: {e}", dir.display()),
                    ));
                }
                Err(_) => {
                    std::thread::sleep(delay);
                    delay *= 2;
                }
            }
        }
    }
    Ok(())
}

/// The processes listed in a cgroup directory.
fn pids_in(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The processes in a container's cgroup (any hierarchy that has it).
fn cgroup_pids(cgroup: &str) -> Vec<i32> {
    cgroup_dirs(cgroup)
        .first()
        .map(|d| pids_in(d))
        .unwrap_or_default()
}
