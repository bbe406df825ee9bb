//! The global limits' processes: a project-local Redis (Debian's `redis-server`, never the system
//! service) and the rate-limit service, each on free loopback ports, started with a readiness
//! check and stopped when its handle drops.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, scratch_dir};

/// A Redis server of its own.
#[derive(Debug)]
pub struct Redis {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    /// Starts `redis-server` on a free port (no persistence) and waits until it answers PING.
    pub fn start() -> Redis {
        Self::start_on(free_port())
    }

    /// Starts it on `port` (a restart after [`Redis::kill`] keeps the port the services know).
    pub fn start_on(port: u16) -> Redis {
        let dir = scratch_dir("bw-redis");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is missing: run `scripts/bootstrap` (./dev test does)");
        let redis = Redis { child, port, dir };
        let start = Instant::now();
        while redis.command("PING").as_deref() != Some("+PONG") {
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not answer PING on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One inline command; the first line of the reply (None when Redis does not answer).
    pub fn command(&self, command: &str) -> Option<String> {
        let mut s =
            TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_millis(200))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        Some(line.trim_end().to_string())
    }

    /// Stops it at once (SIGKILL), as a crash would.
    pub fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `target/<profile>/<name>`: a binary of the workspace, built by `cargo build --workspace --bins`
/// (`./dev test` builds them before the tests run).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let p = profile_dir.join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace --bins` (./dev test does)", p.display());
    p
}

/// A running `breakwater-ratelimit`.
#[derive(Debug)]
pub struct RateLimitService {
    child: Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
}

impl RateLimitService {
    /// Starts the service on free ports with `policy` (a file: a policy or an ECDS file), and
    /// waits until it prints its addresses and answers /readyz.
    pub fn start(policy: &Path, redis_url: &str, extra: &[&str]) -> RateLimitService {
        let mut command = Command::new(workspace_binary("breakwater-ratelimit"));
        command
            .arg("--policy")
            .arg(policy)
            .args(["--redis", redis_url, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(extra);
        RateLimitService::spawn(command)
    }

    /// Starts the service as `command` says (which must listen on loopback) and waits as
    /// [`RateLimitService::start`] does.
    pub fn spawn(mut command: Command) -> RateLimitService {
        let dir = scratch_dir("bw-ratelimit");
        let log = dir.join("stderr.log");
        let mut child =
            command.stdout(Stdio::piped()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        // "breakwater-ratelimit: grpc ADDR admin ADDR, ..."
        let word_after = |w: &str| -> Option<SocketAddr> {
            let mut words = line.split([' ', ',']);
            words.find(|x| *x == w)?;
            words.next()?.parse().ok()
        };
        let (Some(grpc), Some(admin)) = (word_after("grpc"), word_after("admin")) else {
            let _ = child.kill();
            panic!(
                "breakwater-ratelimit did not start: {line}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        // Keep reading stdout so that the service never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        let service = RateLimitService { child, grpc, admin, log };
        let start = Instant::now();
        while service.http("/readyz").is_none_or(|(status, _)| status != 200) {
            assert!(start.elapsed() < Duration::from_secs(10), "the rate-limit service is not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        service
    }

    /// GET `path` on the admin port: (status, body).
    pub fn http(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.admin, Duration::from_millis(500)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((status, body))
    }

    /// A metric's value from /metrics (`name` with its labels, as written there).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.http("/metrics").unwrap_or_default();
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{body}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks it to stop (SIGTERM) and waits; the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        self.child.wait().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RateLimitService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- rate-limit service log ----\n{}", self.log());
        }
        if let Some(dir) = self.log.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `envoy/demo.yaml` with its `breakwater-ratelimit` cluster pointing at `services` (gRPC
/// addresses), for [`crate::Envoy::start_edited`].
pub fn with_ratelimit(bootstrap: String, services: &[SocketAddr]) -> String {
    let line = "                    socket_address: { address: 127.0.0.1, port_value: 8091 }\n";
    assert!(bootstrap.contains(line), "envoy/demo.yaml has no breakwater-ratelimit endpoint");
    let endpoints: Vec<String> = services
        .iter()
        .map(|a| {
            format!(
                "                    socket_address: {{ address: {}, port_value: {} }}\n",
                a.ip(),
                a.port()
            )
        })
        .collect();
    let separator = "              - endpoint:\n                  address:\n";
    bootstrap.replace(line, &endpoints.join(separator))
}
