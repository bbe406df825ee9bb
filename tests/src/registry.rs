//! A real OCI registry on loopback (Debian's `docker-registry`, distribution 2.8), stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Client, free_port, scratch_dir};

#[derive(Debug)]
pub struct Registry {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Registry {
    pub fn start() -> Registry {
        let port = free_port();
        let dir = scratch_dir("bw-registry");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", &config.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry (Debian package docker-registry; scripts/bootstrap installs it)");
        let mut registry = Registry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if Client::new(port).try_send("GET", "/v2/", &[]).is_ok_and(|r| r.status == 200) {
                return registry;
            }
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!("docker-registry exited with {status}: {}", registry.log());
            }
            assert!(Instant::now() < deadline, "docker-registry not ready: {}", registry.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn reference(&self, repo_tag: &str) -> String {
        format!("127.0.0.1:{}/{repo_tag}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- registry log ----\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
