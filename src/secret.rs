//! Secrets: a zeroize-on-drop type that never prints its value, scrubbing the enrolment
//! token and API key out of the process (environ and argv bytes, env table, core dumps), and
//! reading secret files (token, API key, service-account token) into zeroizing memory.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::Path;

use zeroize::{Zeroize, Zeroizing};

/// Environment variables that hold secrets, scrubbed at start.
pub const SECRET_ENVS: [&str; 2] = ["LINUXGUARD_ENROLL_TOKEN", "LINUXGUARD_API_KEY"];
/// Flags that carry secrets; their values are removed from argv at start.
pub const SECRET_FLAGS: [&str; 2] = ["--enroll-token", "--api-key"];

/// A secret string: zeroized on drop; `Debug` and `Display` print `<set, N chars>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(Zeroizing::new(value))
    }
    /// The value itself. Callers must not log or format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn chars(&self) -> usize {
        self.0.chars().count()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<set, {} chars>", self.chars())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Largest secret file read (a projected service-account token is about 1 KiB).
pub const MAX_SECRET_FILE: usize = 64 * 1024;

/// Reads a secret file (`--enroll-token-file`, `--api-key-file`, `--sa-token-file`) into
/// zeroizing memory, following symlinks (Kubernetes projected volumes are symlinks into a
/// `..data` directory). The buffer is allocated once at its full size, so no growing copy is left
/// behind; a file that is larger or not UTF-8 is refused (an empty one is for the caller to
/// judge). Errors name the rule that failed, never the content.
pub fn read_file(path: &Path) -> std::io::Result<Secret> {
    use std::io::{Error, ErrorKind};
    let mut f = fs::File::open(path)?;
    let mut buf = Zeroizing::new(vec![0u8; MAX_SECRET_FILE + 1]);
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if n > MAX_SECRET_FILE {
        return Err(Error::other(format!(
            "larger than {} KiB: not a token or key file",
            MAX_SECRET_FILE >> 10
        )));
    }
    let mut bytes = std::mem::take(&mut *buf);
    bytes.truncate(n);
    let text = String::from_utf8(bytes).map_err(|e| {
        e.into_bytes().zeroize();
        Error::new(ErrorKind::InvalidData, "not UTF-8 text")
    })?;
    Ok(Secret::new(text))
}

/// `<set, N chars>` for a secret file that reads, else why it does not (for `show-config`).
pub fn describe_file(path: &Path) -> String {
    match read_file(path) {
        Ok(s) if s.expose().trim().is_empty() => "<empty>".into(),
        Ok(s) => Secret::new(s.expose().trim().to_string()).to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "<missing>".into(),
        Err(e) => format!("<unreadable: {e}>"),
    }
}

/// One secret taken from the process, and where it came from.
#[derive(Debug)]
pub struct Taken {
    pub value: Secret,
    pub from_flag: bool,
}

/// What [`take_secrets`] found and did, for the caller to act on once logging is up.
#[derive(Debug, Default)]
pub struct Secrets {
    pub enroll_token: Option<Taken>,
    pub api_key: Option<Taken>,
    /// Flags that carried a secret on the command line (the caller warns about each).
    pub flags_used: Vec<&'static str>,
    /// Problems met while scrubbing (the caller logs them as warnings).
    pub problems: Vec<String>,
}

/// Reads the token and API key once (env, then argv flags, which win), removes them from `args`,
/// overwrites their bytes in the kernel-visible environ and argv regions, unsets the variables and
/// makes the process non-dumpable. Must run first in `main`, before any thread exists.
pub fn take_secrets(args: &mut Vec<OsString>) -> Secrets {
    let mut out = Secrets::default();
    let mut from_env: [Option<Secret>; 2] = [None, None];
    for (i, name) in SECRET_ENVS.iter().enumerate() {
        if let Some(v) = std::env::var_os(name) {
            let bytes = v.into_encoded_bytes();
            if !bytes.is_empty() {
                from_env[i] = secret_from_bytes(bytes, name, &mut out.problems);
            }
        }
    }
    let from_flags = take_flag_values(args, &mut out);
    for (i, env) in from_env.into_iter().enumerate() {
        let taken = match (&from_flags[i], env) {
            (Some(f), _) => Some(Taken {
                value: f.clone(),
                from_flag: true,
            }),
            (None, Some(e)) => Some(Taken {
                value: e,
                from_flag: false,
            }),
            (None, None) => None,
        };
        if i == 0 {
            out.enroll_token = taken;
        } else {
            out.api_key = taken;
        }
    }
    if let Err(e) = scrub_process_memory() {
        out.problems.push(format!(
            "could not overwrite secrets in /proc/self/environ or cmdline: {e}"
        ));
    }
    for name in SECRET_ENVS {
        // SAFETY: called first thing in main, before any other thread exists, so nothing can read
        // the environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        out.problems.push(format!(
            "could not make the process non-dumpable (PR_SET_DUMPABLE): {e}"
        ));
    }
    out
}

