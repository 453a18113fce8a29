//! Custom rustls certificate verifiers: the server's "any client
//! certificate" policy and the joiner's pinned-CA server check.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::tls::{fingerprint_der, provider};

/// Server-side policy: a client certificate is mandatory and its handshake
/// signature must verify (so the client holds the key), but the chain is
/// not validated. Trust is decided by the application from
/// [`crate::PeerIdentity`], because joiners and not-yet-trusted clients
/// legitimately connect with self-signed certificates.
#[derive(Debug)]
pub(crate) struct AnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyClientCert {
    pub(crate) fn new() -> AnyClientCert {
        AnyClientCert {
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Only require that it parses as a certificate.
        ParsedCertificate::try_from(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Client-side check for [`crate::ServerTrust::PinnedCa`]: the server must
/// send, after its end-entity certificate, a CA certificate whose SHA-256
/// fingerprint is the pinned one, and the end-entity certificate must be
/// issued by that CA for [`crate::SERVER_NAME`].
///
/// A fingerprint mismatch is remembered so the endpoint can report it as
/// [`crate::Error::FingerprintMismatch`] rather than a generic TLS failure.
#[derive(Debug)]
pub(crate) struct PinnedCaVerifier {
    expected: String,
    algorithms: WebPkiSupportedAlgorithms,
    mismatch: Mutex<Option<String>>,
}

impl PinnedCaVerifier {
    /// `fingerprint` is compared case-insensitively, ignoring `:` separators.
    pub(crate) fn new(fingerprint: &str) -> PinnedCaVerifier {
        PinnedCaVerifier {
            expected: normalize_fingerprint(fingerprint),
            algorithms: provider().signature_verification_algorithms,
            mismatch: Mutex::new(None),
        }
    }

    /// The fingerprint this verifier expects.
    pub(crate) fn expected(&self) -> &str {
        &self.expected
    }

    /// If the last verification failed on the fingerprint, what the server
    /// presented instead.
    pub(crate) fn take_mismatch(&self) -> Option<String> {
        self.mismatch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn record_mismatch(&self, actual: String) {
        *self.mismatch.lock().unwrap_or_else(PoisonError::into_inner) = Some(actual);
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented: Vec<String> = intermediates.iter().map(|c| fingerprint_der(c)).collect();
        let Some(position) = presented.iter().position(|fp| *fp == self.expected) else {
            let actual = if presented.is_empty() {
                "no CA certificate".to_string()
            } else {
                presented.join(", ")
            };
            let message = format!(
                "CA fingerprint did not match (expected {}, server presented {actual})",
                self.expected
            );
            self.record_mismatch(actual);
            return Err(rustls::Error::General(message));
        };
        let mut roots = RootCertStore::empty();
        roots.add(intermediates[position].clone().into_owned())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn normalize_fingerprint(fingerprint: &str) -> String {
    fingerprint
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalized() {
        let verifier = PinnedCaVerifier::new("AB:cd:01");
        assert_eq!(verifier.expected(), "abcd01");
        assert_eq!(verifier.take_mismatch(), None);
    }
}
