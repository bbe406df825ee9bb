//! `breakwater serve`: the admin server (the web admin and its JSON API).

use std::path::PathBuf;
use std::process::ExitCode;

use breakwater_cli::{ecds, serve};

use super::{FILTER_WASM, FailStrategy, emit, fail, parse_duration};

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (loopback by default: the API can change what Envoy enforces).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: std::net::SocketAddr,
    /// Listen on a non-loopback address although the server speaks plain HTTP: the token and the
    /// policies would cross the network in clear text. Put a TLS proxy in front instead, if you can.
    #[arg(long)]
    insecure_remote: bool,
    /// The policy document the admin edits (created empty, or from --init, when missing).
    #[arg(long, default_value = "policies/active.yaml")]
    policy: PathBuf,
    /// When the policy file does not exist yet, start from these documents (merged in order).
    #[arg(long, num_args = 1..)]
    init: Vec<PathBuf>,
    /// Where the history, the published marker and the generated token are kept.
    #[arg(long, default_value = ".breakwater")]
    state_dir: PathBuf,
    /// The API token (at least 16 characters); default: generated into STATE_DIR/token (mode 0600).
    #[arg(long, env = "BREAKWATER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The built admin UI (trunk's output).
    #[arg(long, default_value = "admin-ui/dist")]
    ui: PathBuf,
    /// Scenario files offered by the simulator (`*.scenario.yaml` in this folder).
    #[arg(long, default_value = "policies")]
    scenarios: PathBuf,
    /// The compiled filter: simulations run it, and publishing names it in the ECDS resource.
    #[arg(long, default_value = FILTER_WASM)]
    wasm: PathBuf,
    /// The ECDS file Envoy watches; without it publishing is off.
    #[arg(long)]
    ecds: Option<PathBuf>,
    /// Envoy's admin endpoint, HOST:PORT: confirms publishes and feeds the live view.
    #[arg(long)]
    envoy_admin: Option<String>,
    /// Envoy's log file: a rejected publish quotes Envoy's reason from it, and the live page shows
    /// the breaker transitions logged there.
    #[arg(long)]
    envoy_log: Option<PathBuf>,
    /// Prometheus, HOST:PORT: the live page's charts come from its query API (else from the
    /// server's own sampling of Envoy's stats, every 5 s for 15 minutes).
    #[arg(long)]
    prometheus: Option<String>,
    /// Alertmanager, HOST:PORT: the live page shows the breakwater alerts firing there.
    #[arg(long)]
    alertmanager: Option<String>,
    /// The filter's name in Envoy's HTTP filter chain.
    #[arg(long, default_value = "breakwater")]
    name: String,
    #[arg(long, default_value = "breakwater")]
    vm_id: String,
    /// What Envoy does with requests when the filter's VM fails (written into every published
    /// resource).
    #[arg(long, value_enum, default_value_t = FailStrategy::FailOpen)]
    fail_strategy: FailStrategy,
    /// How long a publish waits for Envoy to apply the new version; a version not applied by
    /// then is replaced by the last applied one.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    publish_timeout: std::time::Duration,
}

pub fn run(a: Args) -> ExitCode {
    if !a.listen.ip().is_loopback() && !a.insecure_remote {
        return fail(format!(
            "--listen {}: the admin server speaks plain HTTP, so its token and the policies would cross \
             the network in clear text. Listen on loopback behind a TLS proxy, or pass --insecure-remote \
             to accept that",
            a.listen
        ));
    }
    if !a.policy.exists() && !a.init.is_empty() {
        let text = match serve::store::init_document(&a.init) {
            Ok(t) => t,
            Err(e) => return fail(e),
        };
        if let Err(e) = ecds::write_atomically(&a.policy, text.as_bytes()) {
            return fail(format!("cannot write {}: {e}", a.policy.display()));
        }
    }
    let (token, token_file) = match serve::token(a.token, &a.state_dir) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let config = serve::Config {
        policy: a.policy,
        state_dir: a.state_dir,
        token: token.clone(),
        ui_dir: Some(a.ui),
        scenarios_dir: a.scenarios,
        filter_wasm: a.wasm,
        ecds: a.ecds,
        filter_name: a.name,
        vm_id: a.vm_id,
        failure_policy: a.fail_strategy.into(),
        envoy_admin: a.envoy_admin,
        envoy_log: a.envoy_log,
        prometheus: a.prometheus,
        alertmanager: a.alertmanager,
        publish_timeout: a.publish_timeout,
        simulation: serve::SimulationLimits::default(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let policy = config.policy.display().to_string();
    let result = runtime.block_on(async move {
        let router = serve::app(config)?;
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        // The token is never printed: this output ends up in service logs.
        let token_shell = match &token_file {
            Some(f) => format!("$(cat {})", f.display()),
            None => "$BREAKWATER_TOKEN".to_string(),
        };
        let token_note = match &token_file {
            Some(f) => format!("token in {} (owner-only)", f.display()),
            None => "token as given".to_string(),
        };
        emit(&format!(
            "breakwater admin on http://{bound}/ (open http://{bound}/#token=<token>)\n  policy {policy}; {token_note}\n  API: curl -H \"Authorization: Bearer {token_shell}\" http://{bound}/api/policy\n"
        ));
        serve::serve_on(listener, router).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
