//! `breakwater`: check, explain, compile and publish policy documents.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use breakwater_cli::render::{self, Target};
use breakwater_cli::{ecds, oci, yaml};
use breakwater_policy::{Diagnostic, diag};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

#[derive(Parser)]
#[command(name = "breakwater", version, about = "Resilience policies for Envoy: validate, compile, schema")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check policy documents; print every problem with its line. Exit 1 on errors.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print the JSON Schema of the policy language.
    Schema,
    /// Run scenario files: simulated traffic through the compiled filter (host-test), each
    /// expectation checked. Exit 1 when an expectation fails, 2 when a scenario cannot run.
    Test {
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Print one JSON object per scenario, with its per-second timeline.
        #[arg(long)]
        json: bool,
        /// The compiled filter (default: the workspace's release build).
        #[arg(long)]
        wasm: Option<PathBuf>,
    },
    /// Print the JSON the filter receives as plugin configuration (defaults filled in, or left out
    /// with --compact). Several files are merged, policies in the order given.
    Compile {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Indent the JSON.
        #[arg(long)]
        pretty: bool,
        /// Leave out every field whose value is its default (what `publish` sends; same document).
        #[arg(long)]
        compact: bool,
    },
    /// Validate and compile a policy, then write it as the next version of an ECDS resource file
    /// (atomically: Envoy applies it without a restart). Several files are merged in order.
    Publish {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The ECDS file Envoy watches (its `path_config_source.path`).
        #[arg(long)]
        ecds: PathBuf,
        /// The compiled filter.
        #[arg(long, default_value = "target/wasm32-wasip1/release/breakwater_filter.wasm")]
        wasm: PathBuf,
        /// The filter's name in Envoy's HTTP filter chain.
        #[arg(long, default_value = "breakwater")]
        name: String,
        /// Envoy VM id; shared state is scoped by it.
        #[arg(long, default_value = "breakwater")]
        vm_id: String,
    },
    /// Run the admin server: the web admin and its JSON API (bearer token), the policy store with
    /// history, simulation, publishing to Envoy over ECDS and live stats.
    Serve(Box<ServeArgs>),
    /// Print deployable configuration for policies: an Istio WasmPlugin or an Envoy bootstrap.
    #[command(subcommand)]
    Render(Render),
    /// Package the filter as an OCI image (the layout Istio's WasmPlugin pulls), optionally push it.
    Package {
        /// Write an OCI image layout in this directory.
        #[arg(long)]
        oci: PathBuf,
        /// Tag of the image in the layout.
        #[arg(long, default_value = "latest")]
        tag: String,
        /// `compat`: a tar+gzip layer holding plugin.wasm; `artifact`: wasm media types.
        #[arg(long, value_enum, default_value_t = ImageFormat::Compat)]
        format: ImageFormat,
        /// The compiled filter.
        #[arg(long, default_value = "target/wasm32-wasip1/release/breakwater_filter.wasm")]
        wasm: PathBuf,
        /// Push to REGISTRY/REPO:TAG with skopeo after writing the layout.
        #[arg(long)]
        push: Option<String>,
        /// Allow a plain-HTTP or self-signed registry (loopback tests).
        #[arg(long)]
        insecure: bool,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (loopback by default: the API can change what Envoy enforces).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: std::net::SocketAddr,
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
    #[arg(long, default_value = "target/wasm32-wasip1/release/breakwater_filter.wasm")]
    wasm: PathBuf,
    /// The ECDS file Envoy watches; without it publishing is off.
    #[arg(long)]
    ecds: Option<PathBuf>,
    /// Envoy's admin endpoint, HOST:PORT: confirms publishes and feeds the live view.
    #[arg(long)]
    envoy_admin: Option<String>,
    /// Envoy's log file: a rejected publish quotes Envoy's reason from it.
    #[arg(long)]
    envoy_log: Option<PathBuf>,
    /// The filter's name in Envoy's HTTP filter chain.
    #[arg(long, default_value = "breakwater")]
    name: String,
    #[arg(long, default_value = "breakwater")]
    vm_id: String,
    /// How long a publish waits for Envoy to apply the new version.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    publish_timeout: std::time::Duration,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = n.parse().map_err(|_| format!("`{s}` is not a duration like 10s or 500ms"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" => Ok(std::time::Duration::from_secs(n)),
        _ => Err(format!("`{s}` is not a duration like 10s or 500ms")),
    }
}

