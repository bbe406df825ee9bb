//! Deployable configuration for a policy: an Istio `WasmPlugin`, or a standalone Envoy bootstrap.

use serde_json::{Map, Value, json};

/// Prometheus labels for breakwater's metrics: the `stats_tags` every Envoy configuration needs
/// (envoy/demo.yaml has the same two; a test keeps them equal).
pub use breakwater_policy::metrics::STATS_TAGS;

/// Where the plugin applies.
#[derive(Debug, Clone)]
pub enum Target {
    /// Workloads by labels (`--selector app=shop`).
    Selector(Vec<(String, String)>),
    /// A Gateway or Service by name (`--target-ref Gateway/public`).
    Ref { kind: String, name: String },
}

#[derive(Debug, Clone)]
pub struct IstioOptions {
    pub name: String,
    pub namespace: Option<String>,
    /// The image reference without `oci://`.
    pub image: String,
    /// The manifest digest (bare hex), pinned in `sha256`.
    pub sha256: String,
    pub target: Option<Target>,
    pub phase: String,
    pub priority: i32,
    pub fail_strategy: String,
}

/// Defaults, documented in docs/istio.md: limits run after Istio's authorization (AUTHZ) so that
/// rejected-by-policy requests spend no tokens, and first among AUTHZ plugins (high priority) so
/// that shed load costs as little as possible; a plugin that cannot load lets traffic through.
pub const DEFAULT_PHASE: &str = "AUTHZ";
pub const DEFAULT_PRIORITY: i32 = 1000;
pub const DEFAULT_FAIL_STRATEGY: &str = "FAIL_OPEN";

/// A `WasmPlugin` carrying the compiled policy as `pluginConfig`.
pub fn istio(compiled_policy: &str, o: &IstioOptions) -> Result<Value, String> {
    let plugin_config: Value =
        serde_json::from_str(compiled_policy).map_err(|e| format!("compiled policy is not JSON: {e}"))?;
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(o.name));
    if let Some(ns) = &o.namespace {
        metadata.insert("namespace".into(), json!(ns));
    }
    metadata.insert(
        "labels".into(),
        json!({ "app.kubernetes.io/name": "breakwater", "app.kubernetes.io/managed-by": "breakwater" }),
    );
    let mut spec = Map::new();
    match &o.target {
        Some(Target::Selector(labels)) => {
            let labels: Map<String, Value> = labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            spec.insert("selector".into(), json!({ "matchLabels": labels }));
        }
        Some(Target::Ref { kind, name }) => {
            let group = if kind == "Service" { "" } else { "gateway.networking.k8s.io" };
            spec.insert("targetRefs".into(), json!([{ "group": group, "kind": kind, "name": name }]));
        }
        None => {}
    }
    spec.insert("url".into(), json!(format!("oci://{}", o.image)));
    spec.insert("sha256".into(), json!(o.sha256));
    spec.insert("imagePullPolicy".into(), json!("IfNotPresent"));
    spec.insert("phase".into(), json!(o.phase));
    spec.insert("priority".into(), json!(o.priority));
    spec.insert("failStrategy".into(), json!(o.fail_strategy));
    spec.insert("pluginConfig".into(), plugin_config);
    Ok(json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": metadata,
        "spec": spec,
    }))
}

/// The rate-limit service in Kubernetes, for `render istio` of policies with global limits.
#[derive(Debug, Clone)]
pub struct IstioRateLimit {
    /// The Kubernetes name of the service's Deployment and Service (`<WasmPlugin>-ratelimit`):
    /// one service per WasmPlugin, so that rendering another plugin never replaces this one's
    /// limits.
    pub name: String,
    /// A container image with `breakwater-ratelimit` on its `PATH`.
    pub image: String,
    pub redis: Redis,
    /// Where the service runs (its cluster name in every proxy names the namespace).
    pub namespace: String,
    pub replicas: u32,
    /// The mesh's DNS domain (`cluster.local` unless the cluster was set up otherwise).
    pub cluster_domain: String,
}

/// Where the service's Redis URL comes from.
#[derive(Debug, Clone)]
pub enum Redis {
    /// Written into the Deployment's arguments.
    Url(String),
    /// A key of a Secret (for URLs with a password), passed as `BREAKWATER_REDIS_URL`.
    Secret { name: String, key: String },
}

