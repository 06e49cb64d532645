//! Command line: lexopt parsing into a plain [`Args`] value, and the `--help` texts. No env or file
//! access here; `config::resolve` does that second step.

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::prelude::*;

use crate::config::{self, FlagValues, SETTINGS, Setting, Ty};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Watch,
    Start,
    Attest,
    Status,
    ShowConfig,
    Version,
    CheckManifest,
}

impl Command {
    const ALL: [Command; 7] = [
        Command::Watch,
        Command::Start,
        Command::Attest,
        Command::Status,
        Command::ShowConfig,
        Command::CheckManifest,
        Command::Version,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Command::Watch => "watch",
            Command::Start => "start",
            Command::Attest => "attest",
            Command::Status => "status",
            Command::ShowConfig => "show-config",
            Command::Version => "version",
            Command::CheckManifest => "check-manifest",
        }
    }

    fn summary(self) -> &'static str {
        match self {
            Command::Watch => {
                "print kernel security events as JSON lines (no backend needed; needs root)"
            }
            Command::Start => {
                "watch at once, enrol in the background, stream events to the backend over mTLS (the production agent)"
            }
            Command::Attest => "print the container, pod and selectors of a process",
            Command::Status => "ask the running agent for its health and counters",
            Command::ShowConfig => {
                "print every setting, its value and its source, and the workload id"
            }
            Command::Version => "print the version",
            Command::CheckManifest => "check Kubernetes YAML for deployment mistakes",
        }
    }

    /// The `config::WATCH`.. bit of the settings this command reads (0: none).
    pub fn settings_mask(self) -> u8 {
        match self {
            Command::Watch => config::WATCH,
            Command::Start => config::START,
            Command::Attest => config::ATTEST,
            Command::Status => config::STATUS,
            Command::ShowConfig => config::SHOW,
            Command::CheckManifest => config::MANIFEST,
            Command::Version => 0,
        }
    }

    fn from_name(name: &str) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// The command line, parsed but not yet resolved against env and defaults.
#[derive(Debug)]
pub struct Args {
    pub command: Command,
    pub flags: FlagValues,
    pub help: bool,
    /// `--json` (show-config, status, attest).
    pub json: bool,
    /// `attest --pid PID`.
    pub pid: Option<u32>,
    /// `attest --self`.
    pub attest_self: bool,
    /// `check-manifest FILE...`.
    pub files: Vec<PathBuf>,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    Run(Args),
    /// Top-level `--help` or `help`.
    TopHelp,
    /// Top-level `--version`.
    Version,
}

/// Parses the arguments after the program name.
pub fn parse(args: Vec<OsString>) -> Result<Parsed> {
    let mut p = lexopt::Parser::from_args(args);
    let command = match p.next().map_err(usage)? {
        None => {
            return Err(Error::usage(
                "no command given; try `linuxguard-agent watch` (as root) or `linuxguard-agent --help`",
            ));
        }
        Some(Long("help") | Short('h')) => return Ok(Parsed::TopHelp),
        Some(Long("version") | Short('V')) => return Ok(Parsed::Version),
        Some(Value(v)) => {
            let name = v.string().map_err(usage)?;
            if name == "help" {
                return Ok(Parsed::TopHelp);
            }
            Command::from_name(&name).ok_or_else(|| {
                Error::usage(format!(
                    "unknown command `{name}`; commands: {}",
                    Command::ALL.map(Command::name).join(", ")
                ))
            })?
        }
        Some(arg) => {
            return Err(Error::usage(format!(
                "{} before the command; usage: linuxguard-agent <command> [options]",
                arg.unexpected()
            )));
        }
    };
    let mut out = Args {
        command,
        flags: Vec::new(),
        help: false,
        json: false,
        pid: None,
        attest_self: false,
        files: Vec::new(),
    };
    let cmd = command.name();
    while let Some(arg) = p.next().map_err(usage)? {
        match arg {
            Long("help") | Short('h') => out.help = true,
            Long("json")
                if matches!(
                    command,
                    Command::ShowConfig | Command::Status | Command::Attest
                ) =>
            {
                out.json = true
            }
            Long("pid") if command == Command::Attest => {
                let v = p
                    .value()
                    .map_err(|_| Error::usage("missing value for --pid: expected a process id"))?;
                let s = v.string().map_err(usage)?;
                out.pid = Some(s.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    Error::usage(format!("invalid value for --pid: expected a process id (a positive whole number), got {s:?}"))
                })?);
            }
            Long("self") if command == Command::Attest => out.attest_self = true,
            Long(name) => {
                let name = name.to_string();
                let s = flag_for(command, &name)?;
                let value = match s.ty {
                    Ty::Bool => p
                        .optional_value()
                        .map(|v| v.string())
                        .transpose()
                        .map_err(usage)?,
                    Ty::OptionalPath => match p.optional_value() {
                        Some(v) => Some(v.string().map_err(usage)?),
                        None => next_if_value(&mut p)?,
                    },
                    _ => {
                        let v = p.value().map_err(|_| {
                            Error::usage(format!(
                                "missing value for --{name}: expected {}",
                                s.value_name
                            ))
                        })?;
                        Some(v.string().map_err(usage)?)
                    }
                };
                out.flags.push((s.key, value));
            }
            Value(v) if command == Command::CheckManifest => out.files.push(PathBuf::from(v)),
            Value(v) => {
                return Err(Error::usage(format!(
                    "unexpected argument {:?} for `{cmd}`; see `linuxguard-agent {cmd} --help`",
                    v.to_string_lossy()
                )));
            }
            Short(c) => {
                return Err(Error::usage(format!(
                    "unknown flag -{c} for `{cmd}`; see `linuxguard-agent {cmd} --help`"
                )));
            }
        }
    }
    if out.help {
        return Ok(Parsed::Run(out));
    }
    if command == Command::Attest && out.pid.is_some() == out.attest_self {
        return Err(Error::usage(
            "`attest` takes exactly one of --pid PID or --self",
        ));
    }
    if command == Command::CheckManifest && out.files.is_empty() {
        return Err(Error::usage(
            "`check-manifest` needs at least one FILE or DIR (e.g. deploy/kubernetes/)",
        ));
    }
    Ok(Parsed::Run(out))
}

