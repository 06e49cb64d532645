//! `k8s_psat` (contract v1.1): verifying a Kubernetes projected service-account token — a JWT
//! signed by the cluster's service-account issuer — against the JWKS a tenant trusts: RS256 and
//! ES256 signatures (`ring`), the key chosen by `kid`, `aud` containing `linuxguard`, `exp` and
//! `nbf` with 60 s of clock skew, and the `kubernetes.io` pod and node claims.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::Value;

/// The audience a token must name.
pub const AUDIENCE: &str = "linuxguard";
/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const SKEW_SECS: u64 = 60;
/// A token longer than this is refused before it is decoded.
const MAX_TOKEN: usize = 16 * 1024;
/// A JWKS file larger than this is refused.
const MAX_JWKS: u64 = 1 << 20;

/// One verification key.
#[derive(Debug, Clone)]
enum Material {
    /// RS256: modulus and exponent, big-endian without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// ES256: the uncompressed P-256 point `04 || x || y`.
    P256(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    material: Material,
}

/// The service-account issuer keys one tenant trusts.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

fn b64(field: &str, s: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("{field} is not base64url"))
}

fn strip_leading_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros.min(v.len().saturating_sub(1)));
    v
}

impl Jwks {
    /// Parses a JWKS (`{"keys": [...]}`). RSA keys (`n`, `e`) and EC P-256 keys (`x`, `y`) are
    /// kept; keys for encryption (`"use": "enc"`) or other curves and types are skipped; a set
    /// with no usable key is an error.
    pub fn parse(text: &str) -> Result<Jwks, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let keys = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("no \"keys\" array")?;
        let mut out = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let s = |f: &str| k.get(f).and_then(Value::as_str);
            if s("use").is_some_and(|u| u != "sig") {
                continue;
            }
            let field = |f: &str| -> Result<Vec<u8>, String> {
                let v = s(f).ok_or_else(|| format!("key {i}: \"{f}\" is missing"))?;
                b64(&format!("key {i}: \"{f}\""), v)
            };
            let material = match (s("kty"), s("crv")) {
                (Some("RSA"), _) => Material::Rsa {
                    n: strip_leading_zeros(field("n")?),
                    e: strip_leading_zeros(field("e")?),
                },
                (Some("EC"), Some("P-256")) => {
                    let (x, y) = (field("x")?, field("y")?);
                    if x.len() != 32 || y.len() != 32 {
                        return Err(format!("key {i}: P-256 \"x\"/\"y\" must be 32 bytes each"));
                    }
                    let mut point = vec![0x04];
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    Material::P256(point)
                }
                _ => continue,
            };
            out.push(Jwk {
                kid: s("kid").map(str::to_string),
                material,
            });
        }
        if out.is_empty() {
            return Err("no RSA or EC P-256 signing key in \"keys\"".into());
        }
        Ok(Jwks { keys: out })
    }

    pub fn load(path: &Path) -> Result<Jwks, String> {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_JWKS + 1).read_to_string(&mut text))
            .map_err(|e| format!("failed to read JWKS `{}`: {e}", path.display()))?;
        if text.len() as u64 > MAX_JWKS {
            return Err(format!("JWKS `{}` is larger than 1 MiB", path.display()));
        }
        Jwks::parse(&text).map_err(|e| format!("JWKS `{}`: {e}", path.display()))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

/// What a verified token says about the pod that presented it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub pod_uid: String,
    pub node_name: Option<String>,
    /// `system:serviceaccount:<namespace>:<name>`, for the log line.
    pub subject: String,
}

/// Verifies `token` against `jwks` at unix time `now`. The error is the reason for the 401
/// (`service account token rejected: <reason>`); it never quotes the token.
pub fn verify(jwks: &Jwks, token: &str, now: u64) -> Result<Verified, String> {
    if token.len() > MAX_TOKEN {
        return Err(format!("longer than {MAX_TOKEN} bytes"));
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT (three base64url parts separated by dots)".into());
    };
    let header: Value = serde_json::from_slice(&b64("the header", h64)?)
        .map_err(|_| "the header is not JSON".to_string())?;
    let sig = b64("the signature", s64)?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("none");
    let kid = header.get("kid").and_then(Value::as_str);
    let signed = &token.as_bytes()[..h64.len() + 1 + p64.len()];
    let candidates: Vec<&Jwk> = jwks
        .keys
        .iter()
        .filter(|k| kid.is_none_or(|want| k.kid.as_deref() == Some(want)))
        .filter(|k| {
            matches!(
                (alg, &k.material),
                ("RS256", Material::Rsa { .. }) | ("ES256", Material::P256(_))
            )
        })
        .collect();
    if !matches!(alg, "RS256" | "ES256") {
        return Err(format!("algorithm {alg:?} is not RS256 or ES256"));
    }
    if candidates.is_empty() {
        return Err(match kid {
            Some(k) => format!("no trusted {alg} key with kid {k:?}"),
            None => format!("no trusted {alg} key"),
        });
    }
    let good = candidates.iter().any(|k| match &k.material {
        Material::Rsa { n, e } => RsaPublicKeyComponents { n, e }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, &sig)
            .is_ok(),
        Material::P256(point) => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
            .verify(signed, &sig)
            .is_ok(),
    });
    if !good {
        return Err("the signature does not verify against the tenant's issuer keys".into());
    }
    let claims: Value = serde_json::from_slice(&b64("the payload", p64)?)
        .map_err(|_| "the payload is not JSON".to_string())?;
    check_claims(&claims, now)
}

