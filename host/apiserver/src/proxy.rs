//! Pod subresources served by the node agent, proxied as kube-apiserver proxies them to
//! the kubelet: `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward`. The API
//! server dials the agent's HTTPS endpoint (the Node's InternalIP and
//! `daemonEndpoints.kubeletEndpoint.Port`), verifies it against the cluster CA and
//! authenticates with its kubelet client certificate.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use serde_json::Value;
use skiff_core::registry::object_key;
use tracing::debug;

use crate::http::Body;
use crate::pki::Pki;
use crate::rest::{Ctx, store_error};
use skiff_core::status::{ApiError, Reason};

/// The CN of the certificate the API server shows agents.
pub const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

/// How the API server reaches node agents.
#[derive(Clone)]
pub struct AgentClient {
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient").finish_non_exhaustive()
    }
}

impl AgentClient {
    /// A client trusting the cluster CA, with a kubelet-client certificate issued by it
    /// (group system:masters, as kube-apiserver's is bound to the kubelet API admin role).
    pub fn new(pki: &Pki) -> Result<Self, String> {
        let (cert, key) = pki
            .issue_client(KUBELET_CLIENT, &["system:masters"])
            .map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(pki.ca_cert.as_bytes()) {
            roots
                .add(ca.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?;
        Ok(AgentClient { tls: Arc::new(tls) })
    }

    /// Sends `GET path` to the agent at `host:port` and returns its response, streaming.
    pub(crate) async fn get(
        &self,
        host: &str,
        port: u16,
        path: &str,
    ) -> Result<Response<hyper::body::Incoming>, String> {
        let req = http::Request::get(path)
            .header(http::header::HOST, format!("{host}:{port}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        self.send(host, port, req).await
    }

    /// Sends `req` to the agent at `host:port` on a connection of its own (which may be
    /// upgraded).
    async fn send(
        &self,
        host: &str,
        port: u16,
        req: http::Request<http_body_util::Empty<Bytes>>,
    ) -> Result<Response<hyper::body::Incoming>, String> {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with the node agent at {host}:{port}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "agent connection ended");
            }
        });
        sender.send_request(req).await.map_err(|e| e.to_string())
    }
}

/// The container a request names, or the pod's only (or default) one.
fn pick_container(pod: &Value, asked: Option<&str>, name: &str) -> Result<String, ApiError> {
    let names = |list: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let apps = names("containers");
    let inits = names("initContainers");
    if let Some(asked) = asked.filter(|a| !a.is_empty()) {
        if apps.iter().chain(&inits).any(|c| c == asked) {
            return Ok(asked.to_owned());
        }
        return Err(ApiError::bad_request(format!(
            "container {asked} is not valid for pod {name}"
        )));
    }
    if let Some(default) = pod
        .pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container")
        .and_then(Value::as_str)
        && apps.iter().any(|c| c == default)
    {
        return Ok(default.to_owned());
    }
    match apps.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            apps.join(" ")
        ))),
    }
}

/// The agent's address and port from the pod's Node.
async fn agent_of(ctx: &Ctx, pod: &Value) -> Result<(String, u16), ApiError> {
    let name = ctx.name();
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {name} does not have a host assigned"))
        })?;
    let nodes = ctx
        .registry
        .get("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let stored = ctx
        .store()
        .get(&object_key(nodes, None, node))
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("", "nodes", node))?;
    let node_obj = crate::rest::to_value(&stored)?;
    agent_endpoint(&node_obj)
        .ok_or_else(|| ApiError::bad_request(format!("node {node} has no address")))
}

/// A node's agent: its first address (internal, external, hostname) and its endpoint's port.
pub(crate) fn agent_endpoint(node: &Value) -> Option<(String, u16)> {
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let address = ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|kind| {
            addresses
                .iter()
                .find(|a| a["type"] == *kind)
                .and_then(|a| a["address"].as_str().map(str::to_owned))
        })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .unwrap_or(10250) as u16;
    Some((address, port))
}

/// The pod the request names.
async fn stored_pod(ctx: &Ctx) -> Result<Value, ApiError> {
    let stored = ctx
        .store()
        .get(&ctx.key())
        .await
        .map_err(store_error)?
        .ok_or_else(|| ctx.not_found())?;
    ctx.value(&stored)
}

