//! linuxguard-agent: entry point. Takes secrets out of the process first, then parses, resolves
//! the configuration, sets up logging and runs one command, mapping errors to exit codes.

// Entry: flags → configuration, errors and exit codes, signals.
mod cli;
mod config;
mod counters;
mod error;
mod files;
mod secret;
mod stop;
// Components, bottom up (kernel → decode → build → enrich → sink → uplink).
mod attest;
mod events;
mod identity;
mod sensor;
// The pipeline, the outputs, the uplink and the local endpoints, then the loop and the commands
// on top.
mod agent;
mod cmd;
mod output;
mod pipeline;
mod serve;
mod uplink;
// The static musl build's memcpy (linked in by build.rs).
mod memcpy;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use cli::{Command, Parsed};
use error::Result;

fn main() -> ExitCode {
    // First, before anything can start a thread: copy the token/API key into zeroizing memory and
    // wipe them from argv, environ and the env table.
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let secrets = secret::take_secrets(&mut args);
    match run(args, secrets) {
        Ok(code) => code,
        Err(e) => {
            log::debug!("exiting with code {} after: {e}", e.kind().code());
            // Errors can carry text from outside (a file name, the agent's answer): nothing in
            // them may act on the terminal.
            let _ = writeln!(
                std::io::stderr(),
                "linuxguard-agent: error: {}",
                cli::printable(&e.to_string())
            );
            e.exit_code()
        }
    }
}

fn run(mut args: Vec<OsString>, secrets: secret::Secrets) -> Result<ExitCode> {
    let rest = if args.is_empty() {
        Vec::new()
    } else {
        args.split_off(1)
    };
    let parsed = cli::parse(rest)?;
    let args = match parsed {
        Parsed::TopHelp => {
            print!("{}", cli::top_help());
            return Ok(ExitCode::SUCCESS);
        }
        Parsed::Version => {
            println!("linuxguard-agent {}", env!("CARGO_PKG_VERSION"));
            return Ok(ExitCode::SUCCESS);
        }
        Parsed::Run(a) => a,
    };
    if args.help {
        print!("{}", cli::command_help(args.command));
        return Ok(ExitCode::SUCCESS);
    }
    let env = |name: &str| std::env::var(name).ok();
    let level = args
        .flags
        .iter()
        .rev()
        .find(|(k, _)| *k == config::Key::LogLevel)
        .and_then(|(_, v)| v.clone())
        .or_else(|| env("RUST_LOG"))
        .unwrap_or_else(|| "info".into());
    init_logging(&level);
    for flag in &secrets.flags_used {
        log::warn!(
            "{flag} was given on the command line: the value leaks through shell history and the process list \
             until scrubbed; use the {} environment variable instead",
            if *flag == "--api-key" {
                "LINUXGUARD_API_KEY"
            } else {
                "LINUXGUARD_ENROLL_TOKEN"
            }
        );
    }
    for p in &secrets.problems {
        log::warn!("{p}");
    }
    let mask = args.command.settings_mask();
    let cfg = config::resolve(mask, &args.flags, &env, secrets)?;
    match args.command {
        Command::Version => {
            println!("linuxguard-agent {}", env!("CARGO_PKG_VERSION"));
        }
        Command::ShowConfig => cmd::show_config::run(&cfg, &args)?,
        Command::Watch => cmd::watch::run(cfg, &args)?,
        Command::Start => cmd::start::run(cfg, &args)?,
        Command::Attest => cmd::attest::run(cfg, &args)?,
        Command::Status => cmd::status::run(cfg, &args)?,
        Command::CheckManifest => cmd::check_manifest::run(cfg, &args)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// env_logger on stderr, `info` unless `--log-level`/`RUST_LOG` says otherwise; libbpf's own
/// messages are routed through `log` by the sensor. Wrapped so that no filter can enable the
/// HTTP library's wire dumps (see [`is_wire_dump`]).
fn init_logging(filter: &str) {
    let inner = env_logger::Builder::new()
        .parse_filters(filter)
        .format_timestamp_micros()
        .target(env_logger::Target::Stderr)
        .build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(NoWireDumps(inner))).is_ok() {
        log::set_max_level(max);
    }
}

/// ureq-proto hex-dumps every byte it sends and receives at trace level: request headers
/// (`Authorization: Bearer <api key>`) and bodies (`enrollCode`, CSRs, issued chains). Those
/// records are dropped whatever `RUST_LOG` says, so secrets never reach a log line.
fn is_wire_dump(meta: &log::Metadata<'_>) -> bool {
    meta.level() == log::Level::Trace && meta.target().starts_with("ureq_proto")
}

struct NoWireDumps(env_logger::Logger);

impl log::Log for NoWireDumps {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        !is_wire_dump(meta) && self.0.enabled(meta)
    }
    fn log(&self, record: &log::Record<'_>) {
        if !is_wire_dump(record.metadata()) {
            self.0.log(record);
        }
    }
    fn flush(&self) {
        self.0.flush();
    }
}
