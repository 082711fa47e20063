//! A precise sleep on the load loop's own thread: a Linux timerfd(2) registered with the tokio
//! reactor. tokio's own timer wheel has a 1 ms resolution (`tokio::time::sleep_until` wakes up
//! to 1 ms late), which an open loop measuring from intended send times would charge to the
//! server; a timerfd expires on the kernel's high-resolution timer, and the reactor's
//! `epoll_wait` returns as soon as it does, on the thread that sends the request (no hand-off to
//! another thread).

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The last stretch before a deadline is spun, not slept: waking a sleeping thread takes tens
/// of microseconds on a busy machine, a spin on the clock costs at most this much CPU per wait.
pub const SPIN: Duration = Duration::from_micros(50);

/// A one-shot timer on `CLOCK_MONOTONIC` (the clock of [`Instant`] on Linux).
pub struct Timer {
    fd: AsyncFd<OwnedFd>,
}

impl Timer {
    /// Creates the timer. Must be called inside a tokio runtime (it registers with its reactor).
    ///
    /// # Errors
    /// `timerfd_create` or the reactor registration failed.
    pub fn new() -> io::Result<Self> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // SAFETY: `fd` is an open timerfd owned by the `AsyncFd` for its whole life (an
        // `OwnedFd` returns the same descriptor on every `as_raw_fd` and closes it only on drop).
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Timer { fd })
    }

    /// Returns at `deadline` (at once when it has passed): sleeps on the timerfd until
    /// [`SPIN`] before it, then spins on the clock.
    ///
    /// # Errors
    /// `timerfd_settime` or the read of the expiration count failed.
    pub async fn sleep_until(&mut self, deadline: Instant) -> io::Result<()> {
        self.sleep_on_fd(deadline.checked_sub(SPIN).unwrap_or(deadline))
            .await?;
        while Instant::now() < deadline {
            std::hint::spin_loop();
        }
        Ok(())
    }

    async fn sleep_on_fd(&mut self, deadline: Instant) -> io::Result<()> {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Ok(());
        }
        // A relative one-shot expiry (an all-zero value would disarm the timer; `wait` > 0).
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: wait.as_secs() as _,
                tv_nsec: wait.subsec_nanos() as _,
            },
        };
        timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations)?)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(Err(e)) => return Err(e),
                // Readiness was stale: wait again.
                Err(_would_block) => continue,
            }
        }
    }
}
