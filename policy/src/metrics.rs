//! Every name breakwater's metrics carry, defined here once: the filter builds its stat names with
//! these functions, host-test and the admin server parse them back with these parsers, the
//! rendered Envoy configurations label them with [`STATS_TAGS`], and the scenario language and
//! the admin speak of decisions and breaker states with these words. A new counter's name is a
//! change to this file only (what increments it is an `enforce::Event`, mapped in
//! `Event::counter`); a test checks that every name round-trips.
//!
//! ```text
//! breakwater.requests.policy.checkout.decision.rate_limited      (counter)
//!   → breakwater_requests{policy="checkout",decision="rate_limited"}
//! breakwater.breaker_state.policy.checkout   (gauge: 0 closed, 1 open, 2 half-open)
//!   → breakwater_breaker_state{policy="checkout"}
//! breakwater.in_flight.policy.checkout       (gauge: requests holding a concurrency slot)
//!   → breakwater_in_flight{policy="checkout"}
//! ```
//!
//! Envoy shows a stat a wasm filter defines as `wasmcustom.<name>` in `/stats`, and as `<name>`
//! with `.` turned into `_` in `/stats/prometheus`, where the `.policy.<name>` and
//! `.decision.<name>` segments become labels through the `stats_tags` of its configuration.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Defines an enum's words once: `ALL` (in order), `as_str`, `parse`, `Display`, and serde as
/// that same word.
macro_rules! words {
    ($(#[$meta:meta])* pub enum $ty:ident { $($(#[$vmeta:meta])* $variant:ident => $word:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $ty {
            $($(#[$vmeta])* $variant,)+
        }

        impl $ty {
            /// Every value, in order.
            pub const ALL: [$ty; <[&str]>::len(&[$($word),+])] = [$($ty::$variant),+];
            /// Every word, in the order of [`Self::ALL`].
            pub const WORDS: &'static [&'static str] = &[$($word),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $word,)+
                }
            }

            pub fn parse(text: &str) -> Option<$ty> {
                Self::ALL.into_iter().find(|v| v.as_str() == text)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
                $ty::parse(&text).ok_or_else(|| serde::de::Error::unknown_variant(&text, Self::WORDS))
            }
        }
    };
}

words! {
    /// The counters of one policy: `breakwater_requests{policy, decision}`. `retried` counts
    /// retries Envoy performed; every other counter counts requests.
    pub enum Counter {
        Allowed => "allowed",
        RateLimited => "rate_limited",
        ConcurrencyLimited => "concurrency_limited",
        CircuitOpen => "circuit_open",
        /// Rejected by the fleet-wide limit (`global_rate_limit`).
        GlobalRateLimited => "global_rate_limited",
        /// Answered by an injected abort (`fault.abort`).
        FaultAborted => "fault_aborted",
        /// A fallback reply replaced the upstream's answer.
        Fallback => "fallback",
        Retried => "retried",
        /// The request got fewer retries than `max_retries` because the budget was short.
        BudgetExhausted => "budget_exhausted",
        /// Shared state could not be used; `failure_mode` applied.
        StateUnavailable => "state_unavailable",
        /// Calls to the rate-limit service (`global_rate_limit`).
        GlobalCalls => "global_calls",
        /// Requests the global limit decided without the service (it could not answer in time,
        /// or was known to be unavailable): the block's `failure_mode` applied.
        GlobalUnavailable => "global_unavailable",
        /// Requests held by an injected delay (`fault.delay`) before they went on.
        FaultDelayed => "fault_delayed",
        /// Injected delays left out because `fault.max_active` delays were held already.
        FaultDelaySkipped => "fault_delay_skipped",
        /// Requests that waited for a concurrency slot (`concurrency_limit.queue`).
        Queued => "queued",
        /// Waiting requests that got their slot.
        QueueAdmitted => "queue_admitted",
        /// Waiting requests answered with the block's response after `max_wait`.
        QueueTimeout => "queue_timeout",
        /// Waiting requests whose client went away before their turn.
        QueueAbandoned => "queue_abandoned",
    }
}

