//! End-to-end tests over real QUIC sockets on 127.0.0.1.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::*;
use crate::testutil::{endpoint, member, trust};
use crate::{
    issued_by, self_signed_identity, ClusterCa, PeerIdentity, Responder,
    STREAM_CODE_HANDLER_FAILED, STREAM_CODE_MALFORMED_REQUEST,
};

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Req {
    Echo(String),
    Count(u32),
    Whoami,
    Panic,
    Silent,
    /// Answers each number sent after it on the same stream with its double, in order.
    Doubler,
}

/// Answers the test requests; `Whoami` reports whether the caller's
/// certificate was issued by `ca_cert_pem`.
pub(crate) struct TestHandler {
    pub(crate) ca_cert_pem: String,
}

impl Handler for TestHandler {
    type Request = Req;

    async fn handle(&self, peer: PeerIdentity, request: Req, mut responder: Responder) {
        match request {
            Req::Echo(text) => {
                let _ = responder.send(&text).await;
            }
            Req::Count(n) => {
                for i in 0..n {
                    if responder.send(&i).await.is_err() {
                        return;
                    }
                }
            }
            Req::Whoami => {
                let trusted = issued_by(&self.ca_cert_pem, &peer.cert_der);
                let _ = responder.send(&(peer.fingerprint, trusted)).await;
            }
            Req::Panic => panic!("handler failure requested by the test"),
            Req::Silent => {}
            Req::Doubler => {
                let Some(mut frames) = responder.take_requests() else {
                    return;
                };
                while let Ok(Some(number)) = frames.next::<u64>().await {
                    if responder.send(&(number * 2)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// A running server: its endpoint, address, and a way to stop it.
pub(crate) struct Server {
    pub(crate) endpoint: Endpoint,
    pub(crate) addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), Error>>,
}

impl Server {
    pub(crate) fn start(ca: &ClusterCa, endpoint: Endpoint) -> Server {
        let addr = endpoint.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let handler = Arc::new(TestHandler {
            ca_cert_pem: ca.cert_pem.clone(),
        });
        let serving = endpoint.clone();
        let task = tokio::spawn(async move { serving.serve(handler, shutdown).await });
        Server {
            endpoint,
            addr,
            stop,
            task,
        }
    }

    /// Stops serving, closes the endpoint and waits until it is idle.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap().unwrap();
        self.endpoint.close();
        self.endpoint.wait_idle().await;
    }
}

#[tokio::test]
async fn members_exchange_requests_and_streams() {
    let ca = ClusterCa::generate().unwrap();
    let server_identity = ca.issue("n1", crate::CertUsage::Member).unwrap();
    let server_fingerprint = server_identity.fingerprint().unwrap();
    let server = Server::start(&ca, endpoint(server_identity, true));
    let client = member(&ca, "n2", true);
    let conn = client.connect(server.addr, &trust(&ca)).await.unwrap();
    assert_eq!(conn.peer_fingerprint(), server_fingerprint);
    assert_eq!(conn.remote_addr(), server.addr);

    let echo: String = conn
        .request(&Req::Echo("hello".into()), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(echo, "hello");
    let (_, trusted): (String, bool) = conn.request(&Req::Whoami, TIMEOUT).await.unwrap();
    assert!(trusted);

    let mut stream = conn.request_stream(&Req::Count(50)).await.unwrap();
    for i in 0..50u32 {
        assert_eq!(stream.next::<u32>(TIMEOUT).await.unwrap(), Some(i));
    }
    assert_eq!(stream.next::<u32>(TIMEOUT).await.unwrap(), None);

    // Many concurrent requests on one connection.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let text = format!("req-{i}");
            let got: String = conn
                .request(&Req::Echo(text.clone()), TIMEOUT)
                .await
                .unwrap();
            assert_eq!(got, text);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    server.stop().await;
    for _ in 0..100 {
        if conn.is_closed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        conn.is_closed(),
        "the server's shutdown closes client connections"
    );
}

/// Goal: on a stream kept open both ways, the client sends many frames without waiting for
/// answers, the server reads them after the request and answers each, in order; the client's
/// end of the stream ends the server's answers cleanly.
#[tokio::test]
async fn frames_flow_both_ways_on_a_stream_kept_open() {
    let ca = ClusterCa::generate().unwrap();
    let server = Server::start(&ca, member(&ca, "n1", true));
    let client = member(&ca, "n2", true);
    let conn = client.connect(server.addr, &trust(&ca)).await.unwrap();
    let (mut sink, mut answers) = conn.open_duplex(&Req::Doubler).await.unwrap();
    for number in 0..100u64 {
        sink.send(&number).await.unwrap();
    }
    for number in 0..100u64 {
        assert_eq!(
            answers.next::<u64>(TIMEOUT).await.unwrap(),
            Some(number * 2)
        );
    }
    // Quiet for a while, then more: the stream stays open without a time limit.
    tokio::time::sleep(Duration::from_millis(200)).await;
    sink.send(&21u64).await.unwrap();
    assert_eq!(answers.next_untimed::<u64>().await.unwrap(), Some(42));
    drop(sink);
    assert_eq!(answers.next::<u64>(TIMEOUT).await.unwrap(), None);
    server.stop().await;
}

#[tokio::test]
async fn untrusted_clients_reach_the_handler_flagged() {
    let ca = ClusterCa::generate().unwrap();
    let other_ca = ClusterCa::generate().unwrap();
    let server = Server::start(&ca, member(&ca, "n1", true));
    let strangers = [
        self_signed_identity("joiner").unwrap(),
        other_ca
            .issue("intruder", crate::CertUsage::Client)
            .unwrap(),
    ];
    for identity in strangers {
        let fingerprint = identity.fingerprint().unwrap();
        let client = endpoint(identity, false);
        let conn = client.connect(server.addr, &trust(&ca)).await.unwrap();
        let (seen, trusted): (String, bool) = conn.request(&Req::Whoami, TIMEOUT).await.unwrap();
        assert_eq!(seen, fingerprint);
        assert!(!trusted, "a foreign certificate must not look CA-issued");
    }
    server.stop().await;
}

#[tokio::test]
async fn pinned_ca_and_wrong_ca() {
    let ca = ClusterCa::generate().unwrap();
    let other_ca = ClusterCa::generate().unwrap();
    let server = Server::start(&ca, member(&ca, "n1", true));
    let joiner = endpoint(self_signed_identity("joiner").unwrap(), false);

    let right = ServerTrust::PinnedCa {
        fingerprint: ca.fingerprint().unwrap().to_uppercase(),
    };
    let conn = joiner.connect(server.addr, &right).await.unwrap();
    let echo: String = conn
        .request(&Req::Echo("join".into()), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(echo, "join");

    let wrong_fp = other_ca.fingerprint().unwrap();
    let wrong = ServerTrust::PinnedCa {
        fingerprint: wrong_fp.clone(),
    };
    let err = joiner.connect(server.addr, &wrong).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::FingerprintMismatch { .. }), "{err:?}");
    assert!(message.contains("fingerprint did not match"), "{message}");
    assert!(message.contains(&wrong_fp), "{message}");
    assert!(message.contains(&ca.fingerprint().unwrap()), "{message}");
    assert!(!err.is_retryable());

    let err = joiner
        .connect(server.addr, &trust(&other_ca))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    server.stop().await;
}

#[tokio::test]
async fn pinned_ca_rejects_self_signed_server() {
    let ca = ClusterCa::generate().unwrap();
    let rogue = Server::start(&ca, endpoint(self_signed_identity("rogue").unwrap(), true));
    let joiner = endpoint(self_signed_identity("joiner").unwrap(), false);
    let pin = ServerTrust::PinnedCa {
        fingerprint: ca.fingerprint().unwrap(),
    };
    let err = joiner.connect(rogue.addr, &pin).await.unwrap_err();
    assert!(
        matches!(&err, Error::FingerprintMismatch { actual, .. } if actual == "no CA certificate"),
        "{err:?}"
    );
    rogue.stop().await;
}

/// Writes raw bytes as a request and returns the error the server answers with.
async fn raw_request(conn: &Connection, bytes: &[u8], finish: bool) -> quinn::ReadError {
    let (mut send, mut recv) = conn.quic.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    let mut buf = [0u8; 16];
    tokio::time::timeout(TIMEOUT, recv.read(&mut buf))
        .await
        .expect("server answered")
        .expect_err("server must reset the stream")
}

#[tokio::test]
async fn bad_requests_reset_only_their_stream() {
    let ca = ClusterCa::generate().unwrap();
    let server = Server::start(&ca, member(&ca, "n1", true));
    let client = member(&ca, "n2", false);
    let conn = client.connect(server.addr, &trust(&ca)).await.unwrap();
    let malformed = quinn::ReadError::Reset(quinn::VarInt::from_u32(STREAM_CODE_MALFORMED_REQUEST));

    let garbage = raw_request(&conn, &[0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef], true).await;
    assert_eq!(garbage, malformed);
    let oversized = raw_request(&conn, &[0x7f, 0xff, 0xff, 0xff, 1, 2, 3], false).await;
    assert_eq!(oversized, malformed);
    let truncated = raw_request(&conn, &[0, 0, 0, 9, 1], true).await;
    assert_eq!(truncated, malformed);

    let echo: String = conn
        .request(&Req::Echo("still here".into()), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(echo, "still here");
    let err = conn
        .request::<_, String>(&Req::Panic, TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Remote { code, .. } if code == u64::from(STREAM_CODE_HANDLER_FAILED)),
        "{err:?}"
    );
    let err = conn
        .request::<_, String>(&Req::Silent, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoResponse), "{err:?}");
    let err = conn
        .request::<_, u64>(&Req::Echo("x".into()), TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MalformedFrame(_)), "{err:?}");

    // A fresh connection to the same endpoint works too.
    let conn2 = client.connect(server.addr, &trust(&ca)).await.unwrap();
    let echo: String = conn2
        .request(&Req::Echo("new".into()), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(echo, "new");
    server.stop().await;
}

#[tokio::test]
async fn client_only_endpoints_cannot_serve() {
    let ca = ClusterCa::generate().unwrap();
    let client = member(&ca, "c", false);
    let (_stop, shutdown) = watch::channel(false);
    let handler = Arc::new(TestHandler {
        ca_cert_pem: ca.cert_pem.clone(),
    });
    let err = client.serve(handler, shutdown).await.unwrap_err();
    assert!(matches!(err, Error::NotServing));
}

#[tokio::test]
async fn connect_to_nobody_times_out() {
    let ca = ClusterCa::generate().unwrap();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let client = member(&ca, "c", false).with_connect_timeout(Duration::from_millis(200));
    let err = client.connect(addr, &trust(&ca)).await.unwrap_err();
    assert!(
        matches!(&err, Error::Connect { reason, .. } if reason.contains("timed out after 200 ms")),
        "{err:?}"
    );
    assert!(err.is_retryable());
    // Nothing was sent: safe to send the request elsewhere.
    assert!(!err.may_have_been_delivered());
    client.close();
    let err = client.connect(addr, &trust(&ca)).await.unwrap_err();
    assert!(matches!(err, Error::EndpointClosed), "{err:?}");
}

/// Goal: an endpoint's UDP socket has room for a bulk transfer's bursts: its buffers are
/// [`UDP_BUFFER_BYTES`] or the kernel's cap, not the ~200 KiB default that dropped datagrams
/// (and halved the congestion window) while an image copy's receiver was descheduled.
#[test]
fn udp_buffers_are_enlarged() {
    let cap = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .ok()
            .and_then(|value| value.trim().parse::<usize>().ok())
            .unwrap_or(UDP_BUFFER_BYTES)
    };
    let socket = socket2::Socket::from(udp_socket(crate::testutil::loopback()).unwrap());
    // Linux reports twice the size asked (its bookkeeping overhead), capped at twice the limit.
    let expect = |limit: usize| UDP_BUFFER_BYTES.min(limit);
    assert!(socket.recv_buffer_size().unwrap() >= expect(cap("rmem_max")));
    assert!(socket.send_buffer_size().unwrap() >= expect(cap("wmem_max")));
    assert!(socket.recv_buffer_size().unwrap() > 212_992 * 2 || cap("rmem_max") <= 212_992);
}
