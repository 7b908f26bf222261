//! A stop signal that a blocking reader thread waits on beside its ring buffer, so it sleeps until
//! there is work or it is told to stop, instead of waking on a short timeout to check a flag (an
//! idle agent should not cost its node a wake-up every few milliseconds).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

/// An eventfd written once on stop.
#[derive(Debug)]
pub struct StopFd {
    fd: OwnedFd,
    stopped: AtomicBool,
}

impl StopFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(StopFd {
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            stopped: AtomicBool::new(false),
        })
    }

    /// Tells the waiting thread to stop; it returns from `wait` at once.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd. A failure (the counter at its
        // maximum) still leaves it readable, which is all `wait` needs.
        unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Sleeps until `fd` is readable, `stop` is called, or `timeout` passes (`None`: no limit).
    /// Interrupted waits return early; callers loop and check `is_stopped`.
    pub fn wait(&self, fd: RawFd, timeout: Option<Duration>) -> io::Result<()> {
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Rounded up, so a reread due in 0.3 ms is not polled for with a busy zero timeout.
        let ms = timeout.map_or(-1, |t| {
            i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
        });
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call; both
        // descriptors are open (the caller's outlives the call, ours lives in `self`).
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        sync::Arc,
        time::{Duration, Instant},
    };

    #[test]
    fn a_waiting_thread_wakes_on_stop_not_before() {
        let stop = Arc::new(StopFd::new().unwrap());
        // A pipe nobody writes: never readable.
        let mut pipe = [0; 2];
        // SAFETY: `pipe` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // Taken before the spawn: a thread scheduled late under load must not shorten the wait.
        let started = Instant::now();
        let waiter = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                stop.wait(pipe[0], None).unwrap();
                (stop.is_stopped(), started.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!waiter.is_finished(), "woke without a reason");
        stop.stop();
        let (stopped, waited) = waiter.join().unwrap();
        assert!(stopped);
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        // A timeout still ends a wait.
        let started = Instant::now();
        StopFd::new()
            .unwrap()
            .wait(pipe[0], Some(Duration::from_millis(30)))
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(30));
        // SAFETY: both descriptors are ours and closed once.
        unsafe {
            libc::close(pipe[0]);
            libc::close(pipe[1]);
        }
    }
}
