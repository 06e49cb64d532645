//! `watch`: the sensor's events as JSON lines on stdout, with stats on stderr (or as events).

use std::io::{self, Write};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::attest::attestor::Attestor;
use crate::cli::Args;
use crate::cmd::options;
use crate::config::{Config, Key};
use crate::error::{Error, Result};
use crate::pipeline::sink::{JsonLines, Sink};
use crate::pipeline::{POLL_INTERVAL, Pipeline};

/// Stats on stderr this often when `--stats-interval` is 0.
const DEFAULT_STATS_EVERY: Duration = Duration::from_secs(60);

pub fn run(cfg: Config, _args: &Args) -> Result<()> {
    let stop = crate::stop::Stop::install()?;
    let mut p = Pipeline::new(&options::pipeline(&cfg))?;
    match Attestor::new(options::attestor(&cfg)) {
        Ok(a) => p.set_attestor(a),
        Err(e) => log::warn!("events will carry no container or pod fields: {e}"),
    }
    let interval = cfg.num(Key::StatsInterval);
    let (every, as_events) = if interval == 0 {
        (DEFAULT_STATS_EVERY, false)
    } else {
        (Duration::from_secs(interval), true)
    };
    let stdout = io::stdout().lock();
    let mut sink = JsonLines::new(stdout);
    log::info!(
        "watching: {} (events on stdout as JSON lines; Ctrl-C to stop)",
        p.event_types().line()
    );
    let mut next_stats = Instant::now() + every;
    let mut open = true;
    while open && !stop.requested() {
        let wait = next_stats.saturating_duration_since(Instant::now());
        let timeout =
            PollTimeout::try_from(wait.min(POLL_INTERVAL)).unwrap_or(PollTimeout::from(100u16));
        let mut fds = [
            PollFd::new(p.fd(), PollFlags::POLLIN),
            PollFd::new(stop.fd(), PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err(Error::runtime(format!(
                    "failed to poll the ring buffer: {e}"
                )));
            }
        }
        open = p.drain(&mut sink)?;
        if Instant::now() >= next_stats {
            p.refresh_stats();
            if as_events {
                let ev = p.stats_event();
                open = open && sink.send(&ev)? && sink.flush()?;
            } else {
                log::info!("{}", p.stats.line());
            }
            // The next deadline counts from the previous one, not from when this body ended.
            next_stats += every;
            if next_stats < Instant::now() {
                next_stats = Instant::now() + every;
            }
        }
    }
    if stop.requested() {
        log::info!("stopping on {}", stop.signal_name());
    }
    if open {
        open = p.drain(&mut sink)?;
    } else {
        log::info!("stdout was closed: stopping");
    }
    p.refresh_stats();
    if as_events && open {
        let ev = p.stats_event();
        let _ = sink.send(&ev)? && sink.flush()?;
    }
    // Final counters always go to stderr.
    let _ = writeln!(io::stderr(), "linuxguard-agent: final {}", p.stats.line());
    Ok(())
}
