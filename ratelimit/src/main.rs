//! `breakwater-ratelimit`: the rate-limit service (see the library's docs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "breakwater-ratelimit",
    version,
    about = "Global rate limits in Redis, over Envoy's RLS v3 gRPC protocol"
)]
struct Args {
    /// The policy document: a policy file (YAML/JSON) or the ECDS file Envoy reads. Reloaded when
    /// it changes; a document that does not validate is refused and the previous limits stay.
    #[arg(long)]
    policy: PathBuf,
    /// Redis, as a URL (redis://host:port/db); from the environment when it holds a password,
    /// which the process list would show.
    #[arg(
        long,
        env = "BREAKWATER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    redis: String,
    /// The gRPC address (RLS v3).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// The HTTP address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "127.0.0.1:9091")]
    admin: SocketAddr,
    /// The longest a call waits for Redis before it is answered UNAVAILABLE (keep it below the
    /// filter's `timeout`).
    #[arg(long, default_value = "10ms", value_parser = duration)]
    redis_timeout: Duration,
    /// How often the policy file is checked for changes.
    #[arg(long, default_value = "1s", value_parser = duration)]
    reload_every: Duration,
}

fn duration(text: &str) -> Result<Duration, String> {
    breakwater_policy::model::Duration::parse(text).map(|d| Duration::from_millis(d.as_millis()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = breakwater_ratelimit::Config {
        listen: args.listen,
        admin: args.admin,
        redis_url: args.redis,
        redis_timeout: args.redis_timeout,
        policy: args.policy,
        reload_every: args.reload_every,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("breakwater-ratelimit: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            eprintln!("breakwater-ratelimit: shutting down (calls in flight finish first)");
            let _ = tx.send(true);
        });
        breakwater_ratelimit::run(config, rx).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("breakwater-ratelimit: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
