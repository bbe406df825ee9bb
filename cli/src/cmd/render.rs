//! `breakwater render`: deployable configuration for policies (an Istio WasmPlugin, or a
//! standalone Envoy bootstrap). Arguments are checked by clap's value parsers, so a bad
//! `--selector` or digest is refused with clap's usage message before anything is read.

use std::path::PathBuf;
use std::process::ExitCode;

use breakwater_cli::render::{self, Target};
use breakwater_cli::{alerts, dashboard};
use breakwater_cli::{ecds, oci, yaml};
use breakwater_policy::model::Duration;
use clap::{Subcommand, ValueEnum};

use super::{FILTER_WASM, FailStrategy, emit, fail, load_all};

#[derive(Subcommand)]
pub enum Render {
    /// An Istio WasmPlugin with the compiled policy as pluginConfig and the image digest pinned.
    Istio {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The image, REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:HEX (without oci://).
        #[arg(long)]
        image: String,
        /// The manifest digest to pin (bare hex), as printed by `breakwater package`.
        #[arg(long, conflicts_with = "oci", value_parser = parse_digest)]
        sha256: Option<String>,
        /// Read the digest to pin from this OCI layout (written by `breakwater package`).
        #[arg(long)]
        oci: Option<PathBuf>,
        /// Apply to workloads with these labels (repeatable: --selector app=shop).
        #[arg(long, conflicts_with = "target_ref", value_parser = parse_label)]
        selector: Vec<(String, String)>,
        /// Apply to a Gateway or Service: KIND/NAME (e.g. Gateway/public).
        #[arg(long, value_parser = parse_target_ref)]
        target_ref: Option<Target>,
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
        /// The rate-limit service's container image (with `breakwater-ratelimit` on its PATH).
        /// Needed when a policy has a `global_rate_limit`: the output then also holds the
        /// service's ConfigMap, Deployment, Service and PodDisruptionBudget, and the policy's
        /// `service` becomes the Istio cluster of that Service.
        #[arg(long)]
        ratelimit_image: Option<String>,
        /// The service's Redis: redis://HOST:PORT/DB (or rediss:// for TLS).
        #[arg(long, conflicts_with = "redis_secret", value_parser = parse_redis_url)]
        redis: Option<String>,
        /// A Secret's key that holds the Redis URL (for a URL with a password): SECRET/KEY.
        #[arg(long, value_parser = parse_secret_key)]
        redis_secret: Option<(String, String)>,
        /// The service's namespace [default: --namespace].
        #[arg(long)]
        ratelimit_namespace: Option<String>,
        /// The service's replicas.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
        ratelimit_replicas: u32,
        /// The mesh's DNS domain, part of the service's cluster name.
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
    },
    /// A standalone Envoy bootstrap: a listener with the filter in front of one upstream.
    Envoy {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The upstream, HOST:PORT.
        #[arg(long, value_parser = render::host_port)]
        upstream: (String, u16),
        #[arg(long, default_value = "0.0.0.0:10000", value_parser = render::host_port)]
        listen: (String, u16),
        #[arg(long, default_value = "127.0.0.1:9901", value_parser = render::host_port)]
        admin: (String, u16),
        /// The compiled filter.
        #[arg(long, default_value = FILTER_WASM)]
        wasm: PathBuf,
        /// Take the policy from this ECDS file (kept current by `breakwater publish`) instead of
        /// inline. The rendered policy becomes the filter's `default_config`: what it enforces
        /// until Envoy accepts a version of the file.
        #[arg(long)]
        ecds: Option<String>,
        /// What Envoy does with requests when the filter's VM fails.
        #[arg(long, value_enum, default_value_t = FailStrategy::FailOpen)]
        fail_strategy: FailStrategy,
        /// A replica of the rate-limit service (`breakwater-ratelimit`), HOST:PORT; repeatable.
        /// Needed when a policy has a `global_rate_limit`: each cluster the policies name gets
        /// these endpoints.
        #[arg(long, value_parser = render::host_port)]
        ratelimit: Vec<(String, u16)>,
    },
    /// Prometheus alerting rules for the policies (check them with `promtool check rules`). A
    /// policy's `alerts` block overrides these thresholds for that policy.
    Alerts {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The range of every rate() and increase().
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        window: Duration,
        /// How long a condition must hold before it alerts.
        #[arg(long = "for", default_value = "5m", value_parser = parse_duration)]
        hold_for: Duration,
        /// Percent of a policy's requests one kind of rejection may take.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(1..=100))]
        rejected_share: u8,
        /// How long a breaker may stay open before that alerts too.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        breaker_open_for: Duration,
        /// Percent of the concurrency limit in flight that counts as at the limit.
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
        in_flight_share: u8,
        /// Requests per second below which a rejected share is not judged.
        #[arg(long, default_value_t = 0.1, value_parser = parse_rate)]
        min_rate: f64,
        /// The filter's ECDS resource name (its update-rejected stat is watched).
        #[arg(long, default_value = "breakwater")]
        ecds_name: String,
    },
    /// A Grafana dashboard (JSON) with a row per policy: decisions per second, breaker state,
    /// retries and budget, in flight against the limit.
    Dashboard {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// A finite rate, 0 or more.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("`{s}`: expected requests per second, a number 0 or more")),
    }
}

/// A duration as the policy language writes it (`30s`, `5m`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    Duration::parse(s)
}

