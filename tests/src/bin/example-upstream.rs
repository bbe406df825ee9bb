//! The demo's example upstream: the scripted test upstream on a fixed port, until killed.
//! Try `x-test-status: 500`, `x-test-delay-ms: 800`, `x-test-script: 503,503,200`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let port = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(8081);
    match breakwater_e2e::Upstream::start_on(port) {
        Ok(upstream) => {
            println!("example upstream on 127.0.0.1:{}", upstream.port());
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("example upstream: cannot listen on 127.0.0.1:{port}: {e}");
            ExitCode::FAILURE
        }
    }
}