words! {
    /// What a policy decided for a request, one per request (a request whose client left while
    /// it waited for the rate-limit service or in a queue has none); each is counted by the
    /// [`Counter`] of the same name.
    pub enum Decision {
        Allowed => "allowed",
        RateLimited => "rate_limited",
        ConcurrencyLimited => "concurrency_limited",
        CircuitOpen => "circuit_open",
        GlobalRateLimited => "global_rate_limited",
        FaultAborted => "fault_aborted",
        QueueTimeout => "queue_timeout",
    }
}

words! {
    /// Where a circuit breaker stands, as its gauge and the words of scenarios and the admin.
    pub enum BreakerState {
        Closed => "closed",
        Open => "open",
        HalfOpen => "half_open",
    }
}

words! {
    /// The gauges of one policy.
    pub enum Gauge {
        /// The policy's [`BreakerState`], as [`BreakerState::gauge`].
        BreakerState => "breaker_state",
        /// Requests holding a concurrency slot.
        InFlight => "in_flight",
        /// 1 while the rate-limit service cannot answer and `failure_mode` decides (degraded
        /// mode), 0 otherwise.
        GlobalDegraded => "global_degraded",
        /// Requests held by injected delays now (`fault.delay`), across the Envoy's workers.
        FaultActive => "fault_active",
        /// Requests waiting for a concurrency slot now (`concurrency_limit.queue`), across the
        /// Envoy's workers (a keyed limit: in the line the last change was made in).
        QueueLength => "queue_length",
        /// An adaptive concurrency limit's limit now (`min` while it measures the min RTT).
        ConcurrencyLimit => "concurrency_limit",
        /// An adaptive limit's last min RTT measurement (the unloaded upstream's latency), in
        /// milliseconds; 0 before the first.
        MinRttMs => "min_rtt_ms",
        /// An adaptive limit's latency sampled in its last interval, in milliseconds.
        SampleRttMs => "sample_rtt_ms",
        /// 1 while an adaptive limit measures the min RTT (the limit is pinned at `min`).
        MinRttCalculationActive => "min_rtt_calculation_active",
    }
}

words! {
    /// The histograms of one policy (Envoy's default buckets, which suit milliseconds).
    pub enum Histogram {
        /// How long requests waited in a concurrency limit's queue, in milliseconds (those that
        /// got their slot and those that timed out).
        QueueWaitMs => "queue_wait_ms",
        /// How long the upstream took to answer (to its response headers, retries included), in
        /// milliseconds, for every request the policy let through.
        UpstreamLatencyMs => "upstream_latency_ms",
    }
}

impl Counter {
    /// Position in [`Counter::ALL`] (for arrays of per-counter ids).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Whether only a policy with a `global_rate_limit` can count it (a policy without one does
    /// not define it).
    pub const fn global_only(self) -> bool {
        matches!(self, Counter::GlobalRateLimited | Counter::GlobalCalls | Counter::GlobalUnavailable)
    }

    /// Whether only a policy with a `fault` block can count it.
    pub const fn fault_only(self) -> bool {
        matches!(self, Counter::FaultAborted | Counter::FaultDelayed | Counter::FaultDelaySkipped)
    }

    /// Whether only a policy whose concurrency limit has a `queue` can count it.
    pub const fn queue_only(self) -> bool {
        matches!(
            self,
            Counter::Queued | Counter::QueueAdmitted | Counter::QueueTimeout | Counter::QueueAbandoned
        )
    }

    /// The decision this counter counts, if it is one.
    pub fn decision(self) -> Option<Decision> {
        Decision::parse(self.as_str())
    }
}

impl Decision {
    /// Every decision as a PromQL regex alternative (`allowed|rate_limited|...`): the decisions of
    /// `breakwater_requests`, whose sum is a policy's request rate.
    pub fn promql_any() -> String {
        Decision::ALL.map(|d| d.as_str()).join("|")
    }