/// `aud`, `exp`, `nbf` and the `kubernetes.io` claims of a signature-checked token.
fn check_claims(c: &Value, now: u64) -> Result<Verified, String> {
    let aud_ok = match c.get("aud") {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(AUDIENCE)),
        _ => false,
    };
    if !aud_ok {
        return Err(format!(
            "the audience does not contain {AUDIENCE:?} (project the token with audience: {AUDIENCE})"
        ));
    }
    let time = |k: &str| -> Result<Option<u64>, String> {
        match c.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .map(Some)
                .ok_or_else(|| format!("\"{k}\" is not a number")),
        }
    };
    let exp = time("exp")?.ok_or("no \"exp\" claim")?;
    if now > exp + SKEW_SECS {
        return Err(format!("expired {} s ago", now - exp));
    }
    if let Some(nbf) = time("nbf")? {
        if now + SKEW_SECS < nbf {
            return Err(format!("not valid for another {} s (nbf)", nbf - now));
        }
    }
    let k8s = c
        .get("kubernetes.io")
        .filter(|v| v.is_object())
        .ok_or("no \"kubernetes.io\" claim (not a Kubernetes service-account token)")?;
    let pod_uid = k8s
        .pointer("/pod/uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or("no pod.uid claim: the token is not bound to a pod (use a projected volume)")?;
    let node_name = k8s
        .pointer("/node/name")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Verified {
        pod_uid: pod_uid.to_string(),
        node_name,
        subject: c
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or("(no sub)")
            .to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn es256() -> (EcdsaKeyPair, Jwks) {
        let rng = SystemRandom::new();
        let pk8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pk8.as_ref(), &rng).unwrap();
        let p = kp.public_key().as_ref();
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..])}]});
        (kp, Jwks::parse(&jwks.to_string()).unwrap())
    }

    fn mint(kp: &EcdsaKeyPair, header: Value, claims: Value) -> String {
        let signing = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = kp.sign(&SystemRandom::new(), signing.as_bytes()).unwrap();
        format!("{signing}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn claims() -> Value {
        json!({"aud": ["linuxguard"], "exp": NOW + 600, "iat": NOW, "nbf": NOW,
            "iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:lg:agent",
            "kubernetes.io": {"namespace": "lg", "pod": {"name": "p", "uid": "u-1"},
                "node": {"name": "n1", "uid": "nu"}, "serviceaccount": {"name": "agent", "uid": "s"}}})
    }

    #[test]
    fn a_good_token_verifies_and_each_flaw_is_named() {
        let (kp, jwks) = es256();
        let h = json!({"alg": "ES256", "kid": "k1"});
        let v = verify(&jwks, &mint(&kp, h.clone(), claims()), NOW).unwrap();
        assert_eq!(v.pod_uid, "u-1");
        assert_eq!(v.node_name.as_deref(), Some("n1"));
        // Within the skew on both ends.
        assert!(verify(&jwks, &mint(&kp, h.clone(), claims()), NOW + 600 + 60).is_ok());
        assert!(verify(&jwks, &mint(&kp, h.clone(), claims()), NOW - 60).is_ok());
        let err = |c: Value, now: u64| verify(&jwks, &mint(&kp, h.clone(), c), now).unwrap_err();
        assert!(err(claims(), NOW + 661).contains("expired"));
        assert!(err(claims(), NOW - 61).contains("nbf"));
        let mut c = claims();
        c["aud"] = json!("https://kubernetes.default.svc");
        assert!(err(c, NOW).contains("audience"));
        let mut c = claims();
        c["kubernetes.io"]["pod"] = Value::Null;
        assert!(err(c, NOW).contains("pod.uid"));
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert!(err(c, NOW).contains("exp"));
        let e = verify(
            &jwks,
            &mint(&kp, json!({"alg": "ES256", "kid": "k9"}), claims()),
            NOW,
        )
        .unwrap_err();
        assert!(e.contains("kid \"k9\""), "{e}");
        let e = verify(&jwks, &mint(&kp, json!({"alg": "HS256"}), claims()), NOW).unwrap_err();
        assert!(e.contains("HS256"), "{e}");
        let (other, _) = es256();
        let e = verify(&jwks, &mint(&other, h, claims()), NOW).unwrap_err();
        assert!(e.contains("signature"), "{e}");
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(verify(&jwks, bad, NOW).is_err(), "{bad}");
        }
    }

    #[test]
    fn jwks_parsing() {
        assert!(Jwks::parse("{}").is_err());
        assert!(Jwks::parse(r#"{"keys": [{"kty": "oct", "k": "AA"}]}"#).is_err());
        let j = Jwks::parse(
            r#"{"keys": [{"kty": "RSA", "n": "AAEB", "e": "AQAB"},
            {"kty": "RSA", "use": "enc", "n": "AQ", "e": "AQ"}]}"#,
        )
        .unwrap();
        assert_eq!(j.len(), 1);
        match &j.keys[0].material {
            Material::Rsa { n, .. } => assert_eq!(n, &[1, 1]),
            m => panic!("{m:?}"),
        }
        assert!(
            Jwks::parse(r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}"#)
                .is_err()
        );
    }
}
