//! skiff's Kubernetes-compatible HTTPS API.
//!
//! [`ApiServer`] holds the state (store, resource registry, schemas, authenticator) and
//! answers requests; [`serve`] runs it on a listener until a shutdown token fires. Requests
//! go through: TLS (client certificates optional) → authentication ([`authn`]) → routing
//! ([`route`]) → discovery, OpenAPI or the REST handlers, which turn store results into
//! Kubernetes objects, lists, Tables and watch streams.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use skiff_apiserver::{ApiServer, Config, pki::Pki, serve, tls};
//! use skiff_store::{RedbStore, Config as StoreConfig};
//!
//! let pki = Pki::ensure("/var/lib/skiff".as_ref(), &["127.0.0.1".into()])?;
//! let store = Arc::new(RedbStore::open(StoreConfig::new("/var/lib/skiff/state.redb"))?);
//! let server = ApiServer::new(Config::default(), store).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:6443").await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! serve(listener, tls::server_config(&pki)?, server, shutdown).await;
//! # Ok(()) }
//! ```

pub mod authn;
pub mod authz;
mod bootstrap;
mod crds;
mod discovery;
mod http;
mod metrics;
mod objects;
mod openapi;
mod patch;
pub mod pki;
pub mod proxy;
mod rest;
mod reviews;
mod route;
mod subresources;
pub mod tls;
pub mod usage;
mod watch;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use ::http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use skiff_core::registry::Registry;
use skiff_core::schema::Schemas;
use skiff_core::status::{ApiError, Reason};
use skiff_store::SharedStorage;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

pub use crate::authn::{Authenticator, User};
use crate::http::Body;
use crate::route::Route;

/// Settings of the API server.
#[derive(Clone, Debug)]
pub struct Config {
    /// The largest request body accepted; larger ones get 413. Default 3 MiB.
    pub max_body_bytes: usize,
    /// How often watches that asked for bookmarks get one. Default 10 s.
    pub bookmark_interval: Duration,
    /// How long a watch without `timeoutSeconds` lasts, before a random extra of up to the
    /// same again (as kube-apiserver's `--min-request-timeout`). Default 1800 s.
    pub min_request_timeout: Duration,
    /// The address clients reach the API at, for the `kubernetes` Service's endpoints and
    /// legacy discovery. Default `127.0.0.1:6443`.
    pub advertise_address: SocketAddr,
    /// The Service IP range (IPv4 CIDR). Default `10.96.0.0/12`.
    pub service_cidr: String,
    /// The NodePort range, inclusive. Default 30000–32767.
    pub node_port_range: (u16, u16),
    /// Bearer tokens that authenticate users.
    pub authenticator: Authenticator,
    /// Metrics of other parts of the process (the scheduler, the plugin host), served on
    /// `/metrics` after the API's own. A std Mutex: held only while encoding.
    pub extra_metrics: Option<Arc<std::sync::Mutex<prometheus_client::registry::Registry>>>,
    /// How the server reaches node agents for pods/log; without one those requests fail.
    pub agent_client: Option<proxy::AgentClient>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_body_bytes: 3 * 1024 * 1024,
            bookmark_interval: Duration::from_secs(10),
            min_request_timeout: Duration::from_secs(1800),
            advertise_address: SocketAddr::from(([127, 0, 0, 1], 6443)),
            service_cidr: "10.96.0.0/12".into(),
            node_port_range: (30000, 32767),
            authenticator: Authenticator::default(),
            extra_metrics: None,
            agent_client: None,
        }
    }
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Creating the built-in namespaces and services failed.
    #[error("cannot create the built-in objects")]
    Bootstrap(#[source] ApiError),
    /// The service CIDR is not an IPv4 CIDR.
    #[error("invalid service CIDR {0:?}")]
    ServiceCidr(String),
}

/// The API server's state.
pub struct ApiServer {
    store: SharedStorage,
    config: Config,
    /// The resources served now; replaced whole when CRDs change. A std lock: only held to
    /// clone or swap the `Arc`.
    registry: RwLock<Arc<Registry>>,
    /// Built-in schemas, generated once in the background after start.
    schemas: OnceLock<Schemas>,
    allocator: objects::Allocator,
    openapi: openapi::Cache,
    metrics: metrics::Metrics,
    /// The node agents' last resource metrics (metrics.k8s.io).
    usage: usage::Samples,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer").finish_non_exhaustive()
    }
}

/// What the connection knows about its client.
#[derive(Clone, Debug, Default)]
struct Connection {
    /// The user of a verified client certificate.
    certificate_user: Option<User>,
    remote: Option<SocketAddr>,
}

