//! Probes and lifecycle hooks, as the kubelet runs them: exec (a process in the container),
//! httpGet and tcpSocket (from inside the pod's network namespace, to its loopback, since
//! pods have no routable address yet), with Kubernetes' defaults and thresholds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::AsyncReadExt as _;

use crate::runtime::ContainerRuntime;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// startupProbe: holds the others off until it succeeds; failing restarts.
    Startup,
    /// livenessProbe: failing restarts the container.
    Liveness,
    /// readinessProbe: decides the container's (and the pod's) readiness.
    Readiness,
}

impl Kind {
    /// The word in kubelet's messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// What a prober tells the pod worker (only changes, after the thresholds).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The startup probe succeeded (or there is none): the container counts as started.
    Started,
    /// Readiness changed.
    Ready(bool),
    /// A probe failed once (for the Unhealthy event), with its message.
    Failed(Kind, String),
    /// The startup or liveness probe failed `failureThreshold` times in a row: restart.
    Restart(Kind, String),
}

/// How a handler reaches the container.
#[derive(Clone)]
pub struct Target<R: ContainerRuntime> {
    /// The runtime, for exec.
    pub runtime: Arc<R>,
    /// The container's ID.
    pub id: String,
    /// The pod's network namespace file (none: the host's).
    pub netns: Option<PathBuf>,
    /// The container's ports by name, for named probe ports.
    pub ports: Vec<(String, i32)>,
}

/// A handler: exec, httpGet or tcpSocket (what probes and hooks share).
#[derive(Debug, Clone, PartialEq)]
pub enum Handler {
    /// Run a command in the container; exit 0 is success.
    Exec(Vec<String>),
    /// GET a path; 200–399 is success.
    Http {
        /// The port.
        port: IntOrString,
        /// The path.
        path: String,
        /// The Host header (the pod's address by default).
        host: Option<String>,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// HTTP or HTTPS.
        https: bool,
    },
    /// Open a TCP connection.
    Tcp(IntOrString),
}

impl Handler {
    /// The handler of a probe or hook, if it has one this agent runs.
    pub fn of(
        exec: Option<&ExecAction>,
        http: Option<&HTTPGetAction>,
        tcp: Option<&TCPSocketAction>,
    ) -> Option<Handler> {
        if let Some(e) = exec {
            return Some(Handler::Exec(e.command.clone().unwrap_or_default()));
        }
        if let Some(h) = http {
            return Some(Handler::Http {
                port: h.port.clone(),
                path: h
                    .path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "/".into()),
                host: h.host.clone().filter(|h| !h.is_empty()),
                headers: h
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
                https: h.scheme.as_deref() == Some("HTTPS"),
            });
        }
        tcp.map(|t| Handler::Tcp(t.port.clone()))
    }

    /// Runs the handler once within `timeout`: `Ok` on success, else why it failed (in the
    /// kubelet's words).
    pub async fn run<R: ContainerRuntime>(
        &self,
        target: &Target<R>,
        timeout: Duration,
    ) -> Result<(), String> {
        match self {
            Handler::Exec(command) => {
                let mut session = target
                    .runtime
                    .exec(&target.id, command.clone(), false)
                    .map_err(|e| e.to_string())?;
                drop(session.stdin.take());
                let kill = session.kill.take();
                let mut out = session.stdout.take();
                let read = async {
                    let mut buf = Vec::new();
                    if let Some(out) = out.as_mut() {
                        let _ = out.take(10 * 1024).read_to_end(&mut buf).await;
                    }
                    (buf, session.exit.await)
                };
                match tokio::time::timeout(timeout, read).await {
                    Err(_) => {
                        // As the kubelet's runtimes do: a probe command that timed out is
                        // killed, not left to pile up with the next ones.
                        if let Some(kill) = kill {
                            kill();
                        }
                        Err(format!("command {command:?} timed out"))
                    }
                    Ok((_, Ok(0))) => Ok(()),
                    Ok((out, Ok(code))) => {
                        let out = String::from_utf8_lossy(&out).trim().to_owned();
                        Err(if out.is_empty() {
                            format!("command {command:?} exited with {code}")
                        } else {
                            out
                        })
                    }
                    Ok((_, Err(e))) => Err(e.to_string()),
                }
            }
            Handler::Http {
                port,
                path,
                host,
                headers,
                https,
            } => {
                let port = resolve_port(port, &target.ports)?;
                let host = host.clone().unwrap_or_else(|| "127.0.0.1".into());
                let request = http_request(path, &host, port, headers);
                let netns = target.netns.clone();
                let https = *https;
                let answer = crate::sandbox::in_netns(netns, move || {
                    let stream = connect(port, timeout)?;
                    stream.set_read_timeout(Some(timeout)).ok();
                    stream.set_write_timeout(Some(timeout)).ok();
                    if !https {
                        return exchange(stream, &request);
                    }
                    // As the kubelet: TLS without verifying the certificate, the Host
                    // header's name (if it is one) as the server name.
                    let config = crate::join::unverified_tls().map_err(|e| e.to_string())?;
                    let name = rustls::pki_types::ServerName::try_from(host)
                        .unwrap_or_else(|_| std::net::IpAddr::from([127, 0, 0, 1]).into());
                    let tls =
                        rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
                    exchange(rustls::StreamOwned::new(tls, stream), &request)
                })
                .await?;
                let code: u16 = answer
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| "the answer is not HTTP".to_owned())?;
                if (200..400).contains(&code) {
                    Ok(())
                } else {
                    Err(format!("HTTP probe failed with statuscode: {code}"))
                }
            }
            Handler::Tcp(port) => {
                let port = resolve_port(port, &target.ports)?;
                crate::sandbox::in_netns(target.netns.clone(), move || {
                    connect(port, timeout).map(drop)
                })
                .await
            }
        }
    }
}