/// The service's ports in Kubernetes: gRPC (named `grpc`, so that Istio speaks HTTP/2 to it) and
/// the admin port (/healthz, /readyz, /metrics).
pub const RATELIMIT_GRPC_PORT: u16 = 8081;
pub const RATELIMIT_ADMIN_PORT: u16 = 9091;
/// Where the policy ConfigMap is mounted in the service's pods.
pub const RATELIMIT_POLICY_DIR: &str = "/etc/breakwater";

impl IstioRateLimit {
    /// The name of the service of the WasmPlugin `plugin`: `<plugin>-ratelimit`, which must be a
    /// DNS-1035 label (a Service's name).
    pub fn service_name(plugin: &str) -> Result<String, String> {
        let name = format!("{plugin}-ratelimit");
        if crate::k8s::dns_1035_label(&name) {
            Ok(name)
        } else {
            Err(format!(
                "the rate-limit service is named after the WasmPlugin (`{name}`), which is no DNS-1035 label (lower-case letters, digits and `-`, starting with a letter, at most 63): choose another --name"
            ))
        }
    }

    /// The service's host name in the mesh.
    pub fn host(&self) -> String {
        format!("{}.{}.svc.{}", self.name, self.namespace, self.cluster_domain)
    }

    /// The Envoy cluster Istio gives the service's gRPC port in every proxy of the mesh, which is
    /// what the filter's calls name: `outbound|PORT||HOST` (the filter sends it with the
    /// authority `HOST:PORT`, see `breakwater_policy::rls::grpc_target`).
    pub fn cluster(&self) -> String {
        format!("outbound|{RATELIMIT_GRPC_PORT}||{}", self.host())
    }
}

/// Points every global limit of `doc` at the Istio cluster of the service `rl`.
pub fn use_istio_cluster(doc: &mut breakwater_policy::Document, rl: &IstioRateLimit) -> Result<(), String> {
    let cluster = rl.cluster();
    breakwater_policy::rls::grpc_target(&cluster)?;
    for g in doc.policies.iter_mut().filter_map(|p| p.global_rate_limit.as_mut()) {
        g.service = cluster.clone();
    }
    Ok(())
}

/// What runs the rate-limit service `rl` in Kubernetes: the policy as a ConfigMap (the same
/// compiled document the WasmPlugin carries; the service reloads it when the kubelet updates the
/// mounted file), a Deployment, its Service and a PodDisruptionBudget.
pub fn ratelimit_manifests(compiled_policy: &str, rl: &IstioRateLimit) -> Vec<Value> {
    let service = rl.name.as_str();
    let selector = json!({
        "app.kubernetes.io/name": "breakwater-ratelimit",
        "app.kubernetes.io/instance": service,
    });
    let mut labels = selector.clone();
    labels["app.kubernetes.io/managed-by"] = json!("breakwater");
    let metadata = |name: String| json!({ "name": name, "namespace": rl.namespace, "labels": labels });
    let config_map = format!("{service}-policy");
    let mut args = vec![
        "--policy".to_string(),
        format!("{RATELIMIT_POLICY_DIR}/policy.json"),
        "--listen".into(),
        format!("0.0.0.0:{RATELIMIT_GRPC_PORT}"),
        "--admin".into(),
        format!("0.0.0.0:{RATELIMIT_ADMIN_PORT}"),
    ];
    let mut container = json!({
        "name": "ratelimit",
        "image": rl.image,
        "command": ["breakwater-ratelimit"],
        "ports": [
            { "name": "grpc", "containerPort": RATELIMIT_GRPC_PORT, "protocol": "TCP" },
            { "name": "http-admin", "containerPort": RATELIMIT_ADMIN_PORT, "protocol": "TCP" },
        ],
        "readinessProbe": {
            "httpGet": { "path": "/readyz", "port": "http-admin" },
            "periodSeconds": 2, "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": { "path": "/healthz", "port": "http-admin" },
            "periodSeconds": 10, "failureThreshold": 3,
        },
        "resources": {
            "requests": { "cpu": "100m", "memory": "32Mi" },
            "limits": { "memory": "128Mi" },
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
        },
        "volumeMounts": [{ "name": "policy", "mountPath": RATELIMIT_POLICY_DIR, "readOnly": true }],
    });
    match &rl.redis {
        Redis::Url(url) => args.extend(["--redis".to_string(), url.clone()]),
        Redis::Secret { name, key } => {
            container["env"] = json!([{
                "name": "BREAKWATER_REDIS_URL",
                "valueFrom": { "secretKeyRef": { "name": name, "key": key } },
            }]);
        }
    }
    container["args"] = json!(args);
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(config_map.clone()),
            "data": { "policy.json": compiled_policy },
        }),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(service.to_string()),
            "spec": {
                "replicas": rl.replicas,
                "selector": { "matchLabels": selector },
                // A replica leaves only once its successor is ready.
                "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 } },
                "template": {
                    "metadata": {
                        "labels": labels,
                        "annotations": {
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": RATELIMIT_ADMIN_PORT.to_string(),
                            "prometheus.io/path": "/metrics",
                        },
                    },
                    "spec": {
                        "securityContext": {
                            "runAsNonRoot": true,
                            "runAsUser": 65532,
                            "seccompProfile": { "type": "RuntimeDefault" },
                        },
                        "topologySpreadConstraints": [{
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": { "matchLabels": selector },
                        }],
                        "containers": [container],
                        "volumes": [{ "name": "policy", "configMap": { "name": config_map } }],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(service.to_string()),
            "spec": {
                "selector": selector,
                "ports": [
                    { "name": "grpc", "port": RATELIMIT_GRPC_PORT, "targetPort": "grpc", "appProtocol": "grpc" },
                    { "name": "http-admin", "port": RATELIMIT_ADMIN_PORT, "targetPort": "http-admin", "appProtocol": "http" },
                ],
            },
        }),
        json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata(service.to_string()),
            "spec": { "maxUnavailable": 1, "selector": { "matchLabels": selector } },
        }),
    ]
}

