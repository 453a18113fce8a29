//! Who a peer is: the trust registry, and the limit on failed claims per address.
//!
//! A certificate is trusted because its fingerprint is registered in the cluster database —
//! member certificates in the member table, client certificates in the trust table (and each
//! member's local administrator certificate in its member record) — never because the cluster
//! CA signed it: a former replica holds the CA key and could mint more.
//!
//! Voters and stand-bys read the registry from their replica. Spares hold no replica, so the
//! leader sends the registry with its heartbeats whenever it changed ([`TrustRegistry`], with
//! the replicated `trust_version`); a member uses whichever copy is newer, so a removal reaches
//! every member within one heartbeat interval. A spare keeps its copy on disk for restarts.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use starling_store::{ClusterState, Registered};

/// The fingerprints the cluster trusts, as of one `trust_version`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustRegistry {
    /// The cluster state's `trust_version` this copy was taken at.
    pub version: u64,
    /// Member certificates.
    pub members: BTreeSet<String>,
    /// Client certificates: trusted clients and members' local administrators.
    pub clients: BTreeSet<String>,
    /// Revoked certificates.
    pub revoked: BTreeSet<String>,
}

impl TrustRegistry {
    /// The registry of a cluster state.
    pub fn of(state: &ClusterState) -> TrustRegistry {
        TrustRegistry {
            version: state.trust_version,
            members: state
                .members
                .values()
                .map(|member| member.certificate_fingerprint.clone())
                .collect(),
            clients: state
                .trusted_clients
                .keys()
                .cloned()
                .chain(
                    state
                        .members
                        .values()
                        .map(|member| member.admin_fingerprint.clone()),
                )
                .collect(),
            revoked: state.revoked.clone(),
        }
    }

    /// What `fingerprint` is registered as in this copy.
    pub fn registered(&self, fingerprint: &str) -> Registered {
        if self.revoked.contains(fingerprint) {
            Registered::Revoked
        } else if self.members.contains(fingerprint) {
            Registered::Member
        } else if self.clients.contains(fingerprint) {
            Registered::Client
        } else {
            Registered::Unknown
        }
    }
}

/// The refusal of a revoked certificate.
pub(crate) fn revoked() -> crate::Error {
    crate::Error::NotAuthorized(
        "this certificate was revoked (its member or client was removed from the cluster)"
            .to_string(),
    )
}

/// The refusal of a certificate the cluster does not know.
pub(crate) fn not_registered(fingerprint: &str) -> crate::Error {
    crate::Error::NotAuthorized(format!(
        "the certificate {} is not trusted by this cluster; join with a token or add it with `starling remote add`",
        &fingerprint[..fingerprint.len().min(16)]
    ))
}

/// Failed claims (join or trust tokens) allowed from one address within [`CLAIM_WINDOW`].
pub const FAILED_CLAIMS_MAX: u32 = 5;
/// The window over which failed claims are counted; an address over the limit waits until its
/// oldest failure leaves it.
pub const CLAIM_WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past it the oldest records are dropped.
const ADDRESSES_MAX: usize = 16_384;

/// Counts failed token claims per IP address and refuses further claims from an address past
/// [`FAILED_CLAIMS_MAX`]. Only claims are limited: a peer with a registered certificate is
/// never looked up here, whatever its address.
#[derive(Debug, Default)]
pub struct ClaimLimiter {
    failures: HashMap<IpAddr, Vec<Instant>>,
}

impl ClaimLimiter {
    /// `Err(wait)` when `address` may not claim now, with how long until it may.
    pub fn check(&mut self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        let Some(failures) = self.failures.get_mut(&address) else {
            return Ok(());
        };
        failures.retain(|at| now.duration_since(*at) < CLAIM_WINDOW);
        if failures.len() < FAILED_CLAIMS_MAX as usize {
            return Ok(());
        }
        let oldest = failures.iter().min().copied().unwrap_or(now);
        Err(CLAIM_WINDOW.saturating_sub(now.duration_since(oldest)))
    }

    /// Records a failed claim from `address`.
    pub fn failed(&mut self, address: IpAddr, now: Instant) {
        if self.failures.len() >= ADDRESSES_MAX && !self.failures.contains_key(&address) {
            self.failures.retain(|_, failures| {
                failures
                    .iter()
                    .any(|at| now.duration_since(*at) < CLAIM_WINDOW)
            });
            if self.failures.len() >= ADDRESSES_MAX {
                // Still full of recent failures: forget an arbitrary address to stay bounded.
                if let Some(evicted) = self.failures.keys().next().copied() {
                    self.failures.remove(&evicted);
                }
            }
        }
        let failures = self.failures.entry(address).or_default();
        failures.push(now);
        if failures.len() > FAILED_CLAIMS_MAX as usize {
            failures.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_claims_are_limited_per_address_and_forgotten_after_the_window() {
        let mut limiter = ClaimLimiter::default();
        let attacker: IpAddr = "127.0.0.9".parse().unwrap();
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        let start = Instant::now();
        for _ in 0..FAILED_CLAIMS_MAX {
            assert!(limiter.check(attacker, start).is_ok());
            limiter.failed(attacker, start);
        }
        let wait = limiter.check(attacker, start).unwrap_err();
        assert!(wait > Duration::from_secs(59), "{wait:?}");
        assert!(limiter.check(other, start).is_ok());
        assert!(limiter.check(attacker, start + CLAIM_WINDOW).is_ok());
    }

    #[test]
    fn registry_revocation_wins() {
        let mut registry = TrustRegistry::default();
        registry.members.insert("m".into());
        registry.clients.insert("c".into());
        assert_eq!(registry.registered("m"), Registered::Member);
        assert_eq!(registry.registered("c"), Registered::Client);
        assert_eq!(registry.registered("x"), Registered::Unknown);
        registry.revoked.insert("m".into());
        assert_eq!(registry.registered("m"), Registered::Revoked);
    }
}
