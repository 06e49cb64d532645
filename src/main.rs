//! linuxguard-agent: entry point. Takes secrets out of the process first, then parses, resolves
//! the configuration, sets up logging and runs one command, mapping errors to exit codes.

// Foundation (configuration, identity, secrets).
mod cli;
mod config;
mod error;
mod identity;
mod secret;
mod show_config;
// Enrolment, mTLS identity and the `start` command.
mod start;
// The eBPF sensor and `watch`.
mod decode;
mod event;
mod proctable;
mod sensor;
mod stats;
mod watch;
// Workload attestation, the Unix socket and `status`.
mod attest;
mod status;
// Shipping: the manifest checker.
mod check_manifest;

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
            let _ = writeln!(std::io::stderr(), "linuxguard-agent: error: {e}");
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
        Command::ShowConfig => show_config::run(&cfg, &args)?,
        Command::Watch => watch::run(cfg, &args)?,
        Command::Start => start::run(cfg, &args)?,
        Command::Attest => attest::run(cfg, &args)?,
        Command::Status => status::run(cfg, &args)?,
        Command::CheckManifest => check_manifest::run(cfg, &args)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// env_logger on stderr, `info` unless `--log-level`/`RUST_LOG` says otherwise; libbpf's own
/// messages are routed through `log` by the sensor.
fn init_logging(filter: &str) {
    env_logger::Builder::new()
        .parse_filters(filter)
        .format_timestamp_micros()
        .target(env_logger::Target::Stderr)
        .init();
}
