//! Group commit of proposals: concurrent writes share one Raft entry.
//!
//! One entry per write would cost every write its own log commit. The proposer keeps two
//! entries in flight; whatever arrives meanwhile goes into the next entry as a
//! [`Command::Batch`], which, while the other entry is in flight, waits to hold as many
//! commands as the last one (see [`gather`]). A lone writer pays nothing extra: its command goes
//! out at once, unbatched.

use std::time::Duration;

use starling_store::{Command, CommandResponse};
use tokio::sync::{mpsc, oneshot};

use crate::member::Member;
use crate::Error;

/// Commands folded into one entry at most.
const BATCH_COMMANDS_MAX: usize = 1024;
/// Encoded bytes folded into one entry at most, so that an entry always fits a frame.
const BATCH_BYTES_MAX: usize = starling_store::limits::BATCH_BYTES_MAX;
/// How long one entry may take to commit before the proposal fails as unavailable (then the
/// voters are pinged, so a lost quorum is answered within 2 s of the request).
const COMMIT_TIMEOUT: Duration = Duration::from_millis(1500);

/// A command waiting to be proposed, and where its outcome goes.
pub(crate) struct Proposal {
    pub(crate) command: Command,
    /// The command's encoded size.
    pub(crate) bytes: usize,
    pub(crate) done: oneshot::Sender<Result<(), Error>>,
    /// Set once the command went to Raft: from then on it may commit whatever its caller does.
    pub(crate) proposed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proposal {
    /// Whether the caller stopped waiting (it timed out): such a command is never proposed.
    fn abandoned(&self) -> bool {
        self.done.is_closed()
    }
}

/// Entries in flight at once: the second overlaps the first's replication with its own `fsync`.
const ENTRIES_IN_FLIGHT_MAX: usize = 2;

/// The entries the proposer has proposed and that have not committed (or failed) yet.
struct InFlight {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    /// Told whenever an entry in flight is done.
    done: std::sync::Arc<tokio::sync::Notify>,
}

impl InFlight {
    fn new() -> InFlight {
        InFlight {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(ENTRIES_IN_FLIGHT_MAX)),
            done: std::sync::Arc::default(),
        }
    }

    /// Whether an entry other than the caller's (which holds a permit) is in flight.
    fn others(&self) -> bool {
        self.permits.available_permits() + 1 < ENTRIES_IN_FLIGHT_MAX
    }
}

/// The commands gathered for the next entry.
struct Batch {
    proposals: Vec<Proposal>,
    bytes: usize,
}

impl Batch {
    /// Adds `proposal`, or leaves it in `carried` (to open the next entry) when it does not
    /// fit. Returns whether the batch can take more.
    fn add(&mut self, proposal: Proposal, carried: &mut Option<Proposal>) -> bool {
        if self.bytes + proposal.bytes > BATCH_BYTES_MAX {
            *carried = Some(proposal);
            return false;
        }
        self.bytes += proposal.bytes;
        self.proposals.push(proposal);
        self.proposals.len() < BATCH_COMMANDS_MAX
    }
}

/// Gathers the next entry's commands, starting with `first`: whatever is queued, and, while
/// another entry is in flight, whatever arrives until the batch holds `target` commands (the
/// last entry's) or an entry in flight is done.
///
/// Every entry costs each voter a log `fsync` (a disk write and a flush, and the replication
/// round with it) whatever its size. Proposing at once whatever had arrived cut a steady load
/// into small entries behind large ones: 64 writers made entries of ~23 commands, three
/// groups for two entries in flight. Waiting for the next entry to match the last makes two
/// groups of half the writers each. A lone writer never waits: nothing else is in flight.
async fn gather(
    queue: &mut mpsc::UnboundedReceiver<Proposal>,
    first: Proposal,
    carried: &mut Option<Proposal>,
    target: usize,
    in_flight: &InFlight,
) -> Vec<Proposal> {
    let mut batch = Batch {
        bytes: first.bytes,
        proposals: vec![first],
    };
    let mut room = true;
    while room {
        if let Ok(proposal) = queue.try_recv() {
            room = batch.add(proposal, carried);
            continue;
        }
        if batch.proposals.len() >= target {
            break;
        }
        // Listen before looking, so that an entry done in between is not missed.
        let done = in_flight.done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if !in_flight.others() {
            break;
        }
        tokio::select! {
            next = queue.recv() => match next {
                Some(proposal) => room = batch.add(proposal, carried),
                None => break,
            },
            _ = done => {}
        }
    }
    batch.proposals
}