/// Accepted as Istio spells them too (`AUTHZ`, `FAIL_OPEN`).
#[derive(Clone, Copy, ValueEnum)]
pub enum Phase {
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

/// A value-enum variant as Istio spells it (AUTHZ, FAIL_OPEN).
fn istio_word(v: &impl ValueEnum) -> String {
    v.to_possible_value().map(|p| p.get_name().replace('-', "_").to_ascii_uppercase()).unwrap_or_default()
}

/// A sha256 digest: 64 lower-case hex digits.
fn parse_digest(pin: &str) -> Result<String, String> {
    if pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        Ok(pin.to_string())
    } else {
        Err(format!("`{pin}` is not a sha256 digest (64 lower-case hex digits)"))
    }
}

/// `KEY=VALUE` without wildcards.
fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains('*') && !v.contains('*') => {
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(format!("`{s}`: expected KEY=VALUE without wildcards")),
    }
}

/// Istio's default root namespace: a WasmPlugin there without a selector applies to the whole mesh.
const ISTIO_ROOT_NAMESPACE: &str = "istio-system";

/// `redis://…` or `rediss://…`.
fn parse_redis_url(url: &str) -> Result<String, String> {
    if (url.starts_with("redis://") || url.starts_with("rediss://")) && !url.contains(char::is_whitespace) {
        Ok(url.to_string())
    } else {
        Err(format!("`{url}`: expected redis://HOST:PORT/DB or rediss://…"))
    }
}

/// `SECRET/KEY`.
fn parse_secret_key(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((name, key)) if !name.is_empty() && !key.is_empty() => Ok((name.to_string(), key.to_string())),
        _ => Err(format!("`{s}`: expected SECRET/KEY")),
    }
}

/// `Gateway/NAME` or `Service/NAME`.
fn parse_target_ref(t: &str) -> Result<Target, String> {
    match t.split_once('/') {
        Some((kind @ ("Gateway" | "Service"), name)) if !name.is_empty() => {
            Ok(Target::Ref { kind: kind.into(), name: name.into() })
        }
        _ => Err(format!("`{t}`: expected Gateway/NAME or Service/NAME")),
    }
}

