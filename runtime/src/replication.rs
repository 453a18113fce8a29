//! Replication streams: the leader's appends to one follower travel on one QUIC stream for as
//! long as openraft's replication session lasts, pipelined.
//!
//! A request on a stream of its own costs a stream's opening and closing at both ends, a task
//! on the receiver, and a round trip before the next request may leave. On a replication
//! stream the leader writes each `AppendEntriesRequest` as openraft makes it (the entries of
//! the next write do not wait for the answer to the last one, nor for the entry-less request
//! that only carries the commit index), and the follower answers each, in order, through
//! openraft's `Raft::stream_append`.
//!
//! - **Leader** ([`Session`]): a task sends the requests; a task reads the answers; the stream
//!   openraft reads yields them, failing when the oldest unanswered request has waited longer
//!   than the RPC limit openraft gives (its heartbeat interval), as a lone request would. A
//!   peer cut off (fault injection) ends the stream as unreachable.
//! - **Follower** ([`serve`]): every request frame is checked again (the sender is still a
//!   registered member, not cut off, this member is in service); the first that is not ends
//!   the stream with an answer saying why, after the answers to the requests before it.
//!
//! Dropping the stream openraft reads (its session ended) stops both leader tasks; the
//! follower then sees the end of the stream.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use openraft::error::{NetworkError, RPCError};
use openraft::raft::AppendEntriesRequest;
use starling_store::TypeConfig;
use starling_transport::{
    Connection, Error as TransportError, FrameSink, PeerIdentity, Pool, Responder, ResponseStream,
};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::member::{Blocked, Member};
use crate::network::AppendAnswer;
use crate::protocol::AppendStreamReply;
use crate::sync::lock;

/// Answers read ahead of openraft.
const ANSWERS_QUEUED_MAX: usize = 64;

/// How long a request without entries (it carries only the leader's commit index) waits for
/// the request after it, so that both leave in one packet and the follower wakes once for the
/// two. openraft sends one whenever the commit index moves and no entries are waiting: under
/// a steady load, after every entry, just before the next entry's request. The follower learns
/// of the commit this much later at most; nothing on the leader waits for it.
const COMMIT_ONLY_HOLD: Duration = Duration::from_micros(500);

/// The leader's side of one replication stream to a follower.
pub(crate) struct Session {
    /// The member's connection pool (a connection that fails is dropped from it).
    pub(crate) pool: Pool,
    /// The follower's socket address.
    pub(crate) address: SocketAddr,
    /// The connection the stream is on.
    pub(crate) connection: Connection,
    /// The follower's address as the membership names it (for the cut-off check).
    pub(crate) peer: String,
    /// Addresses cut off (fault injection).
    pub(crate) blocked: Blocked,
    /// How long the oldest unanswered request may wait for its answer.
    pub(crate) answer_within: Duration,
}

/// What the answer reader or the request sender hands to the stream openraft reads.
enum Answer {
    /// The follower's answer to the oldest unanswered request.
    Reply(AppendStreamReply),
    /// The stream failed.
    Failed(RPCError<TypeConfig>),
    /// The stream failed in a way that suggests the connection is broken.
    Broken(TransportError),
}

/// Aborts the session's tasks when the stream openraft reads is dropped.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// What the stream openraft reads keeps between answers.
struct Reading {
    answers: mpsc::Receiver<Answer>,
    /// When each unanswered request left, oldest first.
    sent: Arc<Mutex<VecDeque<Instant>>>,
    /// Told when a request leaves.
    pushed: Arc<Notify>,
    session: Session,
    _tasks: Tasks,
    /// An error was yielded: the stream ends.
    done: bool,
}

impl Session {
    /// Sends `input`'s requests on `sink` as they come, and yields the answers read from
    /// `answers`, in order.
    pub(crate) fn run<S>(
        self,
        input: S,
        sink: FrameSink,
        answers: ResponseStream,
    ) -> BoxStream<'static, AppendAnswer>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let (queue, received) = mpsc::channel(ANSWERS_QUEUED_MAX);
        let sent = Arc::new(Mutex::new(VecDeque::new()));
        let pushed = Arc::new(Notify::new());
        let sender = tokio::spawn(send_requests(
            input,
            sink,
            sent.clone(),
            pushed.clone(),
            queue.clone(),
            (self.blocked.clone(), self.peer.clone()),
        ));
        let reader = tokio::spawn(read_answers(answers, queue));
        let reading = Reading {
            answers: received,
            sent,
            pushed,
            session: self,
            _tasks: Tasks(vec![sender, reader]),
            done: false,
        };
        futures::stream::unfold(reading, next_answer).boxed()
    }
}

