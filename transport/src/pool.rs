//! A per-address cache of connections with back-off for unreachable peers.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::frame::duration_ms;
use crate::{Connection, Endpoint, Error, ServerTrust};

/// First wait after a failed connection attempt.
pub const BACKOFF_MIN_MS: u64 = 50;

/// Longest wait between connection attempts to the same address.
pub const BACKOFF_MAX_MS: u64 = 2_000;

/// Connections to peers, one per address, shared by all clones.
///
/// [`Pool::get`] returns the cached connection while it is alive, and
/// connects again when it has died. After a failed attempt it waits
/// (exponentially, [`BACKOFF_MIN_MS`] up to [`BACKOFF_MAX_MS`], reset by a
/// success) before trying that address again; during the wait it fails
/// immediately with [`Error::Unreachable`].
///
/// The `trust` argument is used when a connection is established; a cached
/// connection is returned as is.
#[derive(Clone)]
pub struct Pool {
    endpoint: Endpoint,
    slots: Arc<Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Slot>>>>>,
}

/// What the pool knows about one address.
#[derive(Default)]
struct Slot {
    connection: Option<Connection>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

impl Pool {
    /// A pool that connects through `endpoint`.
    pub fn new(endpoint: Endpoint) -> Pool {
        Pool {
            endpoint,
            slots: Arc::default(),
        }
    }

    /// The endpoint connections are made from.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A live connection to `addr`: the cached one, or a new one.
    /// Concurrent callers for the same address share one attempt.
    pub async fn get(&self, addr: SocketAddr, trust: &ServerTrust) -> Result<Connection, Error> {
        let slot = self.slot(addr);
        let mut slot = slot.lock().await;
        if let Some(connection) = &slot.connection {
            if !connection.is_closed() {
                return Ok(connection.clone());
            }
            slot.connection = None;
        }
        let now = Instant::now();
        if let Some(retry_at) = slot.retry_at.filter(|at| *at > now) {
            return Err(Error::Unreachable {
                addr,
                retry_in_ms: duration_ms(retry_at - now).max(1),
                last_error: slot.last_error.clone(),
            });
        }
        match self.endpoint.connect(addr, trust).await {
            Ok(connection) => {
                slot.failures = 0;
                slot.retry_at = None;
                slot.connection = Some(connection.clone());
                Ok(connection)
            }
            Err(err) => {
                slot.failures = slot.failures.saturating_add(1);
                slot.retry_at = Some(Instant::now() + backoff(slot.failures));
                slot.last_error = err.to_string();
                Err(err)
            }
        }
    }

    /// [`Pool::get`] then [`Connection::request`]. When the request fails
    /// in a way that suggests the connection is broken (lost, timed out),
    /// the cached connection is dropped so the next call reconnects.
    pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        trust: &ServerTrust,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, Error> {
        let connection = self.get(addr, trust).await?;
        let result = connection.request(req, timeout).await;
        if let Err(err) = &result {
            self.discard_if_broken(addr, &connection, err).await;
        }
        result
    }

    /// Forgets everything about `addr`: its connection (which stays open
    /// for other holders) and its back-off state.
    pub fn forget(&self, addr: SocketAddr) {
        self.lock_slots().remove(&addr);
    }

    /// Drops `connection` from the cache when `error`, which it gave, suggests it is broken
    /// (lost, timed out), so that the next request connects again.
    pub async fn discard_if_broken(
        &self,
        addr: SocketAddr,
        connection: &Connection,
        error: &Error,
    ) {
        if error.is_connection_level() {
            self.discard(addr, connection).await;
        }
    }

    /// Drops `connection` from the cache if it is still the cached one.
    async fn discard(&self, addr: SocketAddr, connection: &Connection) {
        let slot = self.slot(addr);
        let mut slot = slot.lock().await;
        let cached = slot.connection.as_ref().map(Connection::stable_id);
        if cached == Some(connection.stable_id()) {
            slot.connection = None;
        }
    }

    fn slot(&self, addr: SocketAddr) -> Arc<tokio::sync::Mutex<Slot>> {
        self.lock_slots().entry(addr).or_default().clone()
    }

    fn lock_slots(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<tokio::sync::Mutex<Slot>>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("endpoint", &self.endpoint)
            .field("addresses", &self.lock_slots().len())
            .finish()
    }
}

/// Wait after the `failures`-th consecutive failure: 50 ms, 100 ms, ...
/// capped at 2 s.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let wait_ms = BACKOFF_MIN_MS.saturating_mul(1 << doublings);
    Duration::from_millis(wait_ms.min(BACKOFF_MAX_MS))
}

#[cfg(test)]
mod tests;
