//! Where the enrolment credential comes from — a token or API key (env or flag, scrubbed at
//! start), a token or API key file, or the projected Kubernetes service-account token
//! (`k8s_psat`) — and reading it when an enrolment needs it. Files are read into zeroizing
//! memory each time and dropped after use; nothing here logs a value.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::identity::token;
use crate::secret::{self, Secret};

/// The credential that authorises one enrolment.
pub enum Credential {
    /// A single-use TOTP token (normalized), sent as `enrollCode`.
    Token(Secret),
    /// A long-lived API key, sent as `Authorization: Bearer`.
    ApiKey(Secret),
    /// `k8s_psat`: the projected service-account token in this file, read at each attempt and
    /// sent as `attestation: {"type": "k8s_psat", "token": ...}`.
    ServiceAccount(PathBuf),
}

/// The literal hashed into the TLS cache tag for `k8s_psat` (contract v1.1): projected tokens
/// rotate every few minutes, and a rotation must not re-enrol.
pub const PSAT_TAG_SECRET: &str = "k8s_psat";

/// What kind of credential enrols this agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A single-use enrolment token: it enrols once; an expired identity needs a new one.
    Token,
    /// A long-lived API key: enrols again whenever needed.
    ApiKey,
    /// A projected service-account token: enrols again whenever needed.
    ServiceAccount,
    /// No credential at all: only a valid TLS cache can be used.
    None,
}

impl Kind {
    /// For `status` and log lines.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Token => "token",
            Kind::ApiKey => "api_key",
            Kind::ServiceAccount => "k8s_psat",
            Kind::None => "none",
        }
    }

    /// Whether an agent holding this kind enrols again by itself when its identity expires.
    pub fn reenrols(self) -> bool {
        matches!(self, Kind::ApiKey | Kind::ServiceAccount)
    }
}

/// Where the credential comes from (exactly one, or none).
pub enum Source {
    /// `LINUXGUARD_ENROLL_TOKEN` / `--enroll-token` (normalized).
    Token(Secret),
    /// `--enroll-token-file`.
    TokenFile(PathBuf),
    /// `LINUXGUARD_API_KEY` / `--api-key` (normalized).
    ApiKey(Secret),
    /// `--api-key-file`.
    ApiKeyFile(PathBuf),
    /// `--sa-token-file`: the projected service-account token.
    ServiceAccount(PathBuf),
    None,
}

impl Source {
    pub fn kind(&self) -> Kind {
        match self {
            Source::Token(_) | Source::TokenFile(_) => Kind::Token,
            Source::ApiKey(_) | Source::ApiKeyFile(_) => Kind::ApiKey,
            Source::ServiceAccount(_) => Kind::ServiceAccount,
            Source::None => Kind::None,
        }
    }

    /// Where the credential is read from, for log lines (never the value).
    pub fn describe(&self) -> String {
        match self {
            Source::Token(_) => "the enrolment token (LINUXGUARD_ENROLL_TOKEN)".into(),
            Source::TokenFile(p) => format!("the token in --enroll-token-file `{}`", p.display()),
            Source::ApiKey(_) => "the API key (LINUXGUARD_API_KEY)".into(),
            Source::ApiKeyFile(p) => format!("the API key in --api-key-file `{}`", p.display()),
            Source::ServiceAccount(p) => format!(
                "k8s_psat: the service-account token in --sa-token-file `{}`",
                p.display()
            ),
            Source::None => "no credential (none of the enrolment settings is set)".into(),
        }
    }

