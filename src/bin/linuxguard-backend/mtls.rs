//! Client-certificate handling: the TLS layer checks only proof of key possession, the chain is
//! verified after the handshake (same rustls WebPKI verifier) so a bad certificate gets an HTTP
//! 401 with the reason instead of a bare TLS alert the agent would retry forever.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::ca;

/// What the client's certificate says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// No client certificate.
    Anonymous,
    /// A certificate that chains to our CA (its CN is the agent id).
    Agent(String),
    /// A certificate that does not verify, and why.
    Rejected(String),
}

/// Offers client authentication and checks the handshake signature (the client holds the
/// certificate's key), but accepts any certificate chain; `classify` verifies it afterwards.
#[derive(Debug)]
pub struct DeferredVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl DeferredVerifier {
    pub fn new(roots: RootCertStore) -> Result<DeferredVerifier, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("client verifier: {e}"))?;
        Ok(DeferredVerifier { inner })
    }

    /// Verifies the chain a client presented (leaf first) against the CA.
    pub fn classify(&self, certs: Option<&[CertificateDer<'static>]>) -> Peer {
        let Some((leaf, intermediates)) = certs.and_then(|c| c.split_first()) else {
            return Peer::Anonymous;
        };
        match self
            .inner
            .verify_client_cert(leaf, intermediates, UnixTime::now())
        {
            Err(e) => Peer::Rejected(e.to_string()),
            Ok(_) => match ca::agent_id_of(leaf) {
                Some(id) => Peer::Agent(id),
                None => Peer::Rejected("certificate has no common name (agent id)".into()),
            },
        }
    }
}

impl ClientCertVerifier for DeferredVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deferred to `classify`, after the handshake.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
