//! The `ContainerRuntime` trait the pod workers drive, and a recording fake for unit tests.
//!
//! A runtime starts a container from a complete OCI runtime spec (the agent builds it from
//! the pod; see `spec.rs`), tells when it exits, signals it and forgets it. Pod sandboxes
//! (the namespaces a pod's containers share) are made by the agent itself (`sandbox.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use libcontainer::oci_spec::runtime::Spec;
use tokio::sync::watch;

pub use crate::shim::ExitState as Exit;
pub use crate::spec::PodLimits;

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The container could not be created or started (bad spec, missing executable...).
    #[error("{0}")]
    Start(String),
    /// The runtime knows no such container.
    #[error("container {0} not found")]
    NotFound(String),
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| RuntimeError::Io { context, source }
    }
}

/// What a runtime needs to start one container.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// A unique ID (hex; it names the container's directory and cgroup leaf).
    pub id: String,
    /// The complete OCI runtime spec; `root.path` is the prepared root filesystem.
    pub spec: Spec,
    /// The CRI-format log file the container's output is appended to.
    pub log_path: PathBuf,
    /// Keep the container's stdin open for attached clients (`stdin`).
    pub stdin: bool,
    /// Close it after the first attached client is done with it (`stdinOnce`).
    pub stdin_once: bool,
}

/// A started container.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    /// The init's PID on the host.
    pub pid: i32,
    /// When it started.
    pub started_at: jiff::Timestamp,
}

/// What a runtime knows of a container it started earlier (for re-adoption).
#[derive(Debug, Clone, PartialEq)]
pub enum ContainerState {
    /// Still running.
    Running(Started),
    /// Exited, with its exit recorded.
    Exited(Exit),
    /// Its supervisor is gone without recording an exit (it was killed, or the machine
    /// rebooted).
    Unknown,
}

/// A process started in a running container by [`ContainerRuntime::exec`]: its stdio
/// (stdout carries the terminal's output with a TTY; stderr is then absent), a way to
/// resize its terminal, and its exit code.
pub struct ExecSession {
    /// Its stdin.
    pub stdin: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    /// Its stdout (or the terminal).
    pub stdout: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    /// Its stderr (none with a TTY).
    pub stderr: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    /// Resizes the terminal (columns, rows).
    pub resize: Option<Box<dyn Fn(u16, u16) + Send + Sync>>,
    /// Hangs the terminal up (SIGHUP to its foreground processes), for a client that left.
    pub hangup: Option<Box<dyn Fn() + Send + Sync>>,
    /// Kills the process and whatever it started (an exec probe that timed out).
    pub kill: Option<Box<dyn Fn() + Send + Sync>>,
    /// Resolves to the exit code, or why the process could not start.
    pub exit: BoxFuture<'static, Result<i32, RuntimeError>>,
}

impl ExecSession {
    /// A session whose process never started, for `error`.
    pub fn failed(error: RuntimeError) -> Self {
        ExecSession {
            stdin: None,
            stdout: None,
            stderr: None,
            resize: None,
            hangup: None,
            kill: None,
            exit: Box::pin(async move { Err(error) }),
        }
    }
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession").finish_non_exhaustive()
    }
}

/// A container [`ContainerRuntime::list`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// Its ID.
    pub id: String,
    /// The annotations of its spec (the agent keeps the pod UID, container name and
    /// restart count there).
    pub annotations: BTreeMap<String, String>,
    /// Its state.
    pub state: ContainerState,
}

/// The exit recorded for a container whose shim vanished without recording one (killed,
/// or the machine rebooted): 137, as for a SIGKILL.
pub fn lost_exit(started_at: Option<jiff::Timestamp>) -> Exit {
    let now = jiff::Timestamp::now();
    Exit {
        exit_code: 137,
        signal: None,
        oom_killed: false,
        started_at: started_at.unwrap_or(now),
        finished_at: now,
    }
}

