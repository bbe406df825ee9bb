//! The Istio delivery path with real parts: the filter packaged as an OCI image, pushed to a real
//! registry on loopback, pulled back byte-identical, and the pulled plugin.wasm loaded by Envoy,
//! which enforces a policy with it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use breakwater_cli::oci::{self, Format};
use breakwater_e2e::registry::Registry;
use breakwater_e2e::{Client, Envoy, Upstream, filter_wasm, scratch_dir};

fn scratch(name: &str) -> std::path::PathBuf {
    scratch_dir(&format!("bw-oci-e2e-{name}"))
}

#[test]
fn push_pull_round_trip_and_envoy_runs_the_pulled_filter() {
    let wasm = std::fs::read(filter_wasm()).unwrap();
    let registry = Registry::start();
    for (format, tag) in [(Format::Compat, "1.0"), (Format::Artifact, "1.0-artifact")] {
        let layout = scratch(tag);
        let image = oci::write_layout(&layout, &wasm, tag, format).unwrap();
        let reference = registry.reference(&format!("breakwater/filter:{tag}"));
        oci::push(&layout, tag, &reference, true).unwrap();
        // The registry serves the manifest under the digest we pin.
        let repo_path = format!("/v2/breakwater/filter/manifests/{tag}");
        let accept = b"application/vnd.oci.image.manifest.v1+json".as_slice();
        let r = Client::new(registry.port).send("GET", &repo_path, &[("accept", accept)]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("docker-content-digest"), Some(image.manifest_digest.as_str()));
        // Pulled back through the registry: the same module, byte for byte.
        let pulled = scratch(&format!("{tag}-pulled"));
        oci::pull(&reference, &pulled, tag, true).unwrap();
        assert_eq!(oci::manifest_digest(&pulled, tag).unwrap(), image.manifest_digest);
        let module = oci::read_wasm(&pulled, tag).unwrap();
        assert!(module == wasm, "{tag}: pulled module differs");
        println!("{tag}: pushed and pulled {} bytes, manifest {}", module.len(), image.manifest_digest);
        if format == Format::Compat {
            // Envoy loads the pulled plugin.wasm and enforces a policy with it.
            let plugin = pulled.join("plugin.wasm");
            std::fs::write(&plugin, &module).unwrap();
            let upstream = Upstream::start();
            let envoy = Envoy::start_with_filter(
                "version: 1\npolicies:\n  - name: pulled\n    rate_limit: { rate: 1, per: 1h, burst: 2 }\n",
                upstream.port(),
                plugin,
            );
            let mut c = envoy.client();
            let statuses: Vec<u16> = (0..4).map(|_| c.get("/", &[]).status).collect();
            assert_eq!(statuses, [200, 200, 429, 429]);
        }
        std::fs::remove_dir_all(&layout).unwrap();
        std::fs::remove_dir_all(&pulled).unwrap();
    }
}
