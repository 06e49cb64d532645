//! The backend's own certificate authority (rcgen): created once in the state dir and reused,
//! it issues the server certificate and signs agents' CSRs into short-lived client certificates.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CA: its certificate and the issuer (with the signing key).
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// PEM of the CA certificate (what `ca.pem` holds).
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
}

fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "the system random generator failed".to_string())?;
    Ok(b)
}

/// A fresh random serial number (positive, 16 bytes).
fn serial() -> Result<SerialNumber, String> {
    let mut b = random_bytes::<16>()?;
    b[0] &= 0x7f;
    b[0] |= 0x01;
    Ok(SerialNumber::from_slice(&b))
}

/// Writes `data` to `path` atomically (temp file with `mode`, fsync, rename).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| format!("failed to create `{}`: {e}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("failed to write `{}`: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("failed to rename to `{}`: {e}", path.display()))
}

impl Ca {
    /// Loads `ca.pem`/`ca-key.pem` from `dir`, or creates them (dir 0700, key 0600) when both are
    /// missing. One without the other, or a corrupt file, is an error (never silently replaced).
    pub fn load_or_create(dir: &Path) -> Result<Ca, String> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("failed to create state dir `{}`: {e}", dir.display()))?;
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(&cert_path, &key_path),
            (false, false) => {
                let key = KeyPair::generate().map_err(|e| format!("CA key generation: {e}"))?;
                let mut params = CertificateParams::default();
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CommonName, "LinuxGuard reference backend CA");
                dn.push(DnType::OrganizationName, "LinuxGuard");
                params.distinguished_name = dn;
                params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                let now = SystemTime::now();
                params.not_before = (now - Duration::from_secs(3600)).into();
                params.not_after = (now + Duration::from_secs(10 * 365 * 86400)).into();
                params.serial_number = Some(serial()?);
                let cert = params
                    .self_signed(&key)
                    .map_err(|e| format!("CA self-signing: {e}"))?;
                write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
                write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
                log::info!("created a new CA in `{}`", dir.display());
                Self::load(&cert_path, &key_path)
            }
            (true, false) => Err(missing(&key_path, &cert_path)),
            (false, true) => Err(missing(&cert_path, &key_path)),
        }
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Ca, String> {
        let cert_pem = fs::read_to_string(cert_path)
            .map_err(|e| format!("failed to read `{}`: {e}", cert_path.display()))?;
        let key_pem = fs::read_to_string(key_path)
            .map_err(|e| format!("failed to read `{}`: {e}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| format!("`{}` is not a PEM private key: {e}", key_path.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| format!("`{}` is not a PEM CA certificate: {e}", cert_path.display()))?;
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| format!("`{}`: {e}", cert_path.display()))?;
        Ok(Ca {
            issuer,
            cert_pem,
            cert_der: der,
        })
    }

    /// A fresh server certificate for `localhost`, `127.0.0.1` and `::1` (chain leaf first)
    /// and its key.
    pub fn server_identity(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        let key = KeyPair::generate().map_err(|e| format!("server key generation: {e}"))?;
        let mut params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .map_err(|e| format!("server certificate names: {e}"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "linuxguard-backend");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(365 * 86400)).into();
        params.serial_number = Some(serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| format!("server certificate signing: {e}"))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key_der))
    }

    /// Signs an agent certificate for `agent_id` over the CSR's public key: CN = agent id, URI
    /// SAN `spiffe://linuxguard/agent/<id>`, client-auth EKU, valid for `lifetime`. The CSR's
    /// own subject and extensions are ignored (the CA decides what it certifies).
    /// Returns the leaf PEM.
    pub fn sign_agent(
        &self,
        csr: &Csr,
        agent_id: &str,
        lifetime: Duration,
    ) -> Result<String, String> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, agent_id);
        params.distinguished_name = dn;
        let uri = format!("spiffe://linuxguard/agent/{agent_id}");
        params.subject_alt_names =
            vec![SanType::URI(uri.try_into().map_err(|_| {
                "agent id is not a valid URI part".to_string()
            })?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.is_ca = IsCa::ExplicitNoCa;
        let now = SystemTime::now();
        params.not_before = now.into();
        params.not_after = (now + lifetime).into();
        params.serial_number = Some(serial()?);
        params.use_authority_key_identifier_extension = true;
        let req = CertificateSigningRequestParams {
            params,
            public_key: csr.params.public_key.clone(),
        };
        let cert = req
            .signed_by(&self.issuer)
            .map_err(|e| format!("certificate signing failed: {e}"))?;
        // rcgen derives the key's algorithm from the CSR's signature algorithm; make sure the
        // certificate really carries the CSR's key (e.g. not a P-384 key labelled as P-256).
        let (_, leaf) = x509_parser::parse_x509_certificate(cert.der().as_ref())
            .map_err(|e| format!("issued certificate does not parse: {e}"))?;
        if leaf.public_key().raw != csr.spki.as_slice() {
            return Err(UNSUPPORTED_KEY.to_string());
        }
        Ok(cert.pem())
    }
}