    /// The credential as it is now: read from its file when it has one. `Ok(None)`: the file
    /// does not exist or holds only whitespace (removed after enrolment, emptied, or not written
    /// yet). A file that exists but is unreadable or malformed is an error (configuration).
    pub fn current(&self) -> Result<Option<Credential>> {
        Ok(Some(match self {
            Source::Token(t) => Credential::Token(t.clone()),
            Source::ApiKey(k) => Credential::ApiKey(k.clone()),
            Source::TokenFile(p) => match read(p, "--enroll-token-file")? {
                Some(raw) => Credential::Token(
                    token::normalize_token(&raw)
                        .map_err(|e| e.context(format!("--enroll-token-file `{}`", p.display())))?,
                ),
                None => return Ok(None),
            },
            Source::ApiKeyFile(p) => match read(p, "--api-key-file")? {
                Some(raw) => Credential::ApiKey(
                    token::normalize_api_key(&raw)
                        .map_err(|e| e.context(format!("--api-key-file `{}`", p.display())))?,
                ),
                None => return Ok(None),
            },
            Source::ServiceAccount(p) => {
                // Checked here (present, a JWT) so a wrong path fails before any call; the
                // token itself is read again at each attempt.
                read_sa_token(p)?;
                Credential::ServiceAccount(p.clone())
            }
            Source::None => return Ok(None),
        }))
    }
}

/// A secret file, or `None` when it does not exist or holds only whitespace (systemd's
/// `SetCredential=` default when the token file was removed).
fn read(path: &Path, flag: &str) -> Result<Option<Secret>> {
    match secret::read_file(path) {
        Ok(s) if s.expose().trim().is_empty() => Ok(None),
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::config(format!(
            "failed to read {flag} `{}`: {e}",
            path.display()
        ))),
    }
}

/// Reads the projected service-account token: a JWT (three base64url parts), whitespace
/// around it removed. Errors say what is wrong with the file, never its content.
pub fn read_sa_token(path: &Path) -> Result<Secret> {
    let fix = "mount a projected serviceAccountToken volume with audience: linuxguard and point \
               --sa-token-file / LINUXGUARD_SA_TOKEN_FILE at its path";
    let raw = secret::read_file(path).map_err(|e| {
        Error::config(format!(
            "failed to read --sa-token-file `{}`: {e}; {fix}",
            path.display()
        ))
    })?;
    let t = raw.expose().trim();
    if t.is_empty() {
        return Err(Error::config(format!(
            "--sa-token-file `{}` is empty; {fix}",
            path.display()
        )));
    }
    let parts = t.split('.').count();
    let charset = t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if parts != 3 || !charset || t.split('.').any(str::is_empty) {
        return Err(Error::config(format!(
            "--sa-token-file `{}` does not hold a JWT (three base64url parts separated by dots); {fix}",
            path.display()
        )));
    }
    Ok(Secret::new(t.to_string()))
}

/// The secret hashed into the TLS cache tag for a credential.
pub fn tag_secret(c: &Credential) -> Secret {
    match c {
        Credential::Token(s) | Credential::ApiKey(s) => s.clone(),
        Credential::ServiceAccount(_) => Secret::new(PSAT_TAG_SECRET.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_when_asked_and_missing_files_are_none() {
        let dir = std::env::temp_dir().join(format!("lg-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        let src = Source::TokenFile(f.clone());
        assert!(src.current().unwrap().is_none());
        std::fs::write(&f, "\n").unwrap();
        assert!(
            src.current().unwrap().is_none(),
            "whitespace only: no token"
        );
        std::fs::write(&f, "abcd-efgh-ijkl-mnop-qrst-uvwx\n").unwrap();
        match src.current().unwrap() {
            Some(Credential::Token(t)) => assert_eq!(t.expose(), "ABCDEFGHIJKLMNOPQRSTUVWX"),
            _ => panic!("a token"),
        }
        std::fs::write(&f, "not a token!").unwrap();
        let e = src.current().err().unwrap().to_string();
        assert!(
            e.contains("--enroll-token-file") && e.contains("base32"),
            "{e}"
        );
        assert!(!e.contains("not a token"), "{e}");
        let sa = dir.join("sa");
        std::fs::write(&sa, "eyJh.eyJi.c2ln\n").unwrap();
        assert_eq!(read_sa_token(&sa).unwrap().expose(), "eyJh.eyJi.c2ln");
        std::fs::write(&sa, "hello world").unwrap();
        let e = read_sa_token(&sa).unwrap_err().to_string();
        assert!(
            e.contains("does not hold a JWT") && !e.contains("hello"),
            "{e}"
        );
        assert_eq!(
            tag_secret(&Credential::ServiceAccount(sa)).expose(),
            "k8s_psat"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
