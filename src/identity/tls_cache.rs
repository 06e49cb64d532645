//! The TLS cache (`--tls-cache DIR`): the enrolled identity on disk (dir 0700, files 0600,
//! atomic writes), the `.tag` that binds it to the credential and workload id, the workload id
//! it was issued for (a start with no credential), and the reuse-or-clear decision made at start.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::KeyPair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Context, Error, Kind, Result};
use crate::files::file_kind;
use crate::identity::enroll::Identity;
use crate::secret::Secret;

/// The identity: agent id, heartbeat interval, chain, CA bundle and key in ONE file, so that a
/// renewal replaces all of it with one atomic rename.
pub const IDENTITY_FILE: &str = "identity.json";
pub const TAG_FILE: &str = ".tag";
const MAX_FILE: u64 = 1 << 20;

/// `v1 ` + hex(sha256("linuxguard-tls-tag\0" + normalized secret + "\0" + workload id)).
pub fn tag(secret: &Secret, workload_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"linuxguard-tls-tag\0");
    h.update(secret.expose().as_bytes());
    h.update(b"\0");
    h.update(workload_id.as_bytes());
    let mut out = String::from("v1 ");
    for b in h.finalize() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Stored {
    version: u32,
    /// The workload id the identity was issued for: a start with no credential reuses the
    /// cache only for the same workload id (contract v1.1).
    workload_id: String,
    agent_id: String,
    heartbeat_interval_seconds: u64,
    certificate_chain: String,
    ca_bundle: String,
    /// PKCS#8 PEM.
    private_key: String,
}

/// `identity.json` as read: the same fields, but `privateKey` is borrowed raw from the
/// (zeroizing) file buffer. Its JSON string has `\n` escapes, which serde_json would decode
/// through an internal scratch buffer that is freed unwiped; [`unescape_key`] decodes it into a
/// zeroizing buffer instead.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Loaded<'a> {
    version: u32,
    /// Absent in caches written before v1.1 support: such a cache is reused only with a
    /// credential (its tag binds the workload id).
    #[serde(default)]
    workload_id: Option<String>,
    agent_id: String,
    heartbeat_interval_seconds: u64,
    certificate_chain: String,
    ca_bundle: String,
    #[serde(borrow)]
    private_key: &'a serde_json::value::RawValue,
}

pub struct TlsCache {
    dir: PathBuf,
    /// The tag of the credential in use; `None` when the agent started with no credential
    /// (then the tag on disk is kept as it is).
    tag: Option<String>,
    workload_id: String,
}

/// What [`TlsCache::load`] found.
pub enum Found {
    /// A valid identity for this credential (or, without one, this workload id): reuse it.
    Valid(Identity),
    /// This credential's (or workload's) identity, expired. Kept on disk: with a single-use
    /// token it records that the token is spent; the caller clears it when it enrols.
    Expired(Identity),
    /// Nothing usable; the cache is empty now (it was, or was cleared): enrol.
    Nothing,
    /// No credential to compare the tag with, and nothing for this workload id (left as it is,
    /// since nothing could replace it): why.
    Unmatched(String),
}