fn missing(absent: &Path, present: &Path) -> String {
    format!(
        "`{}` is missing but `{}` exists: restore it, or remove both to create a new CA",
        absent.display(),
        present.display()
    )
}

/// Why a CSR's key cannot be certified as it is.
pub const UNSUPPORTED_KEY: &str = "csr key and signature algorithms do not match (use ECDSA P-256 with SHA-256, P-384 with SHA-384, Ed25519 or RSA)";

/// A parsed, signature-checked CSR.
#[derive(Debug)]
pub struct Csr {
    pub params: CertificateSigningRequestParams,
    /// The request's SubjectPublicKeyInfo (DER), as the node sent it.
    pub spki: Vec<u8>,
}

/// Parses a PKCS#10 CSR in PEM and verifies its self-signature.
pub fn parse_csr(pem: &str) -> Result<Csr, String> {
    use rustls_pki_types::CertificateSigningRequestDer;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| "csr is not a PEM certificate request".to_string())?;
    let (_, req) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| format!("csr is not a valid PKCS#10 request: {e}"))?;
    let spki = req.certification_request_info.subject_pki.raw.to_vec();
    let params = CertificateSigningRequestParams::from_der(&der).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => {
            "csr signature does not verify".to_string()
        }
        other => format!("csr is not usable: {other}"),
    })?;
    Ok(Csr { params, spki })
}

/// The common name of a (verified) client certificate: the agent id.
pub fn agent_id_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = x509.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

/// A new agent id: `agent-` and 20 lower-case hex characters.
pub fn new_agent_id() -> Result<String, String> {
    let b = random_bytes::<10>()?;
    Ok(format!(
        "agent-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

/// A new enrolment token: 26 characters of the base32 alphabet.
pub fn new_token() -> Result<String, String> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let b = random_bytes::<26>()?;
    Ok(b.iter()
        .map(|x| ALPHABET[usize::from(x % 32)] as char)
        .collect())
}

/// Path of the CA certificate in a state dir.
pub fn ca_pem_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lg-ca-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn csr_round_trip_signs_our_key_with_agent_identity() {
        let dir = tmpdir("rt");
        let ca = Ca::load_or_create(&dir).expect("ca");
        let key = KeyPair::generate().expect("key");
        let csr = CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let parsed = parse_csr(&csr).expect("parse");
        let leaf = ca
            .sign_agent(&parsed, "agent-0123", Duration::from_secs(60))
            .expect("sign");
        let der: CertificateDer =
            rustls_pki_types::pem::PemObject::from_pem_slice(leaf.as_bytes()).expect("der");
        let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
        assert_eq!(
            x.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        );
        assert_eq!(agent_id_of(&der).as_deref(), Some("agent-0123"));
        let life = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
        assert_eq!(life, 60);
        let eku = x.extended_key_usage().expect("eku").expect("present");
        assert!(eku.value.client_auth && !eku.value.server_auth);
        // The CA is reused on the next start.
        let again = Ca::load_or_create(&dir).expect("reload");
        assert_eq!(again.cert_pem, ca.cert_pem);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn rejects_bad_csrs() {
        assert!(parse_csr("hello").is_err());
        assert!(
            parse_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            )
            .is_err()
        );
        // Flip a bit in the signature: the signature check must fail.
        let key = KeyPair::generate().expect("key");
        let csr = CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .serialize_request(&key)
            .expect("csr");
        let mut der = csr.der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64(&der)
        );
        let err = parse_csr(&pem).expect_err("tampered");
        assert!(err.contains("signature") || err.contains("valid"), "{err}");
    }

    #[test]
    fn half_a_ca_is_an_error() {
        let dir = tmpdir("half");
        Ca::load_or_create(&dir).expect("ca");
        fs::remove_file(dir.join("ca-key.pem")).expect("rm");
        let err = Ca::load_or_create(&dir).err().expect("error");
        assert!(err.contains("ca-key.pem"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn tokens_and_ids_have_the_right_shape() {
        let t = new_token().expect("token");
        assert_eq!(t.len(), 26);
        assert!(
            t.bytes()
                .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c))
        );
        let id = new_agent_id().expect("id");
        assert_eq!(id.len(), 26);
    }

    fn base64(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in data.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