#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    pub listen: (String, u16),
    pub admin: (String, u16),
    pub upstream: (String, u16),
    /// The filter: its compiled wasm (absolute path), names and failure policy.
    pub filter: crate::ecds::FilterSettings,
    /// Deliver the policy through this ECDS file (then `breakwater publish` updates it); inline
    /// otherwise. The rendered policy is then the `default_config`: what the filter enforces
    /// until Envoy has accepted a version of the file (a first version Envoy rejects, say).
    pub ecds: Option<String>,
    /// The rate-limit service's replicas (gRPC), for the clusters the document's global limits
    /// name (`global_rate_limit.service`).
    pub ratelimit: Vec<(String, u16)>,
}

/// The Envoy clusters a document's global limits call (`global_rate_limit.service`), each once,
/// in document order.
pub fn ratelimit_services(doc: &breakwater_policy::Document) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for g in doc.policies.iter().filter_map(|p| p.global_rate_limit.as_ref()) {
        if !names.contains(&g.service) {
            names.push(g.service.clone());
        }
    }
    names
}

/// A cluster for the rate-limit service: gRPC (HTTP/2), a short connect timeout, no cap on
/// concurrent calls below the filter's own, and replicas that refuse connections ejected after
/// two failures (docs/global-limits.md, "Failures"). envoy/demo.yaml has the same (a test).
pub fn ratelimit_cluster(name: &str, replicas: &[(String, u16)]) -> Value {
    let endpoints: Vec<Value> =
        replicas.iter().map(|r| json!({ "endpoint": { "address": address(r) } })).collect();
    json!({
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "0.25s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} },
            },
        },
        "circuit_breakers": { "thresholds": [{
            "priority": "DEFAULT", "max_pending_requests": 100000, "max_requests": 100000,
        }] },
        "outlier_detection": {
            "split_external_local_origin_errors": true,
            "consecutive_local_origin_failure": 2,
            "interval": "1s",
            "base_ejection_time": "5s",
            "max_ejection_percent": 100,
        },
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": endpoints }] },
    })
}

fn address((host, port): &(String, u16)) -> Value {
    json!({ "socket_address": { "address": host, "port_value": port } })
}

/// A standalone Envoy bootstrap with the filter in front of one upstream cluster (and a cluster
/// for each rate-limit service the document's global limits name).
pub fn envoy(compiled_policy: &str, o: &EnvoyOptions) -> Value {
    let mut bootstrap = envoy_without_services(compiled_policy, o);
    let doc = breakwater_policy::load_config(compiled_policy.as_bytes()).ok();
    let services = doc.as_ref().map(ratelimit_services).unwrap_or_default();
    if let Some(clusters) = bootstrap.pointer_mut("/static_resources/clusters").and_then(Value::as_array_mut)
    {
        clusters.extend(services.iter().map(|name| ratelimit_cluster(name, &o.ratelimit)));
    }
    bootstrap
}