impl TlsCache {
    /// Creates `dir` (0700) if needed and checks it is a real directory owned by us. `tag`: the
    /// tag of the credential in use, if there is one.
    pub fn open(dir: &Path, tag: Option<String>, workload_id: &str) -> Result<TlsCache> {
        let shown = dir.display();
        if !dir.exists() {
            // Parents get the default mode (/run/linuxguard also holds the agent's socket); only
            // the cache directory itself is private.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).with_context(Kind::Config, || {
                    format!("failed to create `{}` for the TLS cache", parent.display())
                })?;
            }
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(Kind::Config, || {
                    format!("failed to create the TLS cache directory `{shown}` (--tls-cache)")
                })?;
        }
        let md = fs::symlink_metadata(dir).with_context(Kind::Config, || {
            format!("failed to inspect the TLS cache directory `{shown}`")
        })?;
        if !md.is_dir() {
            return Err(Error::config(format!(
                "--tls-cache `{shown}` is not a directory (symlinks are refused); point it at a directory such as /run/linuxguard/tls"
            )));
        }
        if md.uid() != nix::unistd::geteuid().as_raw() {
            return Err(Error::config(format!(
                "the TLS cache directory `{shown}` belongs to uid {}, not to this process: refusing to keep a private key there",
                md.uid()
            )));
        }
        if md.mode() & 0o777 != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(Kind::Config, || {
                    format!("failed to set mode 0700 on the TLS cache directory `{shown}`")
                })?;
        }
        Ok(TlsCache {
            dir: dir.to_path_buf(),
            tag,
            workload_id: workload_id.to_string(),
        })
    }

    /// The tag written with the next `store` (a new credential enrolled).
    pub fn set_tag(&mut self, tag: String) {
        self.tag = Some(tag);
    }

    /// The tag the cache is bound to, if known.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Looks at the cache at start. With a credential (`tag` set), as the contract says: the
    /// tag matches and the leaf is valid → reuse; tag differs, files missing or corrupt →
    /// clear; the leaf expired → clear, unless `keep_expired` (a single-use token: the files are
    /// the record that it is spent). Without a credential: reuse a valid identity issued for
    /// this workload id; an expired one is returned as is. Logs one line saying which case
    /// happened.
    pub fn load(&mut self, keep_expired: bool) -> Found {
        let shown = self.dir.display().to_string();
        let tag = read_small(&self.dir.join(TAG_FILE));
        let ident = read_small(&self.dir.join(IDENTITY_FILE));
        let missing = |r: &std::io::Result<Zeroizing<Vec<u8>>>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::NotFound);
        let empty = missing(&tag) && missing(&ident);
        let Some(want) = self.tag.clone() else {
            return self.load_by_workload(&shown, tag, ident, empty);
        };
        if empty {
            log::info!("TLS cache `{shown}`: empty; enrolling");
            return Found::Nothing;
        }
        let why = match (&tag, &ident) {
            // Something that is not a readable file (a FIFO, a directory): say so first.
            (_, Err(e)) if !missing(&ident) => format!("{IDENTITY_FILE} is unreadable ({e})"),
            (Ok(t), _) if String::from_utf8_lossy(t).trim_end() != want => {
                "the tag differs (the credential or the workload id changed)".to_string()
            }
            (Err(e), _) => format!("{TAG_FILE} is unreadable ({e})"),
            (Ok(_), Err(e)) => format!("{IDENTITY_FILE} is unreadable ({e})"),
            (Ok(_), Ok(bytes)) => match parse(bytes) {
                Err(e) => format!("{IDENTITY_FILE} is corrupt ({e})"),
                Ok((id, _)) if !id.is_valid_at(SystemTime::now()) => {
                    if keep_expired {
                        log::info!(
                            "TLS cache `{shown}`: the certificate of agent {} expired at {}; kept: \
                             the single-use token that enrolled it is spent",
                            id.agent_id,
                            humantime::format_rfc3339_seconds(id.not_after)
                        );
                        return Found::Expired(id);
                    }
                    format!(
                        "the certificate is not valid now (valid until {})",
                        humantime::format_rfc3339_seconds(id.not_after)
                    )
                }
                Ok((id, _)) => {
                    log::info!(
                        "TLS cache `{shown}`: reusing the identity of agent {} (certificate valid until {}); no enrolment call",
                        id.agent_id,
                        humantime::format_rfc3339_seconds(id.not_after)
                    );
                    return Found::Valid(id);
                }
            },
        };
        match self.clear() {
            Ok(()) => log::info!("TLS cache `{shown}`: {why}; cleared, enrolling afresh"),
            Err(e) => {
                log::warn!("TLS cache `{shown}`: {why}; clearing failed ({e}); enrolling afresh")
            }
        }
        Found::Nothing
    }

    /// `load` without a credential: matched by the workload id stored in the identity file.
    fn load_by_workload(
        &mut self,
        shown: &str,
        tag: std::io::Result<Zeroizing<Vec<u8>>>,
        ident: std::io::Result<Zeroizing<Vec<u8>>>,
        empty: bool,
    ) -> Found {
        if empty {
            return Found::Unmatched(format!("the TLS cache `{shown}` is empty"));
        }
        let parsed = match &ident {
            Err(e) => Err(format!("{IDENTITY_FILE} is unreadable ({e})")),
            Ok(bytes) => parse(bytes).map_err(|e| format!("{IDENTITY_FILE} is corrupt ({e})")),
        };
        let id = match parsed {
            Ok((id, Some(w))) if w == self.workload_id => id,
            Ok((_, Some(_))) => {
                return Found::Unmatched(format!(
                    "the TLS cache `{shown}` holds the identity of another workload id"
                ));
            }
            Ok((_, None)) => {
                return Found::Unmatched(format!(
                    "the TLS cache `{shown}` was written by an older agent and names no workload id"
                ));
            }
            Err(why) => return Found::Unmatched(format!("TLS cache `{shown}`: {why}")),
        };
        // Renewals rewrite the tag that is there, so a later start with the credential still
        // matches.
        if let Ok(t) = tag {
            let t = String::from_utf8_lossy(&t).trim_end().to_string();
            if t.starts_with("v1 ") {
                self.tag = Some(t);
            }
        }
        if id.is_valid_at(SystemTime::now()) {
            log::info!(
                "TLS cache `{shown}`: reusing the identity of agent {} (certificate valid until {}); \
                 no credential given: matched by workload id; no enrolment call",
                id.agent_id,
                humantime::format_rfc3339_seconds(id.not_after)
            );
            Found::Valid(id)
        } else {
            log::info!(
                "TLS cache `{shown}`: the certificate of agent {} expired at {} and no credential \
                 is given to enrol again",
                id.agent_id,
                humantime::format_rfc3339_seconds(id.not_after)
            );
            Found::Expired(id)
        }
    }

    /// Writes the identity (then the tag) atomically.
    pub fn store(&self, id: &Identity) -> Result<()> {
        let stored = Zeroizing::new(Stored {
            version: 1,
            workload_id: self.workload_id.clone(),
            agent_id: id.agent_id.clone(),
            heartbeat_interval_seconds: id.heartbeat_interval.as_secs(),
            certificate_chain: id.chain_pem.clone(),
            ca_bundle: id.ca_pem.clone(),
            private_key: id.key.serialize_pem(),
        });
        let mut buf = Zeroizing::new(Vec::with_capacity(16 * 1024));
        serde_json::to_writer_pretty(&mut *buf, &*stored)
            .context(Kind::Runtime, "failed to encode the TLS cache")?;
        self.write_atomic(IDENTITY_FILE, &buf)?;
        match &self.tag {
            Some(t) => self.write_atomic(TAG_FILE, t.as_bytes()),
            None => Ok(()),
        }
    }

    /// Removes the files this agent writes (other files in the directory are left alone, so a
    /// mistaken `--tls-cache /etc` cannot wipe a directory).
    pub fn clear(&self) -> Result<()> {
        let entries = fs::read_dir(&self.dir).with_context(Kind::Runtime, || {
            format!("failed to list the TLS cache `{}`", self.dir.display())
        })?;
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let ours = name == IDENTITY_FILE
                || name == TAG_FILE
                || (name.starts_with('.') && name.ends_with(".tmp"));
            if ours {
                fs::remove_file(e.path()).with_context(Kind::Runtime, || {
                    format!("failed to remove `{}`", e.path().display())
                })?;
            }
        }
        sync_dir(&self.dir)
    }

    /// temp file (0600, O_EXCL|O_NOFOLLOW) → write → fsync → rename → fsync the directory.
    /// On any failure the temp file (which may hold the private key) is removed.
    fn write_atomic(&self, name: &str, data: &[u8]) -> Result<()> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let dst = self.dir.join(name);
        // Something other than a file where the file goes (a directory, a FIFO): rename would
        // fail after the key was written; say what is wrong before writing anything.
        if let Ok(md) = fs::symlink_metadata(&dst) {
            if !md.is_file() {
                return Err(Error::runtime(format!(
                    "cannot write `{}`: it is {}, not a file; remove it",
                    dst.display(),
                    file_kind(&md)
                )));
            }
        }
        let _ = fs::remove_file(&tmp);
        let ctx = || format!("failed to write `{}`", dst.display());
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&tmp)
            .with_context(Kind::Runtime, ctx)?;
        let written = f
            .write_all(data)
            .and_then(|()| f.sync_all())
            .and_then(|()| {
                drop(f);
                fs::rename(&tmp, &dst)
            });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(Kind::Runtime, ctx);
        }
        sync_dir(&self.dir)
    }
}