#[derive(Subcommand)]
enum Render {
    /// An Istio WasmPlugin with the compiled policy as pluginConfig and the image digest pinned.
    Istio {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The image, REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:HEX (without oci://).
        #[arg(long)]
        image: String,
        /// The manifest digest to pin (bare hex), as printed by `breakwater package`.
        #[arg(long, conflicts_with = "oci")]
        sha256: Option<String>,
        /// Read the digest to pin from this OCI layout (written by `breakwater package`).
        #[arg(long)]
        oci: Option<PathBuf>,
        /// Apply to workloads with these labels (repeatable: --selector app=shop).
        #[arg(long, conflicts_with = "target_ref")]
        selector: Vec<String>,
        /// Apply to a Gateway or Service: KIND/NAME (e.g. Gateway/public).
        #[arg(long)]
        target_ref: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        /// The WasmPlugin's name.
        #[arg(long, default_value = "breakwater")]
        name: String,
        #[arg(long, value_enum, default_value_t = Phase::Authz)]
        phase: Phase,
        /// Order among plugins of the same phase (higher runs first).
        #[arg(long, default_value_t = render::DEFAULT_PRIORITY, allow_negative_numbers = true)]
        priority: i32,
        #[arg(long, value_enum, default_value_t = FailStrategy::FailOpen)]
        fail_strategy: FailStrategy,
    },
    /// A standalone Envoy bootstrap: a listener with the filter in front of one upstream.
    Envoy {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The upstream, HOST:PORT.
        #[arg(long)]
        upstream: String,
        #[arg(long, default_value = "0.0.0.0:10000")]
        listen: String,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// The compiled filter.
        #[arg(long, default_value = "target/wasm32-wasip1/release/breakwater_filter.wasm")]
        wasm: PathBuf,
        /// Take the policy from this ECDS file (kept current by `breakwater publish`) instead of inline.
        #[arg(long)]
        ecds: Option<String>,
    },
}

/// Accepted as Istio spells them too (`AUTHZ`, `FAIL_OPEN`).
#[derive(Clone, Copy, ValueEnum)]
enum Phase {
    #[value(alias = "AUTHN")]
    Authn,
    #[value(alias = "AUTHZ")]
    Authz,
    #[value(alias = "STATS")]
    Stats,
    /// Istio's UNSPECIFIED_PHASE: the end of the chain, just before the router.
    #[value(name = "unspecified-phase", alias = "UNSPECIFIED_PHASE")]
    Unspecified,
}

#[derive(Clone, Copy, ValueEnum)]
#[allow(clippy::enum_variant_names)]
enum FailStrategy {
    #[value(alias = "FAIL_OPEN")]
    FailOpen,
    #[value(alias = "FAIL_CLOSE")]
    FailClose,
    #[value(alias = "FAIL_RELOAD")]
    FailReload,
}

/// A value-enum variant as Istio spells it (AUTHZ, FAIL_OPEN).
fn istio_word(v: &impl ValueEnum) -> String {
    v.to_possible_value().map(|p| p.get_name().replace('-', "_").to_ascii_uppercase()).unwrap_or_default()
}

#[derive(Clone, Copy, ValueEnum)]
enum ImageFormat {
    Compat,
    Artifact,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { files, format } => validate(&files, format),
        Command::Schema => {
            print!("{}", breakwater_policy::schema::json_schema());
            ExitCode::SUCCESS
        }
        Command::Compile { files, pretty, compact } => compile(&files, pretty, compact),
        Command::Test { scenarios, json, wasm } => test(&scenarios, json, wasm.as_deref()),
        Command::Publish { files, ecds, wasm, name, vm_id } => publish(&files, &ecds, wasm, name, vm_id),
        Command::Render(r) => render(r),
        Command::Serve(args) => serve(*args),
        Command::Package { oci: dir, tag, format, wasm, push, insecure } => {
            let format = match format {
                ImageFormat::Compat => oci::Format::Compat,
                ImageFormat::Artifact => oci::Format::Artifact,
            };
            package(&dir, &tag, format, &wasm, push.as_deref(), insecure)
        }
    }
}