/// Sends each request of `input` as it comes, noting when it left; stops at the first that
/// cannot go (the peer is cut off, or the stream failed: the reader then reports why).
async fn send_requests<S>(
    mut input: S,
    mut sink: FrameSink,
    sent: Arc<Mutex<VecDeque<Instant>>>,
    pushed: Arc<Notify>,
    queue: mpsc::Sender<Answer>,
    (blocked, peer): (Blocked, String),
) where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    let mut carried = None;
    let commit_only = |request: &AppendEntriesRequest<TypeConfig>| request.entries.is_empty();
    while let Some((request, last)) =
        next_to_send(&mut input, &mut carried, COMMIT_ONLY_HOLD, commit_only).await
    {
        if crate::network::is_cut_off(&blocked, &peer) {
            sink.abort();
            let _ = queue
                .send(Answer::Failed(crate::network::cut_off_error(&peer)))
                .await;
            return;
        }
        lock(&sent).push_back(Instant::now());
        pushed.notify_one();
        if sink.send(&request).await.is_err() || last {
            return;
        }
    }
    // The session has nothing more to send: dropping the sink ends the stream cleanly, and
    // the follower finishes its side once it has answered.
}

/// The next request of `input` to send (the one `carried` over first), and whether `input`
/// ended after it. A request that `holds` waits up to `hold` for the one after it, which is
/// then carried over, so that the two are written back to back.
async fn next_to_send<S, T>(
    input: &mut S,
    carried: &mut Option<T>,
    hold: Duration,
    holds: impl Fn(&T) -> bool,
) -> Option<(T, bool)>
where
    S: Stream<Item = T> + Unpin,
{
    let request = match carried.take() {
        Some(request) => request,
        None => input.next().await?,
    };
    if holds(&request) {
        if let Ok(next) = tokio::time::timeout(hold, input.next()).await {
            match next {
                Some(next) => *carried = Some(next),
                None => return Some((request, true)),
            }
        }
    }
    Some((request, false))
}

/// Reads the follower's answers until its side of the stream ends or fails.
async fn read_answers(mut answers: ResponseStream, queue: mpsc::Sender<Answer>) {
    loop {
        let answer = match answers.next_untimed::<AppendStreamReply>().await {
            Ok(Some(reply)) => Answer::Reply(reply),
            Ok(None) => return,
            Err(error) => Answer::Broken(error),
        };
        let last = !matches!(answer, Answer::Reply(Ok(_)));
        if queue.send(answer).await.is_err() || last {
            return;
        }
    }
}

/// The next answer for openraft, `None` once the stream ended.
async fn next_answer(mut reading: Reading) -> Option<(AppendAnswer, Reading)> {
    if reading.done {
        return None;
    }
    let answer = loop {
        let oldest = lock(&reading.sent).front().copied();
        match oldest {
            Some(at) => {
                tokio::select! {
                    answer = reading.answers.recv() => break answer,
                    _ = tokio::time::sleep_until(at + reading.session.answer_within) => {
                        let error = TransportError::Timeout {
                            action: format!(
                                "waiting for an append answer ({})",
                                reading.session.address
                            ),
                            timeout_ms: reading.session.answer_within.as_millis() as u64,
                        };
                        break Some(Answer::Broken(error));
                    }
                }
            }
            None => {
                tokio::select! {
                    answer = reading.answers.recv() => break answer,
                    _ = reading.pushed.notified() => continue,
                }
            }
        }
    };
    let answered = match answer? {
        Answer::Reply(Ok(result)) => {
            if let Some(at) = lock(&reading.sent).pop_front() {
                tracing::trace!(micros = at.elapsed().as_micros() as u64, "append answered");
            }
            return Some((Ok(result), reading));
        }
        Answer::Reply(Err(message)) => RPCError::Network(NetworkError::from_string(format!(
            "{} ended the replication stream: {message}",
            reading.session.address
        ))),
        Answer::Failed(error) => error,
        Answer::Broken(error) => {
            let session = &reading.session;
            session
                .pool
                .discard_if_broken(session.address, &session.connection, &error)
                .await;
            crate::network::rpc_error(error)
        }
    };
    reading.done = true;
    Some((Err(answered), reading))
}

