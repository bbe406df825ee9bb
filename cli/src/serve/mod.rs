//! `breakwater serve`: the admin server. It serves the built admin UI and a JSON API under /api
//! (bearer token on every call): the policy store with history, diff and rollback, validation,
//! simulation through host-test, publishing over ECDS with Envoy's confirmation, and live stats.
//!
//! [`app`] builds the whole router from a [`Config`]; tests drive it with `oneshot`.

mod api;
pub mod envoy;
pub mod live;
pub mod running;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tower_http::services::{ServeDir, ServeFile};

use crate::ecds::{FailurePolicy, FilterSettings};

/// Largest request body the API reads (a policy document of 1,000 policies is ~250 KB).
pub const MAX_BODY: usize = 2 << 20;
/// Longest an API request may take (a simulation runs a few seconds at most).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything the server needs; built by the CLI from its flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// The policy document (the store's active version).
    pub policy: PathBuf,
    /// History, published marker (and the generated token when none is given).
    pub state_dir: PathBuf,
    /// Bearer token every /api call must carry.
    pub token: String,
    /// The built admin UI (trunk's dist folder); None serves a page saying how to build it.
    pub ui_dir: Option<PathBuf>,
    /// Where scenario files are listed from (`*.scenario.yaml`).
    pub scenarios_dir: PathBuf,
    /// The compiled filter, for simulations (and the path written into ECDS).
    pub filter_wasm: PathBuf,
    /// The ECDS file Envoy watches; None: publishing is off.
    pub ecds: Option<PathBuf>,
    pub filter_name: String,
    pub vm_id: String,
    /// What Envoy does when the filter's VM fails (written into every published resource).
    pub failure_policy: FailurePolicy,
    /// Envoy's admin endpoint (HOST:PORT); None: no confirmation, no live stats.
    pub envoy_admin: Option<String>,
    /// Envoy's log file: where a publish finds Envoy's reason for a rejection, and the live page
    /// the breaker transitions.
    pub envoy_log: Option<PathBuf>,
    /// Prometheus (HOST:PORT): the live page's charts come from its query API; None: from the
    /// server's own sampling of Envoy's stats.
    pub prometheus: Option<String>,
    /// Alertmanager (HOST:PORT): the live page shows the breakwater alerts firing there.
    pub alertmanager: Option<String>,
    /// How long a publish waits for Envoy to apply (or reject) the new version.
    pub publish_timeout: Duration,
    /// What one simulation through the API may ask for.
    pub simulation: SimulationLimits,
}

/// The API's limits on a simulation, far below what `breakwater test` allows (64 workers, an hour,
/// 20 million requests): the admin server runs next to Envoy, and anyone with the token may ask.
/// One simulation runs at a time (another gets 429); it is stopped when its wall time is spent,
/// when it sends too many requests, or when its caller goes away (the request timed out).
#[derive(Debug, Clone, Copy)]
pub struct SimulationLimits {
    pub max_workers: u32,
    /// Longest simulated time.
    pub max_duration: Duration,
    /// Most requests in one run (each keeps a record until the run ends).
    pub max_requests: u64,
    /// Wall-clock time one run may take (below the API's 60 s request timeout).
    pub wall: Duration,
    /// Linear memory of each simulated VM.
    pub vm_memory: usize,
}

impl Default for SimulationLimits {
    fn default() -> Self {
        SimulationLimits {
            max_workers: 8,
            max_duration: Duration::from_secs(600),
            max_requests: 1_000_000,
            wall: Duration::from_secs(20),
            vm_memory: 64 << 20,
        }
    }
}

impl Config {
    pub fn filter_settings(&self) -> FilterSettings {
        let wasm = std::path::absolute(&self.filter_wasm).unwrap_or_else(|_| self.filter_wasm.clone());
        FilterSettings {
            name: self.filter_name.clone(),
            vm_id: self.vm_id.clone(),
            wasm,
            failure_policy: self.failure_policy,
        }
    }

    /// Where publishes go and how Envoy confirms them; None when publishing is off.
    pub fn publish_target(&self) -> Option<crate::publish::Target> {
        Some(crate::publish::Target {
            ecds: self.ecds.clone()?,
            settings: self.filter_settings(),
            admin: self.envoy_admin.clone().map(|address| envoy::Admin { address }),
            log: self.envoy_log.clone(),
            timeout: self.publish_timeout,
        })
    }
}

