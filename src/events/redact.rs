//! Secrets given as flags: the values of well-known secret flags (`--password`, `--token`, ...,
//! `--redact-flags`) in every exec event's argv, and of this agent's own secret flags
//! (`--enroll-token`, `--api-key`: the settings of type secret) when the executable is this
//! agent, are replaced by [`REDACTED`] before the event leaves the agent. docs/events.md.
//!
//! Forms: `--flag VALUE`, `--flag=VALUE`, the same with one dash (`-password VALUE`, Go's flag
//! package), flag names compared without regard to ASCII case; and inside one argument that
//! holds a shell command line (`sh -c "... --token VALUE ..."`), the word after the flag.
//! `NAME=VALUE` arguments for the agent's secret environment variables
//! (`LINUXGUARD_ENROLL_TOKEN=...`, as `env` takes them) are redacted for every process.

use std::os::unix::fs::MetadataExt;

/// What replaces a redacted value.
pub const REDACTED: &str = "[REDACTED]";

/// The default of `--redact-flags`: flags whose value is a secret in common tools.
pub const DEFAULT_FLAGS: &str = "password,passwd,pass,passphrase,secret,client-secret,secret-key,\
     secret-access-key,access-key,token,api-key,apikey,api-token,auth-token,access-token,\
     refresh-token,bearer-token,private-key";

/// This agent's executable: its file (device and inode as `stat` gives them) and its path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub path: String,
}

impl Identity {
    /// This process's executable (`/proc/self/exe`); a binary replaced since start keeps its
    /// path (the kernel's ` (deleted)` suffix dropped), so a new version there is recognized too.
    pub fn this_process() -> Identity {
        let md = std::fs::metadata("/proc/self/exe").ok();
        let path = std::fs::read_link("/proc/self/exe")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        Identity {
            dev: md.as_ref().map_or(0, MetadataExt::dev),
            ino: md.as_ref().map_or(0, MetadataExt::ino),
            path: path
                .strip_suffix(" (deleted)")
                .map_or(path.clone(), str::to_string),
        }
    }

    /// Same file (device and inode), or the same path.
    fn matches(&self, dev: u64, ino: u64, path: &str) -> bool {
        (self.ino != 0 && ino == self.ino && dev == self.dev)
            || (!self.path.is_empty() && path == self.path)
    }
}

/// What to redact (cmd/options.rs builds it from the settings).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Well-known secret flags, for every process (`--redact-flags`; no dashes).
    pub flags: Vec<String>,
    /// This agent's own secret flags (its settings of type secret), for its own executable.
    pub own_flags: Vec<String>,
    /// `NAME=` prefixes of the agent's secret environment variables, for every process.
    pub own_env: Vec<String>,
}

/// Redacts secret flag values in argv.
#[derive(Debug, Clone)]
pub struct Redactor {
    opts: Options,
    own: Identity,
}

impl Default for Redactor {
    /// The default list only (no own flags: those come from the settings).
    fn default() -> Redactor {
        Redactor::new(
            Options {
                flags: parse_list(DEFAULT_FLAGS),
                ..Options::default()
            },
            Identity::this_process(),
        )
    }
}

/// `a,b,c` (dashes before a name and spaces are dropped; `none` or empty: no flags).
pub fn parse_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(|f| f.trim().trim_start_matches('-').to_ascii_lowercase())
        .filter(|f| !f.is_empty() && f != "none")
        .collect()
}

impl Redactor {
    pub fn new(opts: Options, own: Identity) -> Redactor {
        Redactor { opts, own }
    }

    /// Redacts `args` of an exec of the file (`dev`, `ino`) at `path`; true if anything was.
    pub fn redact(&self, args: &mut [String], dev: u64, ino: u64, path: &str) -> bool {
        let own = self.own.matches(dev, ino, path);
        // No allocation per argument: this runs for every exec.
        let secret = |name: &str| {
            let is = |f: &String| f.eq_ignore_ascii_case(name);
            self.opts.flags.iter().any(is) || (own && self.opts.own_flags.iter().any(is))
        };
        let mut redacted = false;
        let mut value_next = false;
        for a in args.iter_mut() {
            if std::mem::take(&mut value_next) {
                if a != REDACTED {
                    *a = REDACTED.to_string();
                    redacted = true;
                }
                continue;
            }
            if let Some(name) = flag_name(a) {
                match name.split_once('=') {
                    Some((n, v)) if secret(n) => {
                        if v != REDACTED {
                            let keep = a.len() - v.len();
                            a.truncate(keep);
                            a.push_str(REDACTED);
                            redacted = true;
                        }
                    }
                    Some(_) => {}
                    None => value_next = secret(name),
                }
                continue;
            }
            if let Some(p) = self.opts.own_env.iter().find(|p| a.starts_with(p.as_str())) {
                if a.len() > p.len() && a[p.len()..] != *REDACTED {
                    a.truncate(p.len());
                    a.push_str(REDACTED);
                    redacted = true;
                }
                continue;
            }
            // A shell command line in one argument (`sh -c "... --token VALUE"`).
            if a.contains(char::is_whitespace) && a.contains('-') {
                if let Some(r) = redact_words(a, &secret, &self.opts.own_env) {
                    *a = r;
                    redacted = true;
                }
            }
        }
        redacted
    }
}

/// `--name...` or `-name...` without the dashes; None for anything else (`-`, `--`, values).
fn flag_name(a: &str) -> Option<&str> {
    let rest = a.strip_prefix("--").or_else(|| a.strip_prefix('-'))?;
    rest.starts_with(|c: char| c.is_ascii_alphabetic())
        .then_some(rest)
}

