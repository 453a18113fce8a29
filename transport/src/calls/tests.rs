//! Call streams over real QUIC sockets on 127.0.0.1.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::*;
use crate::testutil::{member, trust};
use crate::{ClusterCa, Connection, Endpoint, Handler, PeerIdentity};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A call: a number, how long the server takes over it (ms), and bytes it counts.
type Call = (u64, u64, Vec<u8>);
/// The answer: the number doubled and the count of bytes.
type Answer = (u64, usize);

/// Serves call streams, `in_flight_max` calls at once, and counts what it sees.
struct CallHandler {
    in_flight_max: usize,
    running: AtomicUsize,
    finished: AtomicUsize,
    peak: AtomicUsize,
    sessions: AtomicUsize,
}

impl Handler for CallHandler {
    type Request = String;

    async fn handle(&self, _peer: PeerIdentity, _open: String, mut responder: Responder) {
        self.sessions.fetch_add(1, Ordering::SeqCst);
        serve_calls(
            &mut responder,
            self.in_flight_max,
            |(number, delay_ms, bytes): Call| async move {
                let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
                self.peak.fetch_max(now, Ordering::SeqCst);
                if delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
                self.running.fetch_sub(1, Ordering::SeqCst);
                self.finished.fetch_add(1, Ordering::SeqCst);
                (number * 2, bytes.len())
            },
            |_| (u64::MAX, 0),
            |_| (0, 0),
        )
        .await;
        self.sessions.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Setup {
    handler: Arc<CallHandler>,
    connection: Connection,
    _stop: watch::Sender<bool>,
    _endpoints: (Endpoint, Endpoint),
}

async fn setup(in_flight_max: usize) -> Setup {
    let ca = ClusterCa::generate().unwrap();
    let server = member(&ca, "server", true);
    let addr = server.local_addr().unwrap();
    let handler = Arc::new(CallHandler {
        in_flight_max,
        running: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        sessions: AtomicUsize::new(0),
    });
    let (stop, shutdown) = watch::channel(false);
    let serving = server.clone();
    let served = handler.clone();
    tokio::spawn(async move { serving.serve(served, shutdown).await });
    let client = member(&ca, "client", false);
    let connection = client.connect(addr, &trust(&ca)).await.unwrap();
    Setup {
        handler,
        connection,
        _stop: stop,
        _endpoints: (server, client),
    }
}

impl Setup {
    /// A call stream on the connection, for calls from several tasks.
    async fn open(&self) -> Arc<Calls<Call, Answer>> {
        Arc::new(
            self.connection
                .open_calls(&"calls".to_string(), 64)
                .await
                .unwrap(),
        )
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Many calls at once, answered out of order (later calls finish first), each gets its own
/// answer; a frame larger than one read from QUIC arrives whole; dropping the handle ends the
/// server's side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_gets_its_own_answer() {
    let setup = setup(256).await;
    let calls = setup.open().await;
    let mut tasks = Vec::new();
    for number in 0..200u64 {
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            let delay = (200 - number) % 7 * 3;
            let bytes = vec![7u8; if number == 13 { 300_000 } else { 10 }];
            let answer = calls.call(&(number, delay, bytes), TIMEOUT).await.unwrap();
            (number, answer)
        }));
    }
    for task in tasks {
        let (number, (doubled, bytes)) = task.await.unwrap();
        assert_eq!(doubled, number * 2);
        assert_eq!(bytes, if number == 13 { 300_000 } else { 10 });
    }
    assert!(
        setup.handler.peak.load(Ordering::SeqCst) > 1,
        "the server ran the calls one at a time"
    );
    assert_eq!(setup.handler.sessions.load(Ordering::SeqCst), 1);
    drop(calls);
    wait_until("the server's session ended", || {
        setup.handler.sessions.load(Ordering::SeqCst) == 0
    })
    .await;
}

