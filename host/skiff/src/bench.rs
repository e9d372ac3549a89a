//! `skiff bench api`: measures the API server the way clients use it and prints a table.
//!
//! Each measurement runs against a real `skiff server` process (this same binary) with a
//! fresh data directory, over TLS with the admin certificate, from client connections in
//! this process: durable creates per second with 1 and with N concurrent clients (each its
//! own connection, one request at a time), the latency of listing 10,000 pods, watch event
//! delivery latency to 100 watchers (from sending the create to receiving the event), cold
//! start to a ready `/readyz`, and the server's resident memory when idle.
//!
//! `skiff bench scheduler` is in [`scheduler`], `skiff bench pods` in [`pods`], `skiff
//! bench controllers` in [`controllers`].

mod controllers;
mod pods;
mod scheduler;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Flags of `skiff bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    /// The API server: writes, lists, watches, start-up and memory.
    Api(ApiArgs),
    /// The scheduler: pods/s and cycle latency with simulated nodes; plugin load time.
    Scheduler(scheduler::Args),
    /// The node agent: pod start latency, container lifecycle against runc and crun, idle
    /// memory (root, real containers).
    Pods(pods::Args),
    /// The controllers: a large Deployment on simulated nodes, from creation to every pod
    /// bound, and the controllers' CPU.
    Controllers(controllers::Args),
}

#[derive(clap::Args, Debug)]
struct ApiArgs {
    /// Small sizes, to check the benchmark runs (figures are not meaningful).
    #[arg(long)]
    quick: bool,
    /// Creates made by the single client.
    #[arg(long, default_value_t = 2000)]
    single_creates: usize,
    /// Concurrent clients in the concurrent-create run.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Creates per client in the concurrent-create run.
    #[arg(long, default_value_t = 300)]
    creates_per_client: usize,
    /// Pods listed in the list run.
    #[arg(long, default_value_t = 10_000)]
    list_pods: usize,
    /// Watchers in the watch run.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Events each watcher receives in the watch run.
    #[arg(long, default_value_t = 500)]
    watch_events: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        What::Api(mut a) => {
            if a.quick {
                a.single_creates = 50;
                a.clients = 8;
                a.creates_per_client = 10;
                a.list_pods = 200;
                a.watchers = 5;
                a.watch_events = 20;
            }
            api(a).await
        }
        What::Scheduler(a) => scheduler::run(a).await,
        What::Pods(a) => pods::run(a).await,
        What::Controllers(a) => controllers::run(a).await,
    }
}

/// A server process under test.
struct Server {
    child: Child,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    dir: tempfile::TempDir,
    /// Flags beyond the port and data directory.
    flags: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts a server on a fresh data directory; returns it and the time from spawning the
    /// process to the first ready `/readyz`.
    async fn start(flags: &[&str]) -> anyhow::Result<(Server, Duration)> {
        Self::start_in(tempfile::tempdir()?, flags).await
    }

    /// Starts a server on a data directory prepared beforehand.
    async fn start_in(
        dir: tempfile::TempDir,
        flags: &[&str],
    ) -> anyhow::Result<(Server, Duration)> {
        let flags: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
        let (child, addr, tls, elapsed) = spawn(dir.path(), &flags).await?;
        Ok((
            Server {
                child,
                addr,
                tls,
                dir,
                flags,
            },
            elapsed,
        ))
    }

    /// Stops the process and starts it again on the same data directory.
    async fn restart(&mut self) -> anyhow::Result<Duration> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        self.child.wait()?;
        let (child, addr, tls, elapsed) = spawn(self.dir.path(), &self.flags).await?;
        self.child = child;
        self.addr = addr;
        self.tls = tls;
        Ok(elapsed)
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        connect(self.addr, self.tls.clone()).await
    }

    /// Resident memory of the server process, in KiB.
    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS in /proc/<pid>/status")
    }
}

async fn spawn(
    dir: &Path,
    flags: &[String],
) -> anyhow::Result<(Child, SocketAddr, Arc<rustls::ClientConfig>, Duration)> {
    // A free port, found by binding and releasing it, so the timing includes nothing but
    // the server's own start-up.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    let child = Command::new(std::env::current_exe()?)
        .args(["server", "--port", &port.to_string(), "--data-dir"])
        .arg(dir)
        // The API and scheduler benchmarks measure the control plane with simulated nodes;
        // the pods benchmark asks for the agent with its flags.
        .args((!flags.iter().any(|f| f.starts_with("--agent"))).then_some("--disable-agent"))
        .args(flags)
        .env("SKIFF_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = started + Duration::from_secs(20);
    loop {
        if Instant::now() > deadline {
            bail!("the server did not become ready within 20 s");
        }
        // The CA appears once the server has made its certificates.
        if let Ok(tls) = client_tls(dir)
            && let Ok(mut conn) = connect(addr, tls.clone()).await
            && let Ok((StatusCode::OK, _)) = send(&mut conn, Method::GET, "/readyz", None).await
        {
            return Ok((child, addr, tls, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn client_tls(dir: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let pki = dir.join("pki");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.join("ca.crt"))? {
        roots.add(cert?)?;
    }
    let chain =
        CertificateDer::pem_file_iter(pki.join("admin.crt"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(pki.join("admin.key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(
    conn: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    conn.ready().await?;
    let resp = conn.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

fn pod(name: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}, "annotations": {"bench/sent": now_nanos().to_string()}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"],
                                  "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
    }))
    .unwrap_or_default()
}

async fn create_namespace(conn: &mut SendRequest<Full<Bytes>>, name: &str) -> anyhow::Result<()> {
    let body = serde_json::to_vec(
        &serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )?;
    let (status, text) = send(conn, Method::POST, "/api/v1/namespaces", Some(body)).await?;
    if status != StatusCode::CREATED {
        bail!(
            "creating namespace {name}: {status} {}",
            String::from_utf8_lossy(&text)
        );
    }
    Ok(())
}

/// Creates `per_client` pods from each of `clients` connections; returns the rate.
async fn create_pods(
    server: &Server,
    namespace: &str,
    clients: usize,
    per_client: usize,
) -> anyhow::Result<f64> {
    let path = format!("/api/v1/namespaces/{namespace}/pods");
    post_many(server, &path, clients, per_client, |c, i| {
        pod(&format!("p-{c}-{i}"))
    })
    .await
}

/// Posts `per_client` objects made by `make(client, i)` to `path` from each of `clients`
/// connections, one request at a time per connection; returns the rate.
async fn post_many(
    server: &Server,
    path: &str,
    clients: usize,
    per_client: usize,
    make: impl Fn(usize, usize) -> Vec<u8> + Send + Sync + 'static,
) -> anyhow::Result<f64> {
    let make = Arc::new(make);
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(server.connect().await?);
    }
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, mut conn)| {
            let path = path.to_owned();
            let make = make.clone();
            tokio::spawn(async move {
                for i in 0..per_client {
                    let (status, text) =
                        send(&mut conn, Method::POST, &path, Some(make(c, i))).await?;
                    if status != StatusCode::CREATED {
                        bail!("create: {status} {}", String::from_utf8_lossy(&text));
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok((clients * per_client) as f64 / started.elapsed().as_secs_f64())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Opens a watch and reports the delay of each event's arrival after its create was sent.
async fn watcher(
    server: &Server,
    path: String,
    expected: usize,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<Vec<Duration>>>> {
    let mut conn = server.connect().await?;
    let req = Request::builder()
        .uri(path)
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::new()))?;
    conn.ready().await?;
    let resp = conn.send_request(req).await?;
    if resp.status() != StatusCode::OK {
        bail!("watch: {}", resp.status());
    }
    Ok(tokio::spawn(async move {
        let mut body = resp.into_body();
        let mut buffer = Vec::new();
        let mut delays = Vec::with_capacity(expected);
        while delays.len() < expected {
            let Some(frame) = body.frame().await else {
                bail!("watch ended after {} events", delays.len());
            };
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let arrived = now_nanos();
                let event: serde_json::Value = serde_json::from_slice(&line)?;
                if event["type"] != "ADDED" {
                    continue;
                }
                let sent: u128 = event["object"]["metadata"]["annotations"]["bench/sent"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .context("event without a send time")?;
                delays.push(Duration::from_nanos(arrived.saturating_sub(sent) as u64));
            }
        }
        Ok(delays)
    }))
}

async fn api(args: ApiArgs) -> anyhow::Result<()> {
    let mut rows: Vec<(String, String, &str)> = Vec::new();

    // Cold start and idle memory, on a fresh server.
    let (mut server, first_start) = Server::start(&[]).await?;
    rows.push((
        "cold start to /readyz (first start: certificates, bootstrap)".into(),
        ms(first_start),
        "< 300 ms",
    ));
    let restart = server.restart().await?;
    rows.push((
        "cold start to /readyz (restart on existing data)".into(),
        ms(restart),
        "< 300 ms",
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    rows.push((
        "idle RSS".into(),
        format!("{:.1} MB", server.rss_kib()? as f64 / 1024.0),
        "< 30 MB",
    ));

    // Durable creates.
    let mut admin = server.connect().await?;
    create_namespace(&mut admin, "single").await?;
    create_namespace(&mut admin, "many").await?;
    let single = create_pods(&server, "single", 1, args.single_creates).await?;
    rows.push((
        "durable creates/s, 1 client".into(),
        format!("{single:.0}"),
        "",
    ));
    let many = create_pods(&server, "many", args.clients, args.creates_per_client).await?;
    rows.push((
        format!("durable creates/s, {} clients", args.clients),
        format!("{many:.0}"),
        "≥ 5,000 (64 clients)",
    ));

    // Listing 10,000 pods.
    create_namespace(&mut admin, "list").await?;
    let per = args.list_pods.div_ceil(args.clients);
    create_pods(&server, "list", args.clients, per).await?;
    let mut times = Vec::new();
    let mut count = 0;
    for _ in 0..7 {
        let started = Instant::now();
        let (status, body) = send(
            &mut admin,
            Method::GET,
            "/api/v1/namespaces/list/pods",
            None,
        )
        .await?;
        times.push(started.elapsed());
        if status != StatusCode::OK {
            bail!("list: {status}");
        }
        let list: serde_json::Value = serde_json::from_slice(&body)?;
        count = list["items"].as_array().map_or(0, Vec::len);
    }
    times.sort();
    rows.push((
        format!("list of {count} pods, p50 / max of 7"),
        format!(
            "{} / {}",
            ms(percentile(&times, 0.5)),
            ms(times[times.len() - 1])
        ),
        "",
    ));

    // Watch delivery latency.
    create_namespace(&mut admin, "watch").await?;
    let (status, body) = send(
        &mut admin,
        Method::GET,
        "/api/v1/namespaces/watch/pods",
        None,
    )
    .await?;
    if status != StatusCode::OK {
        bail!("list: {status}");
    }
    let rv = serde_json::from_slice::<serde_json::Value>(&body)?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let mut handles = Vec::new();
    for _ in 0..args.watchers {
        let path = format!("/api/v1/namespaces/watch/pods?watch=true&resourceVersion={rv}");
        handles.push(watcher(&server, path, args.watch_events).await?);
    }
    let mut writer = server.connect().await?;
    for i in 0..args.watch_events {
        let (status, _) = send(
            &mut writer,
            Method::POST,
            "/api/v1/namespaces/watch/pods",
            Some(pod(&format!("w-{i}"))),
        )
        .await?;
        if status != StatusCode::CREATED {
            bail!("create: {status}");
        }
        // A steady stream rather than a burst: the latency of each event, not of a queue.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut delays = Vec::new();
    for h in handles {
        delays.extend(h.await??);
    }
    delays.sort();
    rows.push((
        format!(
            "watch delivery, {} watchers × {} events, p50 / p99",
            args.watchers, args.watch_events
        ),
        format!(
            "{} / {}",
            ms(percentile(&delays, 0.5)),
            ms(percentile(&delays, 0.99))
        ),
        "p99 < 10 ms",
    ));

    print_table("skiff bench api", &rows);
    Ok(())
}

/// Prints `(measurement, result, target)` rows as a Markdown table under a title line that
/// says how the binary was built.
fn print_table(title: &str, rows: &[(String, String, &str)]) {
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(10);
    let vwidth = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(10);
    println!(
        "{title} ({} build, {} CPUs)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| {:width$} | {:>vwidth$} | target |",
        "measurement", "result"
    );
    println!(
        "|{}|{}|--------|",
        "-".repeat(width + 2),
        "-".repeat(vwidth + 2)
    );
    for (name, value, target) in rows {
        println!("| {name:width$} | {value:>vwidth$} | {target} |");
    }
}