impl ApiServer {
    /// Starts the API over a store: loads custom resources and creates the built-in
    /// namespaces and the `kubernetes` Service if missing.
    pub async fn new(config: Config, store: SharedStorage) -> Result<Arc<Self>, StartError> {
        let allocator = objects::Allocator::new(&config.service_cidr, config.node_port_range)
            .ok_or_else(|| StartError::ServiceCidr(config.service_cidr.clone()))?;
        let server = Arc::new(ApiServer {
            store,
            config,
            registry: RwLock::new(Arc::new(Registry::builtin())),
            schemas: OnceLock::new(),
            allocator,
            openapi: openapi::Cache::default(),
            metrics: metrics::Metrics::default(),
            usage: usage::Samples::default(),
            shutdown: CancellationToken::new(),
        });
        server
            .refresh_custom_resources()
            .await
            .map_err(StartError::Bootstrap)?;
        bootstrap::observe_services(&server)
            .await
            .map_err(StartError::Bootstrap)?;
        bootstrap::ensure_builtin_objects(&server)
            .await
            .map_err(StartError::Bootstrap)?;
        bootstrap::spawn_repair(&server);
        // Generating the built-in schemas takes a while; do it off the start-up path.
        let warm = server.clone();
        tokio::task::spawn_blocking(move || {
            warm.schemas();
        });
        Ok(server)
    }

    /// The resources served now.
    pub(crate) fn agent_client(&self) -> Option<&proxy::AgentClient> {
        self.config.agent_client.as_ref()
    }

    fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The user of a bootstrap token, if its Secret checks out.
    async fn bootstrap_user(&self, id: &str, secret: &str) -> Option<User> {
        let registry = self.registry();
        let def = registry.get("", "v1", "secrets")?;
        let key = skiff_core::registry::object_key(
            def,
            Some("kube-system"),
            &format!("bootstrap-token-{id}"),
        );
        let stored = self.store.get(&key).await.ok()??;
        let value = rest::to_value(&stored).ok()?;
        authn::bootstrap_user(&value, id, secret, jiff::Timestamp::now())
    }

    /// The built-in schemas (generated on first use).
    fn schemas(&self) -> &Schemas {
        self.schemas
            .get_or_init(|| Schemas::builtin(Registry::builtin().resources()))
    }

    /// Answers one request.
    async fn handle(self: &Arc<Self>, req: Request<Incoming>, conn: &Connection) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let route = route::parse(&path);
        let authorization = req
            .headers()
            .get(::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let mut identity = self
            .config
            .authenticator
            .authenticate(conn.certificate_user.as_ref(), authorization);
        if identity == authn::Identity::Invalid
            && let Some((id, secret)) = authorization
                .and_then(|a| a.strip_prefix("Bearer "))
                .and_then(|t| authn::bootstrap_token_parts(t.trim()))
            && let Some(user) = self.bootstrap_user(id, secret).await
        {
            identity = authn::Identity::User(user);
        }
        let user = match identity {
            authn::Identity::User(user) => Some(user),
            authn::Identity::Anonymous if authz::anonymous_may(&route, &method) => None,
            authn::Identity::Anonymous | authn::Identity::Invalid => {
                let err = ApiError::new(Reason::Unauthorized, "Unauthorized");
                return http::error(&err);
            }
        };
        if let Some(user) = &user {
            let watch = skiff_core::query::parse(req.uri().query().unwrap_or_default())
                .iter()
                .any(|(k, v)| k == "watch" && (v == "true" || v == "1"));
            if let Err(err) = authz::authorize(user, &route, &method, watch) {
                return http::error(&err);
            }
        }
        let span = info_span!(
            "request",
            http.method = %method,
            http.route = %path,
            client.address = ?conn.remote,
            user.name = user.as_ref().map_or("system:anonymous", |u| u.name.as_str()),
        );
        let response = async {
            match self.dispatch(req, route, user).await {
                Ok(resp) => resp,
                Err(err) => {
                    if err.reason == Reason::InternalError {
                        warn!(error = %err.message, "request failed");
                    }
                    http::error(&err)
                }
            }
        }
        .instrument(span)
        .await;
        self.metrics.observe(
            method.as_str(),
            response.status().as_u16(),
            started.elapsed(),
        );
        debug!(http.method = %method, http.route = %path, http.status = response.status().as_u16(), "answered");
        response
    }