fn usage(e: lexopt::Error) -> Error {
    Error::usage(e.to_string())
}

/// The setting behind `--name`, if `command` reads it.
fn flag_for(command: Command, name: &str) -> Result<&'static Setting> {
    let cmd = command.name();
    match config::by_flag(name) {
        Some(s) if s.commands & command.settings_mask() != 0 => Ok(s),
        Some(s) => {
            let users: Vec<&str> = Command::ALL
                .into_iter()
                .filter(|c| s.commands & c.settings_mask() != 0)
                .map(Command::name)
                .collect();
            Err(Error::usage(format!(
                "--{name} is not used by `{cmd}` (it applies to: {})",
                users.join(", ")
            )))
        }
        None => Err(Error::usage(format!(
            "unknown flag --{name} for `{cmd}`; see `linuxguard-agent {cmd} --help`"
        ))),
    }
}

/// For `--tls-cache [DIR]`: takes the next argument as the value unless it is a flag.
fn next_if_value(p: &mut lexopt::Parser) -> Result<Option<String>> {
    let Some(mut raw) = p.try_raw_args() else {
        return Ok(None);
    };
    let takes = raw
        .peek()
        .is_some_and(|next| !next.to_string_lossy().starts_with('-'));
    if takes {
        if let Some(v) = raw.next() {
            return v
                .into_string()
                .map(Some)
                .map_err(|v| Error::usage(format!("invalid UTF-8 in {v:?}")));
        }
    }
    Ok(None)
}

pub fn top_help() -> String {
    let mut s = format!(
        "linuxguard-agent {}: LinuxGuard runtime-security sensor\n\n\
         USAGE: linuxguard-agent <command> [options]\n\nCOMMANDS:\n",
        env!("CARGO_PKG_VERSION")
    );
    for c in Command::ALL {
        s.push_str(&format!("  {:<16}{}\n", c.name(), c.summary()));
    }
    s.push_str(
        "\nRun `linuxguard-agent <command> --help` for a command's options.\n\
         Every option also reads an environment variable (shown in each command's help);\n\
         a flag beats its variable, which beats the default.\n\n\
         EXIT CODES: 0 ok, 1 runtime failure, 2 usage error, 3 configuration error,\n\
         4 enrolment rejected, 5 identity revoked, 6 findings (check-manifest, attest)\n",
    );
    s
}

pub fn command_help(command: Command) -> String {
    let name = command.name();
    let mut s = format!(
        "linuxguard-agent {name}: {}\n\nUSAGE: linuxguard-agent {name}",
        command.summary()
    );
    match command {
        Command::Attest => s.push_str(" (--pid PID | --self) [options]"),
        Command::CheckManifest => {
            s.push_str(" FILE|DIR...  (a DIR: the .yaml/.yml files below it)")
        }
        _ => s.push_str(" [options]"),
    }
    s.push_str("\n\nOPTIONS:\n");
    let mut line = |flag: String, help: &str, extra: String| {
        s.push_str(&format!("  {flag:<40} {help}{extra}\n"))
    };
    match command {
        Command::ShowConfig | Command::Status => {
            line("--json".into(), "print one JSON object", String::new())
        }
        Command::Attest => {
            line(
                "--pid PID".into(),
                "attest this process (as seen in --proc-root)",
                String::new(),
            );
            line(
                "--self".into(),
                "ask the running agent, over its socket, to attest the caller",
                String::new(),
            );
            line(
                "--json".into(),
                "(default) print one JSON object",
                String::new(),
            );
        }
        _ => {}
    }
    for st in SETTINGS
        .iter()
        .filter(|st| st.commands & command.settings_mask() != 0)
    {
        let flag = match st.ty {
            Ty::Bool => format!("--{}", st.flag),
            _ => format!("--{} {}", st.flag, st.value_name),
        };
        let default = st
            .default
            .map(|d| format!(" [default: {d}]"))
            .unwrap_or_default();
        line(flag, st.help, format!("{default} [env: {}]", st.env));
    }
    line("-h, --help".into(), "print this help", String::new());
    s
}

