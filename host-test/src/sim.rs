//! Scenarios through the compiled filter: an event-driven simulation on the virtual clock.
//!
//! One simulated Envoy ([`World`]) with `workers` VMs. Traffic generators put arrivals on an
//! event queue; each arrival goes to the worker owning its connection, runs the filter's request
//! path at its virtual time, then (when forwarded) the router emulation with the scenario's
//! upstream, whose answer completes the stream at `arrival + duration` (response path, `on_log`).
//! Clients that give up abort the stream. Streams overlap, so concurrency limits and breakers
//! see what they would see in Envoy. Ticks run at the period the filter asked for. The same seed
//! gives the same run.
//!
//! Which policy decided what is read from the filter's own counters as each stream increments
//! them (the host records increments per stream), the way one would read Envoy's stats.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use breakwater_policy::diag::{self, Diagnostic};
use breakwater_policy::metrics::{Counter, Gauge, MetricName, gauge_name};
use breakwater_policy::model::Document;
use breakwater_scenario as scenario;
use breakwater_scenario::{
    Arrivals, BreakerState, Effective, Latency, Load, MAX_REQUESTS, Pick, PolicyRef, Record, RequestDecision,
    Run, Scenario, ServiceState, Values,
};

use crate::exchange::{Begun, ClientResponse, Request, UpstreamAnswer};
use crate::host::Host;
use crate::ratelimit;
use crate::router::{self, Attempt};
use crate::state::World;
use crate::vm::Vm;

/// The virtual wall clock at the start of every scenario (2023-11-14T22:13:20Z).
pub const START_NS: u64 = 1_700_000_000_000_000_000;

/// A scenario file with the policy document it names.
#[derive(Debug, Clone)]
pub struct LoadedScenario {
    pub scenario: Scenario,
    pub document: Document,
    /// Where the document came from: a file name, or `inline`.
    pub policy_source: String,
}

/// A scenario or its policy could not be read: the diagnostics of one file.
#[derive(Debug, Clone)]
pub struct LoadError {
    pub file: String,
    pub source: Option<String>,
    pub diagnostics: Vec<Diagnostic>,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&diag::render_all(&self.diagnostics, &self.file, self.source.as_deref()))
    }
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|e| LoadError {
        file: path.display().to_string(),
        source: None,
        diagnostics: vec![Diagnostic::error("", format!("cannot read {}: {e}", path.display()))],
    })
}

/// Reads a scenario file and its policy document (a file named relative to the scenario's folder,
/// or inline), and checks that the scenario's expectations fit the document.
pub fn load_file(path: &Path) -> Result<LoadedScenario, LoadError> {
    let text = read(path)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    load_text(&text, &path.display().to_string(), &base)
}

/// As [`load_file`], from text; `file` names it in messages, `base` is where policy files are.
pub fn load_text(text: &str, file: &str, base: &Path) -> Result<LoadedScenario, LoadError> {
    let fail =
        |diagnostics| LoadError { file: file.to_string(), source: Some(text.to_string()), diagnostics };
    let scenario = scenario::load(text).map_err(fail)?;
    let (document, policy_source) = match &scenario.policy {
        PolicyRef::Inline(doc) => (doc.clone(), "inline".to_string()),
        PolicyRef::File(name) => {
            let policy_path: PathBuf = base.join(name);
            let policy_text = read(&policy_path)?;
            let shown = policy_path.display().to_string();
            let loaded = breakwater_policy::load(&policy_text).map_err(|diagnostics| LoadError {
                file: shown.clone(),
                source: Some(policy_text.clone()),
                diagnostics,
            })?;
            (loaded.document, shown)
        }
    };
    let problems = scenario::check_against(&scenario, &document);
    if !problems.is_empty() {
        return Err(fail(problems));
    }
    Ok(LoadedScenario { scenario, document, policy_source })
}

/// Appends `n` in decimal (the formatting machinery costs more, once per request).
fn push_decimal(out: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[i..].iter().map(|&d| d as char));
}

/// splitmix64: the scenario's own random numbers (upstream behaviour, arrivals, header values).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with this mean.
    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// A prepared value source.
#[derive(Debug)]
enum Source {
    Fixed(Vec<u8>),
    Uniform(Vec<Vec<u8>>),
    Cycle(Vec<Vec<u8>>, usize),
    /// Values with their cumulative probabilities.
    Zipf(Vec<Vec<u8>>, Vec<f64>),
}

