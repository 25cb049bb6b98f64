//! Injected wall-clock time: append times and retention read the clock
//! through [`Clock`], so tests drive time by hand ([`ManualClock`]).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The real wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// A clock that only moves when told to; clones share the time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    now_ms: Rc<Cell<i64>>,
}

impl ManualClock {
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock {
            now_ms: Rc::new(Cell::new(now_ms)),
        }
    }

    pub fn set_ms(&self, now_ms: i64) {
        self.now_ms.set(now_ms);
    }

    pub fn advance_ms(&self, by_ms: i64) {
        self.now_ms.set(self.now_ms.get() + by_ms);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.get()
    }
}
