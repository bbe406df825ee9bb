//! Every shipped Envoy configuration passes `envoy --mode validate`, with an ECDS resource written
//! by `breakwater publish` (Envoy checks that the ECDS file exists).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use breakwater_e2e::{envoy_binary, filter_wasm, free_port, repo};

#[test]
fn shipped_envoy_configs_validate() {
    let configs: Vec<_> = std::fs::read_dir(repo().join("envoy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(!configs.is_empty());
    // The configurations use paths relative to the repository root: validate them, byte for byte,
    // from a scratch root holding an ECDS resource.
    let root = std::env::temp_dir().join(format!("bw-validate-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(root.join("envoy/ecds")).unwrap();
    let doc = breakwater_policy::load(
        &std::fs::read_to_string(repo().join("policies/flaky-backend.yaml")).unwrap(),
    )
    .unwrap()
    .document;
    let settings = breakwater_cli::ecds::FilterSettings {
        name: "breakwater".into(),
        vm_id: "breakwater".into(),
        wasm: filter_wasm(),
    };
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