/// Only the key PEM is secret; it is wiped when the value is dropped.
impl zeroize::Zeroize for Stored {
    fn zeroize(&mut self) {
        self.private_key.zeroize();
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(Kind::Runtime, || {
            format!("failed to fsync `{}`", dir.display())
        })
}

/// Reads one of the cache's files. Only a regular file is read: O_NONBLOCK so that opening a
/// FIFO (or a device) planted in the cache returns at once instead of waiting for a writer
/// (a start that hangs silently and ignores SIGTERM), O_NOFOLLOW for symlinks.
fn read_small(path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(path)?;
    let md = f.metadata()?;
    if !md.is_file() {
        return Err(std::io::Error::other(format!(
            "not a regular file ({})",
            file_kind(&md)
        )));
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(16 * 1024));
    f.take(MAX_FILE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other("larger than 1 MiB"));
    }
    Ok(buf)
}

/// Decodes a raw JSON string token (quotes included) into a zeroizing buffer sized up front, so
/// the key is never copied anywhere that is freed unwiped. A PEM is ASCII: only the escapes
/// JSON writers use for ASCII are accepted (`\n \r \t \" \\ \/ \b \f \u00XX`).
fn unescape_key(raw: &str) -> std::result::Result<Zeroizing<String>, String> {
    let inner = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .ok_or("privateKey is not a string")?;
    let mut out = Zeroizing::new(String::with_capacity(inner.len()));
    let mut bytes = inner.bytes();
    while let Some(b) = bytes.next() {
        let c = if b == b'\\' {
            match bytes.next() {
                Some(b'n') => b'\n',
                Some(b'r') => b'\r',
                Some(b't') => b'\t',
                Some(b'b') => 0x08,
                Some(b'f') => 0x0c,
                Some(e @ (b'"' | b'\\' | b'/')) => e,
                Some(b'u') => {
                    let mut v = 0u32;
                    for _ in 0..4 {
                        let d = bytes
                            .next()
                            .and_then(|h| char::from(h).to_digit(16))
                            .ok_or("privateKey has a bad \\u escape")?;
                        v = v * 16 + d;
                    }
                    u8::try_from(v)
                        .ok()
                        .filter(u8::is_ascii)
                        .ok_or("privateKey has a non-ASCII character; a PEM is ASCII")?
                }
                _ => return Err("privateKey has a bad escape".into()),
            }
        } else if b.is_ascii() {
            b
        } else {
            return Err("privateKey has a non-ASCII character; a PEM is ASCII".into());
        };
        out.push(char::from(c));
    }
    Ok(out)
}