fn envoy_without_services(compiled_policy: &str, o: &EnvoyOptions) -> Value {
    let typed_config = crate::ecds::wasm_filter_config(&o.filter, compiled_policy);
    let filter = match &o.ecds {
        Some(file) => {
            let dir =
                std::path::Path::new(file).parent().map_or(".".to_string(), |d| d.display().to_string());
            json!({
                "name": o.filter.name,
                "config_discovery": {
                    "config_source": {
                        "path_config_source": { "path": file, "watched_directory": { "path": dir } },
                        "resource_api_version": "V3",
                    },
                    "default_config": typed_config,
                    "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"],
                },
            })
        }
        None => json!({ "name": o.filter.name, "typed_config": typed_config }),
    };
    let tags: Vec<Value> =
        STATS_TAGS.iter().map(|(name, regex)| json!({ "tag_name": name, "regex": regex })).collect();
    json!({
        "node": { "id": "breakwater", "cluster": "breakwater" },
        "admin": { "address": address(&o.admin) },
        "stats_config": { "stats_tags": tags },
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": address(&o.listen),
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        // Policies match the normalised path (docs/policy.md, "Paths").
                        "normalize_path": true,
                        "merge_slashes": true,
                        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
                        "route_config": { "name": "local", "virtual_hosts": [{
                            "name": "all",
                            "domains": ["*"],
                            "include_request_attempt_count": true,
                            "include_attempt_count_in_response": true,
                            "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "upstream" } }],
                        }] },
                        "http_filters": [filter, {
                            "name": "envoy.filters.http.router",
                            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
                        }],
                    },
                }] }],
            }],
            "clusters": [{
                "name": "upstream",
                "type": "STRICT_DNS",
                "connect_timeout": "1s",
                "circuit_breakers": { "thresholds": [{
                    "priority": "DEFAULT", "max_retries": 10000, "max_pending_requests": 10000, "max_requests": 10000,
                }] },
                "load_assignment": { "cluster_name": "upstream", "endpoints": [{ "lb_endpoints": [
                    { "endpoint": { "address": address(&o.upstream) } },
                ] }] },
            }],
        },
    })
}

/// `host:port` → parts.
pub fn host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text.rsplit_once(':').ok_or_else(|| format!("`{text}`: expected HOST:PORT"))?;
    let port = port.parse().map_err(|_| format!("`{text}`: `{port}` is not a port"))?;
    if host.is_empty() {
        return Err(format!("`{text}`: the host is missing"));
    }
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_has_the_same_stats_tags() {
        let demo =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../envoy/demo.yaml")).unwrap();
        for (name, regex) in STATS_TAGS {
            assert!(demo.contains(&format!("tag_name: {name}")), "{name}");
            assert!(demo.contains(&format!("regex: '{regex}'")), "{regex}");
        }
    }

    /// The demo's rate-limit cluster is the rendered one (STATIC there, for a fixed address).
    #[test]
    fn demo_config_has_the_rendered_ratelimit_cluster() {
        let demo =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../envoy/demo.yaml")).unwrap();
        let demo = crate::yaml::from_yaml(&demo).unwrap();
        let clusters = demo.pointer("/static_resources/clusters").and_then(Value::as_array).unwrap();
        let mut ours = clusters.iter().find(|c| c["name"] == "breakwater-ratelimit").unwrap().clone();
        ours["type"] = json!("STRICT_DNS");
        let rendered = ratelimit_cluster("breakwater-ratelimit", &[("127.0.0.1".into(), 8091)]);
        assert_eq!(ours, rendered);
    }

    #[test]
    fn host_ports() {
        assert_eq!(host_port("127.0.0.1:8080").unwrap(), ("127.0.0.1".to_string(), 8080));
        assert_eq!(host_port("[::1]:80").unwrap(), ("::1".to_string(), 80));
        assert!(host_port("nohost").is_err());
        assert!(host_port(":80").is_err());
        assert!(host_port("a:99999").is_err());
    }
}