/// Proposes queued commands until the queue closes.
pub(crate) async fn run(member: Member, mut queue: mpsc::UnboundedReceiver<Proposal>) {
    let in_flight = InFlight::new();
    let mut carried: Option<Proposal> = None;
    let mut last_size = 0;
    loop {
        // The member owns the queue's sender, so the queue never closes while this task holds
        // the member: stop on shutdown instead.
        let first = match carried.take() {
            Some(proposal) => proposal,
            None => tokio::select! {
                next = queue.recv() => match next {
                    Some(proposal) => proposal,
                    None => return,
                },
                _ = member.stopping() => return,
            },
        };
        let Ok(permit) = in_flight.permits.clone().acquire_owned().await else {
            return;
        };
        let proposals = gather(&mut queue, first, &mut carried, last_size, &in_flight).await;
        last_size = proposals.len();
        let member = member.clone();
        let done = in_flight.done.clone();
        tokio::spawn(async move {
            propose_batch(&member, proposals).await;
            // The permit first: whoever is told must find the entry gone.
            drop(permit);
            done.notify_waiters();
        });
    }
}

async fn propose_batch(member: &Member, proposals: Vec<Proposal>) {
    let (commands, waiters): (Vec<Command>, Vec<_>) = proposals
        .into_iter()
        // Mark first, then look: a caller that gives up drops its receiver first, then reads
        // the mark, so it never says "not proposed" about a command that goes to Raft.
        .filter(|proposal| {
            proposal
                .proposed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            !proposal.abandoned()
        })
        .map(|proposal| (proposal.command, proposal.done))
        .unzip();
    if commands.is_empty() {
        return;
    }
    let single = commands.len() == 1;
    let command = if single {
        commands
            .into_iter()
            .next()
            .unwrap_or(Command::Batch(Vec::new().into()))
    } else {
        Command::Batch(commands.into())
    };
    let outcome = write(member, command).await;
    match outcome {
        Ok(response) if single => {
            for waiter in waiters {
                let _ = waiter.send(response.result.clone().map_err(Error::Refused));
            }
        }
        Ok(response) => {
            for (waiter, result) in waiters.into_iter().zip(response.batch) {
                let _ = waiter.send(result.map_err(Error::Refused));
            }
        }
        Err(error) => {
            for waiter in waiters {
                let _ = waiter.send(Err(error.clone()));
            }
        }
    }
}

