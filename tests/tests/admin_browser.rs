//! The admin in a real browser (Debian chromium, headless, driven over WebDriver by chromedriver)
//! against a real Envoy: create a policy with an invalid value and see the error next to the
//! field, fix it, save, simulate and see the chart, publish, and a real request through Envoy is
//! rate limited by the new policy. Screenshots of each page go to tests/output/admin/.
//!
//! Needs the built admin (admin-ui/dist, `./dev build-admin`) and the filter (`./dev build-wasm`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use breakwater_cli::serve;
use breakwater_e2e::{Envoy, Upstream, filter_wasm, free_port, repo};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const TOKEN: &str = "browser-token-0123456789";
/// What Envoy runs before the admin publishes: a policy that never limits.
const START: &str = "version: 1\npolicies:\n  - name: open\n    rate_limit: { rate: 1000, burst: 1000 }\n";

/// chromedriver on a free port, stopped on drop.
struct Driver {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl Driver {
    fn start(profile: PathBuf) -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian chromium-driver) is installed by scripts/bootstrap");
        let driver = Driver { child, port, profile };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        driver
    }

    async fn client(&self) -> Client {
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--window-size=1280,800".into(),
            format!("--user-data-dir={}", self.profile.display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), json!({ "binary": "/usr/bin/chromium", "args": args }));
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session with headless chromium")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // chromium is chromedriver's child and outlives it: stop every process of this profile.
        let _ =
            Command::new("pkill").arg("-f").arg(format!("user-data-dir={}", self.profile.display())).status();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The admin server in this process, on a free loopback port.
fn start_admin(envoy: &Envoy) -> (u16, tokio::task::JoinHandle<()>) {
    let config = envoy.admin_config(TOKEN, filter_wasm(), Some(repo().join("admin-ui/dist")));
    let router = serve::app(config).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let handle = tokio::spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let _ = serve::serve_on(listener, router).await;
    });
    (port, handle)
}

