//! The global bucket in Redis: one GCRA state per key, updated atomically by a Lua script
//! (`gcra.lua`) on Redis's own clock, so any number of service replicas agree.

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::limits::Limit;

/// How many tokens a call takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A request's hits: all of them or none (RLS semantics).
    All(u64),
    /// A lease: as many as the bucket has, up to this many.
    Some(u64),
    /// Tokens of an unspent lease given back.
    Refund(u64),
}

/// What the bucket answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub granted: u64,
    /// Whole tokens left in the bucket.
    pub remaining: u64,
    /// How long until what was asked for (and not granted) would be there.
    pub wait: Duration,
    /// How long until the bucket is full.
    pub reset: Duration,
}

/// The script, loaded once (EVALSHA, with EVAL when Redis has not seen it).
pub fn script() -> redis::Script {
    redis::Script::new(include_str!("gcra.lua"))
}

/// Runs the script for one bucket: one round trip to Redis.
pub async fn take(
    conn: &mut ConnectionManager,
    script: &redis::Script,
    limit: &Limit,
    key: &str,
    take: Take,
) -> redis::RedisResult<Taken> {
    let (hits, how) = match take {
        Take::All(n) => (n, "all"),
        Take::Some(n) => (n, "some"),
        Take::Refund(n) => (n, "refund"),
    };
    let (granted, remaining, wait_us, reset_us): (i64, i64, i64, i64) =
        script.key(key).arg(limit.interval_us).arg(limit.burst).arg(hits).arg(how).invoke_async(conn).await?;
    let non_negative = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Taken {
        granted: non_negative(granted),
        remaining: non_negative(remaining),
        wait: Duration::from_micros(non_negative(wait_us)),
        reset: Duration::from_micros(non_negative(reset_us)),
    })
}
