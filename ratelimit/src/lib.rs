//! # breakwater-ratelimit
//!
//! The breakwater rate-limit service: stateless replicas that keep global rate limits in Redis and
//! answer Envoy's RLS v3 gRPC protocol (`envoy.service.ratelimit.v3.RateLimitService`), for
//! breakwater's filter and for Envoy's native rate-limit filter alike. Its limits are the
//! `global_rate_limit` blocks of the same policy document Envoy runs, reloaded when the file
//! changes. docs/global-limits.md describes the design.

#![cfg_attr(not(test), warn(clippy::indexing_slicing))]

pub mod bucket;
pub mod fleet;
pub mod limits;
pub mod metrics;
pub mod service;
pub mod source;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;

use crate::limits::Limits;
use crate::service::{RateLimiter, Shared};

/// How the service runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC (RLS v3) address.
    pub listen: SocketAddr,
    /// HTTP address of /healthz, /readyz and /metrics.
    pub admin: SocketAddr,
    pub redis_url: String,
    /// The longest one call waits for Redis.
    pub redis_timeout: Duration,
    /// A policy file, or the ECDS file Envoy reads.
    pub policy: PathBuf,
    /// How often the policy file is checked for changes.
    pub reload_every: Duration,
}

/// Runs until `shutdown` turns true: answers calls in flight, then returns.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> Result<(), String> {
    let (mut seen, document) = source::read_file(&config.policy).map_err(|e| e.join("\n"))?;
    let limits = Limits::from_document(&document);
    let redis = redis::Client::open(config.redis_url.as_str()).map_err(|e| format!("--redis: {e}"))?;
    let redis_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.redis_timeout.max(Duration::from_millis(100))))
        .set_response_timeout(Some(config.redis_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    // Lazy: the service starts (and answers UNAVAILABLE) while Redis is down, and reconnects.
    let conn =
        ConnectionManager::new_lazy_with_config(redis, redis_config).map_err(|e| format!("redis: {e}"))?;
    let shared = Arc::new(Shared {
        metrics: Default::default(),
        fleet: Default::default(),
        limits: RwLock::new(Arc::new(limits)),
        redis: conn,
        script: bucket::script(),
        redis_timeout: config.redis_timeout,
    });
    shared.metrics.limits.store(limit_count(&shared), Relaxed);

    let grpc =
        tokio::net::TcpListener::bind(config.listen).await.map_err(|e| format!("{}: {e}", config.listen))?;
    let admin =
        tokio::net::TcpListener::bind(config.admin).await.map_err(|e| format!("{}: {e}", config.admin))?;
    let (grpc_at, admin_at) =
        (grpc.local_addr().map_err(|e| e.to_string())?, admin.local_addr().map_err(|e| e.to_string())?);
    // Tests and scripts wait for this line (the ports are known only now when asked for port 0).
    println!(
        "breakwater-ratelimit: grpc {grpc_at} admin {admin_at}, {} global limits from {}",
        limit_count(&shared),
        config.policy.display()
    );

    // Background: reload the policy when its file changes; count the fleet.
    let reload = {
        let (shared, path, every, mut stop) =
            (Arc::clone(&shared), config.policy.clone(), config.reload_every, shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                let Ok(bytes) = tokio::fs::read(&path).await else { continue };
                if bytes == seen {
                    continue;
                }
                seen = bytes;
                match source::read_document(&seen) {
                    Ok(doc) => {
                        if let Ok(mut l) = shared.limits.write() {
                            *l = Arc::new(Limits::from_document(&doc));
                        }
                        shared.metrics.limits.store(limit_count(&shared), Relaxed);
                        shared.metrics.reloads_ok.fetch_add(1, Relaxed);
                        println!(
                            "breakwater-ratelimit: reloaded {}: {} global limits",
                            path.display(),
                            limit_count(&shared)
                        );
                    }
                    Err(errors) => {
                        shared.metrics.reloads_failed.fetch_add(1, Relaxed);
                        eprintln!(
                            "breakwater-ratelimit: {} rejected, the previous limits stay:\n{}",
                            path.display(),
                            errors.join("\n")
                        );
                    }
                }
            }
        })
    };
    let fleet = {
        let (shared, mut stop) = (Arc::clone(&shared), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                let mut conn = shared.redis.clone();
                if let Ok(Ok(())) =
                    tokio::time::timeout(Duration::from_secs(1), shared.fleet.flush(&mut conn)).await
                {
                    shared.metrics.envoys.store(shared.fleet.total.load(Relaxed), Relaxed);
                }
            }
        })
    };

    let http = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(|State(s): State<Arc<Shared>>| async move { s.metrics.render() }))
        .with_state(Arc::clone(&shared));
    let stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let http = axum::serve(admin, http).with_graceful_shutdown(stop(shutdown.clone()));
    let grpc = tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(RateLimiter(Arc::clone(&shared))))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
            stop(shutdown.clone()),
        );
    let (grpc, http) = tokio::join!(grpc, http);
    let _ = shutdown.wait_for(|s| *s).await;
    let _ = tokio::join!(reload, fleet);
    grpc.map_err(|e| format!("grpc: {e}"))?;
    http.map_err(|e| format!("admin: {e}"))?;
    Ok(())
}

fn limit_count(shared: &Shared) -> u64 {
    shared.limits.read().map(|l| l.len() as u64).unwrap_or(0)
}

/// Ready once a policy document is loaded (always, after start-up). Redis is not part of it: a
/// replica without Redis answers UNAVAILABLE at once, which the filter's `failure_mode` handles,
/// and taking every replica out of the Service would only turn that into connection errors.
async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    (StatusCode::OK, format!("ready: {} global limits\n", limit_count(&shared)))
}
