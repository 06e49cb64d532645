//! The TLS cache (`--tls-cache DIR`): the enrolled identity on disk (dir 0700, files 0600,
//! atomic writes), the `.tag` that binds it to the credential and workload id, and the
//! reuse-or-clear decision made at start.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::KeyPair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::enroll::Identity;
use crate::error::{Context, Error, Kind, Result};
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
    agent_id: String,
    heartbeat_interval_seconds: u64,
    certificate_chain: String,
    ca_bundle: String,
    /// PKCS#8 PEM.
    private_key: String,
}

pub struct TlsCache {
    dir: PathBuf,
    tag: String,
}

impl TlsCache {
    /// Creates `dir` (0700) if needed and checks it is a real directory owned by us.
    pub fn open(dir: &Path, tag: String) -> Result<TlsCache> {
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
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached identity when the tag matches and the leaf is valid now; otherwise clears the
    /// cache. Logs one line saying which case happened.
    pub fn load(&self) -> Option<Identity> {
        let shown = self.dir.display();
        let tag = read_small(&self.dir.join(TAG_FILE));
        let ident = read_small(&self.dir.join(IDENTITY_FILE));
        let why = match (&tag, &ident) {
            (Err(e), Err(_)) if e.kind() == std::io::ErrorKind::NotFound => {
                log::info!("TLS cache `{shown}`: empty; enrolling");
                return None;
            }
            (Ok(t), _) if String::from_utf8_lossy(t).trim_end() != self.tag => {
                "the tag differs (the token/API key or the workload id changed)".to_string()
            }
            (Err(e), _) => format!("{TAG_FILE} is unreadable ({e})"),
            (Ok(_), Err(e)) => format!("{IDENTITY_FILE} is unreadable ({e})"),
            (Ok(_), Ok(bytes)) => match parse(bytes) {
                Err(e) => format!("{IDENTITY_FILE} is corrupt ({e})"),
                Ok(id) if !id.is_valid_at(SystemTime::now()) => format!(
                    "the certificate is not valid now (valid until {})",
                    humantime::format_rfc3339_seconds(id.not_after)
                ),
                Ok(id) => {
                    log::info!(
                        "TLS cache `{shown}`: reusing the identity of agent {} (certificate valid until {}); no enrolment call",
                        id.agent_id,
                        humantime::format_rfc3339_seconds(id.not_after)
                    );
                    return Some(id);
                }
            },
        };
        match self.clear() {
            Ok(()) => log::info!("TLS cache `{shown}`: {why}; cleared, enrolling afresh"),
            Err(e) => {
                log::warn!("TLS cache `{shown}`: {why}; clearing failed ({e}); enrolling afresh")
            }
        }
        None
    }

    /// Writes the identity (then the tag) atomically.
    pub fn store(&self, id: &Identity) -> Result<()> {
        let stored = Zeroizing::new(Stored {
            version: 1,
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
        self.write_atomic(TAG_FILE, self.tag.as_bytes())
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
    fn write_atomic(&self, name: &str, data: &[u8]) -> Result<()> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let dst = self.dir.join(name);
        let _ = fs::remove_file(&tmp);
        let ctx = || format!("failed to write `{}`", dst.display());
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&tmp)
            .with_context(Kind::Runtime, ctx)?;
        f.write_all(data).with_context(Kind::Runtime, ctx)?;
        f.sync_all().with_context(Kind::Runtime, ctx)?;
        drop(f);
        fs::rename(&tmp, &dst).with_context(Kind::Runtime, ctx)?;
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

fn read_small(path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)?;
    let mut buf = Zeroizing::new(Vec::with_capacity(16 * 1024));
    f.take(MAX_FILE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other("larger than 1 MiB"));
    }
    Ok(buf)
}

fn parse(bytes: &[u8]) -> std::result::Result<Identity, String> {
    let s: Stored =
        serde_json::from_slice(bytes).map_err(|e| format!("not the expected JSON: {e}"))?;
    let pem = Zeroizing::new(s.private_key);
    if s.version != 1 {
        return Err(format!("unknown version {}", s.version));
    }
    let key = KeyPair::from_pem(&pem).map_err(|e| format!("privateKey: {e}"))?;
    Identity::assemble(
        s.agent_id,
        s.certificate_chain,
        s.ca_bundle,
        s.heartbeat_interval_seconds,
        key,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_has_the_contract_form() {
        let s = Secret::new("ABCDEFGHIJKLMNOPQRSTUVWX".into());
        let t = tag(&s, "ab");
        let want = crate::identity::sha256_hex(b"linuxguard-tls-tag\0ABCDEFGHIJKLMNOPQRSTUVWX\0ab");
        assert_eq!(t, format!("v1 {want}"));
        assert!(!t.contains("ABCDEF"));
        assert_ne!(t, tag(&s, "ac"));
    }

    #[test]
    fn dir_and_files_are_private_and_clear_spares_foreign_files() {
        let base = std::env::temp_dir().join(format!("lg-tlscache-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let dir = base.join("tls");
        let c = TlsCache::open(&dir, "v1 00".into()).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        c.write_atomic(TAG_FILE, b"v1 00").unwrap();
        assert_eq!(
            fs::metadata(dir.join(TAG_FILE)).unwrap().mode() & 0o777,
            0o600
        );
        fs::write(dir.join("keep.txt"), b"x").unwrap();
        // A tag without an identity is corrupt: cleared.
        assert!(c.load().is_none());
        assert!(!dir.join(TAG_FILE).exists());
        assert!(dir.join("keep.txt").exists());
        fs::remove_dir_all(&base).unwrap();
    }
}