/// A file read for checking: its text (when UTF-8, for carets) and the load result.
struct Checked {
    source: Option<String>,
    result: Result<breakwater_policy::Loaded, Vec<Diagnostic>>,
}

fn check_file(path: &Path) -> Result<Checked, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let result = breakwater_policy::load_bytes(&bytes);
    Ok(Checked { source: String::from_utf8(bytes).ok(), result })
}

fn validate(files: &[PathBuf], format: Format) -> ExitCode {
    let mut failed = false;
    let mut reports = Vec::new();
    let mut out = String::new();
    for path in files {
        let name = path.display().to_string();
        let checked = match check_file(path) {
            Ok(c) => c,
            Err(e) => {
                failed = true;
                let d = Diagnostic::error("", e);
                out.push_str(&d.render(&name, None));
                reports.push(json!({ "file": name, "valid": false, "diagnostics": [d] }));
                continue;
            }
        };
        let (valid, diagnostics) = match &checked.result {
            Ok(loaded) => (true, loaded.warnings.clone()),
            Err(diags) => (false, diags.clone()),
        };
        failed |= !valid;
        let rendered = diag::render_all(&diagnostics, &name, checked.source.as_deref());
        if !rendered.is_empty() {
            out.push_str(&rendered);
            out.push('\n');
        }
        let errors = diagnostics.iter().filter(|d| d.is_error()).count();
        let warnings = diagnostics.len() - errors;
        let summary = match (valid, warnings) {
            (true, 0) => format!("{name}: ok\n"),
            (true, w) => format!("{name}: ok ({w} warning{})\n", plural(w)),
            (false, w) => format!(
                "{name}: {errors} error{}{}\n",
                plural(errors),
                if w > 0 { format!(", {w} warning{}", plural(w)) } else { String::new() }
            ),
        };
        out.push_str(&summary);
        reports.push(json!({ "file": name, "valid": valid, "diagnostics": diagnostics }));
    }
    let text = match format {
        Format::Text => out,
        Format::Json => format!("{}\n", serde_json::Value::Array(reports)),
    };
    emit(&text);
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn test(files: &[PathBuf], json: bool, wasm: Option<&Path>) -> ExitCode {
    use breakwater_cli::testing;
    let host = match testing::find_filter(wasm)
        .and_then(|p| breakwater_host_test::Host::from_file(&p).map_err(|e| format!("{e:#}")))
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (mut failed, mut broken) = (0usize, 0usize);
    let mut results = Vec::new();
    for path in files {
        let file = path.display().to_string();
        let result = breakwater_host_test::sim::load_file(path)
            .map_err(|e| e.to_string())
            .and_then(|loaded| testing::run(&host, &file, &loaded));
        match result {
            Ok(r) => {
                failed += usize::from(!r.report.passed);
                if json {
                    results.push(r);
                } else {
                    emit(&testing::render(&r));
                }
            }
            Err(e) => {
                broken += 1;
                eprintln!("{file}: cannot run\n{e}");
            }
        }
    }
    if json {
        match serde_json::to_string(&results) {
            Ok(text) => emit(&format!("{text}\n")),
            Err(e) => return fail(format!("cannot encode the results: {e}")),
        }
    } else if files.len() > 1 {
        let passed = files.len() - failed - broken;
        emit(&format!("{passed} of {} scenarios passed\n", files.len()));
    }
    match (broken, failed) {
        (0, 0) => ExitCode::SUCCESS,
        (0, _) => ExitCode::FAILURE,
        _ => ExitCode::from(2),
    }
}

fn compile(files: &[PathBuf], pretty: bool, compact: bool) -> ExitCode {
    let Some(doc) = load_all(files) else { return ExitCode::FAILURE };
    let json =
        if compact { breakwater_policy::compile_compact(&doc) } else { breakwater_policy::compile(&doc) };
    let json = match (pretty, serde_json::from_str::<serde_json::Value>(&json)) {
        (true, Ok(v)) => serde_json::to_string_pretty(&v).unwrap_or(json),
        _ => json,
    };
    emit(&format!("{json}\n"));
    ExitCode::SUCCESS
}

/// Loads a file for compile/publish, printing its diagnostics; None when it is invalid.
fn load_valid(path: &Path) -> Option<breakwater_policy::Document> {
    let name = path.display().to_string();
    let checked = match check_file(path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{}", Diagnostic::error("", e).render(&name, None));
            return None;
        }
    };
    match checked.result {
        Ok(loaded) => {
            if !loaded.warnings.is_empty() {
                eprintln!("{}", diag::render_all(&loaded.warnings, &name, checked.source.as_deref()));
            }
            Some(loaded.document)
        }
        Err(diags) => {
            eprintln!("{}", diag::render_all(&diags, &name, checked.source.as_deref()));
            None
        }
    }
}

