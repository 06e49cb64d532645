//! Stop requests: SIGINT/SIGTERM set a flag and wake a self-pipe, so the poll loop (through
//! [`Stop::fd`]) returns promptly. A second signal exits at once.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nix::fcntl::OFlag;
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

    /// The read end of the wake-up pipe: readable once a stop was requested.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

impl Drop for Stop {
    /// The handlers stay installed: unpublish the pipe before its fds close, or a later signal
    /// would write a byte into whatever file reuses the number (a socket, the TLS cache...).
    fn drop(&mut self) {
        let _ = WAKE_FD.compare_exchange(
            self._write.as_raw_fd(),
            -1,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_stop_unpublishes_the_wake_fd() {
        let s = Stop::install().expect("install");
        let fd = s._write.as_raw_fd();
        assert_eq!(WAKE_FD.load(Ordering::SeqCst), fd);
        drop(s);
        assert_eq!(WAKE_FD.load(Ordering::SeqCst), -1);
    }
}
