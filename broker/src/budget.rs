//! Byte budgets: how much memory a connection, and all connections of a
//! shard together, may hold in requests being served and responses not yet
//! written to their sockets.
//!
//! A request is charged an estimate of what it will hold (its frame plus the
//! response it may produce, see [`crate::dispatch::estimate_response_bytes`])
//! before the connection reads on; the charge is corrected to the real
//! response size once the handler answers, and released when the response's
//! last byte is written to the socket (or the connection is gone). A
//! connection whose budget, or whose shard's budget, is used up stops reading
//! its socket: the client meets TCP backpressure, the broker's memory stays
//! bounded. One request is always admitted when nothing is charged, so a
//! request larger than the budget still makes progress alone.

use futures::future::{select, Either};
use std::cell::Cell;
use std::rc::Rc;

/// One budget, used from one shard's thread only.
#[derive(Debug)]
pub struct ByteBudget {
    limit_bytes: u64,
    used_bytes: Cell<u64>,
    released: event_listener::Event,
}

impl ByteBudget {
    pub fn new(limit_bytes: u64) -> ByteBudget {
        assert!(limit_bytes > 0, "a byte budget of 0 admits nothing");
        ByteBudget {
            limit_bytes,
            used_bytes: Cell::new(0),
            released: event_listener::Event::new(),
        }
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.get()
    }

    fn fits(&self, bytes: u64) -> bool {
        let used = self.used_bytes.get();
        used == 0 || used.saturating_add(bytes) <= self.limit_bytes
    }

    fn charge(&self, bytes: u64) {
        self.used_bytes
            .set(self.used_bytes.get().saturating_add(bytes));
    }

    fn release(&self, bytes: u64) {
        let used = self.used_bytes.get();
        assert!(bytes <= used, "releasing {bytes} bytes of {used} charged");
        self.used_bytes.set(used - bytes);
        self.released.notify(usize::MAX);
    }
}

/// Bytes charged to a connection's budget and its shard's; released on drop.
#[derive(Debug)]
pub struct Charge {
    connection: Rc<ByteBudget>,
    shard: Rc<ByteBudget>,
    bytes: u64,
}

impl Charge {
    /// Waits until `bytes` fit both budgets, then charges them. The flag
    /// says whether it had to wait (the connection's reads were paused).
    pub async fn reserve(
        connection: &Rc<ByteBudget>,
        shard: &Rc<ByteBudget>,
        bytes: u64,
    ) -> (Charge, bool) {
        let mut waited = false;
        loop {
            if connection.fits(bytes) && shard.fits(bytes) {
                connection.charge(bytes);
                shard.charge(bytes);
                let charge = Charge {
                    connection: connection.clone(),
                    shard: shard.clone(),
                    bytes,
                };
                return (charge, waited);
            }
            let (by_connection, by_shard) = (connection.released.listen(), shard.released.listen());
            // A release between the check and the listen would be missed: check again.
            if connection.fits(bytes) && shard.fits(bytes) {
                continue;
            }
            waited = true;
            match select(by_connection, by_shard).await {
                Either::Left(_) | Either::Right(_) => {}
            }
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Changes the charge to `bytes` (the real size once known) without
    /// waiting: memory that already exists is counted, never refused.
    pub fn resize(&mut self, bytes: u64) {
        if bytes > self.bytes {
            let more = bytes - self.bytes;
            self.connection.charge(more);
            self.shard.charge(more);
        } else {
            let less = self.bytes - bytes;
            self.connection.release(less);
            self.shard.release(less);
        }
        self.bytes = bytes;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.connection.release(self.bytes);
        self.shard.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_wait_for_releases_and_one_always_fits() {
        glommio::LocalExecutor::default().run(async {
            let connection = Rc::new(ByteBudget::new(100));
            let shard = Rc::new(ByteBudget::new(150));
            // Larger than the budget, but alone: admitted.
            let (big, waited) = Charge::reserve(&connection, &shard, 500).await;
            assert!(!waited);
            assert_eq!(connection.used_bytes(), 500);
            drop(big);
            let (mut first, _) = Charge::reserve(&connection, &shard, 60).await;
            first.resize(90);
            assert_eq!((connection.used_bytes(), shard.used_bytes()), (90, 90));
            let waiter = glommio::spawn_local({
                let (connection, shard) = (connection.clone(), shard.clone());
                async move { Charge::reserve(&connection, &shard, 20).await }
            });
            glommio::yield_if_needed().await;
            glommio::executor().yield_task_queue_now().await;
            assert_eq!(connection.used_bytes(), 90, "the second charge must wait");
            drop(first);
            let (second, waited) = waiter.await;
            assert!(waited);
            assert_eq!((second.bytes(), shard.used_bytes()), (20, 20));
        });
    }
}
