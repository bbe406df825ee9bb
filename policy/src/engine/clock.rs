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