/// Loads every file (reporting each one's problems), then merges them when there are several.
fn load_all(files: &[PathBuf]) -> Option<breakwater_policy::Document> {
    let docs: Vec<_> = files.iter().map(|f| load_valid(f).map(|d| (f.display().to_string(), d))).collect();
    let docs: Vec<_> = docs.into_iter().collect::<Option<_>>()?;
    if docs.len() == 1 {
        return docs.into_iter().next().map(|(_, d)| d);
    }
    match breakwater_policy::merge(docs) {
        Ok(loaded) => {
            if !loaded.warnings.is_empty() {
                eprintln!("{}", diag::render_all(&loaded.warnings, "merged policies", None));
            }
            Some(loaded.document)
        }
        Err(diags) => {
            eprintln!("{}", diag::render_all(&diags, "merged policies", None));
            None
        }
    }
}

fn publish(files: &[PathBuf], ecds_path: &Path, wasm: PathBuf, name: String, vm_id: String) -> ExitCode {
    let Some(doc) = load_all(files) else { return ExitCode::FAILURE };
    let wasm = match std::fs::canonicalize(&wasm) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "error: the filter {} is not there ({e}); build it with `./dev build-wasm`",
                wasm.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let settings = ecds::FilterSettings { name, vm_id, wasm };
    match ecds::publish(ecds_path, &settings, &breakwater_policy::compile_compact(&doc)) {
        Ok(version) => {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            emit(&format!(
                "published {} ({} policies) as version {version} to {}\n",
                names.join(" + "),
                doc.policies.len(),
                ecds_path.display()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", ecds_path.display());
            ExitCode::FAILURE
        }
    }
}

fn serve(a: ServeArgs) -> ExitCode {
    use breakwater_cli::serve;
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
        envoy_admin: a.envoy_admin,
        envoy_log: a.envoy_log,
        publish_timeout: a.publish_timeout,
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
        let token_note = match &token_file {
            Some(f) => format!("token in {} (owner-only)", f.display()),
            None => "token as given".to_string(),
        };
        emit(&format!(
            "breakwater admin on http://{bound}/#token={token}\n  policy {policy}; {token_note}\n  API: curl -H 'Authorization: Bearer {token}' http://{bound}/api/policy\n"
        ));
        serve::serve_on(listener, router).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn package(
    dir: &Path,
    tag: &str,
    format: oci::Format,
    wasm: &Path,
    push: Option<&str>,
    insecure: bool,
) -> ExitCode {
    let bytes = match std::fs::read(wasm) {
        Ok(b) if b.starts_with(b"\0asm") => b,
        Ok(_) => {
            eprintln!("error: {} is not a wasm module", wasm.display());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!(
                "error: the filter {} is not there ({e}); build it with `./dev build-wasm`",
                wasm.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let image = match oci::write_layout(dir, &bytes, tag, format) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    let mut out = format!(
        "wrote {} (tag {tag}): manifest {}, plugin.wasm {}\npin it in a WasmPlugin with  sha256: {}\n",
        dir.display(),
        image.manifest_digest,
        image.wasm_digest,
        image.pin()
    );
    if let Some(reference) = push {
        if let Err(e) = oci::push(dir, tag, reference, insecure) {
            eprintln!("error: push to {reference} failed: {e}");
            return ExitCode::FAILURE;
        }
        out.push_str(&format!("pushed to {reference}  (url: oci://{reference})\n"));
    }
    emit(&out);
    ExitCode::SUCCESS
}

fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn render(r: Render) -> ExitCode {
    match r {
        Render::Istio {
            files,
            image,
            sha256,
            oci: layout,
            selector,
            target_ref,
            namespace,
            name,
            phase,
            priority,
            fail_strategy,
        } => {
            let Some(doc) = load_all(&files) else { return ExitCode::FAILURE };
            let image = image.trim_start_matches("oci://").to_string();
            let tag = image.rsplit_once(':').map(|(_, t)| t).filter(|t| !t.contains('/')).unwrap_or("latest");
            let pin = match (sha256, layout, image.split_once("@sha256:")) {
                (Some(hex), _, _) => hex,
                (None, Some(dir), _) => match oci::manifest_digest(&dir, tag) {
                    Ok(d) => d.trim_start_matches("sha256:").to_string(),
                    Err(e) => return fail(format!("cannot read the digest of tag {tag}: {e}")),
                },
                (None, None, Some((_, hex))) => hex.to_string(),
                (None, None, None) => {
                    return fail("pin the image: give --oci DIR (from `breakwater package`), --sha256 HEX, or an image @sha256:".into());
                }
            };
            if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                return fail(format!("`{pin}` is not a sha256 digest (64 lower-case hex digits)"));
            }
            let target = if let Some(t) = target_ref {
                match t.split_once('/') {
                    Some((kind @ ("Gateway" | "Service"), name)) if !name.is_empty() => {
                        Some(Target::Ref { kind: kind.into(), name: name.into() })
                    }
                    _ => return fail(format!("--target-ref `{t}`: expected Gateway/NAME or Service/NAME")),
                }
            } else if selector.is_empty() {
                None
            } else {
                let mut labels = Vec::new();
                for s in &selector {
                    match s.split_once('=') {
                        Some((k, v)) if !k.is_empty() && !k.contains('*') && !v.contains('*') => {
                            labels.push((k.to_string(), v.to_string()))
                        }
                        _ => return fail(format!("--selector `{s}`: expected KEY=VALUE without wildcards")),
                    }
                }
                Some(Target::Selector(labels))
            };
            let options = render::IstioOptions {
                name,
                namespace,
                image,
                sha256: pin,
                target,
                phase: istio_word(&phase),
                priority,
                fail_strategy: istio_word(&fail_strategy),
            };
            match render::istio(&breakwater_policy::compile(&doc), &options) {
                Ok(v) => {
                    if doc.trust_attempt_count_header {
                        eprintln!(
                            "note: trust_attempt_count_header is set: the selected proxies' virtual hosts need include_attempt_count_in_response (an EnvoyFilter; see docs/istio.md)"
                        );
                    }
                    emit(&yaml::to_yaml(&v));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Render::Envoy { files, upstream, listen, admin, wasm, ecds } => {
            let Some(doc) = load_all(&files) else { return ExitCode::FAILURE };
            let parts = (render::host_port(&listen), render::host_port(&admin), render::host_port(&upstream));
            let (listen, admin, upstream) = match parts {
                (Ok(l), Ok(a), Ok(u)) => (l, a, u),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return fail(e),
            };
            let wasm = std::fs::canonicalize(&wasm).unwrap_or(wasm).display().to_string();
            let options = render::EnvoyOptions { listen, admin, upstream, wasm, ecds };
            emit(&yaml::to_yaml(&render::envoy(&breakwater_policy::compile(&doc), &options)));
            ExitCode::SUCCESS
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Writes to stdout, tolerating a closed pipe (`breakwater schema | head`).
fn emit(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}