fn screenshots() -> PathBuf {
    let dir = repo().join("tests/output/admin");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The top of a chart's scale, from its caption (`max 17/s`).
fn chart_top(chart: &str) -> u64 {
    chart
        .split("max ")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no scale in {chart}"))
}

fn css(testid: &str) -> String {
    format!("[data-testid='{testid}']")
}

struct Page {
    c: Client,
    shots: PathBuf,
}

impl Page {
    /// Opens the admin with the token in the URL, as `breakwater serve` prints it; returns when
    /// the app has mounted.
    async fn open(&self, admin_port: u16) {
        self.c.goto(&format!("http://127.0.0.1:{admin_port}/#token={TOKEN}")).await.unwrap();
        self.el("add-policy").await;
    }

    async fn el(&self, testid: &str) -> fantoccini::elements::Element {
        self.c
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(&css(testid)))
            .await
            .unwrap_or_else(|e| panic!("no element {testid}: {e}"))
    }

    async fn click(&self, testid: &str) {
        self.el(testid).await.click().await.unwrap_or_else(|e| panic!("click {testid}: {e}"));
    }

    async fn text(&self, testid: &str) -> String {
        self.el(testid).await.text().await.unwrap()
    }

    /// Replaces a text field's content, as a user selecting all and typing would.
    async fn type_into(&self, testid: &str, text: &str) {
        let e = self.el(testid).await;
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    /// Waits until `check` holds for the element's text.
    async fn wait_text(&self, testid: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = self.text(testid).await;
            if check(&t) {
                return t;
            }
            assert!(Instant::now() < deadline, "{testid}: waited for {what}, last text: {t:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shot(&self, name: &str) {
        let png = self.c.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// A screenshot that README.md or docs/admin.md shows as `docs/{doc}.png`: refreshed there on
    /// request (`BREAKWATER_UPDATE_DOCS=1`; a test run leaves docs/ alone).
    async fn doc_shot(&self, name: &str, doc: &str) {
        self.shot(name).await;
        if std::env::var_os("BREAKWATER_UPDATE_DOCS").is_some() {
            std::fs::copy(self.shots.join(format!("{name}.png")), repo().join(format!("docs/{doc}.png")))
                .unwrap();
        }
    }

    /// The document as the raw YAML view shows it (back on the form afterwards).
    async fn yaml(&self) -> String {
        self.click("view-yaml").await;
        let yaml = self.code("yaml").await;
        self.click("view-form").await;
        yaml
    }

    /// The text of a code editor (CodeMirror: admin-ui/editor).
    async fn code(&self, testid: &str) -> String {
        self.el(testid).await;
        let text = self
            .c
            .execute(
                "return document.querySelector(arguments[0]).breakwaterEditor.text()",
                vec![json!(css(testid))],
            )
            .await
            .unwrap_or_else(|e| panic!("{testid} is not a code editor: {e}"));
        text.as_str().unwrap_or_default().to_string()
    }

    /// Replaces a code editor's text, as a paste would.
    async fn paste_code(&self, testid: &str, text: &str) {
        self.el(testid).await;
        self.c
            .execute(
                "document.querySelector(arguments[0]).breakwaterEditor.type(arguments[1])",
                vec![json!(css(testid)), json!(text)],
            )
            .await
            .unwrap_or_else(|e| panic!("{testid} is not a code editor: {e}"));
    }

    /// Runs `scenario` in the simulator against the edited document, until its result shows.
    async fn simulate(&self, scenario: &str) {
        self.click("tab-simulate").await;
        self.paste_code("scenario", scenario).await;
        self.click("run-simulation").await;
        self.el("simulation-result").await;
    }

    /// Moves the pointer over point `i` of the `n` points of a chart.
    async fn hover_point(&self, chart: &str, i: usize, n: usize) {
        use breakwater_admin_ui::chart::{LEFT, VIEW_WIDTH, WIDTH};
        use fantoccini::actions::{InputSource, MouseActions, PointerAction};
        let rect = self
            .c
            .execute(
                "const svg = document.querySelector(arguments[0] + ' svg'); svg.scrollIntoView({block: 'center'});
                 const b = svg.getBoundingClientRect(); return [b.left, b.top, b.width, b.height];",
                vec![json!(css(chart))],
            )
            .await
            .unwrap();
        let r: Vec<f64> = serde_json::from_value(rect).unwrap();
        let x = r[0] + (LEFT + (i as f64 + 0.5) * WIDTH / n as f64) / VIEW_WIDTH * r[2];
        let y = r[1] + r[3] / 2.0;
        let to = MouseActions::new("mouse".into()).then(PointerAction::MoveTo { duration: None, x, y });
        self.c.perform_actions(to).await.unwrap();
    }

    async fn disabled(&self, testid: &str) -> bool {
        self.el(testid).await.prop("disabled").await.unwrap().as_deref() == Some("true")
    }
}

/// What a browser test runs against: an upstream, Envoy, the admin server in this process, and
/// headless chromium. Stopped in reverse order when dropped (the browser session first).
struct Session {
    page: Page,
    admin_port: u16,
    server: tokio::task::JoinHandle<()>,
    _driver: Driver,
    envoy: Envoy,
    _upstream: Upstream,
}

impl Session {
    async fn start(profile: &str) -> Session {
        assert!(
            repo().join("admin-ui/dist/index.html").is_file(),
            "the admin is not built: run ./dev build-admin (trunk)"
        );
        let upstream = Upstream::start();
        let envoy = Envoy::start(START, upstream.port());
        let (admin_port, server) = start_admin(&envoy);
        let driver = Driver::start(envoy.dir.join(profile));
        let page = Page { c: driver.client().await, shots: screenshots() };
        Session { page, admin_port, server, _driver: driver, envoy, _upstream: upstream }
    }

    async fn stop(self) {
        let _ = self.page.c.clone().close().await;
        self.server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journey_edit_fix_simulate_publish_enforce() {
    let s = Session::start("chromium-profile").await;
    journey(&s.page, &s.envoy, s.admin_port).await;
    s.stop().await;
}

async fn journey(page: &Page, envoy: &Envoy, admin_port: u16) {
    page.c.goto(&format!("http://127.0.0.1:{admin_port}/#token={TOKEN}")).await.unwrap();
    // The token moves out of the address bar into the tab's storage.
    page.el("add-policy").await;
    assert_eq!(page.c.current_url().await.unwrap().fragment(), None);

    // A new policy with a rate limit, and an invalid value: the error appears next to the field.
    page.click("add-policy").await;
    page.el("policy-policy-1").await;
    page.click("block-rate_limit").await;
    page.type_into("field-rate_limit-rate", "ten").await;
    let error = page.wait_text("error-rate_limit-rate", "the validator's error", |t| !t.is_empty()).await;
    assert_eq!(error, "expected an integer, found a string");
    assert!(page.disabled("save").await, "save is refused while the document is invalid");
    assert!(page.text("doc-state").await.starts_with("invalid"));
    page.doc_shot("1-policy-invalid", "admin-editor").await;

    // Fixed: 1 request per hour with a burst of 2, so the third request is limited.
    page.type_into("field-rate_limit-rate", "1").await;
    page.type_into("field-rate_limit-per", "1h").await;
    page.type_into("field-rate_limit-burst", "2").await;
    page.wait_text("error-rate_limit-rate", "no error", str::is_empty).await;
    assert!(!page.disabled("save").await);
    // The raw YAML view follows the form.
    let yaml = page.yaml().await;
    assert!(yaml.contains("- name: policy-1") && yaml.contains("per: 1h"), "{yaml}");
    page.click("save").await;
    page.wait_text("notice", "the save", |t| t.starts_with("Saved as version 2")).await;

    // Simulate the default scenario (50 requests a second): most are rate limited, and the chart shows it.
    page.click("tab-simulate").await;
    page.click("run-simulation").await;
    page.el("simulation-result").await;
    let bars = page.c.find_all(Locator::Css("[data-testid='chart-decisions'] rect")).await.unwrap();
    assert!(bars.len() >= 10, "one or more bars per second: {}", bars.len());
    let legend = page.text("chart-decisions").await;
    assert!(legend.contains("allowed") && legend.contains("rate_limited"), "{legend}");
    // Axes: values with their unit, times in seconds.
    let times = breakwater_admin_ui::chart::TimeAxis::Seconds.ticks(10);
    assert!(times.len() >= 3, "{times:?}");
    for label in times.iter().map(|i| format!("{i}s")).chain(["0/s".to_string()]) {
        assert!(legend.split_whitespace().any(|w| w == label), "no axis label {label} in {legend}");
    }
    // The readout under the pointer: 1 request per hour with a burst of 2, at 50 a second: 2
    // allowed and 48 limited in the first second, then all 50 limited.
    page.hover_point("chart-decisions", 0, 10).await;
    let first =
        page.wait_text("chart-decisions-tooltip", "the readout of second 0", |t| t.starts_with("0s")).await;
    assert_eq!(
        first.split_whitespace().collect::<Vec<_>>(),
        ["0s", "allowed", "2/s", "rate_limited", "48/s", "total", "50/s"]
    );
    page.hover_point("chart-decisions", 3, 10).await;
    let fourth =
        page.wait_text("chart-decisions-tooltip", "the readout of second 3", |t| t.starts_with("3s")).await;
    assert_eq!(
        fourth.split_whitespace().collect::<Vec<_>>(),
        ["3s", "allowed", "0/s", "rate_limited", "50/s", "total", "50/s"]
    );
    page.doc_shot("2-simulate", "admin-simulate").await;
    // And from the keyboard: End reads the last second.
    page.c
        .execute("document.querySelector(\"[data-testid='chart-decisions'] svg\").focus()", vec![])
        .await
        .unwrap();
    page.c.active_element().await.unwrap().send_keys("\u{E010}").await.unwrap();
    page.wait_text("chart-decisions-tooltip", "the readout of the last second", |t| t.starts_with("9s"))
        .await;

    // Publish: the diff shows the new policy, the confirmation is asked, Envoy applies it.
    page.click("tab-publish").await;
    page.wait_text("diff", "the diff", |t| t.contains("name: policy-1")).await;
    page.click("publish").await;
    page.el("confirm-box").await;
    page.shot("3-publish-confirm").await;
    page.click("confirm-publish").await;
    let outcome = page.el("publish-result").await;
    assert_eq!(
        outcome.attr("data-state").await.unwrap().as_deref(),
        Some("applied"),
        "{}",
        outcome.text().await.unwrap()
    );
    page.shot("4-published").await;

    // A real request through Envoy is limited by the new policy.
    let statuses: Vec<u16> = tokio::task::spawn_blocking({
        let mut client = envoy.client();
        move || (0..3).map(|_| client.get("/", &[]).status).collect()
    })
    .await
    .unwrap();
    assert_eq!(statuses, [200, 200, 429]);

    // The live view shows Envoy's counter for it.
    page.click("tab-live").await;
    page.wait_text("live-policy-1-rate_limited", "the live counter", |t| t == "1").await;
    page.shot("5-live").await;
    page.click("tab-history").await;
    page.el("version-2").await;
    page.shot("6-history").await;
    page.click("tab-policies").await;
    page.wait_text("policy-policy-1", "live counters in the list", |t| t.contains("3 requests")).await;
    page.shot("0-policies").await;

    // Roll back to the first (empty) version from the history: it becomes active as version 3.
    page.click("tab-history").await;
    page.click("rollback-1").await;
    page.wait_text("notice", "the rollback", |t| t.starts_with("Version 1 is active again (as version 3)"))
        .await;
    page.click("tab-policies").await;
    let list = page.text("policy-list").await;
    assert!(!list.contains("policy-1"), "{list}");
}

/// Issue 20, defect 4: two editors in two tabs load version 1; the first saves; the second's save
/// is refused (412, nothing overwritten), the conflict is shown with what changed, and the second
/// editor loads the active version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_cannot_overwrite_each_other() {
    let s = Session::start("chromium-profile-tabs").await;
    two_tabs(&s.page, s.admin_port).await;
    s.stop().await;
}

async fn two_tabs(page: &Page, admin_port: u16) {
    let url = format!("http://127.0.0.1:{admin_port}/#token={TOKEN}");
    page.c.goto(&url).await.unwrap();
    page.wait_text("doc-state", "the document", |t| t == "saved (version 1)").await;
    let first = page.c.window().await.unwrap();
    let second = page.c.new_window(true).await.unwrap().handle;
    page.c.switch_to_window(second.clone()).await.unwrap();
    page.c.goto(&url).await.unwrap();
    page.wait_text("doc-state", "the document", |t| t == "saved (version 1)").await;

    // The first tab adds a policy and saves: version 2.
    page.c.switch_to_window(first).await.unwrap();
    page.click("add-policy").await;
    page.el("policy-policy-1").await;
    page.click("save").await;
    page.wait_text("notice", "the save", |t| t.starts_with("Saved as version 2")).await;

    // The second tab, still on version 1, makes its own change: its save is refused.
    page.c.switch_to_window(second).await.unwrap();
    page.click("add-policy").await;
    page.click("block-rate_limit").await;
    page.click("save").await;
    let conflict =
        page.wait_text("conflict", "the conflict", |t| t.contains("version 2 is active now")).await;
    assert!(conflict.contains("Someone else changed the policy"), "{conflict}");
    page.click("conflict-compare").await;
    page.wait_text("conflict-diff", "what the other editor changed", |t| t.contains("+  - name: policy-1"))
        .await;
    page.shot("7-conflict").await;
    // The second editor takes the active version: the first editor's policy, no rate limit.
    page.click("conflict-reload").await;
    page.wait_text("doc-state", "the reloaded document", |t| t == "saved (version 2)").await;
    page.click("view-yaml").await;
    let yaml = page.code("yaml").await;
    assert!(yaml.contains("name: policy-1") && !yaml.contains("rate_limit"), "{yaml}");
}

/// Issue 22: a concurrency limit's queue is edited in the form, and the simulator charts the
/// line's length over time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_is_edited_in_the_form_and_charted_by_the_simulator() {
    let s = Session::start("chromium-profile-queue").await;
    queue(&s.page, s.admin_port).await;
    s.stop().await;
}

async fn queue(page: &Page, admin_port: u16) {
    page.c.goto(&format!("http://127.0.0.1:{admin_port}/#token={TOKEN}")).await.unwrap();
    page.wait_text("doc-state", "the document", |t| t == "saved (version 1)").await;
    page.click("add-policy").await;
    page.el("policy-policy-1").await;
    page.click("block-concurrency_limit").await;
    page.type_into("field-concurrency_limit-max_in_flight", "2").await;
    page.type_into("field-concurrency_limit-queue-max_waiting", "2000").await;
    let error = page
        .wait_text("error-concurrency_limit-queue-max_waiting", "the validator's error", |t| !t.is_empty())
        .await;
    assert_eq!(error, "must be between 1 and 1000, found 2000");
    page.type_into("field-concurrency_limit-queue-max_waiting", "20").await;
    page.type_into("field-concurrency_limit-queue-max_wait", "2s").await;
    page.wait_text("error-concurrency_limit-queue-max_waiting", "no error", str::is_empty).await;
    let yaml = page.yaml().await;
    assert!(
        yaml.contains("queue:") && yaml.contains("max_waiting: 20") && yaml.contains("max_wait: 2s"),
        "{yaml}"
    );

    // 40 requests a second into a limit that serves 20 (2 slots, 100 ms each): the line grows.
    page.simulate(
        "name: a queue fills\nduration: 5s\ntraffic:\n  - rate: 40/s\nupstream:\n  latency: 100ms\n",
    )
    .await;
    let bars = page.c.find_all(Locator::Css("[data-testid='chart-queue'] rect")).await.unwrap();
    assert!(bars.len() >= 4, "a bar for most seconds: {}", bars.len());
    let chart = page.text("chart-queue").await;
    // The line holds at most max_waiting (20), and fills up to near it.
    let top = chart_top(&chart);
    assert!(chart.contains("policy-1") && (10..=20).contains(&top), "{chart}");
    page.shot("7-simulate-queue").await;

    // The limit made adaptive: with max_in_flight still there, the validator says to pick one.
    page.click("tab-policies").await;
    page.type_into("field-concurrency_limit-adaptive-max", "40").await;
    let error = page
        .wait_text("error-concurrency_limit-max_in_flight", "the validator's error", |t| !t.is_empty())
        .await;
    assert!(error.starts_with("a limit is either fixed or adaptive"), "{error}");
    // Emptying max_in_flight (a key typed, then taken back: an input event with no text).
    page.type_into("field-concurrency_limit-max_in_flight", "x").await;
    page.el("field-concurrency_limit-max_in_flight").await.send_keys("\u{e003}").await.unwrap();
    page.type_into("field-concurrency_limit-adaptive-probe_samples", "10").await;
    page.type_into("field-concurrency_limit-adaptive-initial", "5").await;
    page.wait_text("error-concurrency_limit-max_in_flight", "no error", str::is_empty).await;
    let yaml = page.yaml().await;
    assert!(
        yaml.contains("adaptive:") && yaml.contains("max: 40") && !yaml.contains("max_in_flight"),
        "{yaml}"
    );
    // 30 clients against an upstream that serves 10 at once in 40 ms: the limit finds the knee.
    page.simulate(
        "name: a limit finds the knee\nduration: 10s\ntraffic:\n  - concurrency: 30\n    think: 5ms\nupstream:\n  latency: 40ms\n  capacity: 10\n",
    )
    .await;
    let chart = page.wait_text("chart-adaptive", "the limit's chart", |t| t.contains("policy-1")).await;
    let top = chart_top(&chart);
    // The knee is 10; 25% tolerance and √ headroom over it, well below the max of 40.
    assert!((10..=18).contains(&top), "{chart}");
    page.shot("7-simulate-adaptive").await;
}

/// Issue 23: the Live page is a dashboard. With Prometheus and Alertmanager (real ones, on
/// loopback) behind the admin server: the firing breaker alert at the top, per policy the
/// decisions per second and the breaker's state band from Prometheus' query API, and the breaker
/// transition from Envoy's log. Screenshot: tests/output/admin/8-live-dashboard.png.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_charts_prometheus_and_shows_firing_alerts() {
    use breakwater_cli::alerts::{self, Thresholds};
    use breakwater_e2e::monitoring;
    use breakwater_policy::model::Duration as Span;

    const POLICY: &str = "version: 1
policies:
  - name: reco
    match: { path_prefix: /reco }
    circuit_breaker: { window: 10, minimum_calls: 5, failure_rate: 50, open_for: 5m }
    concurrency_limit: { max_in_flight: 20 }
  - name: api
    match: { path_prefix: /api }
    rate_limit: { rate: 5, per: 1s, burst: 5 }
";
    let upstream = Upstream::start();
    let envoy = Envoy::start(POLICY, upstream.port());
    let doc = breakwater_policy::load(POLICY).unwrap().document;
    let t = Thresholds {
        window: Span::from_millis(10_000),
        hold_for: Span::from_millis(1_000),
        ..Thresholds::default()
    };
    let am = monitoring::alertmanager();
    let prometheus = monitoring::prometheus(
        envoy.admin,
        &breakwater_policy::yaml::to_yaml(&alerts::rules(&doc, &t, "breakwater")),
        Some(am.port),
    );
    let mut config = envoy.admin_config(TOKEN, filter_wasm(), Some(repo().join("admin-ui/dist")));
    config.prometheus = Some(format!("127.0.0.1:{}", prometheus.port));
    config.alertmanager = Some(format!("127.0.0.1:{}", am.port));
    // The active document is the one Envoy runs (the store starts from it).
    std::fs::create_dir_all(config.policy.parent().unwrap()).unwrap();
    std::fs::write(&config.policy, POLICY).unwrap();
    let router = serve::app(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let _ = serve::serve_on(listener, router).await;
    });

    // Traffic: the breaker opens, and api sees a few 429s among its requests.
    let mut c = envoy.client();
    for _ in 0..5 {
        c.get("/reco", &[("x-test-status", "503")]);
    }
    // And goes on all along, so that every refresh has rates: api at 10 a second against its 5.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, mut c) = (stop.clone(), envoy.client());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                c.get("/api", &[]);
                c.get("/reco", &[]);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !monitoring::alertmanager_alerts(&am)
        .iter()
        .any(|a| a["labels"]["alertname"] == alerts::BREAKER_OPEN)
    {
        assert!(Instant::now() < deadline, "the breaker alert never reached Alertmanager");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let driver = Driver::start(envoy.dir.join("chromium-profile-live"));
    let page = Page { c: driver.client().await, shots: screenshots() };
    page.c.goto(&format!("http://127.0.0.1:{admin_port}/#token={TOKEN}")).await.unwrap();
    page.click("tab-live").await;
    let firing =
        page.wait_text("live-alerts", "the firing alert", |t| t.contains(alerts::BREAKER_OPEN)).await;
    assert!(firing.contains("reco: circuit breaker open"), "{firing}");
    let dashboard =
        page.wait_text("live-dashboard", "Prometheus' series", |t| t.contains("from Prometheus")).await;
    assert!(!dashboard.contains("Prometheus answered"), "{dashboard}");
    // The breaker's band has open cells; api's decisions chart has bars of allowed and 429s (the
    // page refreshes every 5 s; Prometheus needs two scrapes for a rate).
    for (css, what) in [
        ("[data-testid='live-reco-breaker'] rect[fill='#c62828']", "an open cell in reco's band"),
        ("[data-testid='live-api-decisions'] rect", "bars in api's decisions chart"),
    ] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while page.c.find_all(Locator::Css(css)).await.unwrap().is_empty() {
            if Instant::now() > deadline {
                let html = page
                    .c
                    .find(Locator::Css("[data-testid='live-dashboard']"))
                    .await
                    .unwrap()
                    .html(true)
                    .await
                    .unwrap();
                panic!("no {what}: {}", &html[..html.len().min(4000)]);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let legend = page.text("live-api-decisions").await;
    assert!(legend.contains("allowed") && legend.contains("rate_limited"), "{legend}");
    let limit =
        page.c.find_all(Locator::Css("[data-testid='live-reco-in-flight'] polyline.limit")).await.unwrap();
    assert_eq!(limit.len(), 1, "reco's fixed limit is drawn over its in-flight bars");
    let transitions = page
        .wait_text("live-transitions", "the transition from Envoy's log", |t| {
            t.contains("reco closed → open")
        })
        .await;
    assert!(transitions.contains("calls=5 failed=5"), "{transitions}");
    page.doc_shot("8-live-dashboard", "admin-live").await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = traffic.join();
    let _ = page.c.clone().close().await;
    server.abort();
}

/// Issue 24: the YAML view is a code editor. An error is underlined at the validator's line and
/// column, with its message on hover and a marker in the gutter; completion offers the fields of
/// the block under the cursor, and hovering a key shows its documentation, both from the JSON
/// Schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_yaml_editor_marks_errors_and_completes_from_the_schema() {
    let s = Session::start("chromium-profile-editor").await;
    code_editor(&s.page, s.admin_port).await;
    s.stop().await;
}

async fn code_editor(page: &Page, admin_port: u16) {
    use fantoccini::actions::{InputSource, MouseActions, PointerAction};
    page.open(admin_port).await;
    page.click("view-yaml").await;

    // An invalid duration: where the validator says it is, the editor underlines it.
    let doc = "version: 1\npolicies:\n  - name: api\n    rate_limit:\n      rate: 10\n      per: 3parsecs\n";
    let diagnostics = breakwater_policy::load(doc).unwrap_err();
    let wrong = diagnostics.iter().find(|d| d.span.is_some()).expect("a diagnostic with a position");
    let span = wrong.span.unwrap();
    let token: String = doc.lines().nth(span.line - 1).unwrap().chars().skip(span.col - 1).collect();
    page.paste_code("yaml", doc).await;
    let mark = page
        .c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("[data-testid='yaml'] .cm-lintRange-error"))
        .await
        .expect("an underlined error");
    let at = page
        .c
        .execute(
            "const m = arguments[0]; const line = m.closest('.cm-line');
             const lines = [...document.querySelectorAll(\"[data-testid='yaml'] .cm-line\")];
             const r = document.createRange(); r.setStart(line, 0); r.setEndBefore(m);
             return [lines.indexOf(line) + 1, r.toString().length + 1, m.textContent];",
            vec![serde_json::to_value(&mark).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(at, json!([span.line, span.col, token.trim()]), "{wrong:?}");
    assert_eq!(
        page.c.find_all(Locator::Css("[data-testid='yaml'] .cm-lint-marker-error")).await.unwrap().len(),
        1,
        "one marker in the gutter"
    );
    let listed = page.text("diagnostics").await;
    assert!(listed.contains("1 problem marked in the text") && !listed.contains(&wrong.message), "{listed}");
    // The message on hover.
    let hover = |element| {
        MouseActions::new("mouse".into()).then(PointerAction::MoveToElement {
            element,
            duration: Some(Duration::from_millis(100)),
            x: 0.0,
            y: 0.0,
        })
    };
    page.c.perform_actions(hover(mark)).await.unwrap();
    let tip = page
        .c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(".cm-tooltip-lint"))
        .await
        .expect("the message on hover");
    assert!(tip.text().await.unwrap().contains(&wrong.message), "{}", tip.text().await.unwrap());
    page.doc_shot("9-yaml-editor-error", "admin-yaml").await;
    // The policy's chips say it has an error to fix.
    page.wait_text("chips-api", "the error chip", |t| t.starts_with("1 error to fix")).await;

    // Completion under `rate_limit:` offers the rate limit's fields, less those already there.
    let valid = "version: 1\npolicies:\n  - name: api\n    rate_limit:\n      rate: 10\n      \n";
    page.paste_code("yaml", valid).await;
    // Chips come from the model, defaults applied: no `burst null`.
    let model = breakwater_policy::load(valid).unwrap().document;
    let chips: Vec<String> =
        breakwater_policy::describe::chips(&model.policies[0]).into_iter().map(|c| c.text).collect();
    page.wait_text("chips-api", "the chips of the valid policy", |t| t.replace('\n', " ") == chips.join(" "))
        .await;
    page.c
        .execute(
            "document.querySelector(arguments[0]).breakwaterEditor.setCursor(6, 7)",
            vec![json!(css("yaml"))],
        )
        .await
        .unwrap();
    page.c.active_element().await.unwrap().send_keys("\u{E009} \u{E000}").await.unwrap();
    page.c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(".cm-tooltip-autocomplete"))
        .await
        .expect("the completion list");
    let mut offered = Vec::new();
    for label in page.c.find_all(Locator::Css(".cm-tooltip-autocomplete .cm-completionLabel")).await.unwrap()
    {
        offered.push(label.text().await.unwrap());
    }
    offered.sort();
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("policies/schema.json")).unwrap()).unwrap();
    let mut expected: Vec<String> = schema["$defs"]["RateLimit"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "rate")
        .cloned()
        .collect();
    expected.sort();
    assert!(expected.len() >= 2, "{expected:?}");
    assert_eq!(offered, expected);
    page.doc_shot("10-yaml-editor-completion", "admin-completion").await;
    // Taking the first one writes the key.
    page.c.active_element().await.unwrap().send_keys("\u{E007}").await.unwrap();
    let text = page.code("yaml").await;
    let taken = text.lines().nth(5).unwrap().trim().to_string();
    assert!(expected.iter().any(|k| taken == format!("{k}:")), "{taken:?}");

    // Hovering a key shows its documentation from the schema.
    let at = page
        .c
        .execute(
            "const line = document.querySelectorAll(\"[data-testid='yaml'] .cm-line\")[4];
             const walker = document.createTreeWalker(line, NodeFilter.SHOW_TEXT);
             let node; while ((node = walker.nextNode()) && !node.textContent.includes('rate')) {}
             const r = document.createRange(); const i = node.textContent.indexOf('rate');
             r.setStart(node, i); r.setEnd(node, i + 4); const b = r.getBoundingClientRect();
             return [b.left + b.width / 2, b.top + b.height / 2];",
            vec![],
        )
        .await
        .unwrap();
    let (x, y) = (at[0].as_f64().unwrap(), at[1].as_f64().unwrap());
    let to_key = MouseActions::new("mouse".into()).then(PointerAction::MoveTo {
        duration: Some(Duration::from_millis(100)),
        x,
        y,
    });
    page.c.perform_actions(to_key).await.unwrap();
    let doc = page.wait_text("editor-hover", "the key's documentation", |t| !t.is_empty()).await;
    let description = schema["$defs"]["RateLimit"]["properties"]["rate"]["description"].as_str().unwrap();
    assert!(doc.starts_with("policies[].rate_limit.rate") && doc.contains(description), "{doc}");
}

/// Issue 24: one version story in the header, on Publish and in History (saved, published from
/// here, what Envoy runs), right also when something else published: Envoy starts on a document
/// in no saved version, then runs a saved version published from the command line, then one the
/// admin published; a version Envoy rejects shows with Envoy's reason. The diff reads at a glance:
/// the changed rate as old → new, unified and side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_story_and_diffs_follow_cli_and_admin_publishes() {
    let s = Session::start("chromium-profile-story").await;
    version_story(&s.page, &s.envoy, s.admin_port).await;
    s.stop().await;
}

async fn version_story(page: &Page, envoy: &Envoy, admin_port: u16) {
    page.open(admin_port).await;
    // Envoy runs what the test published before the admin started (START): in no saved version.
    page.wait_text("story-envoy", "what Envoy runs", |t| {
        t.starts_with("Envoy runs a document in no saved version (ECDS 1)")
    })
    .await;
    assert_eq!(page.text("story-saved").await, "saved v1");
    assert_eq!(page.text("story-published").await, "not published from here");
    page.click("tab-publish").await;
    assert_eq!(page.text("card-envoy").await, "a document in no saved version");
    let detail = page.text("card-envoy-detail").await;
    assert!(detail.contains("ECDS 1") && detail.contains("published by something else"), "{detail}");
    page.wait_text("diff-title", "the diff from what Envoy runs", |t| t == "What Envoy runs → version 1")
        .await;
    page.wait_text("diff-summary", "the removed policy", |t| t.contains("open removed")).await;

    // Saved here, published from the command line (the code of `breakwater publish`).
    let v2 = "version: 1\npolicies:\n  - name: checkout\n    rate_limit: { rate: 100 }\n";
    page.click("tab-policies").await;
    page.click("view-yaml").await;
    page.paste_code("yaml", v2).await;
    page.click("save").await;
    page.wait_text("notice", "the save", |t| t.starts_with("Saved as version 2")).await;
    assert_eq!(envoy.publish(v2).unwrap(), 2);
    page.wait_text("story-envoy", "the CLI publish", |t| t == "Envoy runs v2 (published by something else)")
        .await;

    // A new rate, saved: the diff says rate 100 → 50 for checkout, from what Envoy runs.
    let v3 = v2.replace("rate: 100", "rate: 50");
    page.paste_code("yaml", &v3).await;
    page.click("save").await;
    page.wait_text("notice", "the save", |t| t.starts_with("Saved as version 3")).await;
    page.click("tab-publish").await;
    page.wait_text("diff-title", "the diff from version 2", |t| {
        t == "What Envoy runs (version 2) → version 3"
    })
    .await;
    let summary = page.text("diff-summary").await;
    assert!(summary.starts_with("checkout: ") && summary.contains("rate_limit.rate 100 → 50"), "{summary}");
    let old =
        page.c.find(Locator::Css("[data-testid='diff-summary'] del")).await.unwrap().text().await.unwrap();
    let new =
        page.c.find(Locator::Css("[data-testid='diff-summary'] ins")).await.unwrap().text().await.unwrap();
    assert_eq!((old.as_str(), new.as_str()), ("100", "50"));
    let removed = page.c.find_all(Locator::Css("[data-testid='diff'] tr.del")).await.unwrap();
    let added = page.c.find_all(Locator::Css("[data-testid='diff'] tr.add")).await.unwrap();
    assert_eq!((removed.len(), added.len()), (1, 1));
    assert!(
        removed[0].text().await.unwrap().contains("rate: 100")
            && added[0].text().await.unwrap().contains("rate: 50")
    );
    page.click("diff-split").await;
    let pairs =
        page.c.find_all(Locator::Css("[data-testid='diff'] table.side-by-side td.del")).await.unwrap();
    assert_eq!(pairs.len(), 1);
    let row =
        page.c.find(Locator::Css("[data-testid='diff'] table.side-by-side tr:has(td.del)")).await.unwrap();
    let row = row.text().await.unwrap();
    assert!(row.contains("rate: 100") && row.contains("rate: 50"), "side by side: {row}");
    page.doc_shot("11-publish-story-diff", "admin-publish").await;

    // Published from here: all three agree.
    page.click("publish").await;
    page.click("confirm-publish").await;
    let outcome = page.el("publish-result").await;
    assert_eq!(outcome.attr("data-state").await.unwrap().as_deref(), Some("applied"));
    page.wait_text("story-envoy", "the admin publish", |t| t == "Envoy runs v3").await;
    assert_eq!(page.text("story-published").await, "published v3");
    assert_eq!(page.el("envoy-state").await.attr("class").await.unwrap().as_deref(), Some("story ok"));
    page.click("tab-history").await;
    page.wait_text("version-3", "the tags", |t| {
        t.contains("saved (active)") && t.contains("published from here") && t.contains("Envoy runs it")
    })
    .await;
    page.doc_shot("12-history-story", "admin-history").await;

    // Something publishes a configuration Envoy rejects: the story says so, with Envoy's reason.
    assert_eq!(envoy.publish_raw("{not a policy").unwrap(), 4);
    let story = page.wait_text("story-envoy", "the rejection", |t| t.contains("rejected ECDS 4")).await;
    assert!(story.starts_with("Envoy runs v3") && !story.ends_with("see Envoy's log"), "{story}");
}

/// axe-core's violations of serious or critical impact on the page as it stands.
async fn axe(page: &Page, what: &str) -> Vec<String> {
    let source = std::fs::read_to_string(repo().join("admin-ui/editor/node_modules/axe-core/axe.min.js"))
        .expect("axe-core is installed by scripts/bootstrap (admin-ui/editor, npm ci)");
    page.c.execute(&source, vec![]).await.unwrap();
    let found = page
        .c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] })
               .then(r => done(r.violations
                 .filter(v => v.impact === 'serious' || v.impact === 'critical')
                 .map(v => v.impact + ' ' + v.id + ': ' + v.help + ' at ' + v.nodes.map(n => n.target.join(' ')).join(', '))))
               .catch(e => done(['axe failed: ' + e]));",
            vec![],
        )
        .await
        .unwrap();
    let list: Vec<String> = serde_json::from_value(found).unwrap();
    list.into_iter().map(|v| format!("{what}: {v}")).collect()
}

