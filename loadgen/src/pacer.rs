//! Sub-millisecond sleeps on the tokio runtime, for open-loop schedules.
//!
//! tokio's timer wheel has a 1 ms resolution (a `sleep` of 100 µs wakes after
//! 1–2 ms), so a schedule paced by it sends messages in 1 ms clumps and every
//! message waits on average half a tick plus the timer's lateness before it is
//! even sent. On Linux a `Pacer` arms a timerfd instead: a kernel hrtimer with
//! no slack, whose expiry makes the fd readable and wakes the runtime's epoll
//! directly. No extra thread, no spinning: the runtime sleeps in epoll_wait
//! between slots, and other tasks (connections, consumers) run as usual.
//! Elsewhere, or if the timerfd cannot be created, it falls back to tokio's
//! timer.

use std::time::Instant;

pub struct Pacer {
    #[cfg(target_os = "linux")]
    timer: Option<linux::TimerFd>,
}

impl Pacer {
    pub fn new() -> Pacer {
        Pacer {
            #[cfg(target_os = "linux")]
            timer: match linux::TimerFd::new() {
                Ok(timer) => Some(timer),
                Err(error) => {
                    tracing::warn!(%error, "timerfd unavailable: pacing with tokio's 1 ms timer");
                    None
                }
            },
        }
    }

    /// Whether sleeps are precise (timerfd) rather than 1 ms tokio ticks.
    pub fn is_precise(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            self.timer.is_some()
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    /// Returns at `deadline` (at once if it has passed).
    pub async fn sleep_until(&mut self, deadline: Instant) {
        let now = Instant::now();
        if deadline <= now {
            return;
        }
        #[cfg(target_os = "linux")]
        if let Some(timer) = &mut self.timer {
            match timer.sleep(deadline - now).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, "timerfd failed: pacing with tokio's 1 ms timer");
                    self.timer = None;
                }
            }
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Duration;
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    pub struct TimerFd {
        fd: AsyncFd<OwnedFd>,
    }

    impl TimerFd {
        pub fn new() -> io::Result<TimerFd> {
            // SAFETY: timerfd_create takes no pointers; a non-negative return
            // is a new file descriptor that nothing else owns.
            let raw = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a valid descriptor owned by no one else.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: the OwnedFd is valid and open, and it is owned by the
            // AsyncFd (never replaced or closed) until the AsyncFd drops.
            let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(io::Error::from)?;
            Ok(TimerFd { fd })
        }

        /// One-shot relative timer of `after`, then waits for its expiry.
        pub async fn sleep(&mut self, after: Duration) -> io::Result<()> {
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: after.as_secs() as libc::time_t,
                    // A zero it_value would disarm the timer: at least 1 ns.
                    tv_nsec: (after.subsec_nanos().max(u32::from(after.as_secs() == 0)))
                        as libc::c_long,
                },
            };
            // SAFETY: the fd is a timerfd we own; `spec` is a valid itimerspec
            // and the old-value pointer may be null.
            let set = unsafe {
                libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut())
            };
            if set < 0 {
                return Err(io::Error::last_os_error());
            }
            loop {
                let mut guard = self.fd.readable().await?;
                let read = guard.try_io(|fd| {
                    let mut expirations = 0u64;
                    // SAFETY: reads 8 bytes into a u64 we own.
                    let n = unsafe {
                        libc::read(
                            fd.as_raw_fd(),
                            (&mut expirations as *mut u64).cast(),
                            std::mem::size_of::<u64>(),
                        )
                    };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                });
                match read {
                    Ok(Ok(())) => {
                        // Expiry consumed: the next sleep waits for a new edge.
                        guard.clear_ready();
                        return Ok(());
                    }
                    Ok(Err(error)) => return Err(error),
                    // Not expired yet (readiness was stale): wait again.
                    Err(_would_block) => continue,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn sleeps_are_sub_millisecond() {
        let mut pacer = Pacer::new();
        assert!(pacer.is_precise());
        let mut late = Vec::new();
        for _ in 0..50 {
            let deadline = Instant::now() + Duration::from_micros(150);
            pacer.sleep_until(deadline).await;
            let now = Instant::now();
            assert!(now >= deadline, "woke early");
            late.push(now - deadline);
        }
        late.sort();
        // tokio's timer would be ~1 ms late; an hrtimer is tens of µs late
        // (generous bound for a loaded CI machine).
        assert!(
            late[late.len() / 2] < Duration::from_micros(500),
            "median lateness {:?}",
            late[late.len() / 2]
        );
        // A deadline in the past returns at once.
        pacer.sleep_until(Instant::now()).await;
    }
}