impl Source {
    fn new(v: &Values) -> Source {
        let numbered = |n: u32, prefix: &str| -> Vec<Vec<u8>> {
            (1..=n).map(|i| format!("{prefix}{i}").into_bytes()).collect()
        };
        match v {
            Values::Fixed(s) => Source::Fixed(s.clone().into_bytes()),
            Values::OneOf(list) => Source::Uniform(list.iter().map(|s| s.clone().into_bytes()).collect()),
            Values::Numbered { n, prefix, pick: Pick::Uniform } => Source::Uniform(numbered(*n, prefix)),
            Values::Numbered { n, prefix, pick: Pick::Cycle } => Source::Cycle(numbered(*n, prefix), 0),
            Values::Numbered { n, prefix, pick: Pick::Zipf(s) } => {
                let weights: Vec<f64> = (1..=*n).map(|k| 1.0 / f64::from(k).powf(*s)).collect();
                let total: f64 = weights.iter().sum();
                let mut acc = 0.0;
                let cdf = weights.iter().map(|w| {
                    acc += w / total;
                    acc
                });
                Source::Zipf(numbered(*n, prefix), cdf.collect())
            }
        }
    }

    fn draw(&mut self, rng: &mut Rng) -> Vec<u8> {
        let pick = |values: &[Vec<u8>], i: usize| values.get(i).cloned().unwrap_or_default();
        match self {
            Source::Fixed(v) => v.clone(),
            Source::Uniform(values) => {
                let i = (rng.unit() * values.len() as f64) as usize;
                pick(values, i)
            }
            Source::Cycle(values, next) => {
                let i = *next % values.len().max(1);
                *next = i + 1;
                pick(values, i)
            }
            Source::Zipf(values, cdf) => {
                let u = rng.unit();
                let i = cdf.partition_point(|c| *c < u);
                pick(values, i.min(values.len().saturating_sub(1)))
            }
        }
    }
}

/// A traffic generator, prepared.
struct Generator<'s> {
    traffic: &'s scenario::Traffic,
    upstream: &'s scenario::SimulatedUpstream,
    headers: Vec<(String, Source)>,
    client_ip: Source,
    start_ns: u64,
    end_ns: u64,
    connections: u64,
    sent: u64,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A request from a generator (`client`: the closed-loop client sending it).
    Arrive {
        generator: u32,
        client: u32,
    },
    Complete {
        vm: u32,
        stream: u32,
        record: u32,
    },
    Abort {
        vm: u32,
        stream: u32,
        record: u32,
    },
    Tick {
        vm: u32,
    },
    Sample,
    /// A gRPC call's answer (or its timeout) is due: delivered after the event, as all are.
    Deliver,
}

#[derive(Debug, Clone, Copy)]
struct Event {
    t: u64,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.t, self.seq) == (other.t, other.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.t, self.seq).cmp(&(other.t, other.seq))
    }
}

struct Sim<'s> {
    scenario: &'s Scenario,
    world: Rc<World>,
    vms: Vec<Vm>,
    generators: Vec<Generator<'s>>,
    queue: BinaryHeap<Reverse<Event>>,
    seq: u64,
    rng: Rng,
    run: Run,
    /// Upstream outcomes waiting for their completion event, by record.
    pending: HashMap<u32, UpstreamAnswer, breakwater_policy::fnv::BuildFnv>,
    /// Streams the filter paused (waiting for the rate-limit service), by (VM, stream): the
    /// record, and the generator's upstream and timeout, for when it is resumed.
    paused: HashMap<(u32, u32), Waiting<'s>, breakwater_policy::fnv::BuildFnv>,
    counters: CounterIds,
    /// By policy: the breaker-state gauge's metric id.
    breaker_gauges: Vec<Option<usize>>,
    /// When the attempts now in the upstream end, with how many end then (for `capacity`).
    upstream_ends: std::collections::BTreeMap<u64, u32>,
    /// The policies' other gauges: (policy, gauge, metric id).
    gauges: Vec<GaugeId>,
    samples: std::vec::IntoIter<u64>,
    /// By record: the closed-loop client that sent it.
    clients: Vec<u32>,
    budget: &'s Budget,
}