    /// The counter that counts this decision.
    pub fn counter(self) -> Counter {
        match self {
            Decision::Allowed => Counter::Allowed,
            Decision::RateLimited => Counter::RateLimited,
            Decision::ConcurrencyLimited => Counter::ConcurrencyLimited,
            Decision::CircuitOpen => Counter::CircuitOpen,
            Decision::GlobalRateLimited => Counter::GlobalRateLimited,
            Decision::FaultAborted => Counter::FaultAborted,
            Decision::QueueTimeout => Counter::QueueTimeout,
        }
    }
}

impl BreakerState {
    /// The value of the breaker-state gauge: 0 closed, 1 open, 2 half-open.
    pub const fn gauge(self) -> u64 {
        self as u64
    }

    pub fn from_gauge(value: u64) -> Option<BreakerState> {
        Self::ALL.into_iter().find(|s| s.gauge() == value)
    }
}

/// The first segment of every breakwater stat name, and of its Prometheus families.
pub const PREFIX: &str = "breakwater";
/// The stat name of the per-policy counters, after [`PREFIX`].
const REQUESTS: &str = "requests";
/// What Envoy puts before the names a wasm filter defines, in `/stats`.
pub const ENVOY_STAT_PREFIX: &str = "wasmcustom.";

/// The gauge of the largest linear memory any of the filter's VMs has reached (a high-water mark
/// kept in shared data under [`VM_MEMORY_KEY`], raised by a VM when its memory grows past it).
/// Linear memory never shrinks, so a gauge that stays flat over hours means no VM outgrew the
/// others (a leak in the guest would show here, as `breakwater_vm_memory_bytes`).
pub const VM_MEMORY_GAUGE: &str = "breakwater.vm_memory_bytes";
/// The shared-data key of [`VM_MEMORY_GAUGE`]'s high-water mark (bytes, u64 little-endian). Policy
/// state lives under `bw/<policy>/...`, three segments or more: this name cannot collide.
pub const VM_MEMORY_KEY: &str = "bw/vm-memory";

/// The stat name the filter defines for one policy's counter.
pub fn counter_name(policy: &str, counter: Counter) -> String {
    format!("{PREFIX}.{REQUESTS}.policy.{policy}.decision.{counter}")
}

/// The stat name the filter defines for one policy's gauge.
pub fn gauge_name(policy: &str, gauge: Gauge) -> String {
    format!("{PREFIX}.{gauge}.policy.{policy}")
}

/// The stat name the filter defines for one policy's histogram.
pub fn histogram_name(policy: &str, histogram: Histogram) -> String {
    format!("{PREFIX}.{histogram}.policy.{policy}")
}