/// The API server's client for node agents.
fn client_of(ctx: &Ctx) -> Result<&AgentClient, ApiError> {
    ctx.server
        .agent_client()
        .ok_or_else(|| ApiError::internal("the API server has no client for node agents"))
}

/// `GET pods/<name>/log`: the agent's `/containerLogs/<ns>/<pod>/<container>`, streamed.
pub(crate) async fn pod_log(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let pod = stored_pod(ctx).await?;
    let name = ctx.name();
    let container = pick_container(&pod, ctx.query.get("container"), name)?;
    let (host, port) = agent_of(ctx, &pod).await?;
    let client = client_of(ctx)?;
    let mut query: Vec<String> = Vec::new();
    for key in [
        "follow",
        "previous",
        "timestamps",
        "tailLines",
        "sinceSeconds",
        "sinceTime",
        "limitBytes",
    ] {
        if let Some(v) = ctx.query.get(key) {
            query.push(format!("{key}={}", urlencode(v)));
        }
    }
    let path = format!(
        "/containerLogs/{}/{}/{}?{}",
        ctx.namespace().unwrap_or_default(),
        name,
        container,
        query.join("&")
    );
    let response = client
        .get(&host, port, &path)
        .await
        .map_err(|e| ApiError::internal(format!("Get \"https://{host}:{port}{path}\": {e}")))?;
    let status = response.status();
    if !status.is_success() {
        return Err(agent_error(response).await);
    }
    // Bytes as the agent sends them; a broken agent connection just ends the stream.
    let stream =
        http_body_util::BodyStream::new(response.into_body()).filter_map(|frame| async move {
            match frame {
                Ok(f) => f
                    .into_data()
                    .ok()
                    .map(|d| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(d))),
                Err(_) => None,
            }
        });
    let body: Body = BodyExt::boxed(StreamBody::new(stream));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(body)
        .expect("a valid response"))
}

/// The agent's error answer (a Status object or plain text) as the API's error.
async fn agent_error(response: Response<hyper::body::Incoming>) -> ApiError {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
    match status {
        StatusCode::NOT_FOUND => ApiError::new(Reason::NotFound, message),
        StatusCode::INTERNAL_SERVER_ERROR => ApiError::internal(message),
        _ => ApiError::bad_request(message),
    }
}

/// Headers of an upgrade that pass through to the agent and back.
const UPGRADE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];

/// `pods/<name>/exec`: passed to the agent's `/exec/<ns>/<pod>/<container>`.
pub(crate) async fn pod_exec(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    stdio_to_agent(ctx, "exec").await
}

/// `pods/<name>/attach`: passed to the agent's `/attach/<ns>/<pod>/<container>`.
pub(crate) async fn pod_attach(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    stdio_to_agent(ctx, "attach").await
}

/// Exec and attach: the container's stdio streams at the agent's `/<kind>/...`, with the
/// client's command (exec only) and stream choices.
async fn stdio_to_agent(ctx: &Ctx, kind: &str) -> Result<Response<Body>, ApiError> {
    let pod = stored_pod(ctx).await?;
    let name = ctx.name();
    let container = pick_container(&pod, ctx.query.get("container"), name)?;
    let mut query: Vec<String> = ctx
        .query
        .all("command")
        .map(|c| format!("command={}", urlencode(c)))
        .collect();
    for key in ["stdin", "stdout", "stderr", "tty"] {
        if let Some(v) = ctx.query.get(key) {
            query.push(format!("{key}={}", urlencode(v)));
        }
    }
    let path = format!(
        "/{kind}/{}/{}/{}?{}",
        ctx.namespace().unwrap_or_default(),
        name,
        container,
        query.join("&")
    );
    upgrade_to_agent(ctx, &pod, &path).await
}

/// `pods/<name>/portforward`: passed to the agent's `/portForward/<ns>/<pod>`.
pub(crate) async fn pod_port_forward(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let pod = stored_pod(ctx).await?;
    let path = format!(
        "/portForward/{}/{}",
        ctx.namespace().unwrap_or_default(),
        ctx.name()
    );
    upgrade_to_agent(ctx, &pod, &path).await
}

