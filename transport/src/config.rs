//! Building the rustls and quinn configurations from an [`Identity`] and a
//! [`ServerTrust`].

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::RootCertStore;

use crate::tls::{parse_cert_pem, provider};
use crate::verify::{AnyClientCert, PinnedCaVerifier};
use crate::{Error, Identity, ServerTrust};

/// ALPN protocol name; both sides must agree.
const ALPN: &[u8] = b"starling/1";

/// Keep-alive ping interval, so idle connections stay open and dead peers
/// are noticed.
pub const KEEP_ALIVE_MS: u64 = 1_000;

/// A connection with no traffic (not even keep-alive acks) for this long
/// is considered dead.
pub const IDLE_TIMEOUT_MS: u64 = 5_000;

/// Concurrent requests (bidirectional streams) a peer may have open on one
/// connection; further requests wait for a free slot.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;

/// The largest UDP payload path MTU discovery tries: a 9000-byte jumbo frame less the IPv6
/// and UDP headers.
pub const UDP_PAYLOAD_MAX: u16 = 8952;

/// The QUIC transport parameters shared by both sides.
fn transport_config() -> Result<Arc<TransportConfig>, Error> {
    let mut transport = TransportConfig::default();
    let idle = IdleTimeout::try_from(Duration::from_millis(IDLE_TIMEOUT_MS))
        .map_err(|e| Error::TlsConfig(format!("idle timeout: {e}")))?;
    // Path MTU discovery may look beyond Ethernet's 1500 bytes, up to jumbo frames: on loopback
    // and jumbo-frame networks a bulk stream (an image copy) then costs a sixth of the packets
    // and of their per-packet work; elsewhere discovery simply stops lower.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(UDP_PAYLOAD_MAX);
    transport.mtu_discovery_config(Some(mtu));
    transport
        .keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_MS)))
        .max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(VarInt::from_u32(STREAMS_PER_CONNECTION_MAX))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    Ok(Arc::new(transport))
}

/// Server side: present `identity`, require a client certificate (any).
pub(crate) fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, Error> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(Arc::new(AnyClientCert::new()))
        .with_single_cert(identity.cert_chain()?, identity.private_key()?)
        .map_err(tls_error)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| Error::TlsConfig(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config()?);
    Ok(config)
}

/// Client side: present `identity`, check the server according to `trust`.
/// For a pinned CA the verifier is returned too, so a fingerprint mismatch
/// can be reported precisely.
pub(crate) fn client_config(
    identity: &Identity,
    trust: &ServerTrust,
) -> Result<(quinn::ClientConfig, Option<Arc<PinnedCaVerifier>>), Error> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?;
    let (builder, pinned) = match trust {
        ServerTrust::Ca { ca_cert_pem } => {
            let mut roots = RootCertStore::empty();
            roots.add(parse_cert_pem(ca_cert_pem)?).map_err(|e| {
                Error::Certificate(format!("the cluster CA certificate is unusable: {e}"))
            })?;
            (builder.with_root_certificates(roots), None)
        }
        ServerTrust::PinnedCa { fingerprint } => {
            let verifier = Arc::new(PinnedCaVerifier::new(fingerprint));
            let builder = builder
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone());
            (builder, Some(verifier))
        }
    };
    let mut tls = builder
        .with_client_auth_cert(identity.cert_chain()?, identity.private_key()?)
        .map_err(tls_error)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| Error::TlsConfig(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config()?);
    Ok((config, pinned))
}

/// Checks that the identity's certificate and key are usable, without
/// building a full configuration.
pub(crate) fn check_identity(identity: &Identity) -> Result<(), Error> {
    identity.cert_chain()?;
    provider()
        .key_provider
        .load_private_key(identity.private_key()?)
        .map_err(tls_error)?;
    Ok(())
}

fn tls_error(e: rustls::Error) -> Error {
    Error::TlsConfig(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{self_signed_identity, ClusterCa};

    #[test]
    fn configs_build_from_generated_identities() {
        let ca = ClusterCa::generate().unwrap();
        let member = ca.issue("n1", crate::CertUsage::Member).unwrap();
        server_config(&member).unwrap();
        let trust = ServerTrust::Ca {
            ca_cert_pem: ca.cert_pem.clone(),
        };
        let (_, pinned) = client_config(&member, &trust).unwrap();
        assert!(pinned.is_none());
        let joiner = self_signed_identity("joiner").unwrap();
        let pin = ServerTrust::PinnedCa {
            fingerprint: ca.fingerprint().unwrap(),
        };
        let (_, pinned) = client_config(&joiner, &pin).unwrap();
        assert!(pinned.is_some());
        check_identity(&joiner).unwrap();
    }

    #[test]
    fn broken_identity_is_rejected() {
        let mut id = self_signed_identity("x").unwrap();
        id.key_pem = "garbage".into();
        assert!(check_identity(&id).is_err());
        assert!(server_config(&id).is_err());
    }
}