/// One of breakwater's metrics, known by its stat name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricName<'a> {
    Counter { policy: &'a str, counter: Counter },
    Gauge { policy: &'a str, gauge: Gauge },
    Histogram { policy: &'a str, histogram: Histogram },
}

impl<'a> MetricName<'a> {
    /// Reads a stat name as the filter defines it (`breakwater.requests.policy.api.decision.allowed`),
    /// also with Envoy's `wasmcustom.` in front; None for any other name.
    pub fn parse(name: &'a str) -> Option<MetricName<'a>> {
        let name = name.strip_prefix(ENVOY_STAT_PREFIX).unwrap_or(name);
        let rest = name.strip_prefix(PREFIX)?.strip_prefix('.')?;
        let (kind, rest) = rest.split_once(".policy.")?;
        if kind == REQUESTS {
            let (policy, counter) = rest.rsplit_once(".decision.")?;
            Some(MetricName::Counter { policy, counter: Counter::parse(counter)? })
        } else if let Some(gauge) = Gauge::parse(kind) {
            Some(MetricName::Gauge { policy: rest, gauge })
        } else {
            Some(MetricName::Histogram { policy: rest, histogram: Histogram::parse(kind)? })
        }
    }
}

/// Envoy `stats_tags` (tag name, regex over the `/stats` name) that turn the `.policy.<name>` and
/// `.decision.<name>` segments into Prometheus labels. Every Envoy configuration breakwater renders
/// or ships carries them.
pub const STATS_TAGS: [(&str, &str); 2] = [
    ("policy", r"^wasmcustom\.breakwater\.[a-z_]+(\.policy\.([a-z0-9-]+))"),
    ("decision", r"^wasmcustom\.breakwater\..+(\.decision\.([a-z_]+))$"),
];

/// One sample of breakwater's series in Envoy's Prometheus text.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub policy: String,
    /// The counter for `breakwater_requests`, the gauge otherwise.
    pub metric: Metric,
    pub value: f64,
}

/// Which series a [`Sample`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Counter(Counter),
    Gauge(Gauge),
}

/// Reads one line of Prometheus text (`breakwater_requests{policy="api",decision="allowed"} 12`);
/// None for comments, other series, and breakwater series without a policy label (label values
/// are policy names and decisions, which need no escapes).
pub fn parse_prometheus_line(line: &str) -> Option<Sample> {
    let rest = line.strip_prefix(PREFIX)?.strip_prefix('_')?;
    let (series, value) = rest.rsplit_once(' ')?;
    let value = value.trim().parse::<f64>().ok()?;
    let (family, labels) = series.split_once('{')?;
    let label = |name: &str| {
        labels.trim_end_matches('}').split(',').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
    };
    let policy = label("policy")?.to_string();
    let metric = if family == REQUESTS {
        Metric::Counter(Counter::parse(label("decision")?)?)
    } else {
        Metric::Gauge(Gauge::parse(family)?)
    };
    Some(Sample { policy, metric, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        for counter in Counter::ALL {
            let name = counter_name("api-v2", counter);
            assert_eq!(MetricName::parse(&name), Some(MetricName::Counter { policy: "api-v2", counter }));
            let envoy = format!("{ENVOY_STAT_PREFIX}{name}");
            assert_eq!(MetricName::parse(&envoy), Some(MetricName::Counter { policy: "api-v2", counter }));
            let line = format!("breakwater_requests{{policy=\"api-v2\",decision=\"{counter}\"}} 7");
            let sample = parse_prometheus_line(&line).unwrap();
            assert_eq!(
                (sample.policy.as_str(), sample.metric, sample.value),
                ("api-v2", Metric::Counter(counter), 7.0)
            );
            assert_eq!(Counter::ALL[counter.index()], counter);
        }
        for gauge in Gauge::ALL {
            let name = gauge_name("api", gauge);
            assert_eq!(MetricName::parse(&name), Some(MetricName::Gauge { policy: "api", gauge }));
            let line = format!("breakwater_{gauge}{{policy=\"api\"}} 2");
            assert_eq!(parse_prometheus_line(&line).map(|s| s.metric), Some(Metric::Gauge(gauge)));
        }
        for histogram in Histogram::ALL {
            let name = histogram_name("api", histogram);
            assert_eq!(MetricName::parse(&name), Some(MetricName::Histogram { policy: "api", histogram }));
        }
        for decision in Decision::ALL {
            assert_eq!(decision.counter().decision(), Some(decision));
            assert_eq!(decision.as_str(), decision.counter().as_str());
        }
        assert_eq!(Counter::Fallback.decision(), None);
        for state in BreakerState::ALL {
            assert_eq!(BreakerState::from_gauge(state.gauge()), Some(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{state}\""));
            assert_eq!(serde_json::from_str::<BreakerState>(&json).unwrap(), state);
        }
        assert_eq!(BreakerState::HalfOpen.gauge(), 2);
        assert!(
            serde_json::from_str::<BreakerState>("\"ajar\"").unwrap_err().to_string().contains("half_open")
        );
    }

    #[test]
    fn other_names_are_not_ours() {
        for name in [
            "breakwater.requests.policy.api.decision.bogus",
            "breakwater.bogus.policy.api",
            "breakwaterx.requests.policy.api.decision.allowed",
            "cluster.upstream_rq_retry",
            "breakwater.requests",
        ] {
            assert_eq!(MetricName::parse(name), None, "{name}");
        }
        for line in [
            "# TYPE breakwater_requests counter",
            "breakwater_requests{decision=\"allowed\"} 99",
            "breakwater_requests{policy=\"a\",decision=\"bogus\"} 1",
            "envoy_cluster_upstream_rq{policy=\"a\"} 1",
        ] {
            assert_eq!(parse_prometheus_line(line), None, "{line}");
        }
    }
}
