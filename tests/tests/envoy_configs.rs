//! Every shipped Envoy configuration passes `envoy --mode validate`, with an ECDS resource written
//! by `breakwater publish` (Envoy checks that the ECDS file exists).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use breakwater_e2e::{envoy_binary, filter_wasm, free_port, repo, scratch_dir};

#[test]
fn shipped_envoy_configs_validate() {
    let configs: Vec<_> = std::fs::read_dir(repo().join("envoy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(!configs.is_empty());
    // The configurations use paths relative to the repository root: validate them, byte for byte,
    // from a scratch root holding an ECDS resource and the filter (for the `default_config`).
    let root = scratch_dir("bw-validate");
    std::fs::create_dir_all(root.join("envoy/ecds")).unwrap();
    let wasm_at = root.join(filter_wasm().strip_prefix(repo()).unwrap());
    std::fs::create_dir_all(wasm_at.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(filter_wasm(), &wasm_at).unwrap();
    let doc = breakwater_policy::load(
        &std::fs::read_to_string(repo().join("policies/flaky-backend.yaml")).unwrap(),
    )
    .unwrap()
    .document;
    let settings = breakwater_cli::ecds::FilterSettings::breakwater(filter_wasm());
    breakwater_cli::ecds::publish(
        &root.join("envoy/ecds/breakwater.json"),
        &settings,
        &breakwater_policy::compile(&doc),
    )
    .unwrap();
    for config in configs {
        let name = config.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(&config, root.join("envoy").join(&name)).unwrap();
        let out = Command::new(envoy_binary())
            .args(["--mode", "validate", "-c", &format!("envoy/{name}")])
            .current_dir(&root)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !log.contains("critical"), "envoy/{name} does not validate:\n{log}");
        println!("envoy/{name}: valid");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// `breakwater render envoy` (inline policy and ECDS) gives bootstraps Envoy accepts that enforce
/// the rendered policy: inline, and through ECDS's `default_config` while the ECDS file holds a
/// version Envoy rejects.
#[test]
fn rendered_bootstraps_validate_and_run() {
    use breakwater_cli::render::{EnvoyOptions, envoy};
    use breakwater_e2e::{Client, Upstream};
    let root = scratch_dir("bw-render");
    let policy =
        "version: 1\npolicies:\n  - name: rendered\n    rate_limit: { rate: 1, per: 1h, burst: 2 }\n";
    let compiled = breakwater_policy::compile(&breakwater_policy::load(policy).unwrap().document);
    let upstream = Upstream::start();
    let (port, admin) = (free_port(), free_port());
    let ecds = root.join("ecds/breakwater.json");
    let settings = breakwater_cli::ecds::FilterSettings::breakwater(filter_wasm());
    breakwater_cli::ecds::publish(&ecds, &settings, &compiled).unwrap();
    for (name, via_ecds) in [("inline", false), ("ecds", true)] {
        let options = EnvoyOptions {
            listen: ("127.0.0.1".into(), port),
            admin: ("127.0.0.1".into(), admin),
            upstream: ("127.0.0.1".into(), upstream.port()),
            filter: breakwater_cli::ecds::FilterSettings::breakwater(filter_wasm()),
            ecds: via_ecds.then(|| ecds.display().to_string()),
            ratelimit: Vec::new(),
        };
        let file = root.join(format!("{name}.yaml"));
        std::fs::write(&file, breakwater_cli::yaml::to_yaml(&envoy(&compiled, &options))).unwrap();
        let out =
            Command::new(envoy_binary()).args(["--mode", "validate", "-c"]).arg(&file).output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !log.contains("critical"), "{name}:\n{log}");
    }
    // Run both: the inline one, and the ECDS one while its file holds a version Envoy rejects
    // (then the rendered policy is the `default_config` that serves).
    breakwater_cli::ecds::publish(&ecds, &settings, "not a policy").unwrap();
    for name in ["inline", "ecds"] {
        let log = root.join(format!("{name}.log"));
        let mut envoy_process = Command::new(envoy_binary())
            .args(["-c", &root.join(format!("{name}.yaml")).to_string_lossy()])
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut statuses = Vec::new();
        for _ in 0..200 {
            if let Ok(r) = Client::new(admin).try_send("GET", "/ready", &[])
                && r.status == 200
            {
                let mut c = Client::new(port);
                statuses = (0..3).map(|_| c.get("/", &[]).status).collect();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = envoy_process.kill();
        let _ = envoy_process.wait();
        assert_eq!(
            statuses,
            [200, 200, 429],
            "{name}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}
