//! Time, injected. Engines take `now`; glue code asks a [`Clock`].

use std::cell::Cell;

use super::Nanos;

/// A source of the current time in nanoseconds.
pub trait Clock {
    fn now(&self) -> Nanos;
}

/// A clock that moves only when told to. Tests advance it; nothing sleeps.
#[derive(Debug, Default)]
pub struct FakeClock {
    now: Cell<Nanos>,
}

impl FakeClock {
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

impl Clock for FakeClock {
    fn now(&self) -> Nanos {
        self.now.get()
    }
}
