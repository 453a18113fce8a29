//! Group commit of proposals: concurrent writes share one Raft entry.
//!
//! One entry per write would cost every write its own log commit. The proposer keeps a few
//! entries in flight; whatever arrives meanwhile goes into the next entry as a
//! [`Command::Batch`]. A lone writer pays nothing extra: its command goes out at once, unbatched.

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

/// Proposes queued commands until the queue closes.
pub(crate) async fn run(member: Member, mut queue: mpsc::UnboundedReceiver<Proposal>) {
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(ENTRIES_IN_FLIGHT_MAX));
    let mut carried: Option<Proposal> = None;
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
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut proposals = vec![first];
        while proposals.len() < BATCH_COMMANDS_MAX {
            match queue.try_recv() {
                Ok(proposal) if bytes + proposal.bytes > BATCH_BYTES_MAX => {
                    // Too large for this entry: it opens the next one.
                    carried = Some(proposal);
                    break;
                }
                Ok(proposal) => {
                    bytes += proposal.bytes;
                    proposals.push(proposal);
                }
                Err(_) => break,
            }
        }
        let member = member.clone();
        tokio::spawn(async move {
            propose_batch(&member, proposals).await;
            drop(permit);
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
            .unwrap_or(Command::Batch(Vec::new()))
    } else {
        Command::Batch(commands)
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