/// The shared state of every request.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    /// Saves, rollbacks and publishes run one at a time.
    store: Arc<tokio::sync::Mutex<store::Store>>,
    /// The compiled filter loaded into host-test once, by the first simulation that succeeds.
    host: tokio::sync::OnceCell<Arc<breakwater_host_test::Host>>,
    /// Simulations are CPU-bound: one at a time. The permit is held by the run itself (on its
    /// blocking thread), not by the request, so a timed-out request cannot free it early.
    simulations: Arc<tokio::sync::Semaphore>,
    /// Publishes run one at a time, from writing the file to Envoy's answer.
    publishing: tokio::sync::Mutex<()>,
    /// The server's own samples of Envoy's stats (with an Envoy admin, without Prometheus).
    samples: Option<Arc<live::Samples>>,
    /// What Envoy runs, as last worked out.
    running: Arc<running::Cache>,
}

/// Opens the store and builds the router.
pub fn app(config: Config) -> Result<Router, String> {
    let store = store::Store::open(&config.policy, &config.state_dir)?;
    let ui = config.ui_dir.clone();
    let samples = match (&config.envoy_admin, &config.prometheus) {
        (Some(address), None) => {
            let samples = Arc::new(live::Samples::default());
            live::sample_envoy(envoy::Admin { address: address.clone() }, Arc::downgrade(&samples));
            Some(samples)
        }
        _ => None,
    };
    let state = Arc::new(State {
        config,
        store: Arc::new(tokio::sync::Mutex::new(store)),
        host: tokio::sync::OnceCell::new(),
        simulations: Arc::new(tokio::sync::Semaphore::new(1)),
        publishing: tokio::sync::Mutex::new(()),
        samples,
        running: Arc::default(),
    });
    let api = api::router(state.clone()).layer(DefaultBodyLimit::max(MAX_BODY)).layer(
        tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ),
    );
    let router = Router::new().route("/healthz", axum::routing::get(|| async { "ok\n" })).nest("/api", api);
    Ok(match ui {
        Some(dir) if dir.join("index.html").is_file() => {
            // `just build-admin` writes a .br and a .gz beside each file: sent as they are to a
            // browser that accepts them (the wasm: 1.0 MB, 0.33 MB in brotli).
            let index = ServeFile::new(dir.join("index.html")).precompressed_br().precompressed_gzip();
            router
                .fallback_service(ServeDir::new(&dir).precompressed_br().precompressed_gzip().fallback(index))
        }
        other => router.fallback(move || {
            let shown = other.as_ref().map(|d| d.display().to_string()).unwrap_or_default();
            async move {
                (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "The admin UI is not built ({shown}/index.html is missing): run ./dev build-admin\n"
                    ),
                )
            }
        }),
    })
}

/// The token: given, or read from `<state_dir>/token`, or generated there (owner-only file).
/// Returns the token and the file it lives in (None when given).
pub fn token(given: Option<String>, state_dir: &Path) -> Result<(String, Option<PathBuf>), String> {
    if let Some(t) = given {
        let t = t.trim().to_string();
        if t.len() < 16 {
            return Err("the token must be at least 16 characters".into());
        }
        return Ok((t, None));
    }
    let path = state_dir.join("token");
    if let Ok(t) = std::fs::read_to_string(&path)
        && t.trim().len() >= 16
    {
        return Ok((t.trim().to_string(), Some(path)));
    }
    std::fs::create_dir_all(state_dir).map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
    let t = crate::ecds::random_hex(24).map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    write_private(&path, &t).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok((t, Some(path)))
}

/// Writes a file only its owner can read (created with mode 0600, never world-readable).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")
}

/// Limits of the admin server's connections (slowloris and connection floods). Defaults: 10 s to
/// send a request's headers, 256 connections at once.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// A client that has not sent a request's complete headers by then (from the connection's
    /// start, or from the end of its previous request) is disconnected.
    pub header_read_timeout: Duration,
    /// Connections beyond this are answered `503` and closed at once.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits { header_read_timeout: Duration::from_secs(10), max_connections: 256 }
    }
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn serve_on(listener: tokio::net::TcpListener, router: Router) -> Result<(), String> {
    serve_until(listener, router, ServerLimits::default(), shutdown_signal()).await
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// Serves HTTP/1.1 with `limits` until `shutdown` completes; then stops accepting, lets each
/// connection finish the request it is serving, and returns once every connection is closed.
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors, say: give the connections a moment to close.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            connections.spawn(refuse(stream));
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let stopping = tokio::select! {
                _ = connection.as_mut() => false,
                stop = stopped.wait_for(|stop| *stop) => stop.is_ok(),
            };
            if stopping {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
            drop(slot);
        });
        // Reap finished connections so the set does not grow with the server's uptime.
        while connections.try_join_next().is_some() {}
    }
    let _ = stop.send(true);
    // Each connection finishes the request it is serving; one that will not (a slow reader) is
    // cut after 30 s, so a stop never hangs.
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
    Ok(())
}

/// The answer to a connection over [`ServerLimits::max_connections`].
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = "too many connections to the admin server\n";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
    let _ = stream.shutdown().await;
}