fn resolve_port(port: &IntOrString, ports: &[(String, i32)]) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => ports
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, p)| u16::try_from(*p).ok())
            .or_else(|| name.parse().ok())
            .ok_or_else(|| format!("couldn't find port {name:?} in the container")),
    }
}

fn http_request(path: &str, host: &str, port: u16, headers: &[(String, String)]) -> String {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n");
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !has("user-agent") {
        req.push_str("User-Agent: kube-probe/1.33\r\n");
    }
    if !has("accept") {
        req.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    req
}

/// Sends the request and reads the start of the answer.
fn exchange(mut stream: impl Read + Write, request: &str) -> Result<String, String> {
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 256];
    let n = stream.read(&mut head).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&head[..n]).into_owned())
}

fn connect(port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("dial tcp {addr}: {e}"))
}

/// A probe with Kubernetes' defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// What it runs.
    pub handler: Handler,
    /// initialDelaySeconds (0).
    pub initial_delay: Duration,
    /// periodSeconds (10).
    pub period: Duration,
    /// timeoutSeconds (1).
    pub timeout: Duration,
    /// successThreshold (1).
    pub success_threshold: u32,
    /// failureThreshold (3).
    pub failure_threshold: u32,
}

impl Spec {
    /// The probe's settings, or `None` without a handler this agent runs.
    pub fn of(probe: &Probe) -> Option<Spec> {
        let handler = Handler::of(
            probe.exec.as_ref(),
            probe.http_get.as_ref(),
            probe.tcp_socket.as_ref(),
        )?;
        let secs =
            |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        Some(Spec {
            handler,
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
        })
    }
}

/// Runs a container's probes until it stops (the worker aborts the task) and sends what
/// they find: started once the startup probe passes, readiness changes, failures, and the
/// need to restart.
/// `send` returns false once nobody listens any more.
pub async fn run<R: ContainerRuntime>(
    container: Container,
    target: Target<R>,
    send: impl Fn(Outcome) -> bool,
) {
    if let Some(startup) = container.startup_probe.as_ref().and_then(Spec::of) {
        match probe_until(&startup, &target, Kind::Startup, &send, true).await {
            Some(true) => {}
            _ => return,
        }
    }
    if !send(Outcome::Started) {
        return;
    }
    let liveness = container.liveness_probe.as_ref().and_then(Spec::of);
    let readiness = container.readiness_probe.as_ref().and_then(Spec::of);
    if readiness.is_none() && !send(Outcome::Ready(true)) {
        return;
    }
    let live = async {
        if let Some(spec) = &liveness {
            probe_until(spec, &target, Kind::Liveness, &send, false).await;
        }
    };
    let ready = async {
        if let Some(spec) = &readiness {
            tokio::time::sleep(spec.initial_delay).await;
            let (mut ok, mut bad, mut state) = (0u32, 0u32, None::<bool>);
            loop {
                match spec.handler.run(&target, spec.timeout).await {
                    Ok(()) => {
                        ok += 1;
                        bad = 0;
                        if ok >= spec.success_threshold && state != Some(true) {
                            state = Some(true);
                            if !send(Outcome::Ready(true)) {
                                return;
                            }
                        }
                    }
                    Err(message) => {
                        bad += 1;
                        ok = 0;
                        if !send(Outcome::Failed(Kind::Readiness, message)) {
                            return;
                        }
                        if bad >= spec.failure_threshold && state != Some(false) {
                            state = Some(false);
                            if !send(Outcome::Ready(false)) {
                                return;
                            }
                        }
                    }
                }
                tokio::time::sleep(spec.period).await;
            }
        }
    };
    tokio::join!(live, ready);
}