/// The server runs no more than its limit of calls at once, however many the client sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_bounds_calls_in_flight() {
    let setup = setup(4).await;
    let calls = setup.open().await;
    let tasks: Vec<_> = (0..32u64)
        .map(|number| {
            let calls = calls.clone();
            tokio::spawn(async move { calls.call(&(number, 20, Vec::new()), TIMEOUT).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(setup.handler.peak.load(Ordering::SeqCst), 4);
}

/// A call that times out fails alone: its late answer is dropped, the stream carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_times_out_leaves_the_stream_usable() {
    let setup = setup(256).await;
    let calls = setup.open().await;
    let slow = calls
        .call(&(1, 300, Vec::new()), Duration::from_millis(50))
        .await;
    assert!(
        matches!(slow, Err(Error::Timeout { .. })),
        "expected a time-out, got {slow:?}"
    );
    // The late answer arrives meanwhile and finds no caller.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        calls.call(&(21, 0, Vec::new()), TIMEOUT).await.unwrap(),
        (42, 0)
    );
    assert!(!calls.is_broken());
}

/// A lost connection fails the waiting calls at once, and every later one, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_fails_waiting_calls() {
    let setup = setup(256).await;
    let calls = setup.open().await;
    let waiting = {
        let calls = calls.clone();
        tokio::spawn(async move { calls.call(&(1, 3_000, Vec::new()), TIMEOUT).await })
    };
    wait_until("the call runs", || {
        setup.handler.running.load(Ordering::SeqCst) == 1
    })
    .await;
    let started = Instant::now();
    setup.connection.close();
    let outcome = waiting.await.unwrap();
    assert!(
        matches!(outcome, Err(Error::ConnectionLost { .. })),
        "expected a lost connection, got {outcome:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(calls.is_broken());
    let later = calls.call(&(2, 0, Vec::new()), TIMEOUT).await;
    assert!(matches!(later, Err(Error::ConnectionLost { .. })));
}

/// A client that goes away cuts no call off half-way: what the server took runs to its end,
/// as a request on a stream of its own does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_outlive_their_client() {
    let setup = setup(256).await;
    let calls = setup.open().await;
    for number in 0..3u64 {
        let calls = calls.clone();
        tokio::spawn(async move { calls.call(&(number, 300, Vec::new()), TIMEOUT).await });
    }
    wait_until("the calls run", || {
        setup.handler.running.load(Ordering::SeqCst) == 3
    })
    .await;
    setup.connection.close();
    wait_until("the calls finished", || {
        setup.handler.finished.load(Ordering::SeqCst) == 3
    })
    .await;
    wait_until("the server's session ended", || {
        setup.handler.sessions.load(Ordering::SeqCst) == 0
    })
    .await;
}

/// Goal: a call the server cannot decode (a client of another version sending a request this
/// server does not know) is answered as unreadable, and the stream goes on serving: before,
/// the server reset the whole stream, and every call on it failed as a lost connection, which
/// a caller may retry.
/// Method: a call stream whose requests are raw byte vectors. Three bytes do not decode as a
/// call: answered `(u64::MAX, 0)` (the handler's stand-in). Sixteen zero bytes decode as the
/// call `(16, 0, [])` (a vector's length prefix reads as the number): answered `(32, 0)` on
/// the same stream, which is not broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_call_is_answered_and_the_stream_goes_on() {
    let setup = setup(4).await;
    let calls: Calls<Vec<u8>, Answer> = setup
        .connection
        .open_calls(&"calls".to_string(), 64)
        .await
        .unwrap();
    assert_eq!(
        calls.call(&vec![1, 2, 3], TIMEOUT).await.unwrap(),
        (u64::MAX, 0)
    );
    assert!(!calls.is_broken());
    assert_eq!(calls.call(&vec![0; 16], TIMEOUT).await.unwrap(), (32, 0));
    assert_eq!(setup.handler.finished.load(Ordering::SeqCst), 1);
}