pub fn run(r: Render) -> ExitCode {
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
            ratelimit_image,
            redis,
            redis_secret,
            ratelimit_namespace,
            ratelimit_replicas,
            cluster_domain,
        } => {
            let Some(mut doc) = load_all(&files) else { return ExitCode::FAILURE };
            let services = render::ratelimit_services(&doc);
            let ratelimit = if services.is_empty() {
                None
            } else {
                let needed = |what: &str| {
                    fail(format!("the policies have global limits ({}): give {what}", services.join(", ")))
                };
                let Some(image) = ratelimit_image else {
                    return needed("--ratelimit-image IMAGE, an image of breakwater-ratelimit");
                };
                let redis = match (redis, redis_secret) {
                    (Some(url), _) => render::Redis::Url(url),
                    (None, Some((name, key))) => render::Redis::Secret { name, key },
                    (None, None) => return needed("--redis URL or --redis-secret SECRET/KEY"),
                };
                let Some(service_namespace) = ratelimit_namespace.or_else(|| namespace.clone()) else {
                    return needed(
                        "--ratelimit-namespace NS (or --namespace): the proxies name the service by it",
                    );
                };
                // A plugin without a target selects every workload of its namespace (all of the
                // mesh's in the root namespace): the service's own sidecars would call it again.
                let selects_the_service = selector.is_empty()
                    && target_ref.is_none()
                    && namespace
                        .as_deref()
                        .is_none_or(|ns| ns == service_namespace || ns == ISTIO_ROOT_NAMESPACE);
                if selects_the_service {
                    return fail(format!(
                        "the WasmPlugin would select every workload of {}, the rate-limit service's pods in {service_namespace} too (each check would call the service again): give --selector or --target-ref, or --namespace and another --ratelimit-namespace",
                        namespace.as_deref().map_or("kubectl's current namespace".to_string(), |ns| format!(
                            "namespace {ns}"
                        ))
                    ));
                }
                let service_name = match render::IstioRateLimit::service_name(&name) {
                    Ok(n) => n,
                    Err(e) => return fail(e),
                };
                let rl = render::IstioRateLimit {
                    name: service_name,
                    image,
                    redis,
                    namespace: service_namespace,
                    replicas: ratelimit_replicas,
                    cluster_domain,
                };
                if let Err(e) = render::use_istio_cluster(&mut doc, &rl) {
                    return fail(e);
                }
                Some(rl)
            };
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
            // A digest from an image reference or a layout is checked here; --sha256 by clap.
            if let Err(e) = parse_digest(&pin) {
                return fail(e);
            }
            let target = match target_ref {
                Some(t) => Some(t),
                None if selector.is_empty() => None,
                None => Some(Target::Selector(selector)),
            };
            let options = render::IstioOptions {
                name,
                namespace,
                image,
                sha256: pin,
                target,
                phase: istio_word(&phase),
                priority,
                fail_strategy: ecds::FailurePolicy::from(fail_strategy).istio_word().into(),
            };
            let compiled = breakwater_policy::compile(&doc);
            match render::istio(&compiled, &options) {
                Ok(v) => {
                    note_key_seed(&doc);
                    if doc.trust_attempt_count_header {
                        eprintln!(
                            "note: trust_attempt_count_header is set: the selected proxies' virtual hosts need include_attempt_count_in_response (an EnvoyFilter; see docs/istio.md)"
                        );
                    }
                    let mut manifests = vec![v];
                    if let Some(rl) = &ratelimit {
                        manifests.extend(render::ratelimit_manifests(&compiled, rl));
                        eprintln!(
                            "note: global limits call the rate-limit service {} through the Istio cluster {}; a Sidecar resource that limits the proxies' egress must list {}/{}",
                            rl.name,
                            rl.cluster(),
                            rl.namespace,
                            rl.host()
                        );
                        eprintln!(
                            "note: apply the ConfigMap before the WasmPlugin when adding global limits: until the service has reloaded it, it answers OK for limits it does not know"
                        );
                    }
                    let text: Vec<String> = manifests.iter().map(yaml::to_yaml).collect();
                    emit(&text.join("---\n"));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Render::Envoy { files, upstream, listen, admin, wasm, ecds, fail_strategy, ratelimit } => {
            let Some(doc) = load_all(&files) else { return ExitCode::FAILURE };
            let services = render::ratelimit_services(&doc);
            if !services.is_empty() && ratelimit.is_empty() {
                return fail(format!(
                    "the policies have global limits (cluster {}): give --ratelimit HOST:PORT, a replica of breakwater-ratelimit",
                    services.join(", ")
                ));
            }
            let wasm = std::fs::canonicalize(&wasm).unwrap_or(wasm);
            let mut filter = ecds::FilterSettings::breakwater(wasm);
            filter.failure_policy = fail_strategy.into();
            let options = render::EnvoyOptions { listen, admin, upstream, filter, ecds, ratelimit };
            note_key_seed(&doc);
            emit(&yaml::to_yaml(&render::envoy(&breakwater_policy::compile(&doc), &options)));
            ExitCode::SUCCESS
        }
        Render::Alerts {
            files,
            window,
            hold_for,
            rejected_share,
            breaker_open_for,
            in_flight_share,
            min_rate,
            ecds_name,
        } => {
            let Some(doc) = load_all(&files) else { return ExitCode::FAILURE };
            let t = alerts::Thresholds {
                window,
                hold_for,
                rejected_share,
                breaker_open_for,
                in_flight_share,
                min_rate,
            };
            emit(&yaml::to_yaml(&alerts::rules(&doc, &t, &ecds_name)));
            ExitCode::SUCCESS
        }
        Render::Dashboard { files } => {
            let Some(doc) = load_all(&files) else { return ExitCode::FAILURE };
            let mut text = serde_json::to_string_pretty(&dashboard::dashboard(&doc)).unwrap_or_default();
            text.push('\n');
            emit(&text);
            ExitCode::SUCCESS
        }
    }
}

/// Rendered configuration carries the document as it is: without a `key_seed`, keyed limits
/// hash with the public all-zero seed (docs/policy.md, "Key seed").
fn note_key_seed(doc: &breakwater_policy::Document) {
    let keyed = doc.policies.iter().any(|p| {
        p.rate_limit.as_ref().is_some_and(|r| !r.key.is_empty())
            || p.concurrency_limit.as_ref().is_some_and(|c| !c.key.is_empty())
    });
    if keyed && doc.key_seed.is_none() {
        eprintln!(
            "note: no key_seed: keyed limits place keys with the public all-zero seed; add `key_seed: <32 hex digits>` (e.g. from `openssl rand -hex 16`) to the document"
        );
    }
}