/// What one run may take, beyond the scenario language's own limits: a server running
/// simulations for others (the admin) stops a run that asks too much, or that nobody waits for.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Set by another thread to stop the run (the caller went away).
    pub cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Wall-clock time the run may take.
    pub wall: Option<std::time::Duration>,
    /// Most requests (each keeps a record until the run ends).
    pub max_requests: u64,
}

impl Default for Budget {
    /// No limit beyond the language's (`MAX_REQUESTS`), as `breakwater test` runs.
    fn default() -> Self {
        Budget { cancel: Default::default(), wall: None, max_requests: MAX_REQUESTS }
    }
}

/// Runs a scenario through the compiled filter. `Err` is a problem of the host or the filter
/// (a rejected configuration, too many requests), not a failed expectation.
pub fn run(host: &Host, scenario: &Scenario, document: &Document) -> Result<Run, String> {
    run_within(host, scenario, document, &Budget::default())
}

/// [`run`] within a [`Budget`]: `Err` once the budget is spent or the run is cancelled.
pub fn run_within(
    host: &Host,
    scenario: &Scenario,
    document: &Document,
    budget: &Budget,
) -> Result<Run, String> {
    let world = World::new(START_NS, scenario.seed);
    add_ratelimit_service(&world, scenario, document);
    let config = breakwater_policy::compile(document).into_bytes();
    // As Envoy: the main thread's VM starts and configures first (it serves no requests), then
    // one VM per worker.
    let workers = scenario.workers as usize;
    let mut vms = Vec::new();
    for i in std::iter::once(workers).chain(0..workers) {
        let mut vm = host.vm(world.clone(), i).map_err(|e| format!("cannot start the filter: {e:#}"))?;
        vm.set_keep_forwarded(false);
        let ok = vm.configure(&config).map_err(|e| format!("the filter trapped on configure: {e:#}"))?;
        if !ok {
            let logs = world.logs.borrow();
            let why: Vec<&str> = logs.iter().filter(|l| l.level >= 3).map(|l| l.message.as_str()).collect();
            return Err(format!("the filter rejected the policy: {}", why.join("; ")));
        }
        if i < workers {
            vms.push(vm);
        }
    }
    let policies: Vec<String> = document.policies.iter().map(|p| p.name.clone()).collect();
    let (counters, breaker_gauges, gauges) = metric_ids(&world, &policies);
    let generators = scenario
        .traffic
        .iter()
        .map(|t| {
            let start_ns = t.start.as_nanos();
            let end_ns = t
                .duration
                .map_or(scenario.duration.as_nanos(), |d| start_ns + d.as_nanos())
                .min(scenario.duration.as_nanos());
            Generator {
                traffic: t,
                upstream: t.upstream.as_ref().unwrap_or(&scenario.upstream),
                headers: t.headers.iter().map(|(k, v)| (k.clone(), Source::new(v))).collect(),
                client_ip: Source::new(&t.client_ip),
                start_ns,
                end_ns,
                connections: u64::from(t.connections.unwrap_or(scenario.workers)),
                sent: 0,
            }
        })
        .collect();
    let run = Run {
        policies,
        traffic: scenario.traffic.iter().map(|t| t.name.clone()).collect(),
        duration_ns: scenario.duration.as_nanos(),
        workers: scenario.workers,
        seed: scenario.seed,
        ..Run::default()
    };
    let mut sim = Sim {
        scenario,
        world,
        vms,
        generators,
        queue: BinaryHeap::new(),
        seq: 0,
        rng: Rng(scenario.seed ^ 0x5bd1_e995),
        run,
        pending: HashMap::default(),
        paused: HashMap::default(),
        counters,
        breaker_gauges,
        upstream_ends: Default::default(),
        gauges,
        samples: scenario::sample_times(scenario).into_iter(),
        clients: Vec::new(),
        budget,
    };
    sim.start();
    sim.go()?;
    let metrics = sim.world.metrics.borrow().iter().map(|m| (m.name.clone(), m.value)).collect();
    sim.run.metrics = metrics;
    Ok(sim.run)
}

/// A paused request: its record, and what its generator says about the upstream and timeout.
#[derive(Debug, Clone, Copy)]
struct Waiting<'s> {
    record: u32,
    upstream: &'s scenario::SimulatedUpstream,
    timeout: Option<u64>,
    /// When the request arrived (its client's timeout counts from then).
    arrived: u64,
}

