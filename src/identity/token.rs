//! Enrolment token and API key: syntax checks and the normalized form sent to the backend and
//! hashed into the TLS cache tag. Error messages describe the rule that failed, never the value.

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// Token length without dashes (base32 of 15 to 20 bytes).
pub const TOKEN_MIN: usize = 24;
pub const TOKEN_MAX: usize = 32;
/// API key length bounds (printable ASCII, no spaces).
pub const API_KEY_MIN: usize = 16;
pub const API_KEY_MAX: usize = 512;

/// Checks a TOTP enrolment token and returns it upper-cased with dashes removed.
///
/// Rules: base32 alphabet A–Z and 2–7 (lower case accepted), optional dashes, 24–32 characters
/// once dashes are removed. Leading/trailing whitespace (a newline from `kubectl create secret
/// --from-file`) is ignored.
pub fn normalize_token(raw: &Secret) -> Result<Secret> {
    let how = "set LINUXGUARD_ENROLL_TOKEN to the token shown by the LinuxGuard console";
    let mut out = Zeroizing::new(String::with_capacity(TOKEN_MAX));
    for (i, c) in raw.expose().trim().chars().enumerate() {
        match c {
            '-' => {}
            'a'..='z' | 'A'..='Z' | '2'..='7' => {
                if out.len() == TOKEN_MAX {
                    return Err(Error::config(format!(
                        "the enrolment token is too long: it must be {TOKEN_MIN} to {TOKEN_MAX} characters without dashes; {how}"
                    )));
                }
                out.push(c.to_ascii_uppercase());
            }
            _ => {
                return Err(Error::config(format!(
                    "the enrolment token has a character outside the base32 alphabet (A-Z, 2-7, optional dashes) at position {}; {how}",
                    i + 1
                )));
            }
        }
    }
    if out.is_empty() {
        return Err(Error::config(format!(
            "the enrolment token is empty; {how}"
        )));
    }
    if out.len() < TOKEN_MIN {
        return Err(Error::config(format!(
            "the enrolment token is too short: {} characters without dashes, it must be {TOKEN_MIN} to {TOKEN_MAX}; {how}",
            out.len()
        )));
    }
    Ok(Secret::new(std::mem::take(&mut *out)))
}

/// Checks an API key: 16–512 printable ASCII characters without spaces, compared exactly
/// (case matters). Surrounding whitespace is ignored.
pub fn normalize_api_key(raw: &Secret) -> Result<Secret> {
    let how = "set LINUXGUARD_API_KEY to the key shown by the LinuxGuard console";
    let v = raw.expose().trim();
    if let Some(i) = v.chars().position(|c| !c.is_ascii_graphic()) {
        return Err(Error::config(format!(
            "the API key has a space, control or non-ASCII character at position {}; {how}",
            i + 1
        )));
    }
    if !(API_KEY_MIN..=API_KEY_MAX).contains(&v.len()) {
        return Err(Error::config(format!(
            "the API key must be {API_KEY_MIN} to {API_KEY_MAX} characters, it has {}; {how}",
            v.len()
        )));
    }
    Ok(Secret::new(v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(s: &str) -> Result<Secret> {
        normalize_token(&Secret::new(s.into()))
    }

    #[test]
    fn token_is_upper_cased_and_dashes_removed() {
        let t = tok(" abcd-efgh-ijkl-mnop-qrst-uvwx\n").unwrap();
        assert_eq!(t.expose(), "ABCDEFGHIJKLMNOPQRSTUVWX");
        assert_eq!(tok("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567").unwrap().chars(), 32);
    }

    #[test]
    fn token_errors_name_the_rule_and_never_the_value() {
        let e = tok("ABCDEFGHIJKLMNOPQRSTUVW1").unwrap_err().to_string();
        assert!(e.contains("base32") && e.contains("position 24"), "{e}");
        assert!(!e.contains("ABCDEF"), "{e}");
        let e = tok("ABCDEFGH").unwrap_err().to_string();
        assert!(e.contains("too short") && !e.contains("ABCDEFGH"), "{e}");
        let e = tok("ABCDEFGHIJKLMNOPQRSTUVWXYZ2345672")
            .unwrap_err()
            .to_string();
        assert!(e.contains("too long"), "{e}");
        assert!(tok("---").unwrap_err().to_string().contains("empty"));
        assert_eq!(tok("x").unwrap_err().kind(), crate::error::Kind::Config);
    }

    #[test]
    fn api_key_rules() {
        let k = |s: &str| normalize_api_key(&Secret::new(s.into()));
        assert_eq!(
            k(" lg_live_0123456789abcdef\n").unwrap().expose(),
            "lg_live_0123456789abcdef"
        );
        let e = k("lg_live_0123 456789abcdef").unwrap_err().to_string();
        assert!(e.contains("position 13") && !e.contains("lg_live"), "{e}");
        assert!(k("short").unwrap_err().to_string().contains("16 to 512"));
    }
}