async fn write(member: &Member, command: Command) -> Result<CommandResponse, Error> {
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(COMMIT_TIMEOUT, member.raft().client_write(command)).await;
    tracing::trace!(
        micros = started.elapsed().as_micros() as u64,
        "entry committed"
    );
    match outcome {
        Ok(Ok(response)) => Ok(response.data),
        Ok(Err(error)) if error.forward_to_leader().is_some() => Err(Error::LeadershipChanged(
            "this member no longer leads; the write was not committed".to_string(),
        )),
        Ok(Err(error)) => {
            tracing::warn!(%error, "write failed");
            Err(member.unavailable().await)
        }
        // The entry is in this leader's log and may still commit.
        Err(_) => Err(Error::OutcomeUnknown(format!(
            "{}; the write was proposed and may still commit",
            member.unavailable().await
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposal(bytes: usize) -> (Proposal, oneshot::Receiver<Result<(), Error>>) {
        let (done, answer) = oneshot::channel();
        let proposal = Proposal {
            command: Command::ConfigUnset {
                key: "user.a".to_string(),
            },
            bytes,
            done,
            proposed: std::sync::Arc::default(),
        };
        (proposal, answer)
    }

    /// A proposer's queue and entries in flight, with the caller's own entry and another one
    /// in flight (the permits they hold).
    async fn behind_another() -> (
        mpsc::UnboundedSender<Proposal>,
        mpsc::UnboundedReceiver<Proposal>,
        InFlight,
        [tokio::sync::OwnedSemaphorePermit; 2],
    ) {
        let (sender, queue) = mpsc::unbounded_channel();
        let in_flight = InFlight::new();
        let other = another_in_flight(&in_flight).await;
        let own = another_in_flight(&in_flight).await;
        (sender, queue, in_flight, [other, own])
    }

    /// An entry standing in for one already proposed: the permit it holds.
    async fn another_in_flight(in_flight: &InFlight) -> tokio::sync::OwnedSemaphorePermit {
        in_flight.permits.clone().acquire_owned().await.unwrap()
    }

    #[tokio::test]
    async fn alone_it_takes_what_is_queued_and_goes() {
        let (sender, mut queue) = mpsc::unbounded_channel();
        let in_flight = InFlight::new();
        let _own = another_in_flight(&in_flight).await;
        let mut answers = Vec::new();
        for _ in 0..3 {
            let (queued, answer) = proposal(10);
            sender.send(queued).unwrap();
            answers.push(answer);
        }
        let (first, _answer) = proposal(10);
        let mut carried = None;
        // The last entry held 30 commands, but nothing else is in flight: no waiting.
        let batch = gather(&mut queue, first, &mut carried, 30, &in_flight).await;
        assert_eq!(batch.len(), 4);
        assert!(carried.is_none());
    }

    #[tokio::test]
    async fn behind_another_entry_it_gathers_as_many_as_the_last() {
        let (sender, mut queue, in_flight, _permits) = behind_another().await;
        let (first, _answer) = proposal(10);
        let late = tokio::spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let (queued, answer) = proposal(10);
                sender.send(queued).unwrap();
                answers.push(answer);
            }
            (sender, answers)
        });
        let mut carried = None;
        let batch = gather(&mut queue, first, &mut carried, 4, &in_flight).await;
        // Without the wait it went with the first command alone.
        assert_eq!(batch.len(), 4);
        let (_sender, _answers) = late.await.unwrap();
        assert_eq!(
            queue.len(),
            2,
            "the last two commands wait for the next entry"
        );
    }

    #[tokio::test]
    async fn behind_another_entry_it_goes_when_that_entry_is_done() {
        let (_sender, mut queue, in_flight, [other, _own]) = behind_another().await;
        let (first, _answer) = proposal(10);
        let done = in_flight.done.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(other);
            done.notify_waiters();
        });
        let mut carried = None;
        let gathered = tokio::time::timeout(
            Duration::from_secs(5),
            gather(&mut queue, first, &mut carried, 30, &in_flight),
        )
        .await
        .expect("the entry goes once the other is done, short of its target");
        assert_eq!(gathered.len(), 1);
    }

    #[tokio::test]
    async fn a_command_too_large_for_the_entry_opens_the_next() {
        let (sender, mut queue, in_flight, _permits) = behind_another().await;
        let (large, _large_answer) = proposal(BATCH_BYTES_MAX);
        sender.send(large).unwrap();
        let (first, _answer) = proposal(10);
        let mut carried = None;
        let gathered = tokio::time::timeout(
            Duration::from_secs(5),
            gather(&mut queue, first, &mut carried, 30, &in_flight),
        )
        .await
        .expect("a full entry does not wait");
        assert_eq!(gathered.len(), 1);
        assert_eq!(
            carried.map(|proposal| proposal.bytes),
            Some(BATCH_BYTES_MAX)
        );
    }
}