/// Presses a key (a WebDriver key code such as Tab `\u{E004}` or Enter `\u{E007}`) where the
/// focus is.
async fn press(page: &Page, key: char) {
    use fantoccini::actions::{InputSource, KeyAction, KeyActions};
    let keys = KeyActions::new("keyboard".into())
        .then(KeyAction::Down { value: key })
        .then(KeyAction::Up { value: key });
    page.c.perform_actions(keys).await.unwrap();
}

/// The focused element's test id and whether its focus is visible (an outline or a box shadow).
async fn focused(page: &Page) -> (String, bool) {
    let v = page
        .c
        .execute(
            "const e = document.activeElement; const s = getComputedStyle(e);
             return [e.getAttribute('data-testid') || e.tagName, (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0) || s.boxShadow !== 'none'];",
            vec![],
        )
        .await
        .unwrap();
    (v[0].as_str().unwrap_or_default().to_string(), v[1].as_bool().unwrap_or(false))
}

/// Tabs until the element with `testid` has the focus (at most `limit` presses); every element
/// passed on the way shows its focus.
async fn tab_to(page: &Page, testid: &str, limit: usize) {
    let mut passed = Vec::new();
    for _ in 0..limit {
        press(page, '\u{E004}').await;
        let (at, visible) = focused(page).await;
        assert!(visible, "{at} has the focus but does not show it");
        if at == testid {
            return;
        }
        passed.push(at);
    }
    panic!("{testid} not reached with Tab; passed {passed:?}");
}