    /// `/healthz`, `/livez`, `/readyz`, one check (`/readyz/ping`), or `?verbose` with a
    /// line per check, as kube-apiserver answers them.
    fn health(&self, uri: &::http::Uri) -> Response<Body> {
        let mut segments = uri.path().trim_matches('/').split('/');
        let endpoint = segments.next().unwrap_or_default();
        let only = segments.next();
        let shutting_down = self.shutdown.is_cancelled();
        let mut checks = vec![("ping", true), ("log", true), ("store", true)];
        if endpoint == "readyz" {
            checks.push(("shutdown", !shutting_down));
        }
        if let Some(name) = only {
            return match checks.iter().find(|(n, _)| *n == name) {
                Some((_, true)) => http::respond(StatusCode::OK, TEXT, "ok"),
                Some((_, false)) => http::respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "internal server error",
                ),
                None => http::error(&ApiError::no_route()),
            };
        }
        let healthy = checks.iter().all(|(_, ok)| *ok);
        let status = if healthy {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        let verbose = uri.query().is_some_and(|q| {
            q.split('&')
                .any(|p| p == "verbose" || p.starts_with("verbose="))
        });
        if !verbose {
            let body = if healthy {
                "ok".to_owned()
            } else {
                format!("{endpoint} check failed")
            };
            return http::respond(status, TEXT, body);
        }
        let mut body = String::new();
        for (name, ok) in &checks {
            if *ok {
                body.push_str(&format!("[+]{name} ok\n"));
            } else {
                body.push_str(&format!("[-]{name} failed: reason withheld\n"));
            }
        }
        body.push_str(&format!(
            "{endpoint} check {}\n",
            if healthy { "passed" } else { "failed" }
        ));
        http::respond(status, TEXT, body)
    }

    async fn dispatch(
        self: &Arc<Self>,
        req: Request<Incoming>,
        route: Route,
        user: Option<User>,
    ) -> Result<Response<Body>, ApiError> {
        let get_only = |m: &Method| {
            if m == Method::GET || m == Method::HEAD {
                Ok(())
            } else {
                Err(ApiError::method_not_allowed(m.as_str(), "this path"))
            }
        };
        match route {
            Route::Version => {
                get_only(req.method())?;
                Ok(http::json(StatusCode::OK, &discovery::version()))
            }
            Route::Health => {
                get_only(req.method())?;
                Ok(self.health(req.uri()))
            }
            Route::Metrics => Ok(http::respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.render(self.config.extra_metrics.as_deref()),
            )),
            Route::Api => {
                get_only(req.method())?;
                Ok(discovery::api(self, req.headers()))
            }
            Route::Apis => {
                get_only(req.method())?;
                Ok(discovery::apis(self, req.headers()))
            }
            Route::Group(group) => {
                get_only(req.method())?;
                discovery::group(self, &group)
            }
            Route::GroupVersion { group, version } => {
                get_only(req.method())?;
                discovery::group_version(self, &group, &version)
            }
            Route::OpenApiV2 => {
                get_only(req.method())?;
                Ok(openapi::v2(req.headers()))
            }
            Route::OpenApiIndex => {
                get_only(req.method())?;
                Ok(openapi::index(self))
            }
            Route::OpenApiDoc { group, version } => {
                get_only(req.method())?;
                openapi::document(self, &group, &version)
            }
            Route::Resource(path) => {
                // Only what anonymous clients may read gets here without a user.
                let user = user.unwrap_or_else(User::anonymous);
                rest::handle(self, req, path, user).await
            }
            Route::NotFound => Err(ApiError::no_route()),
        }
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

/// Serves the API on `listener` until `shutdown` fires, then stops accepting, ends watches
/// and gives open requests a few seconds to finish.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    server: Arc<ApiServer>,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let local = listener.local_addr().ok();
    info!(listen.address = ?local, "API server listening");
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    warn!(error = &err as &dyn std::error::Error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let server = server.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    debug!(error = &err as &dyn std::error::Error, client.address = %remote, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let certificate_user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|der| User::from_certificate(der));
            let conn = Arc::new(Connection {
                certificate_user,
                remote: Some(remote),
            });
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                let conn = conn.clone();
                async move { Ok::<_, std::convert::Infallible>(server.handle(req, &conn).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            let connection = watcher.watch(connection.into_owned());
            if let Err(err) = connection.await {
                debug!(error = %err, client.address = %remote, "connection ended with an error");
            }
        });
    }
    // Watches end when the server's token fires; then connections drain.
    server.shutdown.cancel();
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        warn!("connections still open after 5 s; closing them");
    }
    info!("API server stopped");
}