/// The words of a command line with secret flag values redacted, or None if none was. A
/// quoted value (`--password 'two words'`) is redacted to its closing quote.
fn redact_words(line: &str, secret: &dyn Fn(&str) -> bool, own_env: &[String]) -> Option<String> {
    let mut out = String::with_capacity(line.len());
    let mut changed = false;
    let mut value_next = false;
    // Inside a redacted quoted value: the quote that ends it.
    let mut quoted: Option<char> = None;
    let mut rest = line;
    while !rest.is_empty() {
        let ws = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..ws]);
        rest = &rest[ws..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        rest = &rest[end..];
        if word.is_empty() {
            continue;
        }
        if let Some(q) = quoted {
            if word.ends_with(q) {
                quoted = None;
            }
            continue;
        }
        if std::mem::take(&mut value_next) {
            out.push_str(REDACTED);
            changed = true;
            quoted = opens_quote(word);
            continue;
        }
        let bare = word.trim_start_matches(['"', '\'']);
        if let Some(name) = flag_name(bare) {
            match name.split_once('=') {
                Some((n, v)) if secret(n) => {
                    let at = word.len() - v.len();
                    out.push_str(&word[..at]);
                    out.push_str(REDACTED);
                    changed = true;
                    quoted = opens_quote(v);
                    continue;
                }
                Some(_) => {}
                None => value_next = secret(name),
            }
        } else if let Some(p) = own_env.iter().find(|p| bare.starts_with(p.as_str())) {
            let v = &bare[p.len()..];
            if !v.is_empty() {
                out.push_str(&word[..word.len() - v.len()]);
                out.push_str(REDACTED);
                changed = true;
                quoted = opens_quote(v);
                continue;
            }
        }
        out.push_str(word);
    }
    changed.then_some(out)
}

/// The quote a value opens and does not close in the same word.
fn opens_quote(v: &str) -> Option<char> {
    let q = v.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    (v.len() == 1 || !v.ends_with(q)).then_some(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Redactor {
        Redactor::new(
            Options {
                flags: parse_list(DEFAULT_FLAGS),
                own_flags: vec!["enroll-token".into(), "api-key".into()],
                own_env: vec![
                    "LINUXGUARD_ENROLL_TOKEN=".into(),
                    "LINUXGUARD_API_KEY=".into(),
                ],
            },
            Identity {
                dev: 5,
                ino: 7,
                path: "/usr/local/bin/linuxguard-agent".into(),
            },
        )
    }

    fn run(args: &[&str], dev: u64, ino: u64, path: &str) -> (Vec<String>, bool) {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let changed = r().redact(&mut v, dev, ino, path);
        (v, changed)
    }

    #[test]
    fn well_known_flags_in_both_forms_for_every_process() {
        let (v, c) = run(
            &[
                "mysql",
                "--password",
                "hunter2",
                "--token=abc",
                "-Password=x",
                "--user",
                "bob",
                "-",
                "--",
                "--secret",
            ],
            1,
            2,
            "/usr/bin/mysql",
        );
        assert!(c);
        assert_eq!(
            v,
            [
                "mysql",
                "--password",
                REDACTED,
                "--token=[REDACTED]",
                "-Password=[REDACTED]",
                "--user",
                "bob",
                "-",
                "--",
                "--secret"
            ]
        );
        let (v, c) = run(&["ls", "-la", "--color=auto"], 1, 2, "/bin/ls");
        assert!(!c);
        assert_eq!(v, ["ls", "-la", "--color=auto"]);
    }

    #[test]
    fn own_secret_flags_only_for_this_agent_by_file_or_path() {
        let args = ["x", "--enroll-token", "TOK", "--api-key=KEY"];
        // Same inode and device, another path (a hard link, another mount namespace).
        let (v, _) = run(&args, 5, 7, "/other/name");
        assert_eq!(v, ["x", "--enroll-token", REDACTED, "--api-key=[REDACTED]"]);
        // Same path, another file (the binary was replaced by a new version).
        let (v, _) = run(&args, 9, 9, "/usr/local/bin/linuxguard-agent");
        assert_eq!(v, ["x", "--enroll-token", REDACTED, "--api-key=[REDACTED]"]);
        // Another program: --api-key is a well-known flag, --enroll-token is not.
        let (v, _) = run(&args, 9, 9, "/usr/bin/other");
        assert_eq!(v, ["x", "--enroll-token", "TOK", "--api-key=[REDACTED]"]);
    }

    #[test]
    fn env_assignments_and_shell_command_lines() {
        let (v, c) = run(
            &[
                "env",
                "LINUXGUARD_API_KEY=k1",
                "sh",
                "-c",
                "mysql --password 'p w' --token=t2 LINUXGUARD_ENROLL_TOKEN=t3 --user u",
            ],
            1,
            2,
            "/usr/bin/env",
        );
        assert!(c);
        assert_eq!(v[1], "LINUXGUARD_API_KEY=[REDACTED]");
        let line = &v[4];
        for secret in ["'p", "t2", "t3"] {
            assert!(!line.contains(secret), "{line}");
        }
        assert!(line.contains("--user u"), "{line}");
        assert!(line.starts_with("mysql --password [REDACTED]"), "{line}");
    }

    #[test]
    fn the_list_setting() {
        assert_eq!(parse_list("--a, b ,C"), ["a", "b", "c"]);
        assert!(parse_list("none").is_empty());
        assert!(parse_list("").is_empty());
    }
}