/// A policy's gauge and its metric id: (policy, gauge, metric id).
type GaugeId = (u32, Gauge, usize);

/// By metric id: the (policy, counter) a counter counts.
type CounterIds = Vec<Option<(u32, Counter)>>;

/// Maps the filter's metric ids to what they count: counters, each policy's breaker gauge, and
/// the policies' other gauges.
fn metric_ids(world: &World, policies: &[String]) -> (CounterIds, Vec<Option<usize>>, Vec<GaugeId>) {
    let metrics = world.metrics.borrow();
    let counters = metrics
        .iter()
        .map(|m| {
            let MetricName::Counter { policy, counter } = MetricName::parse(&m.name)? else { return None };
            let p = policies.iter().position(|n| n == policy)?;
            Some((p as u32, counter))
        })
        .collect();
    let gauges = policies
        .iter()
        .map(|p| {
            let name = gauge_name(p, Gauge::BreakerState);
            metrics.iter().position(|m| m.name == name)
        })
        .collect();
    let others = metrics
        .iter()
        .enumerate()
        .filter_map(|(i, m)| match MetricName::parse(&m.name)? {
            MetricName::Gauge { policy, gauge } if gauge != Gauge::BreakerState => {
                Some((policies.iter().position(|n| n == policy)? as u32, gauge, i))
            }
            _ => None,
        })
        .collect();
    (counters, gauges, others)
}

/// The simulated rate-limit service on every cluster the document's global limits call, behaving
/// as the scenario's `ratelimit_service` says at each moment.
fn add_ratelimit_service(world: &Rc<World>, scenario: &Scenario, document: &Document) {
    let services: Vec<&str> = document
        .policies
        .iter()
        .filter_map(|p| p.global_rate_limit.as_ref())
        .map(|g| g.service.as_str())
        .collect();
    if services.is_empty() {
        return;
    }
    let simulated = scenario.ratelimit_service.clone();
    let random = Rc::clone(world);
    let behaviour = move |t_ns: u64| match simulated.at(t_ns.saturating_sub(START_NS)) {
        ServiceState::Down => ratelimit::Behaviour::Down,
        ServiceState::Hangs => ratelimit::Behaviour::Hangs,
        ServiceState::Answers(latency) => {
            let unit = (random.next_random() >> 11) as f64 / (1u64 << 53) as f64;
            ratelimit::Behaviour::Answers(match latency {
                Latency::Fixed(d) => d.as_nanos(),
                Latency::Uniform(lo, hi) => {
                    lo.as_nanos() + (unit * hi.as_nanos().saturating_sub(lo.as_nanos()) as f64) as u64
                }
                Latency::Exponential(mean) => (-(1.0 - unit).ln() * mean.as_nanos() as f64) as u64,
            })
        }
    };
    let service = Rc::new(ratelimit::Service {
        buckets: ratelimit::Buckets::new(document).into(),
        envoys: scenario.ratelimit_service.envoys,
        behaviour: Box::new(behaviour),
    });
    for name in services {
        world.add_grpc_cluster(name, service.cluster());
    }
}

/// One attempt against the upstream as it behaves at that moment, with `busy` other attempts in
/// it (an upstream with a `capacity` serves more than that many slower).
fn attempt(e: Effective<'_>, busy: u64, rng: &mut Rng) -> Attempt {
    if e.connect_failure > 0.0 && rng.unit() < e.connect_failure {
        return Attempt::ConnectFailure;
    }
    let base = match e.latency {
        Latency::Fixed(d) => d.as_nanos(),
        Latency::Uniform(lo, hi) => {
            let (lo, hi) = (lo.as_nanos(), hi.as_nanos());
            lo + (rng.unit() * (hi - lo) as f64) as u64
        }
        Latency::Exponential(mean) => rng.exponential(mean.as_nanos() as f64) as u64,
    };
    let latency_ns = match e.capacity.map(u64::from) {
        Some(capacity) if busy + 1 > capacity => base.saturating_mul(busy + 1) / capacity,
        _ => base,
    };
    if e.reset > 0.0 && rng.unit() < e.reset {
        return Attempt::Reset { after_ns: latency_ns };
    }
    let status = match e.status {
        [(only, _)] => *only,
        mix => {
            let total: f64 = mix.iter().map(|(_, w)| w).sum();
            let mut u = rng.unit() * total;
            let mut chosen = mix.last().map_or(200, |(s, _)| *s);
            for (s, w) in mix {
                if u < *w {
                    chosen = *s;
                    break;
                }
                u -= w;
            }
            chosen
        }
    };
    Attempt::status(status, latency_ns)
}

