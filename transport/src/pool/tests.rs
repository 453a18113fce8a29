//! Pool behaviour against real servers on 127.0.0.1.

use crate::endpoint::tests::{Req, Server};
use crate::testutil::{endpoint_at, member, trust};
use crate::{CertUsage, ClusterCa};

use super::*;

const TIMEOUT: Duration = Duration::from_secs(5);

fn pool(ca: &ClusterCa) -> Pool {
    let client = member(ca, "client", false).with_connect_timeout(Duration::from_millis(300));
    Pool::new(client)
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    assert_eq!(backoff(1), Duration::from_millis(50));
    assert_eq!(backoff(2), Duration::from_millis(100));
    assert_eq!(backoff(6), Duration::from_millis(1600));
    assert_eq!(backoff(7), Duration::from_millis(2000));
    assert_eq!(backoff(u32::MAX), Duration::from_millis(2000));
}

#[tokio::test]
async fn pool_reuses_connections() {
    let ca = ClusterCa::generate().unwrap();
    let server = Server::start(&ca, member(&ca, "n1", true));
    let pool = pool(&ca);
    let first = pool.get(server.addr, &trust(&ca)).await.unwrap();
    let echo: String = pool
        .request(server.addr, &trust(&ca), &Req::Echo("a".into()), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(echo, "a");
    let second = pool.get(server.addr, &trust(&ca)).await.unwrap();
    assert_eq!(first.stable_id(), second.stable_id());
    server.stop().await;
}

#[tokio::test]
async fn pool_backs_off_from_unreachable_peers() {
    let ca = ClusterCa::generate().unwrap();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let pool = pool(&ca);
    let err = pool.get(addr, &trust(&ca)).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    let err = pool.get(addr, &trust(&ca)).await.unwrap_err();
    assert!(
        matches!(&err, Error::Unreachable { retry_in_ms, .. } if *retry_in_ms <= BACKOFF_MIN_MS),
        "{err:?}"
    );
    assert!(err.is_retryable());
    pool.forget(addr);
    let err = pool.get(addr, &trust(&ca)).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn pool_reconnects_after_server_restart() {
    let ca = ClusterCa::generate().unwrap();
    let identity = ca.issue("n1", CertUsage::Member).unwrap();
    let server = Server::start(
        &ca,
        endpoint_at(identity.clone(), crate::testutil::loopback(), true).unwrap(),
    );
    let addr = server.addr;
    let pool = pool(&ca);
    let before = pool.get(addr, &trust(&ca)).await.unwrap();
    let echo: String = pool
        .request(addr, &trust(&ca), &Req::Echo("1".into()), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(echo, "1");
    server.stop().await;

    let server = Server::start(&ca, rebind(identity, addr).await);
    let echo: String = request_until_ok(&pool, addr, &trust(&ca), "2").await;
    assert_eq!(echo, "2");
    let after = pool.get(addr, &trust(&ca)).await.unwrap();
    assert_ne!(before.stable_id(), after.stable_id());
    assert!(before.is_closed());
    server.stop().await;
}

/// Binds a serving endpoint to `addr`, retrying while the old socket lingers.
async fn rebind(identity: crate::Identity, addr: SocketAddr) -> Endpoint {
    for _ in 0..50 {
        match endpoint_at(identity.clone(), addr, true) {
            Ok(endpoint) => return endpoint,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("could not re-bind {addr}");
}

/// Retries a request while the pool reports retryable errors.
async fn request_until_ok(
    pool: &Pool,
    addr: SocketAddr,
    trust: &ServerTrust,
    text: &str,
) -> String {
    for _ in 0..50 {
        match pool
            .request(addr, trust, &Req::Echo(text.into()), TIMEOUT)
            .await
        {
            Ok(echo) => return echo,
            Err(err) if err.is_retryable() => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(err) => panic!("unexpected error: {err}"),
        }
    }
    panic!("no success after restart");
}
