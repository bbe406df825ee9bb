//! Prometheus and Alertmanager of their own (Debian's `prometheus` and `prometheus-alertmanager`,
//! never the system services), on free loopback ports, started with a readiness check and
//! stopped when their handles drop; and the few HTTP API calls the tests make to them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Client, free_port, scratch_dir};

/// A monitoring process and its scratch directory.
#[derive(Debug)]
pub struct Process {
    child: Child,
    pub port: u16,
    dir: PathBuf,
    log: PathBuf,
}

impl Process {
    fn spawn(what: &str, program: &str, args: &[String], dir: PathBuf, port: u16) -> Process {
        let log = dir.join(format!("{what}.log"));
        let out = std::fs::File::create(&log).expect("a log file in the scratch dir");
        let err = out.try_clone().expect("the log file again");
        let child = Command::new(program)
            .args(args)
            .current_dir(&dir)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} is missing ({e}): run `scripts/bootstrap` (./dev test does)")
            });
        let mut p = Process { child, port, dir, log };
        p.wait_ready(what);
        p
    }

    fn wait_ready(&mut self, what: &str) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{what} exited with {status}:\n{}", self.log());
            }
            if get(self.port, "/-/ready").is_some_and(|(status, _)| status == 200) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{what} not ready after 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An Alertmanager with one receiver that keeps every alert (its API lists them), grouping
/// nothing and waiting for nothing.
pub fn alertmanager() -> Process {
    let dir = scratch_dir("bw-alertmanager");
    let port = free_port();
    std::fs::write(
        dir.join("alertmanager.yml"),
        "route: { receiver: keep, group_by: ['...'], group_wait: 0s, group_interval: 1s, repeat_interval: 1h }\n\
         receivers: [ { name: keep } ]\n",
    )
    .expect("the Alertmanager configuration");
    let args = [
        "--config.file=alertmanager.yml".to_string(),
        "--storage.path=data".into(),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--cluster.listen-address=".into(),
    ];
    Process::spawn("alertmanager", "prometheus-alertmanager", &args, dir, port)
}

/// A Prometheus that scrapes Envoy's `/stats/prometheus` at `envoy_admin` every second, evaluates
/// `rules` (a rules file's text) every second and sends alerts to `alertmanager`.
pub fn prometheus(envoy_admin: u16, rules: &str, alertmanager: Option<u16>) -> Process {
    let dir = scratch_dir("bw-prometheus");
    let port = free_port();
    std::fs::write(dir.join("rules.yml"), rules).expect("the rules file");
    let alerting = alertmanager
        .map(|p| format!("alerting: {{ alertmanagers: [ {{ static_configs: [ {{ targets: ['127.0.0.1:{p}'] }} ] }} ] }}\n"))
        .unwrap_or_default();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             rule_files: [rules.yml]\n{alerting}\
             scrape_configs:\n  - job_name: envoy\n    metrics_path: /stats/prometheus\n    \
             static_configs: [ {{ targets: ['127.0.0.1:{envoy_admin}'] }} ]\n"
        ),
    )
    .expect("the Prometheus configuration");
    let args = [
        "--config.file=prometheus.yml".to_string(),
        "--storage.tsdb.path=data".into(),
        format!("--web.listen-address=127.0.0.1:{port}"),
    ];
    Process::spawn("prometheus", "prometheus", &args, dir, port)
}

/// GET on loopback: status and body.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut c = Client::new(port);
    c.try_send("GET", path, &[]).ok().map(|r| (r.status, r.body))
}

pub use breakwater_cli::serve::live::encode;

/// A PromQL instant query: the result vector (empty on any error).
pub fn query(prometheus: &Process, promql: &str) -> Vec<Value> {
    let Some((200, body)) = get(prometheus.port, &format!("/api/v1/query?query={}", encode(promql))) else {
        return Vec::new();
    };
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["data"]["result"].as_array().cloned())
        .unwrap_or_default()
}

/// Whether the query parses (Prometheus answers 200, not 400).
pub fn parses(prometheus: &Process, promql: &str) -> Result<(), String> {
    match get(prometheus.port, &format!("/api/v1/query?query={}", encode(promql))) {
        Some((200, _)) => Ok(()),
        Some((status, body)) => Err(format!("{status}: {body}")),
        None => Err("no answer".into()),
    }
}

/// The alerts Alertmanager holds now (active, silenced or not).
pub fn alertmanager_alerts(am: &Process) -> Vec<Value> {
    get(am.port, "/api/v2/alerts")
        .filter(|(s, _)| *s == 200)
        .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}