/// Runs containers.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Creates and starts a container; returns once its process runs (or failed to start).
    fn start(&self, config: ContainerConfig) -> BoxFuture<'_, Result<Started, RuntimeError>>;
    /// Resolves when the container has exited, with its exit.
    fn wait(&self, id: &str) -> BoxFuture<'static, Result<Exit, RuntimeError>>;
    /// Sends `signal` to the container's init, or with `all` to every process in it.
    fn signal(&self, id: &str, signal: i32, all: bool) -> Result<(), RuntimeError>;
    /// Forgets an exited container (its state and directory).
    fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// Every container this runtime knows of, with its spec's annotations and its state.
    fn list(&self) -> Result<Vec<Listed>, RuntimeError>;
    /// Starts `command` in the running container `id`, with a terminal if `tty`.
    fn exec(&self, id: &str, command: Vec<String>, tty: bool) -> Result<ExecSession, RuntimeError>;
    /// Attaches to the running container `id`'s own stdio: its output from now on, its
    /// stdin (when `stdin`, and the container has one open), its terminal's size. The
    /// session's `exit` resolves when the container has ended (Ok(0)) or `hangup` was
    /// called.
    fn attach(&self, id: &str, stdin: bool) -> Result<ExecSession, RuntimeError>;
    /// Creates (or updates) a pod's cgroup, the parent of its containers', with the pod's
    /// own limits.
    fn configure_pod(&self, cgroup: &str, limits: &PodLimits) -> Result<(), RuntimeError>;
}

/// One call a [`FakeRuntime`] saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `start` with this container ID and the spec's process args.
    Start(String, Vec<String>),
    /// `signal`.
    Signal(String, i32),
    /// `remove`.
    Remove(String),
    /// `exec` with this command.
    Exec(String, Vec<String>),
    /// `attach`.
    Attach(String),
    /// `configure_pod` of this cgroup.
    ConfigurePod(String, PodLimits),
}

#[derive(Default)]
struct FakeState {
    calls: Vec<Call>,
    specs: BTreeMap<String, Spec>,
    exits: BTreeMap<String, watch::Sender<Option<Exit>>>,
    /// Exit codes to give the next containers whose first arg matches, in order.
    scripted: BTreeMap<String, Vec<i32>>,
    /// First args of containers that ignore SIGTERM (as a shell without a trap as PID 1).
    ignore_term: Vec<String>,
    next_pid: i32,
}

/// A runtime that runs nothing: it records calls and lets a test decide when and how each
/// container exits.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    state: Arc<Mutex<FakeState>>,
}

impl FakeRuntime {
    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The spec a container was started with.
    pub fn spec(&self, id: &str) -> Option<Spec> {
        self.lock().specs.get(id).cloned()
    }