/// Passes the client's upgrade to the agent's `path` as it came (the agent speaks the
/// stream protocol); once both sides have switched protocols the bytes are copied both
/// ways, as kube-apiserver's upgrade-aware proxy does.
async fn upgrade_to_agent(ctx: &Ctx, pod: &Value, path: &str) -> Result<Response<Body>, ApiError> {
    // Nothing reaches the agent (which would start the command) unless the client can
    // switch protocols.
    let client_side = ctx
        .upgrade
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| ApiError::bad_request("Upgrade request required"))?;
    let (host, port) = agent_of(ctx, pod).await?;
    let client = client_of(ctx)?;
    let method = if ctx
        .headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
    {
        http::Method::GET
    } else {
        http::Method::POST
    };
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, format!("{host}:{port}"));
    for (k, v) in &ctx.headers {
        if UPGRADE_HEADERS.contains(&k.as_str()) {
            req = req.header(k, v);
        }
    }
    let req = req
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut response = client
        .send(&host, port, req)
        .await
        .map_err(|e| ApiError::internal(format!("error dialing backend: {e}")))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(agent_error(response).await);
    }
    let agent_side = hyper::upgrade::on(&mut response);
    let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in response.headers() {
        if UPGRADE_HEADERS.contains(&k.as_str()) {
            answer = answer.header(k, v);
        }
    }
    tokio::spawn(async move {
        let (client_io, agent_io) = match tokio::try_join!(client_side, agent_side) {
            Ok(both) => both,
            Err(e) => {
                debug!(error = %e, "an upgrade to the agent failed");
                return;
            }
        };
        splice(TokioIo::new(client_io), TokioIo::new(agent_io)).await;
    });
    Ok(answer
        .body(BodyExt::boxed(http_body_util::Empty::<Bytes>::new()))
        .expect("a valid response"))
}

/// Copies bytes both ways between an upgraded client and the agent until the agent's side
/// ends, then lets the client finish within a grace period. Unlike
/// `tokio::io::copy_bidirectional`, a failure in one direction (the agent already gone
/// while the client still types) does not abandon what the other still carries: the
/// agent's last frames (an exec's status and close) reach the client, every write is
/// flushed at once (both sides are TLS streams that buffer), and each direction's end is
/// passed on as a half-close.
async fn splice<C, A>(client: C, agent: A)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    async fn pipe<R, W>(mut from: R, mut to: W) -> std::io::Result<()>
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        let copied = async {
            loop {
                let n = from.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                to.write_all(&buf[..n]).await?;
                to.flush().await?;
            }
        }
        .await;
        let _ = to.shutdown().await;
        copied
    }
    let (client_read, client_write) = tokio::io::split(client);
    let (agent_read, agent_write) = tokio::io::split(agent);
    let mut upstream = tokio::spawn(pipe(client_read, agent_write));
    if let Err(e) = pipe(agent_read, client_write).await {
        debug!(error = %e, "the agent's side of an upgraded stream ended");
    }
    // The client was told the stream ended; it closes its side soon after.
    if tokio::time::timeout(UPGRADE_CLOSE_GRACE, &mut upstream)
        .await
        .is_err()
    {
        debug!("an upgraded client did not close in time");
        upstream.abort();
    }
}

/// How long an upgraded client may keep its side open after the agent's side ended.
const UPGRADE_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The agent writes its last frames and goes away while the client is still sending:
    /// the client gets every byte and then the end, instead of the input's failure
    /// cutting off the output.
    #[tokio::test]
    async fn an_agent_that_leaves_mid_input_still_delivers_its_last_bytes() {
        let (mut client, client_side) = tokio::io::duplex(64);
        let (agent_side, mut agent) = tokio::io::duplex(64);
        let proxy = tokio::spawn(splice(client_side, agent_side));
        client.write_all(b"keystrokes").await.unwrap();
        let mut got = [0u8; 10];
        agent.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"keystrokes");
        // The client keeps typing (until its input fails) while it reads; the agent
        // writes its end and drops the stream without reading that input.
        let (mut read, mut write) = tokio::io::split(client);
        let typing =
            tokio::spawn(async move { while write.write_all(&[b'x'; 32]).await.is_ok() {} });
        let reading = tokio::spawn(async move {
            let mut out = Vec::new();
            read.read_to_end(&mut out).await.unwrap();
            out
        });
        let last = "s".repeat(1000);
        agent.write_all(last.as_bytes()).await.unwrap();
        drop(agent);
        assert_eq!(String::from_utf8(reading.await.unwrap()).unwrap(), last);
        typing.await.unwrap();
        proxy.await.unwrap();
    }
}
