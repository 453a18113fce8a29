//! Certificates: the cluster CA, node and client identities, fingerprints,
//! and the "was this issued by our CA" check the application uses to decide
//! trust.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The TLS server name every member presents and every client expects.
/// Member certificates carry it as their DNS subject alternative name, so
/// members can be reached by IP address without per-node names.
pub const SERVER_NAME: &str = "starling";

/// Common name of the cluster CA certificate.
const CA_COMMON_NAME: &str = "starling cluster CA";

/// Validity of every certificate this module creates.
const VALIDITY_DAYS: i64 = 3650;

/// How far back `not_before` is set, to tolerate clock skew between nodes.
const BACKDATE_DAYS: i64 = 1;

/// A certificate, its private key, and the certificates sent after it.
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    /// The end-entity certificate (PEM).
    pub cert_pem: String,
    /// Its PKCS#8 private key (PEM). Never printed by `Debug`.
    pub key_pem: String,
    /// Extra certificates sent after the end-entity certificate: the CA
    /// certificate for CA-issued identities, empty for self-signed ones.
    pub chain_pem: Vec<String>,
}

/// What an issued certificate may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CertUsage {
    /// A cluster member: TLS server and TLS client.
    Member,
    /// A remote client (CLI, tooling): TLS client only.
    Client,
}

/// The cluster certificate authority: signs member and client certificates.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClusterCa {
    /// The self-signed CA certificate (PEM).
    pub cert_pem: String,
    /// The CA's PKCS#8 private key (PEM). Never printed by `Debug`.
    pub key_pem: String,
}

impl ClusterCa {
    /// Creates a new self-signed cluster CA ("starling cluster CA", valid
    /// for ten years, may only sign end-entity certificates).
    pub fn generate() -> Result<ClusterCa, Error> {
        let key = new_key()?;
        let mut params = ca_params();
        set_validity(&mut params);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let cert = params.self_signed(&key).map_err(cert_error)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate with a fresh ECDSA P-256 key, subject common
    /// name `common_name` and DNS name [`SERVER_NAME`]. The CA certificate
    /// is included as the identity's chain.
    pub fn issue(&self, common_name: &str, usage: CertUsage) -> Result<Identity, Error> {
        let ca_key = KeyPair::from_pem(&self.key_pem)
            .map_err(|e| Error::Certificate(format!("cannot read the CA private key: {e}")))?;
        let issuer = Issuer::new(ca_params(), ca_key);
        let key = new_key()?;
        let mut params = leaf_params(common_name)?;
        params.extended_key_usages = match usage {
            CertUsage::Member => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            CertUsage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer).map_err(cert_error)?;
        if !issued_by(&self.cert_pem, cert.der()) {
            return Err(Error::Certificate(
                "the CA private key does not belong to the CA certificate".into(),
            ));
        }
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain_pem: vec![self.cert_pem.clone()],
        })
    }

    /// Lowercase hex SHA-256 of the CA certificate's DER encoding; this is
    /// what join tokens pin.
    pub fn fingerprint(&self) -> Result<String, Error> {
        fingerprint_pem(&self.cert_pem)
    }
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &fingerprint_pem(&self.cert_pem).ok())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Identity {
    /// Fingerprint (lowercase hex SHA-256) of the end-entity certificate.
    pub fn fingerprint(&self) -> Result<String, Error> {
        fingerprint_pem(&self.cert_pem)
    }

    /// The end-entity certificate followed by the chain, as DER.
    pub(crate) fn cert_chain(&self) -> Result<Vec<CertificateDer<'static>>, Error> {
        std::iter::once(&self.cert_pem)
            .chain(&self.chain_pem)
            .map(|pem| parse_cert_pem(pem))
            .collect()
    }

    /// The private key as DER.
    pub(crate) fn private_key(&self) -> Result<PrivateKeyDer<'static>, Error> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| Error::Certificate(format!("cannot read the private key: {e}")))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint().ok())
            .field("key_pem", &"<redacted>")
            .field("chain_len", &self.chain_pem.len())
            .finish()
    }
}

/// A new self-signed identity (ECDSA P-256, CN `common_name`, DNS name
/// [`SERVER_NAME`], server and client use). Used by a joiner or a remote
/// client before the cluster trusts it.
pub fn self_signed_identity(common_name: &str) -> Result<Identity, Error> {
    let key = new_key()?;
    let mut params = leaf_params(common_name)?;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.self_signed(&key).map_err(cert_error)?;
    Ok(Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        chain_pem: Vec::new(),
    })
}

