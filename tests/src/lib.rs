//! End-to-end harness: a real Envoy 1.40 (from `.tools/`, installed by `scripts/bootstrap`) with
//! the compiled filter, configured from the shipped `envoy/demo.yaml` with free loopback ports, a
//! scripted upstream, and a raw HTTP client. Every process is stopped when its handle drops, also
//! when a test fails, and Envoy's log is printed then.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod client;
pub mod monitoring;
pub mod registry;
pub mod services;
pub mod upstream;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use breakwater_cli::ecds::FailurePolicy;
use breakwater_policy::metrics;
pub use client::{Client, Response};
pub use upstream::Upstream;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

pub fn envoy_binary() -> PathBuf {
    let p = repo().join(".tools/bin/envoy");
    assert!(p.exists(), "{} is missing: run `scripts/bootstrap` (./dev test does)", p.display());
    p
}

pub fn filter_wasm() -> PathBuf {
    let p = repo().join("target/wasm32-wasip1/release/breakwater_filter.wasm");
    assert!(p.exists(), "{} is missing: build it with `./dev build-wasm`", p.display());
    p
}

/// The filter built with the `failpoints` feature (`x-breakwater-failpoint: trap` crashes its VM),
/// for the fault tests.
pub fn failpoints_wasm() -> PathBuf {
    let p = repo().join("target/failpoints/breakwater_filter.wasm");
    assert!(p.exists(), "{} is missing: build it with `./dev build-wasm`", p.display());
    p
}

/// What [`hammer`] saw.
#[derive(Debug, Clone, Default)]
pub struct Hammered {
    /// Responses by status.
    pub statuses: std::collections::BTreeMap<u16, u64>,
    /// Seconds from the first request sent to the last.
    pub seconds: f64,
}

impl Hammered {
    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }
}

/// Each of `threads` keep-alive clients sends GET `path` with `headers` to `port` as fast as it can
/// for `duration`; `check` sees every response (and may panic on a wrong one).
pub fn hammer(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    threads: usize,
    duration: Duration,
    check: impl Fn(&Response) + Sync,
) -> Hammered {
    let start = Instant::now();
    let per_thread: Vec<Hammered> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let check = &check;
                s.spawn(move || {
                    let mut client = Client::new(port);
                    let (mut seen, mut last) = (Hammered::default(), Duration::ZERO);
                    while start.elapsed() < duration {
                        let sent = start.elapsed();
                        let r = client.get(path, headers);
                        check(&r);
                        *seen.statuses.entry(r.status).or_default() += 1;
                        last = last.max(sent);
                    }
                    seen.seconds = last.as_secs_f64();
                    seen
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = Hammered::default();
    for seen in per_thread {
        for (status, n) in seen.statuses {
            *total.statuses.entry(status).or_default() += n;
        }
        total.seconds = total.seconds.max(seen.seconds);
    }
    total
}

/// How to start an Envoy beyond its policy: [`Envoy::start_with`].
#[derive(Debug, Clone)]
pub struct Options {
    pub wasm: PathBuf,
    /// Worker threads (`--concurrency`).
    pub workers: u32,
    /// Written into every version this harness publishes.
    pub failure_policy: FailurePolicy,
}

impl Default for Options {
    fn default() -> Self {
        Options { wasm: filter_wasm(), workers: 2, failure_policy: FailurePolicy::default() }
    }
}

/// A loopback port nothing listens on right now, and never returned before by this process.
///
/// The port is free only until someone binds it, and the kernel may offer a port it has just
/// released to the very next caller: two tests starting Envoys in parallel threads once got the
/// same admin port, and so the same temp directory, which was then named after a free port.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if GIVEN.lock().unwrap_or_else(PoisonError::into_inner).insert(port) {
            return port;
        }
    }
}

/// A new, empty directory under the system's temp dir, named `<prefix>-<pid>-<n>` with `n` unique
/// in this process.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running Envoy.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    pub port: u16,
    pub admin: u16,
    pub dir: PathBuf,
    ecds: PathBuf,
    log: PathBuf,
    options: Options,
    config: PathBuf,
}

impl Envoy {
    /// Starts Envoy (2 workers) with `policy` (YAML) published over ECDS, routing to `upstream_port`.
    pub fn start(policy: &str, upstream_port: u16) -> Envoy {
        Self::start_with(policy, upstream_port, Options::default())
    }