/// Issue 24: every page passes axe-core with no serious or critical violation, and a publish is
/// done from the keyboard alone, each focused control showing its focus. Screenshots of every
/// page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_passes_axe_and_publish_works_from_the_keyboard() {
    let s = Session::start("chromium-profile-a11y").await;
    accessibility(&s.page, &s.envoy, s.admin_port).await;
    s.stop().await;
}

async fn accessibility(page: &Page, envoy: &Envoy, admin_port: u16) {
    let mut violations = Vec::new();
    page.c.goto(&format!("http://127.0.0.1:{admin_port}/")).await.unwrap();
    page.el("token").await;
    violations.extend(axe(page, "login").await);
    // A new document (from `/` to `/#token=…` would only move to a fragment).
    page.c.goto("about:blank").await.unwrap();
    page.open(admin_port).await;
    page.click("add-policy").await;
    page.click("block-rate_limit").await;
    page.type_into("field-rate_limit-rate", "1").await;
    page.type_into("field-rate_limit-per", "1h").await;
    page.type_into("field-rate_limit-burst", "1").await;
    page.wait_text("doc-state", "a valid document", |t| t == "unsaved changes").await;
    violations.extend(axe(page, "policies (form)").await);
    page.shot("a11y-1-policies").await;
    page.click("view-yaml").await;
    page.el("yaml").await;
    violations.extend(axe(page, "policies (YAML)").await);
    page.click("view-form").await;
    page.click("save").await;
    page.wait_text("notice", "the save", |t| t.starts_with("Saved as version 2")).await;
    page.click("tab-simulate").await;
    page.click("run-simulation").await;
    page.el("simulation-result").await;
    violations.extend(axe(page, "simulate").await);
    page.click("tab-publish").await;
    page.el("diff-summary").await;
    violations.extend(axe(page, "publish").await);
    page.click("tab-history").await;
    page.click("diff-1").await;
    page.el("history-diff").await;
    violations.extend(axe(page, "history").await);
    page.click("tab-live").await;
    page.el("live-dashboard").await;
    violations.extend(axe(page, "live").await);
    page.shot("a11y-2-live").await;
    assert!(violations.is_empty(), "axe-core found:\n{}", violations.join("\n"));

    // Publish with the keyboard alone: from the top of the page to the Publish tab, its button,
    // the confirmation (which takes the focus), Enter.
    page.c.goto("about:blank").await.unwrap();
    page.c.goto(&format!("http://127.0.0.1:{admin_port}/")).await.unwrap();
    page.el("add-policy").await;
    tab_to(page, "tab-publish", 10).await;
    press(page, '\u{E007}').await;
    page.el("diff-summary").await;
    tab_to(page, "publish", 20).await;
    page.shot("a11y-3-keyboard-focus").await;
    press(page, '\u{E007}').await;
    page.el("confirm-box").await;
    let (at, visible) = focused(page).await;
    assert_eq!((at.as_str(), visible), ("confirm-publish", true), "the confirmation takes the focus");
    press(page, '\u{E007}').await;
    let outcome = page.el("publish-result").await;
    assert_eq!(
        outcome.attr("data-state").await.unwrap().as_deref(),
        Some("applied"),
        "{}",
        outcome.text().await.unwrap()
    );
    // Envoy enforces it: 1 request an hour.
    let statuses: Vec<u16> = tokio::task::spawn_blocking({
        let mut client = envoy.client();
        move || (0..2).map(|_| client.get("/", &[]).status).collect()
    })
    .await
    .unwrap();
    assert_eq!(statuses, [200, 429]);
}
