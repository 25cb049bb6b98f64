//! Group commit's leader election: at most one flush runs; everyone else
//! waits for it to end, then re-checks whether their data is now covered.
//!
//! A lock handing itself to one waiter at a time does not work here: the
//! task that just flushed comes back for its next append and takes the lock
//! again before the woken waiter runs, so one appender flushes alone while
//! the others starve. Waking every waiter after each flush lets all covered
//! appends complete at once, and the next flush takes everything pending.

use event_listener::{Event, EventListener};
use std::cell::Cell;

#[derive(Default)]
pub(crate) struct FlushGate {
    busy: Cell<bool>,
    done: Event,
}

/// Held by the task running a flush; dropping it (also on cancellation)
/// opens the gate and wakes every waiter.
pub(crate) struct FlushPermit<'a> {
    gate: &'a FlushGate,
}

impl Drop for FlushPermit<'_> {
    fn drop(&mut self) {
        self.gate.busy.set(false);
        self.gate.done.notify(usize::MAX);
    }
}

impl FlushGate {
    pub fn try_enter(&self) -> Option<FlushPermit<'_>> {
        if self.busy.replace(true) {
            None
        } else {
            Some(FlushPermit { gate: self })
        }
    }

    pub fn is_busy(&self) -> bool {
        self.busy.get()
    }

    /// Resolves when the running flush ends (register before re-checking).
    pub fn listen(&self) -> EventListener {
        self.done.listen()
    }

    /// Waits for the gate and takes it.
    pub async fn enter(&self) -> FlushPermit<'_> {
        loop {
            if let Some(permit) = self.try_enter() {
                return permit;
            }
            let listener = self.listen();
            if let Some(permit) = self.try_enter() {
                return permit;
            }
            listener.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_permit_at_a_time_and_waiters_wake() {
        let gate = FlushGate::default();
        let permit = gate.try_enter().unwrap();
        assert!(gate.try_enter().is_none());
        let mut waiting = Box::pin(gate.enter());
        assert!(
            futures::executor::block_on(futures::future::poll_immediate(&mut waiting)).is_none()
        );
        drop(permit);
        let second = futures::executor::block_on(waiting);
        assert!(gate.is_busy());
        drop(second);
        assert!(!gate.is_busy());
    }
}