    /// The IDs of the containers started with `arg0` as their first argument.
    pub fn started(&self, arg0: &str) -> Vec<String> {
        self.lock()
            .calls
            .iter()
            .filter_map(|c| match c {
                Call::Start(id, args) if args.first().map(String::as_str) == Some(arg0) => {
                    Some(id.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// Makes a running container exit with `code`.
    pub fn exit(&self, id: &str, code: i32) {
        let state = self.lock();
        if let Some(tx) = state.exits.get(id) {
            let now = jiff::Timestamp::now();
            tx.send_replace(Some(Exit {
                exit_code: code,
                signal: None,
                oom_killed: false,
                started_at: now,
                finished_at: now,
            }));
        }
    }

    /// Containers whose first argument is `arg0` will exit at once with these codes, one
    /// per start, in order.
    pub fn script(&self, arg0: &str, codes: &[i32]) {
        self.lock().scripted.insert(arg0.to_owned(), codes.to_vec());
    }

    /// Containers whose first argument is `arg0` ignore SIGTERM; only SIGKILL ends them.
    pub fn ignore_term(&self, arg0: &str) {
        self.lock().ignore_term.push(arg0.to_owned());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ContainerRuntime for FakeRuntime {
    /// A fake exec prints its command line and exits with the code scripted for its first
    /// word (0 if none).
    fn exec(
        &self,
        id: &str,
        command: Vec<String>,
        _tty: bool,
    ) -> Result<ExecSession, RuntimeError> {
        let mut state = self.lock();
        if !state.exits.contains_key(id) {
            return Err(RuntimeError::NotFound(id.to_owned()));
        }
        state.calls.push(Call::Exec(id.to_owned(), command.clone()));
        let code = command
            .first()
            .and_then(|a| state.scripted.get_mut(a))
            .filter(|codes| !codes.is_empty())
            .map(|codes| codes.remove(0))
            .unwrap_or(0);
        let output = format!("{}\n", command.join(" ")).into_bytes();
        Ok(ExecSession {
            stdin: Some(Box::new(tokio::io::sink())),
            stdout: Some(Box::new(std::io::Cursor::new(output))),
            stderr: Some(Box::new(tokio::io::empty())),
            resize: None,
            hangup: None,
            kill: None,
            exit: Box::pin(async move { Ok(code) }),
        })
    }

    fn configure_pod(&self, cgroup: &str, limits: &PodLimits) -> Result<(), RuntimeError> {
        self.lock()
            .calls
            .push(Call::ConfigurePod(cgroup.to_owned(), *limits));
        Ok(())
    }

    /// A fake attach echoes what it is sent on stdin to stdout, until stdin closes.
    fn attach(&self, id: &str, _stdin: bool) -> Result<ExecSession, RuntimeError> {
        let mut state = self.lock();
        if !state.exits.contains_key(id) {
            return Err(RuntimeError::NotFound(id.to_owned()));
        }
        state.calls.push(Call::Attach(id.to_owned()));
        let (client, echo) = tokio::io::duplex(64 * 1024);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut from, mut to) = tokio::io::split(echo);
            let _ = tokio::io::copy(&mut from, &mut to).await;
            let _ = done_tx.send(());
        });
        let (output, input) = tokio::io::split(client);
        Ok(ExecSession {
            stdin: Some(Box::new(input)),
            stdout: Some(Box::new(output)),
            stderr: None,
            resize: None,
            hangup: None,
            kill: None,
            exit: Box::pin(async move {
                let _ = done_rx.await;
                Ok(0)
            }),
        })
    }

    fn start(&self, config: ContainerConfig) -> BoxFuture<'_, Result<Started, RuntimeError>> {
        let args = config
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.args().clone())
            .unwrap_or_default();
        let mut state = self.lock();
        state
            .calls
            .push(Call::Start(config.id.clone(), args.clone()));
        state.specs.insert(config.id.clone(), config.spec);
        state.next_pid += 1;
        let started = Started {
            pid: 1000 + state.next_pid,
            started_at: jiff::Timestamp::now(),
        };
        let (tx, _) = watch::channel(None);
        state.exits.insert(config.id.clone(), tx);
        let scripted = args
            .first()
            .and_then(|a| state.scripted.get_mut(a))
            .filter(|codes| !codes.is_empty())
            .map(|codes| codes.remove(0));
        drop(state);
        if let Some(code) = scripted {
            self.exit(&config.id, code);
        }
        Box::pin(async move { Ok(started) })
    }

    fn wait(&self, id: &str) -> BoxFuture<'static, Result<Exit, RuntimeError>> {
        let rx = self.lock().exits.get(id).map(|tx| tx.subscribe());
        let id = id.to_owned();
        Box::pin(async move {
            let mut rx = rx.ok_or_else(|| RuntimeError::NotFound(id.clone()))?;
            let exit = rx
                .wait_for(Option::is_some)
                .await
                .map_err(|_| RuntimeError::NotFound(id))?;
            Ok(exit.clone().expect("waited for Some"))
        })
    }

    fn signal(&self, id: &str, signal: i32, _all: bool) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        state.calls.push(Call::Signal(id.to_owned(), signal));
        let arg0 = state
            .specs
            .get(id)
            .and_then(|s| s.process().as_ref()?.args().as_ref()?.first().cloned())
            .unwrap_or_default();
        let ignores = signal == 15 && state.ignore_term.contains(&arg0);
        drop(state);
        // SIGKILL, and SIGTERM unless ignored, end a fake container at once.
        if (signal == 9 || signal == 15) && !ignores {
            self.exit(id, 128 + signal);
        }
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        state.calls.push(Call::Remove(id.to_owned()));
        state.exits.remove(id);
        Ok(())
    }

    fn list(&self) -> Result<Vec<Listed>, RuntimeError> {
        let state = self.lock();
        Ok(state
            .exits
            .iter()
            .map(|(id, tx)| Listed {
                id: id.clone(),
                annotations: state
                    .specs
                    .get(id)
                    .and_then(|s| s.annotations().clone())
                    .map(|a| a.into_iter().collect())
                    .unwrap_or_default(),
                state: match &*tx.borrow() {
                    Some(exit) => ContainerState::Exited(exit.clone()),
                    None => ContainerState::Running(Started {
                        pid: 0,
                        started_at: jiff::Timestamp::now(),
                    }),
                },
            })
            .collect())
    }
}