    /// As [`Envoy::start`], loading the filter from `wasm` (e.g. one pulled from a registry).
    pub fn start_with_filter(policy: &str, upstream_port: u16, wasm: PathBuf) -> Envoy {
        Self::start_with(policy, upstream_port, Options { wasm, ..Options::default() })
    }

    /// As [`Envoy::start`], with `workers` worker threads (`--concurrency`).
    pub fn start_workers(policy: &str, upstream_port: u16, workers: u32) -> Envoy {
        Self::start_with(policy, upstream_port, Options { workers, ..Options::default() })
    }

    /// As [`Envoy::start`], with `edit` applied to the bootstrap (envoy/demo.yaml, ports filled in).
    pub fn start_edited(policy: &str, upstream_port: u16, edit: impl FnOnce(String) -> String) -> Envoy {
        Self::launch(policy, upstream_port, Options::default(), edit)
    }

    /// As [`Envoy::start`], with other options.
    pub fn start_with(policy: &str, upstream_port: u16, options: Options) -> Envoy {
        Self::launch(policy, upstream_port, options, |b| b)
    }

    fn launch(
        policy: &str,
        upstream_port: u16,
        options: Options,
        edit: impl FnOnce(String) -> String,
    ) -> Envoy {
        let mut envoy = Self::prepare(upstream_port, options, edit);
        envoy.publish(policy).expect("the test policy is valid");
        envoy.wait_ready();
        envoy
    }

    /// As [`Envoy::start`], with the ECDS file holding `configuration` as it is (valid or not) when
    /// Envoy starts.
    pub fn start_with_configuration(configuration: &str, upstream_port: u16) -> Envoy {
        let mut envoy = Self::prepare(upstream_port, Options::default(), |b| b);
        envoy.publish_raw(configuration).expect("the ECDS file is written");
        envoy.wait_ready();
        envoy
    }