/// Moves raw bytes into a [`Secret`]; bytes that are not UTF-8 are zeroized and reported.
fn secret_from_bytes(bytes: Vec<u8>, origin: &str, problems: &mut Vec<String>) -> Option<Secret> {
    match String::from_utf8(bytes) {
        Ok(s) => Some(Secret::new(s)),
        Err(e) => {
            e.into_bytes().zeroize();
            problems.push(format!("{origin} is not valid UTF-8 and was ignored"));
            None
        }
    }
}

/// Removes `--enroll-token V`, `--enroll-token=V`, `--api-key ...` from `args` (before `--`),
/// zeroizing the removed copies, and returns the values in `SECRET_FLAGS` order.
fn take_flag_values(args: &mut Vec<OsString>, out: &mut Secrets) -> [Option<Secret>; 2] {
    let mut found: [Option<Secret>; 2] = [None, None];
    let mut i = 1;
    while i < args.len() {
        if args[i] == "--" {
            break;
        }
        // Compare bytes in place: a lossy String copy of `--enroll-token=VALUE` would leave an
        // unzeroized copy of the value on the heap.
        let hit = {
            let arg = args[i].as_encoded_bytes();
            SECRET_FLAGS.iter().position(|f| {
                let f = f.as_bytes();
                arg == f || (arg.len() > f.len() && arg.starts_with(f) && arg[f.len()] == b'=')
            })
        };
        let Some(which) = hit else {
            i += 1;
            continue;
        };
        let flag = SECRET_FLAGS[which];
        let mut removed = args.remove(i).into_encoded_bytes();
        let value = if removed.len() > flag.len() {
            let v = removed[flag.len() + 1..].to_vec();
            removed.zeroize();
            Some(v)
        } else if i < args.len() {
            Some(args.remove(i).into_encoded_bytes())
        } else {
            // Leave the bare flag for the parser, which reports the missing value.
            args.insert(i, OsString::from(flag));
            i += 1;
            None
        };
        if let Some(bytes) = value {
            if !out.flags_used.contains(&flag) {
                out.flags_used.push(flag);
            }
            found[which] = secret_from_bytes(bytes, flag, &mut out.problems);
        }
    }
    found
}

/// The argv and environ regions of this process as the kernel reports them in /proc/self/stat
/// (fields 48–51: arg_start, arg_end, env_start, env_end).
fn memory_regions() -> Result<[(usize, usize); 2], String> {
    let stat = fs::read_to_string("/proc/self/stat")
        .map_err(|e| format!("reading /proc/self/stat: {e}"))?;
    // Field 2 (comm) may hold spaces and parentheses: count fields after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed /proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<usize, String> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("field {n} missing from /proc/self/stat"))
    };
    Ok([(field(48)?, field(49)?), (field(50)?, field(51)?)])
}

/// Overwrites secret values in place in the argv and environ regions.
fn scrub_process_memory() -> Result<(), String> {
    let [args, env] = memory_regions()?;
    let (args, env) = (plausible(args)?, plausible(env)?);
    if let Some((start, len)) = args {
        // SAFETY: the kernel reports [arg_start, arg_end) as this process's own initial stack
        // bytes, mapped read-write for the whole process life (`plausible` checked that the
        // range is not empty and not reversed). We run before any other thread exists, and no
        // Rust reference points into these bytes: std keeps raw pointers to them and copies on
        // every `args()`/`var()` call.
        let argv = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, len) };
        scrub_argv(argv);
    }
    if let Some((start, len)) = env {
        // SAFETY: as above, for the environ region.
        let envp = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, len) };
        scrub_environ(envp);
    }
    Ok(())
}

/// A region from /proc/self/stat as (start, length); `None` when it is empty (`env -i` starts a
/// process with no environment at all: env_start == env_end, nothing to scrub). A reversed or
/// huge range is an error.
fn plausible((start, end): (usize, usize)) -> Result<Option<(usize, usize)>, String> {
    if end < start || end - start > 16 << 20 || start == 0 {
        return Err(format!("implausible region {start:#x}..{end:#x}"));
    }
    Ok((end > start).then_some((start, end - start)))
}

/// Zeroes the value of every `--enroll-token`/`--api-key` in a NUL-separated argv block.
pub(crate) fn scrub_argv(block: &mut [u8]) {
    let mut zero_next = false;
    let mut pos = 0;
    while pos < block.len() {
        let end = block[pos..]
            .iter()
            .position(|&b| b == 0)
            .map_or(block.len(), |n| pos + n);
        if zero_next {
            block[pos..end].fill(0);
            zero_next = false;
        } else if &block[pos..end] == b"--" {
            break;
        } else {
            for flag in SECRET_FLAGS {
                let f = flag.as_bytes();
                let entry = &block[pos..end];
                if entry == f {
                    zero_next = true;
                } else if entry.len() > f.len() && entry.starts_with(f) && entry[f.len()] == b'=' {
                    block[pos + f.len() + 1..end].fill(0);
                }
            }
        }
        pos = end + 1;
    }
}