/// Why this member refuses the next request of a replication stream from `peer`, if it does.
fn refusal(member: &Member, peer: &PeerIdentity) -> Option<String> {
    if !matches!(
        member.registered(&peer.fingerprint),
        starling_store::Registered::Member
    ) {
        return Some(format!(
            "the certificate {} is no longer a member's",
            peer.fingerprint
        ));
    }
    crate::serve::unavailable_to(member, peer).map(|error| error.to_string())
}

/// The follower's side: feeds the stream's request frames to openraft and sends its answers
/// back, in order, until the leader ends the stream, a request is refused, or openraft stops.
pub(crate) async fn serve(member: &Member, peer: &PeerIdentity, responder: &mut Responder) {
    let Some(frames) = responder.take_requests() else {
        return;
    };
    let refused: Arc<Mutex<Option<String>>> = Arc::default();
    let state = (frames, member.clone(), peer.clone(), refused.clone());
    let input = futures::stream::unfold(state, |(mut frames, member, peer, refused)| async move {
        let why = match frames.next::<AppendEntriesRequest<TypeConfig>>().await {
            Ok(Some(request)) => match refusal(&member, &peer) {
                None => {
                    member.append_arrived();
                    return Some((request, (frames, member, peer, refused)));
                }
                Some(why) => why,
            },
            Ok(None) => return None,
            Err(error) => format!("unreadable append request: {error}"),
        };
        *lock(&refused) = Some(why);
        None
    });
    let answers = member.raft().stream_append(input);
    let mut answers = std::pin::pin!(answers);
    while let Some(answer) = answers.next().await {
        let reply: AppendStreamReply = answer.map_err(|fatal| fatal.to_string());
        let last = reply.is_err();
        if responder.send(&reply).await.is_err() || last {
            return;
        }
    }
    let why = lock(&refused).take();
    if let Some(why) = why {
        tracing::debug!(remote = %peer.remote_addr, %why, "replication stream refused");
        let _ = responder.send(&AppendStreamReply::Err(why)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc::unbounded;

    const HOLD: Duration = Duration::from_millis(200);

    /// Requests are numbers here; odd ones stand for requests without entries.
    fn commit_only(request: &u32) -> bool {
        request % 2 == 1
    }

    #[tokio::test]
    async fn a_request_with_entries_goes_at_once() {
        let (sender, mut input) = unbounded();
        sender.unbounded_send(2).unwrap();
        let mut carried = None;
        let started = std::time::Instant::now();
        let next = next_to_send(&mut input, &mut carried, HOLD, commit_only).await;
        assert_eq!(next, Some((2, false)));
        assert!(started.elapsed() < HOLD, "it did not wait");
        assert!(carried.is_none());
    }

    #[tokio::test]
    async fn a_commit_only_request_waits_for_the_next_to_leave_with_it() {
        let (sender, mut input) = unbounded();
        sender.unbounded_send(1).unwrap();
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            sender.unbounded_send(4).unwrap();
            sender
        });
        let mut carried = None;
        let next = next_to_send(&mut input, &mut carried, HOLD, commit_only).await;
        // Without the hold the first request went alone, before the second existed.
        assert_eq!(next, Some((1, false)));
        assert_eq!(
            carried,
            Some(4),
            "the next request is carried over, to go right after"
        );
        let _sender = later.await.unwrap();
        let next = next_to_send(&mut input, &mut carried, HOLD, commit_only).await;
        assert_eq!(next, Some((4, false)));
        assert!(carried.is_none());
    }

    #[tokio::test]
    async fn a_commit_only_request_goes_alone_after_the_hold() {
        let (sender, mut input) = unbounded();
        sender.unbounded_send(3).unwrap();
        let mut carried = None;
        let started = std::time::Instant::now();
        let next = next_to_send(&mut input, &mut carried, HOLD, commit_only).await;
        assert_eq!(next, Some((3, false)));
        assert!(started.elapsed() >= HOLD);
        assert!(carried.is_none());
        drop(sender);
    }

    #[tokio::test]
    async fn the_end_of_the_requests_during_a_hold_sends_the_held_one_last() {
        let (sender, mut input) = unbounded();
        sender.unbounded_send(5).unwrap();
        drop(sender);
        let mut carried = None;
        let next = next_to_send(&mut input, &mut carried, HOLD, commit_only).await;
        assert_eq!(next, Some((5, true)));
        assert_eq!(
            next_to_send(&mut input, &mut carried, HOLD, commit_only).await,
            None
        );
    }
}