    /// The scratch folder, the bootstrap and the process (not ready yet, no policy published).
    fn prepare(upstream_port: u16, options: Options, edit: impl FnOnce(String) -> String) -> Envoy {
        let dir = scratch_dir("bw-e2e");
        let ecds_dir = dir.join("ecds");
        std::fs::create_dir_all(&ecds_dir).unwrap();
        let (port, admin) = (free_port(), free_port());
        let ecds = ecds_dir.join("breakwater.json");
        let bootstrap = std::fs::read_to_string(repo().join("envoy/demo.yaml"))
            .unwrap()
            .replace("id: breakwater-demo", &format!("id: breakwater-e2e-{admin}"))
            .replace("port_value: 9901", &format!("port_value: {admin}"))
            .replace("port_value: 10000", &format!("port_value: {port}"))
            .replace("port_value: 8081", &format!("port_value: {upstream_port}"))
            .replace("path: envoy/ecds/breakwater.json", &format!("path: {}", ecds.display()))
            .replace("path: envoy/ecds }", &format!("path: {} }}", ecds_dir.display()))
            .replace(
                "filename: target/wasm32-wasip1/release/breakwater_filter.wasm",
                &format!("filename: {}", options.wasm.display()),
            );
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, edit(bootstrap)).unwrap();
        let log = dir.join("envoy.log");
        let child = Self::spawn(&config, &log, options.workers);
        Envoy { child, port, admin, dir, ecds, log, options, config }
    }

    fn spawn(config: &Path, log: &Path, workers: u32) -> Child {
        // Appending: a restarted Envoy's log follows the first one's.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        Command::new(envoy_binary())
            .args(["-c", &config.to_string_lossy(), "--log-level", "info"])
            .args(["--concurrency", &workers.to_string()])
            .arg("--disable-hot-restart")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Stops Envoy (SIGKILL: nothing it keeps in memory survives) and starts it again on the same
    /// bootstrap, ports and ECDS file; returns when it is ready.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.config, &self.log, self.options.workers);
        self.wait_ready();
    }

    /// Publishes a policy document over ECDS (the same code as `breakwater publish`).
    pub fn publish(&self, policy: &str) -> Result<u64, String> {
        let doc = breakwater_policy::load(policy).map_err(|d| format!("{d:?}"))?.document;
        self.publish_raw(&breakwater_policy::compile(&doc))
    }

    /// Publishes any configuration string, valid or not.
    pub fn publish_raw(&self, configuration: &str) -> Result<u64, String> {
        let mut settings = breakwater_cli::ecds::FilterSettings::breakwater(self.options.wasm.clone());
        settings.failure_policy = self.options.failure_policy;
        breakwater_cli::ecds::publish(&self.ecds, &settings, configuration).map_err(|e| e.to_string())
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("envoy exited with {status}:\n{}", self.log());
            }
            if self.admin_get("/ready").is_some_and(|r| r.status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("envoy not ready after 30 s:\n{}", self.log());
    }

    /// An admin server's configuration for this Envoy: its store in `<dir>/admin`, publishing to
    /// this Envoy's ECDS file, confirming through its admin endpoint and log.
    pub fn admin_config(
        &self,
        token: &str,
        wasm: PathBuf,
        ui_dir: Option<PathBuf>,
    ) -> breakwater_cli::serve::Config {
        let dir = self.dir.join("admin");
        breakwater_cli::serve::Config {
            policy: dir.join("active.yaml"),
            state_dir: dir.join("state"),
            token: token.into(),
            ui_dir,
            scenarios_dir: repo().join("policies"),
            filter_wasm: wasm,
            ecds: Some(self.ecds.clone()),
            filter_name: "breakwater".into(),
            vm_id: "breakwater".into(),
            failure_policy: Default::default(),
            envoy_admin: Some(format!("127.0.0.1:{}", self.admin)),
            envoy_log: Some(self.log.clone()),
            prometheus: None,
            alertmanager: None,
            publish_timeout: Duration::from_secs(10),
            simulation: breakwater_cli::serve::SimulationLimits::default(),
        }
    }

    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The ECDS file this Envoy watches.
    pub fn ecds_path(&self) -> &Path {
        &self.ecds
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn admin_get(&self, path: &str) -> Option<Response> {
        let mut c = Client::new(self.admin);
        c.try_send("GET", path, &[]).ok()
    }

    pub fn client(&self) -> Client {
        Client::new(self.port)
    }

    /// A counter or gauge from /stats (`wasmcustom.` names included), 0 when absent.
    pub fn stat(&self, name: &str) -> u64 {
        let body = self.admin_get(&format!("/stats?filter=^{}$", name.replace('.', "\\."))).map(|r| r.body);
        body.as_deref()
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")).and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// A breakwater counter of a policy, by its word (`allowed`, `retried`, ...), as Envoy's
    /// `/stats` shows it (0 for a word that names no counter).
    pub fn decisions(&self, policy: &str, counter: &str) -> u64 {
        let Some(counter) = metrics::Counter::parse(counter) else { return 0 };
        self.stat(&format!("{}{}", metrics::ENVOY_STAT_PREFIX, metrics::counter_name(policy, counter)))
    }

    /// A breakwater gauge of a policy, as Envoy's `/stats` shows it (0 when absent).
    pub fn gauge(&self, policy: &str, gauge: metrics::Gauge) -> u64 {
        self.stat(&format!("{}{}", metrics::ENVOY_STAT_PREFIX, metrics::gauge_name(policy, gauge)))
    }

    /// The filter's linear memory as its VMs last reported it (`breakwater_vm_memory_bytes`).
    pub fn vm_memory(&self) -> u64 {
        self.stat(&format!("{}{}", metrics::ENVOY_STAT_PREFIX, metrics::VM_MEMORY_GAUGE))
    }

    /// Waits until `check` holds (Envoy applies ECDS updates and flushes stats asynchronously).
    pub fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if check() {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- envoy log ({}) ----\n{}", self.log.display(), self.log());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        // Plain bind-to-port-0 returns a repeat within a few hundred calls on Linux.
        let ports: Vec<u16> = (0..2000).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }

    #[test]
    fn scratch_dirs_are_distinct_and_empty() {
        let (a, b) = (scratch_dir("bw-scratch-test"), scratch_dir("bw-scratch-test"));
        assert_ne!(a, b);
        assert_eq!(std::fs::read_dir(&a).unwrap().count(), 0);
        std::fs::remove_dir_all(a).unwrap();
        std::fs::remove_dir_all(b).unwrap();
    }
}
