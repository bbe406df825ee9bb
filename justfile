# breakwater's tasks. Run through ./dev (which installs the tools first): ./dev <recipe>.

set shell := ["bash", "-euo", "pipefail", "-c"]
export PATH := justfile_directory() / ".tools/bin" + ":" + env_var("PATH")

filter_wasm := "target/wasm32-wasip1/release/breakwater_filter.wasm"
cli := "target/debug/breakwater"

# List the recipes.
default:
    @just --list

# The whole test suite: what CI runs.
test: lint build-wasm test-rust validate-examples scenarios demo-smoke bench-smoke fuzz-smoke
    @echo "all checks passed"

# Formatting, clippy (unwrap/expect/panic are denied outside tests; in policy and filter also
# indexing and overflowing arithmetic) for the host and for the filter's own target (its
# wasm-only code, the failpoints build included), and the docs of every crate, private items
# included (a broken link or a malformed doc comment fails).
lint:
    cargo fmt --all -- --check
    cargo clippy --locked --workspace --all-targets -- -D warnings
    cargo clippy --locked -q -p breakwater-filter --target wasm32-wasip1 --features failpoints -- -D warnings
    RUSTDOCFLAGS="-D warnings -A rustdoc::private_intra_doc_links" cargo doc --locked -q --no-deps --workspace --document-private-items

# The filter for Envoy (wasm32-wasip1). The admin (wasm32-unknown-unknown) is built by build-admin.
# The fault tests' build (feature `failpoints`: a VM crash on demand) goes to target/failpoints/.
build-wasm:
    cargo build --locked --release -p breakwater-filter --target wasm32-wasip1 --features failpoints
    mkdir -p target/failpoints && cp {{filter_wasm}} target/failpoints/breakwater_filter.wasm
    cargo build --locked --release -p breakwater-filter --target wasm32-wasip1
    @ls -l {{filter_wasm}} | awk '{print "filter wasm: " $5 " bytes"}'

# The web admin (Leptos, client-side), built by trunk offline with the pinned wasm-bindgen and
# wasm-opt (Trunk.toml) and Cargo's `admin` profile (size first) into admin-ui/dist, precompressed
# (brotli and gzip beside each file), which `breakwater serve` serves.
build-admin: editor
    cargo fetch --locked -q
    cd admin-ui && trunk build --skip-version-check
    @ls -l admin-ui/dist/*.wasm | awk '{print "admin wasm: " $5 " bytes"}'
    @node admin-ui/editor/compress.mjs admin-ui/dist

# The admin's code editor (CodeMirror 6 and admin-ui/editor/src), bundled offline by esbuild into
# one classic script that trunk copies beside the app; its pure parts tested with node.
editor:
    cd admin-ui/editor && node_modules/.bin/esbuild src/editor.js --bundle --minify --format=iife --target=es2020 --legal-comments=eof --log-level=warning --outfile=dist/editor.js
    cd admin-ui/editor && node --test --test-reporter=dot test/

# What the admin weighs under Cargo's release and admin profiles, raw and compressed (3 min).
admin-size:
    scripts/admin-size

# Unit, property and integration tests of every crate (the browser tests need the built admin).
test-rust: build-admin bins
    cargo test --locked --workspace

# Every binary (the CLI, the example upstream, the load generator), built with the test suite's
# feature set: a narrower `-p` build would compile wasmtime, tokio and others a second time.
bins:
    cargo build --locked -q --workspace --bins --tests

# The shipped example policies validate.
validate-examples: bins
    {{cli}} validate $(ls policies/*.yaml | grep -v '\.scenario\.yaml$')

# The shipped scenarios: simulated traffic through the compiled filter (host-test), every expectation met.
scenarios: build-wasm bins
    {{cli}} test policies/*.scenario.yaml

# The same traffic through real Envoy and through host-test, compared side by side (also in test-rust).
fidelity: build-wasm
    cargo test --locked -p breakwater-e2e --test fidelity

# Regenerate the committed JSON Schema after changing the model.
schema: bins
    {{cli}} schema > policies/schema.json

# Regenerate policies/invalid/*.expected after an intended change of messages (review the diff!).
bless:
    BREAKWATER_BLESS=1 cargo test --locked -p breakwater-policy --test documents
    git diff --stat policies/invalid

# Every fuzz target (fuzz/, cargo-fuzz on nightly) for 20 s each, from a fixed seed (the same
# inputs on every run): about 2.5 min with the build.
fuzz-smoke: bins
    FUZZ_SEED=1 scripts/fuzz 20

# Every fuzz target for SECONDS each (default 5 min, 25 min in all); `./dev fuzz 60 policy_load` runs one.
fuzz seconds="300" *targets: bins
    scripts/fuzz {{seconds}} {{targets}}

# The soak test (not in CI): Envoy under keyed traffic with aborts, resets and a publish every
# 10 s for MINUTES; in-flight must return to 0 and memory stay flat. Figures go to RELIABILITY.md.
soak minutes="30": build-wasm bins
    target/debug/soak --minutes {{minutes}}

# The demo: example upstream + Envoy (2 workers) with the filter and the example policies + the web admin.
demo: build-wasm build-admin bins
    scripts/demo

# Start the demo, check a 429, an open breaker and the metrics, stop it.
demo-smoke: build-wasm build-admin bins
    scripts/demo --smoke

# The benchmark suite (12–16 min): overhead, features, calls, accuracy, scale, memory, host-test, global limits; rewrites the
# generated part of BENCHMARKS.md. `./dev bench --only overhead,scale` runs some sections.
bench *args: bench-tools
    cargo build --locked -q --release -p breakwater-ratelimit
    python3 bench/run.py {{args}}

# Every benchmark section at toy sizes (about a minute), so the bench code cannot rot.
bench-smoke: bench-tools
    python3 bench/run.py --smoke

# What the benchmarks run: wrk, the no-op filter (the V8 floor), the CLI and the load generator.
bench-tools: build-wasm bins
    scripts/bootstrap --bench
    cargo build --locked -q --release -p breakwater-bench-noop-filter --target wasm32-wasip1
