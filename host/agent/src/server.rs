//! The agent's HTTPS endpoint (the kubelet's port 10250): `/containerLogs/<ns>/<pod>/<container>`,
//! `/exec/...`, `/attach/...` and `/portForward/<ns>/<pod>` for the API server's proxy. Clients must show a certificate of the cluster CA
//! for the API server's kubelet client (or a cluster admin).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::logs::{LogOptions, LogSource};
use crate::{ContainerRuntime, Shared};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The agent's serving certificate and the CA its clients' certificates must come from.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert_pem: String,
    /// PEM private key.
    pub key_pem: String,
    /// PEM CA that signs client certificates.
    pub client_ca_pem: String,
}

/// The CN the API server's client certificate has.
const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

/// The rustls configuration: our certificate, client certificates required.
pub fn tls_config(tls: &ServerTls) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the agent's certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())
        .map_err(|e| format!("the agent's key: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(tls.client_ca_pem.as_bytes()) {
        roots
            .add(ca.map_err(|e| format!("the client CA: {e}"))?)
            .map_err(|e| format!("the client CA: {e}"))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

/// Whether a verified client certificate may use the agent's API.
fn allowed(cert: &CertificateDer<'_>) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return false;
    };
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .any(|a| a.as_str() == Ok(KUBELET_CLIENT));
    let masters = subject
        .iter_organization()
        .any(|a| a.as_str() == Ok("system:masters"));
    cn || masters
}

/// Serves the agent's API on `listener` until `shutdown`.
pub(crate) async fn serve<R: ContainerRuntime>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared<R>>,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accepting a connection");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let ok = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .is_some_and(allowed);
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req, ok).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let status_obj = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "code": status.as_u16(),
    });
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(status_obj.to_string())).boxed())
        .expect("a valid response")
}

async fn handle<R: ContainerRuntime>(
    shared: &Arc<Shared<R>>,
    mut req: Request<hyper::body::Incoming>,
    allowed: bool,
) -> Response<Body> {
    if !allowed {
        return text(
            StatusCode::FORBIDDEN,
            "Forbidden: the client certificate may not use the node agent's API",
        );
    }
    let path = req.uri().path().to_owned();
    let query = skiff_core::query::parse(req.uri().query().unwrap_or_default());
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method(), parts.as_slice()) {
        (&http::Method::GET, ["containerLogs", namespace, pod, container]) => {
            container_logs(shared, namespace, pod, container, &query).await
        }
        (&http::Method::GET | &http::Method::POST, ["exec", namespace, pod, container]) => stdio(
            shared,
            &mut req,
            (namespace, pod, container),
            &query,
            Stdio::Exec,
        ),
        (&http::Method::GET | &http::Method::POST, ["attach", namespace, pod, container]) => stdio(
            shared,
            &mut req,
            (namespace, pod, container),
            &query,
            Stdio::Attach,
        ),
        (&http::Method::GET | &http::Method::POST, ["portForward", namespace, pod]) => {
            port_forward(shared, &mut req, namespace, pod)
        }
        (&http::Method::GET, ["metrics", "resource"]) => {
            let text = crate::metrics::render(
                std::path::Path::new("/sys/fs/cgroup"),
                std::path::Path::new("/proc"),
                &shared.measured(),
                jiff::Timestamp::now().as_millisecond(),
            );
            let mut resp = Response::new(Full::new(Bytes::from(text)).boxed());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        (&http::Method::GET, ["healthz"]) => {
            Response::new(Full::new(Bytes::from_static(b"ok")).boxed())
        }
        _ => text(StatusCode::NOT_FOUND, format!("no handler for {path}")),
    }
}

async fn container_logs<R: ContainerRuntime>(
    shared: &Arc<Shared<R>>,
    namespace: &str,
    pod: &str,
    container: &str,
    query: &[(String, String)],
) -> Response<Body> {
    let options = match LogOptions::from_query(query, jiff::Timestamp::now()) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let Some(view) = shared.view(namespace, pod, container) else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "pod \"{pod}\" in namespace \"{namespace}\" or its container \"{container}\" is not on this node"
            ),
        );
    };
    let restarts = if options.previous {
        if view.restarts == 0 || !view.started_before {
            return text(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"),
            );
        }
        view.restarts - 1
    } else {
        if !view.started {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "container \"{container}\" in pod \"{pod}\" is waiting to start: {}",
                    view.waiting.as_deref().unwrap_or("ContainerCreating")
                ),
            );
        }
        view.restarts
    };
    let source = LogSource {
        path: shared.log_path(namespace, pod, &view.uid, container, restarts),
        running: view.running && !options.previous,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let watcher = shared.clone();
    let (ns, p, c, uid) = (
        namespace.to_owned(),
        pod.to_owned(),
        container.to_owned(),
        view.uid.clone(),
    );
    tokio::spawn(crate::logs::stream(source, options, tx, move || {
        watcher
            .view(&ns, &p, &c)
            .is_some_and(|v| v.uid == uid && v.running && v.restarts == restarts)
    }));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(hyper::body::Frame::data(b)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("a valid response")
}

/// What a stdio stream session runs.
#[derive(Clone, Copy, PartialEq)]
enum Stdio {
    /// A new process (`/exec`).
    Exec,
    /// The container's own process (`/attach`).
    Attach,
}

/// `/exec/<ns>/<pod>/<container>` and `/attach/...`: upgrades to a WebSocket
/// (`v5.channel.k8s.io`) or to SPDY (`v4.channel.k8s.io`) and runs the command in the
/// container, or attaches to its own stdio.
fn stdio<R: ContainerRuntime>(
    shared: &Arc<Shared<R>>,
    req: &mut Request<hyper::body::Incoming>,
    (namespace, pod, container): (&str, &str, &str),
    query: &[(String, String)],
    kind: Stdio,
) -> Response<Body> {
    let options = crate::streams::ExecOptions::from_query(query);
    if kind == Stdio::Exec && options.command.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least one command for the container",
        );
    }
    let Some(view) = shared.view(namespace, pod, container) else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "pod \"{pod}\" in namespace \"{namespace}\" or its container \"{container}\" is not on this node"
            ),
        );
    };
    let (Some(id), true) = (view.id.clone(), view.running) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not running"),
        );
    };
    // The command starts (or the attach begins) once the client has switched protocols;
    // failing then is reported on the stream.
    let runtime = shared.runtime.clone();
    upgrade(
        req,
        crate::streams::V5,
        crate::streams::SPDY_EXEC,
        move |io| async move {
            let session = match kind {
                Stdio::Exec => runtime.exec(&id, options.command.clone(), options.tty),
                Stdio::Attach => runtime.attach(&id, options.stdin),
            }
            .unwrap_or_else(crate::runtime::ExecSession::failed);
            match io {
                Upgraded::WebSocket(ws) => {
                    crate::streams::serve_websocket(*ws, session, options).await
                }
                Upgraded::Spdy(io) => crate::streams::serve_spdy(io, session, options).await,
            }
        },
    )
}