/// The identity in `identity.json`, and the workload id it names (if any).
fn parse(bytes: &[u8]) -> std::result::Result<(Identity, Option<String>), String> {
    let s: Loaded =
        serde_json::from_slice(bytes).map_err(|e| format!("not the expected JSON: {e}"))?;
    let pem = unescape_key(s.private_key.get())?;
    if s.version != 1 {
        return Err(format!("unknown version {}", s.version));
    }
    let key = KeyPair::from_pem(&pem).map_err(|e| format!("privateKey: {e}"))?;
    let id = Identity::assemble(
        s.agent_id,
        s.certificate_chain,
        s.ca_bundle,
        s.heartbeat_interval_seconds,
        key,
    )?;
    Ok((id, s.workload_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_has_the_contract_form() {
        let s = Secret::new("ABCDEFGHIJKLMNOPQRSTUVWX".into());
        let t = tag(&s, "ab");
        let want = crate::identity::workload::sha256_hex(
            b"linuxguard-tls-tag\0ABCDEFGHIJKLMNOPQRSTUVWX\0ab",
        );
        assert_eq!(t, format!("v1 {want}"));
        assert!(!t.contains("ABCDEF"));
        assert_ne!(t, tag(&s, "ac"));
    }

    #[test]
    fn dir_and_files_are_private_and_clear_spares_foreign_files() {
        let base = std::env::temp_dir().join(format!("lg-tlscache-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let dir = base.join("tls");
        let mut c = TlsCache::open(&dir, Some("v1 00".into()), "w").unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        c.write_atomic(TAG_FILE, b"v1 00").unwrap();
        assert_eq!(
            fs::metadata(dir.join(TAG_FILE)).unwrap().mode() & 0o777,
            0o600
        );
        fs::write(dir.join("keep.txt"), b"x").unwrap();
        // A tag without an identity is corrupt: cleared.
        assert!(matches!(c.load(false), Found::Nothing));
        assert!(!dir.join(TAG_FILE).exists());
        assert!(dir.join("keep.txt").exists());
        fs::remove_dir_all(&base).unwrap();
    }

    fn identity() -> Identity {
        identity_valid_until(None)
    }

    /// An identity whose leaf ended at `ended` (default: valid for years).
    fn identity_valid_until(ended: Option<std::time::SystemTime>) -> Identity {
        let key = crate::identity::enroll::new_key().unwrap();
        let ca_key = crate::identity::enroll::new_key().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let mut lp = rcgen::CertificateParams::new(vec!["agent".into()]).unwrap();
        if let Some(end) = ended {
            lp.not_before = (end - std::time::Duration::from_secs(60)).into();
            lp.not_after = end.into();
        }
        let leaf = lp.signed_by(&key, &issuer).unwrap();
        let chain = format!("{}{}", leaf.pem(), ca.pem());
        Identity::assemble("a-1".into(), chain, ca.pem(), 30, key).unwrap()
    }

    #[test]
    fn an_expired_identity_is_kept_for_a_spent_token_and_cleared_otherwise() {
        let base = std::env::temp_dir().join(format!("lg-tlsexp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let dir = base.join("tls");
        let ended = SystemTime::now() - std::time::Duration::from_secs(3600);
        let store = || {
            TlsCache::open(&dir, Some("v1 33".into()), "w1")
                .unwrap()
                .store(&identity_valid_until(Some(ended)))
                .unwrap()
        };
        store();
        // A single-use token: kept as the record that the token is spent.
        let mut c = TlsCache::open(&dir, Some("v1 33".into()), "w1").unwrap();
        assert!(matches!(c.load(true), Found::Expired(_)));
        assert!(dir.join(IDENTITY_FILE).exists());
        // No credential: the same workload's expired identity is returned, files kept.
        let mut bare = TlsCache::open(&dir, None, "w1").unwrap();
        assert!(matches!(bare.load(false), Found::Expired(_)));
        assert!(dir.join(IDENTITY_FILE).exists());
        // An API key or k8s_psat: cleared, enrol afresh (the contract's rule).
        let mut c = TlsCache::open(&dir, Some("v1 33".into()), "w1").unwrap();
        assert!(matches!(c.load(false), Found::Nothing));
        assert!(!dir.join(IDENTITY_FILE).exists());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn store_then_load_round_trips_the_key() {
        let base = std::env::temp_dir().join(format!("lg-tlsround-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let c = TlsCache::open(&base.join("tls"), Some("v1 11".into()), "w1").unwrap();
        let id = identity();
        c.store(&id).unwrap();
        let mut again = TlsCache::open(&base.join("tls"), Some("v1 11".into()), "w1").unwrap();
        let Found::Valid(back) = again.load(false) else {
            panic!("reused")
        };
        assert_eq!(back.agent_id, "a-1");
        assert_eq!(*back.key_pem(), *id.key_pem());
        // No credential: the same workload id reuses it (and keeps the tag on disk for the
        // next store); another workload id does not, and the files stay.
        let mut bare = TlsCache::open(&base.join("tls"), None, "w1").unwrap();
        assert!(matches!(bare.load(false), Found::Valid(_)));
        assert_eq!(bare.tag(), Some("v1 11"));
        let mut other = TlsCache::open(&base.join("tls"), None, "w2").unwrap();
        match other.load(false) {
            Found::Unmatched(why) => assert!(why.contains("another workload"), "{why}"),
            _ => panic!("unmatched"),
        }
        assert!(base.join("tls").join(IDENTITY_FILE).exists());
        // Another credential: the tag differs, cleared.
        let mut rotated = TlsCache::open(&base.join("tls"), Some("v1 22".into()), "w1").unwrap();
        assert!(matches!(rotated.load(true), Found::Nothing));
        assert!(!base.join("tls").join(IDENTITY_FILE).exists());
        fs::remove_dir_all(&base).unwrap();
    }

    /// What `store` writes for `id`, as the file's struct.
    fn stored_of(id: &Identity) -> Zeroizing<Stored> {
        Zeroizing::new(Stored {
            version: 1,
            workload_id: "w".into(),
            agent_id: "a-1".into(),
            heartbeat_interval_seconds: 30,
            certificate_chain: id.chain_pem.clone(),
            ca_bundle: id.ca_pem.clone(),
            private_key: id.key_pem().to_string(),
        })
    }

    #[test]
    fn other_json_escapes_of_the_key_are_read_and_bad_ones_refused() {
        let id = identity();
        let pem = id.key_pem();
        let stored = stored_of(&id);
        let json = Zeroizing::new(serde_json::to_string(&*stored).unwrap());
        assert!(json.contains(r"\n"), "the file format has escapes");
        // Another writer's escapes for the same text.
        let other = json
            .replacen(r"\n", r"\u000a", 1)
            .replacen(r"\n", r"\u000A", 1)
            .replace('/', r"\/");
        assert!(other.contains(r"\u000a") && other.contains(r"\/"));
        for text in [json.as_str(), other.as_str()] {
            let (back, _) = parse(text.as_bytes()).expect("parsed");
            assert_eq!(*back.key_pem(), *pem);
        }
        assert_eq!(*unescape_key(r#""a\/b\"c\\d\tz""#).unwrap(), "a/b\"c\\d\tz");
        for bad in [
            r#""\u00e9""#,
            r#""\x""#,
            r#""\u12""#,
            "\"\u{e9}\"",
            "12",
            r#""a"#,
        ] {
            assert!(unescape_key(bad).is_err(), "{bad}");
        }
    }

    /// Counts freed heap blocks holding a marker, on the watching thread only.
    mod freed {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static NEEDLE: Cell<Option<(*const u8, usize)>> = const { Cell::new(None) };
            static HITS: Cell<usize> = const { Cell::new(0) };
        }

        pub struct Scanning;

        // SAFETY: every call is forwarded to `System` unchanged; `dealloc` only reads the block
        // it is given (valid for `layout.size()` bytes until it is freed) and the needle, which
        // the watching thread keeps alive while it is set.
        unsafe impl GlobalAlloc for Scanning {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                // SAFETY: forwarded with the caller's layout.
                unsafe { System.alloc(layout) }
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                if let Some((np, nl)) = NEEDLE.try_with(Cell::get).ok().flatten() {
                    // SAFETY: see the impl's comment.
                    let (block, needle) = unsafe {
                        (
                            std::slice::from_raw_parts(ptr, layout.size()),
                            std::slice::from_raw_parts(np, nl),
                        )
                    };
                    if block.windows(nl).any(|w| w == needle) {
                        let _ = HITS.try_with(|h| h.set(h.get() + 1));
                    }
                }
                // SAFETY: forwarded with the caller's pointer and layout.
                unsafe { System.dealloc(ptr, layout) }
            }
        }

        #[global_allocator]
        static ALLOC: Scanning = Scanning;

        /// Runs `f` and returns how many blocks it freed that still held `needle`.
        pub fn count(needle: &[u8], f: impl FnOnce()) -> usize {
            HITS.with(|h| h.set(0));
            NEEDLE.with(|n| n.set(Some((needle.as_ptr(), needle.len()))));
            f();
            NEEDLE.with(|n| n.set(None));
            HITS.with(Cell::get)
        }
    }

    #[test]
    fn reading_the_cache_frees_no_unwiped_copy_of_the_key() {
        let id = identity();
        let pem = id.key_pem();
        let stored = stored_of(&id);
        let bytes = Zeroizing::new(serde_json::to_vec_pretty(&*stored).unwrap());
        // The key's second PEM line (base64, 64 chars), which sits after the first `\n`.
        let needle = Zeroizing::new(pem.lines().nth(2).unwrap().as_bytes().to_vec());
        assert!(needle.len() >= 16);
        // The old way (a `String` field): serde_json's scratch buffer keeps the key.
        let old = freed::count(&needle, || {
            let s: Stored = serde_json::from_slice(&bytes).unwrap();
            drop(Zeroizing::new(s));
        });
        assert!(old > 0, "the check sees the scratch copy");
        let new = freed::count(&needle, || {
            let l: Loaded = serde_json::from_slice(&bytes).unwrap();
            let key = unescape_key(l.private_key.get()).unwrap();
            assert_eq!(*key, *pem);
        });
        assert_eq!(new, 0, "an unwiped copy of the key was freed");
    }
}