/// Probes until success (`until_success`, startup) or until `failureThreshold` failures in
/// a row (then sends Restart). Returns `Some(true)` on success, `Some(false)` after asking
/// for a restart, `None` if the worker is gone.
async fn probe_until<R: ContainerRuntime>(
    spec: &Spec,
    target: &Target<R>,
    kind: Kind,
    send: &impl Fn(Outcome) -> bool,
    until_success: bool,
) -> Option<bool> {
    tokio::time::sleep(spec.initial_delay).await;
    let mut failures = 0;
    loop {
        match spec.handler.run(target, spec.timeout).await {
            Ok(()) => {
                failures = 0;
                if until_success {
                    return Some(true);
                }
            }
            Err(message) => {
                failures += 1;
                if !send(Outcome::Failed(kind, message.clone())) {
                    return None;
                }
                if failures >= spec.failure_threshold {
                    return send(Outcome::Restart(kind, message)).then_some(false);
                }
            }
        }
        tokio::time::sleep(spec.period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn probes_get_kubernetes_defaults() {
        let probe: Probe = serde_json::from_value(json!({"httpGet": {"port": "web"}})).unwrap();
        let spec = Spec::of(&probe).unwrap();
        assert_eq!(spec.period, Duration::from_secs(10));
        assert_eq!(spec.timeout, Duration::from_secs(1));
        assert_eq!((spec.success_threshold, spec.failure_threshold), (1, 3));
        assert_eq!(
            spec.handler,
            Handler::Http {
                port: IntOrString::String("web".into()),
                path: "/".into(),
                host: None,
                headers: vec![],
                https: false
            }
        );
        assert_eq!(
            resolve_port(&IntOrString::String("web".into()), &[("web".into(), 8080)]),
            Ok(8080)
        );
        assert!(resolve_port(&IntOrString::String("nope".into()), &[]).is_err());
        let none: Probe = serde_json::from_value(json!({"periodSeconds": 5})).unwrap();
        assert_eq!(Spec::of(&none), None);
    }

    #[tokio::test]
    async fn tcp_and_http_handlers_reach_a_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 204 No Content\r\n\r\n",
                "HTTP/1.1 500 Oops\r\n\r\n",
            ] {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap();
                assert!(
                    String::from_utf8_lossy(&buf[..n]).starts_with("GET /healthz HTTP/1.1\r\n")
                );
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let target = Target {
            runtime: Arc::new(crate::runtime::FakeRuntime::default()),
            id: "c".into(),
            netns: None,
            ports: vec![],
        };
        let http = Handler::Http {
            port: IntOrString::Int(port as i32),
            path: "/healthz".into(),
            host: None,
            headers: vec![],
            https: false,
        };
        assert_eq!(http.run(&target, Duration::from_secs(1)).await, Ok(()));
        assert_eq!(
            http.run(&target, Duration::from_secs(1)).await,
            Err("HTTP probe failed with statuscode: 500".into())
        );
        server.join().unwrap();
        let closed = Handler::Tcp(IntOrString::Int(port as i32));
        assert!(
            closed
                .run(&target, Duration::from_secs(1))
                .await
                .unwrap_err()
                .starts_with("dial tcp 127.0.0.1:")
        );
    }

    #[tokio::test]
    async fn https_probes_skip_verification_as_the_kubelets_do() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["self-signed.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
                )
                .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(config).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut buf = [0u8; 1024];
            let n = tls.read(&mut buf).unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /ready HTTP/1.1\r\n"));
            tls.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
        let target = Target {
            runtime: Arc::new(crate::runtime::FakeRuntime::default()),
            id: "c".into(),
            netns: None,
            ports: vec![],
        };
        let https = Handler::Http {
            port: IntOrString::Int(port as i32),
            path: "/ready".into(),
            host: None,
            headers: vec![],
            https: true,
        };
        assert_eq!(https.run(&target, Duration::from_secs(2)).await, Ok(()));
        server.join().unwrap();
    }
}