/// Fingerprint (lowercase hex SHA-256 of the DER) of the first certificate
/// in `cert_pem`.
pub fn fingerprint_pem(cert_pem: &str) -> Result<String, Error> {
    Ok(fingerprint_der(&parse_cert_pem(cert_pem)?))
}

/// Fingerprint (lowercase hex SHA-256) of a DER certificate.
pub fn fingerprint_der(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// True iff `cert_der` is signed directly by the CA in `ca_cert_pem`, is
/// currently within its validity period, and may be used for TLS client
/// authentication (every member and client certificate may). Returns false
/// for anything unparsable.
pub fn issued_by(ca_cert_pem: &str, cert_der: &[u8]) -> bool {
    let Ok(ca) = parse_cert_pem(ca_cert_pem) else {
        return false;
    };
    let mut roots = RootCertStore::empty();
    if roots.add(ca).is_err() {
        return false;
    }
    let Ok(verifier) =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()
    else {
        return false;
    };
    let cert = CertificateDer::from(cert_der);
    verifier
        .verify_client_cert(&cert, &[], UnixTime::now())
        .is_ok()
}

/// The crypto provider used everywhere in this crate (ring).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Parses the first certificate of a PEM string.
pub(crate) fn parse_cert_pem(pem: &str) -> Result<CertificateDer<'static>, Error> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| Error::Certificate(format!("cannot read certificate PEM: {e}")))
}

fn new_key() -> Result<KeyPair, Error> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_error)
}

/// The CA's parameters. `issue` rebuilds the issuer from these, so the
/// subject name here must stay exactly what `generate` put in the CA cert.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(CA_COMMON_NAME);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn leaf_params(common_name: &str) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(cert_error)?;
    params.distinguished_name = common_name_dn(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params);
    Ok(params)
}

fn common_name_dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(BACKDATE_DAYS);
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
}

fn cert_error(e: rcgen::Error) -> Error {
    Error::Certificate(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        parse_cert_pem(pem).unwrap().to_vec()
    }

    #[test]
    fn issued_certificates_chain_to_their_ca_only() {
        let ca = ClusterCa::generate().unwrap();
        let other = ClusterCa::generate().unwrap();
        let member = ca.issue("node-1", CertUsage::Member).unwrap();
        let client = ca.issue("alice", CertUsage::Client).unwrap();
        assert_eq!(member.chain_pem, vec![ca.cert_pem.clone()]);
        assert!(issued_by(&ca.cert_pem, &der(&member.cert_pem)));
        assert!(issued_by(&ca.cert_pem, &der(&client.cert_pem)));
        assert!(!issued_by(&other.cert_pem, &der(&member.cert_pem)));
        let stranger = self_signed_identity("joiner").unwrap();
        assert!(stranger.chain_pem.is_empty());
        assert!(!issued_by(&ca.cert_pem, &der(&stranger.cert_pem)));
        assert!(!issued_by(&ca.cert_pem, b"garbage"));
        assert!(!issued_by("not a pem", &der(&member.cert_pem)));
    }

    #[test]
    fn issuing_with_a_foreign_key_fails() {
        let ca = ClusterCa::generate().unwrap();
        let other = ClusterCa::generate().unwrap();
        let mixed = ClusterCa {
            cert_pem: ca.cert_pem.clone(),
            key_pem: other.key_pem.clone(),
        };
        assert!(matches!(
            mixed.issue("x", CertUsage::Member),
            Err(Error::Certificate(_))
        ));
    }

    #[test]
    fn fingerprints_are_lowercase_sha256_hex() {
        let ca = ClusterCa::generate().unwrap();
        let fp = ca.fingerprint().unwrap();
        assert_eq!(fp.len(), 64);
        assert_eq!(fp, fp.to_lowercase());
        assert_eq!(fp, fingerprint_der(&der(&ca.cert_pem)));
        assert!(fingerprint_pem("nope").is_err());
    }

    #[test]
    fn debug_does_not_print_keys() {
        let ca = ClusterCa::generate().unwrap();
        let id = ca.issue("node-1", CertUsage::Member).unwrap();
        let printed = format!("{id:?} {ca:?}");
        assert!(!printed.contains("PRIVATE KEY"));
        assert!(printed.contains("<redacted>"));
        let copy = bincode_roundtrip(&id);
        assert_eq!(copy.cert_pem, id.cert_pem);
    }

    fn bincode_roundtrip(id: &Identity) -> Identity {
        bincode::deserialize(&bincode::serialize(id).unwrap()).unwrap()
    }
}