impl<'s> Sim<'s> {
    fn push(&mut self, t: u64, kind: Kind) {
        self.seq += 1;
        self.queue.push(Reverse(Event { t, seq: self.seq, kind }));
    }

    fn start(&mut self) {
        let first: Vec<(u64, u32, u32)> = self
            .generators
            .iter()
            .enumerate()
            .flat_map(|(g, generator)| {
                let clients = match generator.traffic.load {
                    Load::Rate(_) => 1,
                    Load::Concurrency { clients, .. } => clients,
                };
                (0..clients).map(move |client| (generator.start_ns, g as u32, client))
            })
            .collect();
        for (t, generator, client) in first {
            self.push(t, Kind::Arrive { generator, client });
        }
        for vm in 0..self.vms.len() as u32 {
            self.schedule_tick(vm, 0);
        }
        if let Some(t) = self.samples.next() {
            self.push(t, Kind::Sample);
        }
    }

    fn go(&mut self) -> Result<(), String> {
        let deadline = self.budget.wall.map(|w| (std::time::Instant::now() + w, w));
        let mut events = 0u32;
        while let Some(Reverse(event)) = self.queue.pop() {
            events = events.wrapping_add(1);
            if events.is_multiple_of(4096) {
                if self.budget.cancel.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err("the simulation was cancelled".into());
                }
                if let Some((at, wall)) = deadline
                    && std::time::Instant::now() > at
                {
                    return Err(format!(
                        "the simulation was stopped after {} s of wall time, at {} of {} simulated seconds; shorten the scenario or lower its load",
                        wall.as_secs_f64(),
                        event.t / 1_000_000_000,
                        self.scenario.duration.as_nanos() / 1_000_000_000
                    ));
                }
            }
            self.world.clock_ns.set(START_NS + event.t);
            match event.kind {
                Kind::Arrive { generator, client } => self.arrive(event.t, generator, client)?,
                Kind::Complete { vm, stream, record } => {
                    let upstream = self.pending.remove(&record);
                    let response = self
                        .vm(vm)?
                        .complete(stream, upstream)
                        .map_err(|e| format!("host error completing a stream: {e:#}"))?;
                    self.finish(record, event.t, &response);
                }
                Kind::Abort { vm, stream, record } => {
                    let counted = self.vm(vm)?.abort(stream).unwrap_or_default();
                    self.count(record, event.t, 0, false, &counted);
                }
                Kind::Tick { vm } => {
                    // A trapping tick fails the VM, as in Envoy; the simulation goes on.
                    let _ = self.vm(vm)?.tick();
                    self.schedule_tick(vm, event.t);
                    // Streams the tick resumed or answered (injected delays that are over).
                    self.wake(event.t)?;
                }
                Kind::Deliver => {}
                Kind::Sample => {
                    let metrics = self.world.metrics.borrow();
                    let states = self
                        .breaker_gauges
                        .iter()
                        .map(|g| {
                            g.and_then(|i| metrics.get(i)).and_then(|m| BreakerState::from_gauge(m.value))
                        })
                        .collect();
                    let gauges = self
                        .gauges
                        .iter()
                        .filter_map(|(p, g, i)| Some((*p, *g, metrics.get(*i)?.value)))
                        .collect();
                    drop(metrics);
                    self.run.breaker_samples.push((event.t, states));
                    self.run.gauge_samples.push((event.t, gauges));
                    if let Some(t) = self.samples.next() {
                        self.push(t, Kind::Sample);
                    }
                }
            }
            // Items enqueued on shared queues reach their owners' on_queue_ready at once; HTTP
            // calls are answered at the first event after they are due (the filter makes none),
            // gRPC calls (the rate-limit service) at an event of their own when they are due.
            if !self.world.queues.borrow().ready.is_empty() || self.world.pending_calls.get() > 0 {
                for vm in &mut self.vms {
                    let _ = vm.deliver();
                }
                self.wake(event.t)?;
            }
            let due: Vec<u64> = std::mem::take(&mut *self.world.grpc_due.borrow_mut());
            for t in due {
                self.push(t.saturating_sub(START_NS).max(event.t), Kind::Deliver);
            }
        }
        Ok(())
    }

    /// The VM's next tick after `now`, at the period the filter asked for, within the scenario.
    fn schedule_tick(&mut self, vm: u32, now: u64) {
        let period = u64::from(self.vms.get(vm as usize).map_or(0, Vm::tick_period_ms)) * 1_000_000;
        // After the end, only while requests are held (waiting in a queue, delayed): they are
        // decided then, as in Envoy, not left without a decision.
        let end = self.scenario.duration.as_nanos();
        let held = !self.paused.is_empty() && now + period <= end.saturating_add(3_600_000_000_000);
        if period > 0 && (now + period <= end || held) {
            self.push(now + period, Kind::Tick { vm });
        }
    }

    fn vm(&mut self, i: u32) -> Result<&mut Vm, String> {
        self.vms.get_mut(i as usize).ok_or_else(|| format!("no VM {i}"))
    }

    fn arrive(&mut self, t: u64, g: u32, client: u32) -> Result<(), String> {
        let most = self.budget.max_requests;
        if self.run.records.len() as u64 >= most {
            return Err(format!("the scenario sent more than {most} requests; shorten it or lower its load"));
        }
        let workers = self.vms.len() as u64;
        let Some(gen_) = self.generators.get_mut(g as usize) else { return Ok(()) };
        let connection = match gen_.traffic.load {
            Load::Rate(_) => gen_.sent % gen_.connections,
            Load::Concurrency { .. } => u64::from(client),
        };
        gen_.sent += 1;
        let vm = (connection % workers) as u32;
        let mut headers = Vec::with_capacity(gen_.headers.len());
        for (name, source) in &mut gen_.headers {
            headers.push((name.clone().into(), source.draw(&mut self.rng)));
        }
        let ip = gen_.client_ip.draw(&mut self.rng);
        let mut source = String::with_capacity(ip.len() + 6);
        source.push_str(&String::from_utf8_lossy(&ip));
        source.push(':');
        push_decimal(&mut source, 40_000 + connection % 20_000);
        let request = Request {
            method: gen_.traffic.method.clone(),
            authority: gen_.traffic.host.clone(),
            path: gen_.traffic.path.clone(),
            headers,
            source,
        };
        let (upstream, timeout) = (gen_.upstream, gen_.traffic.timeout.map(|d| d.as_nanos()));
        // The next arrival of an open-loop generator.
        if let Load::Rate(rate) = gen_.traffic.load {
            let next = match gen_.traffic.arrivals {
                // Arrival k is at start + k·gap (no drift from rounding each gap).
                Arrivals::Uniform => gen_.start_ns + (gen_.sent as f64 * 1e9 / rate) as u64,
                Arrivals::Poisson => t + self.rng.exponential(1e9 / rate).max(1.0) as u64,
            };
            if next < gen_.end_ns {
                self.push(next, Kind::Arrive { generator: g, client });
            }
        }
        let record = self.run.records.len() as u32;
        self.clients.push(client);
        self.run.records.push(Record {
            traffic: g,
            start_ns: t,
            end_ns: t,
            status: 0,
            policy: None,
            decision: RequestDecision::Unmatched,
            fallback: false,
            retried: 0,
            budget_exhausted: false,
            local: false,
            tries: (0, 0),
        });
        let begun =
            self.vm(vm)?.begin_owned(request).map_err(|e| format!("host error starting a stream: {e:#}"))?;
        let waiting = Waiting { record, upstream, timeout, arrived: t };
        self.proceed(t, vm, begun, waiting)
    }

    /// Goes on with a stream where the filter left it: to the upstream, answered by the filter,
    /// failed, or paused until the filter wakes it ([`Sim::wake`]).
    fn proceed(&mut self, t: u64, vm: u32, begun: Begun, w: Waiting<'s>) -> Result<(), String> {
        let record = w.record;
        match begun {
            Begun::Forwarded { stream } => {
                let policy = router::RetryPolicy::read(self.vm(vm)?.forwarded(stream).unwrap_or(&Vec::new()));
                let world = self.world.clone();
                let rng = &mut self.rng;
                let upstream = w.upstream;
                let ends = &mut self.upstream_ends;
                // Attempts that ended before now are no longer in the upstream.
                *ends = ends.split_off(&(t + 1));
                // The simulated upstream does not look at the request.
                let up = router::route_with(
                    &policy,
                    &Vec::new(),
                    |_, start, _| {
                        let at = t + start;
                        let busy: u64 = ends.range(at + 1..).map(|(_, n)| u64::from(*n)).sum();
                        let a = attempt(upstream.at(at), busy, rng);
                        let took = match &a {
                            Attempt::Response { latency_ns, .. } => Some(*latency_ns),
                            Attempt::Reset { after_ns } => Some(*after_ns),
                            _ => None,
                        };
                        if let Some(took) = took.filter(|_| upstream.at(at).capacity.is_some()) {
                            *ends.entry(at + took).or_default() += 1;
                        }
                        a
                    },
                    || world.next_random(),
                );
                let first = self.run.tries.len() as u32;
                // The client's timeout counts from its request, the filter's wait included.
                let left = w.timeout.map(|limit| limit.saturating_sub(t - w.arrived));
                let cut = left.filter(|limit| *limit < up.duration_ns);
                for (s, e) in &up.tries {
                    let end = cut.map_or(*e, |c| (*e).min(c));
                    if *s < end || cut.is_none() {
                        self.run.tries.push((t + s, t + end));
                    }
                }
                let last = self.run.tries.len() as u32;
                if let Some(r) = self.run.records.get_mut(record as usize) {
                    r.tries = (first, last);
                }
                match cut {
                    Some(limit) => self.push(t + limit, Kind::Abort { vm, stream, record }),
                    None => {
                        self.push(t + up.duration_ns, Kind::Complete { vm, stream, record });
                        self.pending.insert(record, up);
                    }
                }
            }
            Begun::Answered { stream } => {
                let response = self
                    .vm(vm)?
                    .complete(stream, None)
                    .map_err(|e| format!("host error completing a stream: {e:#}"))?;
                self.finish(record, t, &response);
            }
            Begun::Failed(response) => self.finish(record, t, &response),
            Begun::Paused { stream } => {
                self.paused.insert((vm, stream), w);
            }
        }
        Ok(())
    }

    /// Streams the filter resumed or answered once a call's answer came: on they go.
    fn wake(&mut self, t: u64) -> Result<(), String> {
        for vm in 0..self.vms.len() as u32 {
            for begun in self.vm(vm)?.take_woken() {
                let Some(w) = begun.stream().and_then(|s| self.paused.remove(&(vm, s))) else { continue };
                self.proceed(t, vm, begun, w)?;
            }
        }
        Ok(())
    }

    fn finish(&mut self, record: u32, t: u64, response: &ClientResponse) {
        self.count(record, t, response.status, response.local, &response.counted);
    }

    /// Completes a record from the stream's end and the counters the filter incremented; a
    /// closed-loop client then sends its next request.
    fn count(&mut self, record: u32, t: u64, status: u16, local: bool, counted: &[(u32, u64)]) {
        let Some(r) = self.run.records.get_mut(record as usize) else { return };
        r.end_ns = t;
        r.status = status;
        r.local = local;
        for (id, by) in counted {
            let Some(Some((policy, counter))) = self.counters.get(*id as usize) else { continue };
            if let Some(decision) = counter.decision() {
                r.policy = Some(*policy);
                r.decision = RequestDecision::Decided(decision);
            }
            match counter {
                Counter::Fallback => r.fallback = true,
                Counter::Retried => r.retried += *by as u32,
                Counter::BudgetExhausted => r.budget_exhausted = true,
                _ => {}
            }
        }
        let g = r.traffic;
        let Some(gen_) = self.generators.get(g as usize) else { return };
        if let Load::Concurrency { think, .. } = gen_.traffic.load {
            let next = t + think.as_nanos();
            let client = self.clients.get(record as usize).copied().unwrap_or(0);
            if next < gen_.end_ns {
                self.push(next, Kind::Arrive { generator: g, client });
            }
        }
    }
}
