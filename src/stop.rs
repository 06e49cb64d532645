//! Stop requests: SIGINT/SIGTERM set a flag and wake a self-pipe, so waits (and a future poll
//! loop, through [`Stop::fd`]) return promptly. A second signal exits at once.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use crate::error::{Context, Kind, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: nix::libc::c_int) {
    if REQUESTED.swap(true, Ordering::SeqCst) {
        // Second signal: the operator insists. Only async-signal-safe calls here.
        // SAFETY: _exit is async-signal-safe and never returns.
        unsafe { nix::libc::_exit(128 + sig) };
    }
    SIGNAL.store(sig, Ordering::SeqCst);
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let b = 1u8;
        // SAFETY: write(2) is async-signal-safe; `fd` is the non-blocking write end of our pipe,
        // kept open for the process's life by `Stop` (never dropped while the handler is set).
        unsafe { nix::libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

/// The stop flag and its wake-up pipe. Create once per process with [`Stop::install`].
pub struct Stop {
    read: OwnedFd,
    _write: OwnedFd,
}

impl Stop {
    /// Installs the SIGINT/SIGTERM handlers.
    pub fn install() -> Result<Stop> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .context(Kind::Runtime, "failed to create the stop pipe")?;
        WAKE_FD.store(write.as_raw_fd(), Ordering::SeqCst);
        // SA_RESTART: blocking network calls continue (they end by their own timeouts); our
        // waits poll the pipe and see the byte the handler writes.
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for sig in [Signal::SIGINT, Signal::SIGTERM] {
            // SAFETY: the handler only touches atomics and calls write(2)/_exit(2), which are
            // async-signal-safe.
            unsafe { sigaction(sig, &action) }.with_context(Kind::Runtime, || {
                format!("failed to install the {sig} handler")
            })?;
        }
        Ok(Stop {
            read,
            _write: write,
        })
    }

    pub fn requested(&self) -> bool {
        REQUESTED.load(Ordering::SeqCst)
    }

    /// The signal that asked us to stop, for the log line.
    pub fn signal_name(&self) -> String {
        Signal::try_from(SIGNAL.load(Ordering::SeqCst))
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "a stop request".into())
    }

    #[allow(dead_code)] // polled by the sensor loop (issue 6)
    /// The read end of the wake-up pipe: readable once a stop was requested.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Sleeps until `deadline` or a stop request; returns true when stopping.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        loop {
            if self.requested() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // At least 1 ms so sub-millisecond remainders do not spin; at most 60 s per poll.
            let ms = left.as_millis().clamp(1, 60_000) as u16;
            let timeout = PollTimeout::from(ms);
            let mut fds = [PollFd::new(self.read.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Runs `f` (a blocking network call) on a helper thread and waits for its result or a stop
    /// request, whichever comes first. On a stop the call is abandoned: it ends by its own
    /// timeouts or with the process. `None`: stopped (or the helper could not run).
    pub fn interruptible<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("lg-call".into())
            .spawn(move || {
                let _ = tx.send(f());
            });
        if let Err(e) = spawned {
            log::error!("failed to start a network helper thread: {e}");
            return None;
        }
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(v) => return Some(v),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !self.requested() => {}
                Err(_) => return None,
            }
        }
    }

    /// Sleeps for `d` or until a stop request; returns true when stopping.
    pub fn wait(&self, d: Duration) -> bool {
        self.wait_until(Instant::now() + d)
    }
}