/// Characters a terminal may act on: C0 and C1 controls, DEL, and the bidirectional
/// formatting marks that reorder what is shown.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` for a terminal: characters a terminal may act on (escape sequences, bidi overrides) as
/// `\u{..}`, everything else as is. For text from outside (settings, the agent's answers).
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// JSON text for a terminal: the same value, with the characters a terminal may act on that
/// JSON leaves raw (DEL, C1 controls, bidi marks; they can only be inside strings) as `\uXXXX`.
pub fn printable_json(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Key;

    fn p(args: &[&str]) -> Result<Parsed> {
        parse(args.iter().map(OsString::from).collect())
    }

    fn run(args: &[&str]) -> Args {
        match p(args).unwrap() {
            Parsed::Run(a) => a,
            other => panic!("expected Run, got {other:?}"),
        }
    }

    #[test]
    fn parses_settings_and_optional_tls_cache() {
        let a = run(&[
            "start",
            "--server",
            "https://x",
            "--tls-cache",
            "--queue-mb=8",
        ]);
        assert_eq!(a.command, Command::Start);
        assert_eq!(a.flags[0], (Key::Server, Some("https://x".into())));
        assert_eq!(a.flags[1], (Key::TlsCache, None));
        assert_eq!(a.flags[2], (Key::QueueMb, Some("8".into())));
        let a = run(&["start", "--tls-cache", "/tmp/c", "--tls-cache=/tmp/d"]);
        assert_eq!(a.flags[0], (Key::TlsCache, Some("/tmp/c".into())));
        assert_eq!(a.flags[1], (Key::TlsCache, Some("/tmp/d".into())));
    }

    #[test]
    fn errors_name_the_flag() {
        let e = p(&["start", "--bogus"]).unwrap_err();
        assert_eq!(e.kind(), crate::error::Kind::Usage);
        assert!(e.to_string().contains("--bogus"), "{e}");
        let e = p(&["start", "--server"]).unwrap_err().to_string();
        assert!(
            e.contains("missing value for --server") && e.contains("URL"),
            "{e}"
        );
        let e = p(&["watch", "--queue-mb", "3"]).unwrap_err().to_string();
        assert!(
            e.contains("not used by `watch`") && e.contains("start"),
            "{e}"
        );
        assert!(
            p(&["frobnicate"])
                .unwrap_err()
                .to_string()
                .contains("unknown command")
        );
        assert!(p(&[]).is_err());
    }

    #[test]
    fn attest_needs_exactly_one_target() {
        assert!(p(&["attest"]).is_err());
        assert!(p(&["attest", "--pid", "1", "--self"]).is_err());
        assert!(p(&["attest", "--pid", "zero"]).is_err());
        assert_eq!(run(&["attest", "--pid", "42"]).pid, Some(42));
    }

    #[test]
    fn help_everywhere() {
        assert!(matches!(p(&["--help"]).unwrap(), Parsed::TopHelp));
        assert!(matches!(p(&["--version"]).unwrap(), Parsed::Version));
        for c in Command::ALL {
            assert!(run(&[c.name(), "--help"]).help);
            assert!(command_help(c).contains(c.name()));
        }
        assert!(command_help(Command::Start).contains("LINUXGUARD_SERVER"));
    }

    #[test]
    fn printable_escapes_what_a_terminal_acts_on() {
        assert_eq!(printable("plain: ok"), "plain: ok");
        assert_eq!(
            printable("a\u{1b}[31mb\u{7f}\u{9b}\u{202e}"),
            "a\\u{1b}[31mb\\u{7f}\\u{9b}\\u{202e}"
        );
        let j = serde_json::json!({"k\u{1b}": "v\u{9b}\u{7f}"}).to_string();
        let p = printable_json(&j);
        assert!(!p.chars().any(unsafe_char), "{p}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&p).unwrap(),
            serde_json::from_str::<serde_json::Value>(&j).unwrap()
        );
    }
}
