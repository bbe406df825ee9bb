//! Time, injected: engines and `enforce` take `now` (nanoseconds) as an argument, which the filter
//! reads from the host once per callback and host-test from its virtual clock. Tests use a
//! [`FakeClock`] that moves only when told to.

use std::cell::Cell;

use super::Nanos;

/// A clock that moves only when told to. Tests advance it; nothing sleeps.
#[derive(Debug, Default)]
pub struct FakeClock {
    now: Cell<Nanos>,
}

impl FakeClock {
    pub fn now(&self) -> Nanos {
        self.now.get()
    }
    pub fn at(now: Nanos) -> Self {
        FakeClock { now: Cell::new(now) }
    }
    pub fn advance(&self, by: Nanos) {
        self.now.set(self.now.get().saturating_add(by));
    }
    pub fn advance_ms(&self, ms: u64) {
        self.advance(ms.saturating_mul(1_000_000));
    }
}

/// For property tests: a wall clock's moves, in signed nanoseconds: often none, sometimes a
/// forward step of up to `max_forward_ms`, and sometimes a step of up to a day either way (NTP, an
/// operator), which engines must survive without wedging (issue 20, defect 10).
#[cfg(test)]
pub fn clock_steps(max_forward_ms: i64) -> impl proptest::strategy::Strategy<Value = i64> {
    use proptest::prelude::*;
    const MS: i64 = 1_000_000;
    prop_oneof![
        4 => Just(0i64),
        2 => (1i64..max_forward_ms).prop_map(|ms| ms * MS),
        1 => (-86_400_000i64..86_400_000).prop_map(|ms| ms * MS),
    ]
}
