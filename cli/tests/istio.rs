//! `breakwater render istio` against Istio's own WasmPlugin CRD schema (envoy/istio/crd/, from
//! istio/api): every rendered manifest is valid, deliberately broken ones are not, and the
//! pluginConfig is the compiled policy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use breakwater_cli::k8s::{Crd, cel_rules, documents};
use breakwater_cli::yaml::from_yaml;
use common::repo;
use serde_json::{Value, json};

fn crd() -> (Crd, Value) {
    let v =
        from_yaml(&std::fs::read_to_string(repo().join("envoy/istio/crd/wasmplugin.yaml")).unwrap()).unwrap();
    (Crd::new(&v).unwrap(), v)
}

fn render(args: &[&str]) -> Result<Value, String> {
    let out = common::command().args(["render", "istio"]).args(args).output().unwrap();
    if out.status.success() {
        from_yaml(&String::from_utf8_lossy(&out.stdout))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Every document `render istio` writes.
fn render_all(args: &[&str]) -> Result<Vec<Value>, String> {
    let out = common::command().args(["render", "istio"]).args(args).output().unwrap();
    if out.status.success() {
        documents(&String::from_utf8_lossy(&out.stdout))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Kubernetes' own schemas for built-in kinds (PyPI kubernetes-validate, installed by
/// scripts/bootstrap), strict as `kubectl apply --validate=strict`: Ok, or what it reported.
fn kubernetes_validate(docs: &[Value]) -> Result<(), String> {
    let tool = repo().join(".tools/bin/kubernetes-validate");
    assert!(tool.exists(), "{} is missing: run scripts/bootstrap (./dev test does)", tool.display());
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = std::env::temp_dir().join(format!("bw-k8s-{}-{n}.yaml", std::process::id()));
    let stream: Vec<String> = docs.iter().map(|d| serde_json::to_string(d).unwrap()).collect();
    std::fs::write(&file, stream.join("\n---\n")).unwrap();
    let out = std::process::Command::new(&tool).arg("--strict").arg(&file).output().unwrap();
    std::fs::remove_file(&file).unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let passed = report.lines().filter(|l| l.contains(" passed for resource ")).count();
    if out.status.success() && passed == docs.len() { Ok(()) } else { Err(report) }
}

const PIN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn rendered_manifests_pass_the_crd_schema() {
    let (crd, raw) = crd();
    println!(
        "CEL rules not evaluated offline: {:?}",
        cel_rules(&raw).iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    let image = "registry.example.com/breakwater/filter:1.0";
    let targets: [&[&str]; 4] = [
        &[],
        &["--selector", "app=shop", "--selector", "version=v2"],
        &["--target-ref", "Gateway/public"],
        &[
            "--target-ref",
            "Service/checkout",
            "--phase",
            "authn",
            "--priority",
            "-5",
            "--fail-strategy",
            "fail-close",
        ],
    ];
    // Istio's own spellings are accepted too.
    let spelled = [
        "policies/gateway-shadow.yaml",
        "--image",
        image,
        "--sha256",
        PIN,
        "--phase",
        "STATS",
        "--fail-strategy",
        "FAIL_RELOAD",
    ];
    let m = render(&spelled).unwrap();
    assert_eq!(
        (m["spec"]["phase"].as_str(), m["spec"]["failStrategy"].as_str()),
        (Some("STATS"), Some("FAIL_RELOAD"))
    );
    for policy in ["policies/api-per-key.yaml", "policies/flaky-backend.yaml", "policies/gateway-shadow.yaml"]
    {
        for target in targets {
            let args =
                [&[policy, "--image", image, "--sha256", PIN, "--namespace", "shop"][..], target].concat();
            let m = render(&args).unwrap();
            let errors = crd.validate(&m);
            assert!(errors.is_empty(), "{args:?}: {errors:#?}");
            // pluginConfig is exactly what `compile` gives, and the filter's loader accepts it.
            let compiled =
                breakwater_policy::load(&std::fs::read_to_string(repo().join(policy)).unwrap()).unwrap();
            let plugin_config = serde_json::to_string(&m["spec"]["pluginConfig"]).unwrap();
            assert_eq!(breakwater_policy::load(&plugin_config).unwrap().document, compiled.document);
        }
    }
    let m = render(&[
        "policies/gateway-shadow.yaml",
        "--image",
        image,
        "--sha256",
        PIN,
        "--target-ref",
        "Gateway/public",
    ])
    .unwrap();
    assert_eq!(m["spec"]["url"], "oci://registry.example.com/breakwater/filter:1.0");
    assert_eq!(m["spec"]["sha256"], PIN);
    assert_eq!(m["spec"]["phase"], "AUTHZ");
    assert_eq!(m["spec"]["priority"], 1000);
    assert_eq!(m["spec"]["failStrategy"], "FAIL_OPEN");
    assert_eq!(
        m["spec"]["targetRefs"],
        json!([{ "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public" }])
    );
}

#[test]
fn the_pin_comes_from_the_packaged_layout() {
    let dir = std::env::temp_dir().join(format!("bw-istio-pin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let image = breakwater_cli::oci::write_layout(
        &dir,
        b"\0asm\x01\0\0\0",
        "2.0",
        breakwater_cli::oci::Format::Compat,
    )
    .unwrap();
    let layout = dir.to_string_lossy().into_owned();
    let m =
        render(&["policies/gateway-shadow.yaml", "--image", "r.example/bw:2.0", "--oci", &layout]).unwrap();
    assert_eq!(m["spec"]["sha256"], image.pin());
    // A tag the layout does not have, and no pin at all, are refused.
    assert!(
        render(&["policies/gateway-shadow.yaml", "--image", "r.example/bw:3.0", "--oci", &layout])
            .unwrap_err()
            .contains("no tag 3.0")
    );
    assert!(
        render(&["policies/gateway-shadow.yaml", "--image", "r.example/bw:2.0"])
            .unwrap_err()
            .contains("pin the image")
    );
    let by_digest = format!("r.example/bw@sha256:{PIN}");
    assert_eq!(
        render(&["policies/gateway-shadow.yaml", "--image", &by_digest]).unwrap()["spec"]["sha256"],
        PIN
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments_are_refused_before_rendering() {
    let base = ["policies/gateway-shadow.yaml", "--image", "r/bw:1", "--sha256"];
    for (extra, message) in [
        (&["ABC"][..], "is not a sha256 digest"),
        (&[PIN, "--target-ref", "Deployment/x"], "expected Gateway/NAME or Service/NAME"),
        (&[PIN, "--selector", "app"], "expected KEY=VALUE"),
        (&[PIN, "--selector", "app=*"], "without wildcards"),
        (&[PIN, "--selector", "a=b", "--target-ref", "Gateway/g"], "cannot be used with"),
    ] {
        let err = render(&[&base[..], extra].concat()).unwrap_err();
        assert!(err.contains(message), "{extra:?}: {err}");
    }
    let err =
        render(&["policies/invalid/per-try-timeout.yaml", "--image", "r/bw:1", "--sha256", PIN]).unwrap_err();
    assert!(err.contains("must be shorter than timeout"), "{err}");
}

#[test]
fn deliberately_broken_manifests_fail_the_schema() {
    let (crd, _) = crd();
    let good = render(&[
        "policies/flaky-backend.yaml",
        "--image",
        "r/bw:1",
        "--sha256",
        PIN,
        "--selector",
        "app=shop",
    ])
    .unwrap();
    assert!(crd.validate(&good).is_empty());
    type Breakage = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Breakage, &str)> = vec![
        (
            "upper-case digest",
            Box::new(|m| m["spec"]["sha256"] = json!(PIN.to_uppercase())),
            "spec.sha256: `",
        ),
        (
            "unknown phase",
            Box::new(|m| m["spec"]["phase"] = json!("BEFORE_ROUTER")),
            "spec.phase: \"BEFORE_ROUTER\" is not one of",
        ),
        (
            "priority as text",
            Box::new(|m| m["spec"]["priority"] = json!("high")),
            "spec.priority: must be of type integer",
        ),
        (
            "priority beyond int32",
            Box::new(|m| m["spec"]["priority"] = json!(5_000_000_000i64)),
            "does not fit in int32",
        ),
        (
            "typo in a field",
            Box::new(|m| m["spec"]["pluginConfg"] = json!({})),
            "spec.pluginConfg: unknown field",
        ),
        (
            "missing url",
            Box::new(|m| {
                m["spec"].as_object_mut().unwrap().remove("url");
            }),
            "spec.url: required",
        ),
        (
            "long label value",
            Box::new(|m| m["spec"]["selector"]["matchLabels"]["app"] = json!("x".repeat(64))),
            "longer than 63",
        ),
        (
            "bad strategy",
            Box::new(|m| m["spec"]["failStrategy"] = json!("FAIL_SOMETIMES")),
            "spec.failStrategy",
        ),
        (
            "too many targets",
            Box::new(|m| m["spec"]["targetRefs"] = json!(vec![json!({"kind": "Gateway", "name": "g"}); 17])),
            "more than 16 items",
        ),
        (
            "target without kind",
            Box::new(|m| m["spec"]["targetRefs"] = json!([{ "name": "g" }])),
            "spec.targetRefs[0].kind: required",
        ),
        ("wrong kind", Box::new(|m| m["kind"] = json!("EnvoyFilter")), "kind: must be WasmPlugin"),
        (
            "wrong group",
            Box::new(|m| m["apiVersion"] = json!("networking.istio.io/v1")),
            "apiVersion: must be extensions.istio.io/v1alpha1",
        ),
        ("bad name", Box::new(|m| m["metadata"]["name"] = json!("Breakwater_1")), "metadata.name"),
        ("bad namespace", Box::new(|m| m["metadata"]["namespace"] = json!("a.b")), "metadata.namespace"),
    ];
    for (what, break_it, expected) in cases {
        let mut m = good.clone();
        break_it(&mut m);
        let errors = crd.validate(&m);
        assert!(errors.iter().any(|e| e.contains(expected)), "{what}: expected `{expected}` in {errors:#?}");
    }
}

#[test]
fn shipped_istio_examples_pass_the_crd_schema() {
    let (crd, _) = crd();
    let mut checked = 0;
    let mut built_in = Vec::new();
    for entry in std::fs::read_dir(repo().join("envoy/istio")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        for m in documents(&std::fs::read_to_string(&path).unwrap()).unwrap() {
            if m["kind"] == "WasmPlugin" {
                let errors = crd.validate(&m);
                assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
                let plugin_config = serde_json::to_string(&m["spec"]["pluginConfig"]).unwrap();
                breakwater_policy::load(&plugin_config)
                    .unwrap_or_else(|e| panic!("{}: {e:#?}", path.display()));
                checked += 1;
            } else {
                built_in.push(m);
            }
        }
    }
    // Namespace, ConfigMaps, the rate-limit service's Deployment, Service and disruption budget.
    assert!(built_in.len() >= 6, "{built_in:#?}");
    kubernetes_validate(&built_in).unwrap();
    assert!(
        checked >= 3,
        "the worked example has a WasmPlugin per gateway and per workload, and one with a global limit"
    );
    // The proxies' bootstrap override carries the same tag extractors as every other config.
    let cm = from_yaml(&std::fs::read_to_string(repo().join("envoy/istio/stats-bootstrap.yaml")).unwrap())
        .unwrap();
    let bootstrap: Value =
        serde_json::from_str(cm["data"]["custom_bootstrap.json"].as_str().unwrap()).unwrap();
    let tags: Vec<(String, String)> = bootstrap["stats_config"]["stats_tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["tag_name"].as_str().unwrap().into(), t["regex"].as_str().unwrap().into()))
        .collect();
    let expected: Vec<(String, String)> =
        breakwater_cli::render::STATS_TAGS.iter().map(|(n, r)| (n.to_string(), r.to_string())).collect();
    assert_eq!(tags, expected);
}

/// A document that trusts the attempt-count header needs a virtual-host option the WasmPlugin
/// cannot set: the command says so.
#[test]
fn rendering_a_document_that_trusts_the_attempt_count_header_says_what_the_proxies_need() {
    let note = |policy: &str| {
        let out =
            common::breakwater(&["render", "istio", policy, "--image", "r.example.com/f:1", "--sha256", PIN]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).contains("include_attempt_count_in_response")
    };
    assert!(note("policies/flaky-backend.yaml"));
    assert!(!note("policies/api-per-key.yaml"));
}

const SERVICE: [&str; 4] =
    ["--ratelimit-image", "r.example/breakwater-ratelimit:0.1.0", "--redis", "redis://redis.shop:6379/0"];

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in {docs:#?}"))
}

#[test]
fn global_limits_bring_the_rate_limit_service_along() {
    let (crd, _) = crd();
    let base =
        ["policies/global-orders.yaml", "--image", "r/bw:1", "--sha256", PIN, "--selector", "app=shop"];
    let docs = render_all(&[&base[..], &["--namespace", "shop"], &SERVICE].concat()).unwrap();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["WasmPlugin", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget"]);
    assert!(crd.validate(&docs[0]).is_empty(), "{:#?}", crd.validate(&docs[0]));
    kubernetes_validate(&docs[1..]).unwrap();

    // The filter calls the Service's gRPC port through the cluster Istio gives it.
    let plugin = serde_json::to_string(&docs[0]["spec"]["pluginConfig"]).unwrap();
    let plugin = breakwater_policy::load(&plugin).unwrap().document;
    let global = plugin.policies[0].global_rate_limit.as_ref().unwrap();
    assert_eq!(global.service, "outbound|8081||breakwater-ratelimit.shop.svc.cluster.local");
    let service = of_kind(&docs, "Service");
    assert_eq!(service["metadata"]["name"], "breakwater-ratelimit");
    let grpc = &service["spec"]["ports"][0];
    assert_eq!((grpc["name"].as_str(), grpc["port"].as_u64()), (Some("grpc"), Some(8081)));
    // The service reads the very document the WasmPlugin carries, from the mounted ConfigMap.
    let config_map = of_kind(&docs, "ConfigMap");
    let policy = config_map["data"]["policy.json"].as_str().unwrap();
    assert_eq!(breakwater_policy::load(policy).unwrap().document, plugin);
    let deployment = of_kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["configMap"]["name"], config_map["metadata"]["name"]);
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert!(args.windows(2).any(|w| w == ["--policy", &format!("{mount}/policy.json")]), "{args:?}");
    assert!(args.windows(2).any(|w| w == ["--redis", "redis://redis.shop:6379/0"]), "{args:?}");
    assert_eq!(deployment["spec"]["replicas"], 2);
    for d in &docs {
        assert_eq!(d["metadata"]["namespace"], "shop", "{}", d["kind"]);
    }

    // Elsewhere: the service in its own namespace, Redis's URL from a Secret, another domain.
    let options = [
        "--namespace",
        "istio-system",
        "--ratelimit-namespace",
        "limits",
        "--ratelimit-image",
        "r/rl:1",
        "--redis-secret",
        "redis/url",
        "--ratelimit-replicas",
        "3",
        "--cluster-domain",
        "corp.internal",
    ];
    let docs = render_all(&[&base[..], &options].concat()).unwrap();
    kubernetes_validate(&docs[1..]).unwrap();
    assert_eq!(
        docs[0]["spec"]["pluginConfig"]["policies"][0]["global_rate_limit"]["service"],
        "outbound|8081||breakwater-ratelimit.limits.svc.corp.internal"
    );
    assert_eq!(docs[0]["metadata"]["namespace"], "istio-system");
    assert!(docs[1..].iter().all(|d| d["metadata"]["namespace"] == "limits"));
    let deployment = of_kind(&docs, "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["env"],
        json!([{ "name": "BREAKWATER_REDIS_URL", "valueFrom": { "secretKeyRef": { "name": "redis", "key": "url" } } }])
    );
    assert!(!container["args"].as_array().unwrap().contains(&json!("--redis")));
    assert_eq!(deployment["spec"]["replicas"], 3);

    // Policies without global limits render the WasmPlugin alone, whatever else is given.
    let docs = render_all(&[
        "policies/gateway-shadow.yaml",
        "--image",
        "r/bw:1",
        "--sha256",
        PIN,
        SERVICE[0],
        SERVICE[1],
    ])
    .unwrap();
    assert_eq!(docs.len(), 1);
}

#[test]
fn global_limits_without_what_the_service_needs_are_refused() {
    let base = ["policies/global-orders.yaml", "--image", "r/bw:1", "--sha256", PIN];
    let shop = ["--namespace", "shop", "--selector", "app=shop"];
    let cases: [(Vec<&str>, &str); 9] = [
        (
            [&base[..], &["--namespace", "shop", "--redis", "redis://r:6379"]].concat(),
            "--ratelimit-image IMAGE",
        ),
        (
            [&base[..], &["--namespace", "shop", "--ratelimit-image", "r/rl:1"]].concat(),
            "--redis URL or --redis-secret",
        ),
        ([&base[..], &SERVICE].concat(), "--ratelimit-namespace NS"),
        (
            [&base[..], &["--namespace", "shop", "--ratelimit-image", "r/rl:1", "--redis", "r:6379"]]
                .concat(),
            "expected redis://",
        ),
        (
            [&base[..], &["--namespace", "shop", "--ratelimit-image", "r/rl:1", "--redis-secret", "redis"]]
                .concat(),
            "expected SECRET/KEY",
        ),
        (
            [&base[..], &["--namespace", "shop", "--ratelimit-replicas", "0"], &SERVICE].concat(),
            "--ratelimit-replicas",
        ),
        ([&base[..], &shop, &["--name", "breakwater.orders"], &SERVICE].concat(), "DNS-1035 label"),
        // Without a selector the plugin would apply to the service's own pods.
        (
            [&base[..], &["--namespace", "shop"], &SERVICE].concat(),
            "would select every workload of namespace shop",
        ),
        (
            [&base[..], &["--namespace", "istio-system", "--ratelimit-namespace", "limits"], &SERVICE]
                .concat(),
            "would select every workload of namespace istio-system",
        ),
    ];
    for (args, message) in cases {
        let err = render_all(&args).unwrap_err();
        assert!(err.contains(message), "{args:?}: expected `{message}` in {err}");
    }
}

#[test]
fn kubernetes_schemas_catch_broken_service_manifests() {
    let args = [
        &["policies/global-orders.yaml", "--image", "r/bw:1", "--sha256", PIN, "--namespace", "shop"][..],
        &["--selector", "app=shop"],
        &SERVICE,
    ]
    .concat();
    let good = render_all(&args).unwrap();
    kubernetes_validate(&good[1..]).unwrap();
    type Breakage = Box<dyn Fn(&mut Vec<Value>)>;
    fn container(docs: &mut [Value]) -> &mut Value {
        &mut docs[2]["spec"]["template"]["spec"]["containers"][0]
    }
    let cases: Vec<(&str, Breakage, &str)> = vec![
        (
            "port as text",
            Box::new(|d| container(d)["ports"][0]["containerPort"] = json!("8081")),
            "is not of type 'integer'",
        ),
        (
            "typo in a container field",
            Box::new(|d| container(d)["argz"] = json!([])),
            "'argz' was unexpected",
        ),
        (
            "deployment without selector",
            Box::new(|d| {
                d[2]["spec"].as_object_mut().unwrap().remove("selector");
            }),
            "'selector' is a required property",
        ),
        (
            "service ports as one number",
            Box::new(|d| d[3]["spec"]["ports"] = json!(8081)),
            "is not of type 'array'",
        ),
    ];
    for (what, break_it, expected) in cases {
        let mut docs = good.clone();
        break_it(&mut docs);
        let report = kubernetes_validate(&docs[1..]).expect_err(what);
        assert!(report.contains(expected), "{what}: expected `{expected}` in {report}");
    }
}

/// The worked example is what the command in its header renders (with its pin given directly).
#[test]
fn the_worked_global_example_is_the_rendered_one() {
    let text = std::fs::read_to_string(repo().join("envoy/istio/ratelimit-orders.yaml")).unwrap();
    let shipped = documents(&text).unwrap();
    let pin = shipped[0]["spec"]["sha256"].as_str().unwrap();
    let rendered = render_all(&[
        "policies/global-orders.yaml",
        "--image",
        "registry.example.com/breakwater/filter:0.1.0",
        "--sha256",
        pin,
        "--namespace",
        "shop",
        "--selector",
        "app=shop",
        "--name",
        "breakwater-orders",
        "--ratelimit-image",
        "registry.example.com/breakwater/ratelimit:0.1.0",
        "--redis-secret",
        "breakwater-redis/url",
    ])
    .unwrap();
    assert_eq!(shipped, rendered);
    assert!(
        text.contains("--name breakwater-orders") && text.contains("--redis-secret breakwater-redis/url")
    );
}

/// The example monitors for the Prometheus Operator (envoy/istio/monitoring/) pass its own CRD
/// schemas (envoy/istio/crd/, from prometheus-operator); a broken copy does not.
#[test]
fn the_example_monitors_pass_the_prometheus_operator_crds() {
    let read = |p: &str| from_yaml(&std::fs::read_to_string(repo().join(p)).unwrap()).unwrap();
    for (crd, manifest) in [
        ("envoy/istio/crd/podmonitors.yaml", "envoy/istio/monitoring/podmonitor-envoy.yaml"),
        ("envoy/istio/crd/servicemonitors.yaml", "envoy/istio/monitoring/servicemonitor-ratelimit.yaml"),
    ] {
        let crd = Crd::new(&read(crd)).unwrap();
        let m = read(manifest);
        assert_eq!(crd.validate(&m), Vec::<String>::new(), "{manifest}");
        let mut typo = m.clone();
        typo["spec"]["namespaceSelectr"] = json!({ "any": true });
        assert!(!crd.validate(&typo).is_empty(), "{manifest}: an unknown field must be refused");
        let mut wrong = m.clone();
        wrong["spec"]["namespaceSelector"]["any"] = json!("yes");
        assert!(!crd.validate(&wrong).is_empty(), "{manifest}: a string for a bool must be refused");
    }
}