/// Zeroes the value of every secret `NAME=value` entry in a NUL-separated environ block.
pub(crate) fn scrub_environ(block: &mut [u8]) {
    let mut pos = 0;
    while pos < block.len() {
        let end = block[pos..]
            .iter()
            .position(|&b| b == 0)
            .map_or(block.len(), |n| pos + n);
        for name in SECRET_ENVS {
            let n = name.as_bytes();
            let entry = &block[pos..end];
            if entry.len() > n.len() && entry.starts_with(n) && entry[n.len()] == b'=' {
                block[pos + n.len() + 1..end].fill(0);
            }
        }
        pos = end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("ABCDEFGHIJKLMNOPQRSTUVWX".into());
        assert_eq!(format!("{s}"), "<set, 24 chars>");
        assert_eq!(format!("{s:?}"), "<set, 24 chars>");
        assert!(!format!("{s:?}").contains("ABCD"));
    }

    #[test]
    fn argv_values_are_zeroed_both_forms() {
        let mut b =
            b"agent\0start\0--enroll-token\0SECRETONE\0--api-key=SECRETTWO\0--\0--api-key\0keep\0"
                .to_vec();
        scrub_argv(&mut b);
        let s = String::from_utf8_lossy(&b);
        assert!(!s.contains("SECRETONE"));
        assert!(!s.contains("SECRETTWO"));
        assert!(s.contains("--api-key=\0"));
        assert!(s.contains("keep"), "values after -- are not flags");
    }

    #[test]
    fn environ_values_are_zeroed_only_for_secret_names() {
        let mut b = b"PATH=/bin\0LINUXGUARD_ENROLL_TOKEN=TOKENBYTES\0LINUXGUARD_API_KEYX=keep\0LINUXGUARD_API_KEY=k3y\0".to_vec();
        scrub_environ(&mut b);
        let s = String::from_utf8_lossy(&b);
        assert!(!s.contains("TOKENBYTES"));
        assert!(!s.contains("k3y"));
        assert!(s.contains("PATH=/bin"));
        assert!(s.contains("LINUXGUARD_API_KEYX=keep"));
    }

    #[test]
    fn an_empty_region_is_nothing_to_scrub() {
        assert_eq!(plausible((0x7ffd_0000, 0x7ffd_0000)), Ok(None));
        assert_eq!(
            plausible((0x7ffd_0000, 0x7ffd_0010)),
            Ok(Some((0x7ffd_0000, 0x10)))
        );
        assert!(plausible((0x7ffd_0010, 0x7ffd_0000)).is_err());
        assert!(plausible((0x1000, 0x1000 + (32 << 20))).is_err());
        assert!(plausible((0, 0)).is_err());
    }

    #[test]
    fn flags_are_removed_from_args() {
        let mut args: Vec<OsString> = [
            "agent",
            "start",
            "--enroll-token",
            "T1",
            "--api-key=K1",
            "--server",
            "https://x",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let mut out = Secrets::default();
        let found = take_flag_values(&mut args, &mut out);
        assert_eq!(found[0].as_ref().map(Secret::expose), Some("T1"));
        assert_eq!(found[1].as_ref().map(Secret::expose), Some("K1"));
        assert_eq!(args, ["agent", "start", "--server", "https://x"]);
        assert_eq!(out.flags_used, ["--enroll-token", "--api-key"]);
    }

    #[test]
    fn secret_files_are_read_bounded_and_described_without_their_content() {
        let dir = std::env::temp_dir().join(format!("lg-secret-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        fs::write(&f, "ABCDEFGHIJKLMNOPQRSTUVWX\n").unwrap();
        assert_eq!(
            read_file(&f).unwrap().expose(),
            "ABCDEFGHIJKLMNOPQRSTUVWX\n"
        );
        assert_eq!(describe_file(&f), "<set, 24 chars>");
        // Through a symlink, as a projected volume presents it.
        let link = dir.join("link");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(read_file(&link).unwrap().chars(), 25);
        fs::write(&f, " \n").unwrap();
        assert_eq!(describe_file(&f), "<empty>");
        fs::write(&f, vec![b'a'; MAX_SECRET_FILE + 1]).unwrap();
        assert!(read_file(&f).unwrap_err().to_string().contains("larger"));
        fs::write(&f, [0xff, 0xfe]).unwrap();
        assert!(read_file(&f).unwrap_err().to_string().contains("UTF-8"));
        assert_eq!(describe_file(&dir.join("nope")), "<missing>");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bare_flag_at_end_is_left_for_the_parser() {
        let mut args: Vec<OsString> = ["agent", "start", "--enroll-token"]
            .iter()
            .map(OsString::from)
            .collect();
        let mut out = Secrets::default();
        let found = take_flag_values(&mut args, &mut out);
        assert!(found[0].is_none());
        assert_eq!(args, ["agent", "start", "--enroll-token"]);
    }
}
