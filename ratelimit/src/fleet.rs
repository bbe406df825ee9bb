//! How many Envoys call the service: the count `degraded.learn` splits a limit by when the
//! service cannot answer. Each replica remembers the Envoys that called since its last flush and,
//! once a second, adds them to a sorted set per domain in Redis (scored by time), drops those not
//! seen for a minute and reads the count back. No check waits for this.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;

/// An Envoy counts as part of the fleet this long after its last call.
pub const SEEN_FOR: Duration = Duration::from_secs(60);
/// Longest Envoy id kept (a hostile caller could send megabytes).
const MAX_ID: usize = 256;
/// Most Envoys remembered between two flushes.
const MAX_PENDING: usize = 10_000;

#[derive(Debug, Default)]
pub struct Fleet {
    pending: Mutex<HashMap<String, HashSet<String>>>,
    counts: Mutex<HashMap<String, u64>>,
    pub total: AtomicU64,
}

impl Fleet {
    /// Notes a call from `envoy` in `domain`.
    pub fn seen(&self, domain: &str, envoy: &str) {
        if envoy.is_empty() || envoy.len() > MAX_ID {
            return;
        }
        if let Ok(mut pending) = self.pending.lock() {
            let ids = pending.entry(domain.to_string()).or_default();
            if ids.len() < MAX_PENDING {
                ids.insert(envoy.to_string());
            }
        }
    }

    /// The Envoys of `domain` seen in the last minute, as of the last flush (0 = not known yet).
    pub fn count(&self, domain: &str) -> u64 {
        self.counts.lock().ok().and_then(|c| c.get(domain).copied()).unwrap_or(0)
    }

    /// Writes what was seen since the last flush to Redis and reads the counts back.
    pub async fn flush(&self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        let pending = self.pending.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
        let domains: HashSet<String> = pending.keys().cloned().chain(self.known_domains()).collect();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut pipe = redis::pipe();
        for domain in &domains {
            let key = fleet_key(domain);
            for id in pending.get(domain).into_iter().flatten() {
                pipe.zadd(&key, id, now).ignore();
            }
            pipe.zrembyscore(&key, 0, now.saturating_sub(SEEN_FOR.as_secs())).ignore();
            pipe.expire(&key, 2 * SEEN_FOR.as_secs() as i64).ignore();
            pipe.zcard(&key);
        }
        let counts: Vec<u64> = pipe.query_async(conn).await?;
        let counts: HashMap<String, u64> = domains.into_iter().zip(counts).collect();
        self.total.store(counts.values().sum(), Relaxed);
        if let Ok(mut c) = self.counts.lock() {
            *c = counts;
        }
        Ok(())
    }

    fn known_domains(&self) -> Vec<String> {
        self.counts.lock().map(|c| c.keys().cloned().collect()).unwrap_or_default()
    }
}

/// The sorted set of a domain's Envoys.
pub fn fleet_key(domain: &str) -> String {
    format!("bw:{{{domain}}}:envoys")
}