/// `/portForward/<ns>/<pod>`: SPDY (raw or in a WebSocket) streams to the pod's ports.
fn port_forward<R: ContainerRuntime>(
    shared: &Arc<Shared<R>>,
    req: &mut Request<hyper::body::Incoming>,
    namespace: &str,
    pod: &str,
) -> Response<Body> {
    let Some(netns) = shared.pod_netns(namespace, pod) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" in namespace \"{namespace}\" is not running on this node"),
        );
    };
    upgrade(
        req,
        crate::portforward::WEBSOCKET,
        crate::portforward::SPDY,
        move |io| async move {
            match io {
                Upgraded::WebSocket(ws) => {
                    crate::portforward::serve(crate::portforward::websocket_pipe(*ws), netns).await
                }
                Upgraded::Spdy(io) => crate::portforward::serve(io, netns).await,
            }
        },
    )
}

/// The connection after a 101.
enum Upgraded {
    WebSocket(Box<tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>>),
    Spdy(TokioIo<hyper::upgrade::Upgraded>),
}

/// Answers an upgrade to a WebSocket with subprotocol `websocket_protocol`, or to SPDY/3.1
/// with stream protocol `spdy_protocol`, and runs `serve` on the upgraded connection.
fn upgrade<F, Fut>(
    req: &mut Request<hyper::body::Incoming>,
    websocket_protocol: &'static str,
    spdy_protocol: &'static str,
    serve: F,
) -> Response<Body>
where
    F: FnOnce(Upgraded) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let headers = req.headers();
    let upgrade_to = headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let listed = |name: http::header::HeaderName, wanted: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == wanted)
    };
    let response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade");
    let (response, websocket) = if upgrade_to == "websocket" {
        let Some(key) = headers.get(http::header::SEC_WEBSOCKET_KEY).cloned() else {
            return text(
                StatusCode::BAD_REQUEST,
                "a WebSocket upgrade needs Sec-WebSocket-Key",
            );
        };
        if !listed(http::header::SEC_WEBSOCKET_PROTOCOL, websocket_protocol) {
            return text(
                StatusCode::BAD_REQUEST,
                format!("the WebSocket subprotocol must be {websocket_protocol}"),
            );
        }
        let response = response
            .header(http::header::UPGRADE, "websocket")
            .header(
                http::header::SEC_WEBSOCKET_ACCEPT,
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
            )
            .header(http::header::SEC_WEBSOCKET_PROTOCOL, websocket_protocol);
        (response, true)
    } else if upgrade_to == "spdy/3.1" {
        if !listed(
            http::header::HeaderName::from_static("x-stream-protocol-version"),
            spdy_protocol,
        ) {
            return text(
                StatusCode::FORBIDDEN,
                format!("the stream protocol must be {spdy_protocol}"),
            );
        }
        let response = response
            .header(http::header::UPGRADE, "SPDY/3.1")
            .header("X-Stream-Protocol-Version", spdy_protocol);
        (response, false)
    } else {
        return text(
            StatusCode::BAD_REQUEST,
            "Upgrade request required (websocket or SPDY/3.1)",
        );
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let io = if websocket {
                    Upgraded::WebSocket(Box::new(
                        tokio_tungstenite::WebSocketStream::from_raw_socket(
                            io,
                            tokio_tungstenite::tungstenite::protocol::Role::Server,
                            None,
                        )
                        .await,
                    ))
                } else {
                    Upgraded::Spdy(io)
                };
                serve(io).await;
            }
            Err(e) => debug!(error = %e, "an upgrade failed"),
        }
    });
    response
        .body(Full::new(Bytes::new()).boxed())
        .expect("a valid response")
}
