//! A test Kubernetes service-account issuer: mints projected service-account tokens the way
//! kube-apiserver does (header `{"alg","kid"}`; claims `iss`, `sub` =
//! `system:serviceaccount:<ns>:<name>`, `aud`, `exp`, `iat`, `nbf`, `jti` and the
//! `kubernetes.io` object with `namespace`, `pod {name, uid}`, `node {name, uid}`,
//! `serviceaccount {name, uid}`), signed ES256 (ring) or RS256 (an RSA key from
//! `openssl genpkey`, which ring cannot generate), and writes the matching JWKS.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};

use crate::common::TempDir;

pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const NAMESPACE: &str = "linuxguard";
pub const SERVICE_ACCOUNT: &str = "linuxguard-agent";

enum Signer {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

/// One issuer key with its `kid`.
pub struct IssuerKey {
    kid: String,
    signer: Signer,
}

/// What a minted token says; `Default` is a valid token for the given pod and node.
#[derive(Clone)]
pub struct Claims {
    pub pod_name: String,
    pub pod_uid: String,
    pub node_name: Option<String>,
    pub audience: Vec<String>,
    /// Seconds from now (negative: in the past).
    pub exp_in: i64,
    pub nbf_in: i64,
}

impl Claims {
    /// A token for `pod_uid` on `node`, audience `linuxguard`, valid for 600 s (as the
    /// DaemonSet's `expirationSeconds: 600`).
    pub fn pod(node: &str, pod_uid: &str) -> Claims {
        Claims {
            pod_name: format!("linuxguard-agent-{}", &pod_uid[..5]),
            pod_uid: pod_uid.to_string(),
            node_name: Some(node.to_string()),
            audience: vec!["linuxguard".into()],
            exp_in: 600,
            nbf_in: 0,
        }
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl IssuerKey {
    /// A fresh P-256 key.
    pub fn es256(kid: &str) -> IssuerKey {
        let rng = SystemRandom::new();
        let pk8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("P-256 key");
        let kp = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pk8.as_ref(),
            &rng,
        )
        .expect("P-256 key");
        IssuerKey {
            kid: kid.into(),
            signer: Signer::Es256(kp),
        }
    }

    /// A fresh 2048-bit RSA key from `openssl genpkey` (scripts/setup installs openssl).
    pub fn rs256(kid: &str, dir: &Path) -> IssuerKey {
        let path = dir.join(format!("{kid}.der"));
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-outform",
                "DER",
                "-out",
            ])
            .arg(&path)
            .output()
            .expect("run openssl (scripts/setup installs it) to make a test RSA issuer key");
        assert!(
            out.status.success(),
            "openssl genpkey: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let der = std::fs::read(&path).expect("read the RSA key");
        let _ = std::fs::remove_file(&path);
        IssuerKey {
            kid: kid.into(),
            // OpenSSL 3 writes PKCS#1 (RSAPrivateKey) for `-outform DER`; others write PKCS#8.
            signer: Signer::Rs256(
                RsaKeyPair::from_der(&der)
                    .or_else(|_| RsaKeyPair::from_pkcs8(&der))
                    .expect("an RSA private key in PKCS#1 or PKCS#8 DER"),
            ),
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        match &self.signer {
            Signer::Es256(kp) => {
                let p = kp.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
                    "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..65])})
            }
            Signer::Rs256(kp) => {
                let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(kp.public());
                json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
                    "n": URL_SAFE_NO_PAD.encode(&c.n), "e": URL_SAFE_NO_PAD.encode(&c.e)})
            }
        }
    }

    /// A signed token, as kube-apiserver issues it for a projected volume.
    pub fn mint(&self, c: &Claims) -> String {
        let alg = match self.signer {
            Signer::Es256(_) => "ES256",
            Signer::Rs256(_) => "RS256",
        };
        let t = now();
        let mut k8s = json!({
            "namespace": NAMESPACE,
            "pod": {"name": c.pod_name, "uid": c.pod_uid},
            "serviceaccount": {"name": SERVICE_ACCOUNT, "uid": "5b0b5d3e-8a3c-4a8e-9d0b-6f3e2a1c7d90"},
        });
        if let Some(n) = &c.node_name {
            k8s["node"] = json!({"name": n, "uid": format!("node-uid-{n}")});
        }
        let claims = json!({
            "aud": c.audience,
            "exp": t + c.exp_in,
            "iat": t + c.nbf_in,
            "iss": ISSUER,
            "jti": format!("jti-{}-{}", c.pod_uid, t),
            "kubernetes.io": k8s,
            "nbf": t + c.nbf_in,
            "sub": format!("system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"),
        });
        let signing = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": self.kid}).to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match &self.signer {
            Signer::Es256(kp) => kp
                .sign(&rng, signing.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec(),
            Signer::Rs256(kp) => {
                let mut sig = vec![0; kp.public().modulus_len()];
                kp.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    signing.as_bytes(),
                    &mut sig,
                )
                .expect("sign");
                sig
            }
        };
        format!("{signing}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

/// Writes `{"keys": [...]}` for `keys` into `dir/jwks.json` and returns its path.
pub fn write_jwks(dir: &Path, keys: &[&IssuerKey]) -> PathBuf {
    let path = dir.join("jwks.json");
    let jwks = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    std::fs::write(&path, jwks.to_string()).expect("write jwks.json");
    path
}

/// hex(sha256(node + ":" + pod uid)): the Downward API workload id.
pub fn workload_id(node: &str, pod_uid: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(format!("{node}:{pod_uid}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A temp dir holding the issuer's files.
pub fn dir() -> TempDir {
    TempDir::new("sa-issuer")
}
