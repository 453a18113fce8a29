//! Helpers shared by the tests: endpoints on 127.0.0.1 and raw stream pairs.

use std::net::SocketAddr;

use crate::{CertUsage, ClusterCa, Endpoint, EndpointConfig, Identity, ServerTrust};

/// Any free port on loopback.
pub(crate) fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// An endpoint on loopback with `identity`.
pub(crate) fn endpoint(identity: Identity, serve: bool) -> Endpoint {
    endpoint_at(identity, loopback(), serve).expect("bind loopback endpoint")
}

/// An endpoint at a given address.
pub(crate) fn endpoint_at(
    identity: Identity,
    bind: SocketAddr,
    serve: bool,
) -> Result<Endpoint, crate::Error> {
    Endpoint::new(EndpointConfig {
        identity,
        bind,
        serve,
    })
}

/// A member endpoint whose certificate `ca` issued.
pub(crate) fn member(ca: &ClusterCa, name: &str, serve: bool) -> Endpoint {
    endpoint(ca.issue(name, CertUsage::Member).expect("issue"), serve)
}

/// Trust in `ca`'s servers.
pub(crate) fn trust(ca: &ClusterCa) -> ServerTrust {
    ServerTrust::Ca {
        ca_cert_pem: ca.cert_pem.clone(),
    }
}

/// Both ends of one bidirectional stream, bypassing the request layer.
pub(crate) struct RawPair {
    pub(crate) client_send: quinn::SendStream,
    pub(crate) client_recv: quinn::RecvStream,
    pub(crate) server_send: quinn::SendStream,
    pub(crate) server_recv: quinn::RecvStream,
    _connections: (crate::Connection, quinn::Connection),
    _endpoints: (Endpoint, Endpoint),
}

/// Connects two fresh endpoints, opens a stream, writes `bytes` on it
/// (finishing it if `finish`), and accepts it on the server side.
pub(crate) async fn raw_pair(bytes: &[u8], finish: bool) -> RawPair {
    let RawConnection {
        client,
        server,
        _connection,
        _endpoints,
    } = raw_connection().await;
    let (mut client_send, client_recv) = client.open_bi().await.expect("open");
    client_send.write_all(bytes).await.expect("write");
    if finish {
        client_send.finish().expect("finish");
    }
    let (server_send, server_recv) = server.accept_bi().await.expect("accept");
    RawPair {
        client_send,
        client_recv,
        server_send,
        server_recv,
        _connections: (_connection, server),
        _endpoints,
    }
}

/// Both ends of one connection between two fresh endpoints, for tests that open many streams.
pub(crate) struct RawConnection {
    pub(crate) client: quinn::Connection,
    pub(crate) server: quinn::Connection,
    _connection: crate::Connection,
    _endpoints: (Endpoint, Endpoint),
}

/// Connects two fresh endpoints.
pub(crate) async fn raw_connection() -> RawConnection {
    let ca = ClusterCa::generate().expect("ca");
    let server = member(&ca, "server", true);
    let client = member(&ca, "client", false);
    let addr = server.local_addr().expect("addr");
    let accept = async {
        let incoming = server.quic.accept().await.expect("incoming");
        incoming.await.expect("handshake")
    };
    let trust = trust(&ca);
    let (connection, server_conn) = tokio::join!(client.connect(addr, &trust), accept);
    let connection = connection.expect("connect");
    RawConnection {
        client: connection.quic.clone(),
        server: server_conn,
        _connection: connection,
        _endpoints: (server, client),
    }
}
