//! `instances.move`: an instance's root file system goes to another member, on the leader.
//!
//! The steps, each one safe to stop after:
//! 1. placement: a named member, or `@group` with reason `relocation` (an evacuation places
//!    with reason `evacuation`); never the member it is on;
//! 2. the move claims the instance under a fresh id (`InstanceMoveClaim`, refused unless the
//!    record is on the source; a later claim replaces it);
//! 3. a running instance is stopped on its member;
//! 4. the source packs the root file system ([`super::transfer`]) and the target fetches,
//!    verifies and unpacks it, stamping the copy with the move's id; a target that has a
//!    container of that instance already refuses;
//! 5. one Raft command moves the record (`InstanceMoveClaimed`, refused unless the record is
//!    still on the source and the move still holds the claim, so it never applies twice and
//!    never after another move's claim), with any config change (an evacuation's
//!    `volatile.evacuate.origin`);
//! 6. the source deletes its copy; a running instance starts on the target.
//!
//! Until step 5 the record says the source, which still has its container; after it, the
//! target, which has its copy. A failure before step 5 removes the target's copy (only a copy
//! stamped with this move's id) and starts the instance again on the source if it ran; one
//! after it leaves a stale copy on the source, which that member removes ([`super::watch`]).
//! When the record's outcome is unknown (the write timed out, or leadership moved), the move
//! ends its claim (`InstanceMoveRelease`): once that is applied the move can never land, and
//! the record says whether it did. If that fails too the move leaves both copies for the
//! cluster's records to decide ([`decide_outcome`]).
//!
//! So two moves of one instance at once (a former leader's and its successor's, which
//! `InstanceState::moves` on one leader cannot see) never lose it: at most the one holding the
//! claim lands, and neither removes a copy the other brought (found by `starling-chaos`,
//! seed 7, where a move's clean-up removed the copy its rival then recorded).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use starling_store::instances::{Instance, InstanceCommand, InstanceStatus};

use super::local::LocalOperation;
use super::ops::{key_of, DEFAULT_STOP_TIMEOUT_S};
use super::transfer::Receive;
use crate::member::Member;
use crate::placement::{PlacementRequest, Reason, Target};
use crate::protocol::{Reply, Request};
use crate::Error;

/// How long the leader waits for the next progress frame of a receiving target.
const RECEIVE_SILENCE: Duration = Duration::from_secs(60);

/// What a move is asked to do beyond the move itself.
#[derive(Clone, Debug, Default)]
pub struct MoveOptions {
    /// Why the cluster places it (`Relocation` for `@group`, `Evacuation`).
    pub reason: Reason,
    /// Config keys changed with the record (`None` removes).
    pub config: BTreeMap<String, Option<String>>,
    /// Seconds a running instance gets to shut down before it is killed.
    pub stop_timeout_s: u64,
    /// Start it on the target whatever its status (an evacuation resumed after the stop).
    pub start_after: bool,
    /// Members automatic placement leaves out (earlier tries to move there failed).
    pub avoid: BTreeSet<String>,
}

/// A move that failed: why, and the member it was going to (none when it failed before one
/// was chosen), so that the caller can place it again elsewhere.
#[derive(Debug)]
pub(crate) struct MoveFailure {
    pub(crate) to: Option<String>,
    pub(crate) error: Error,
}

impl From<Error> for MoveFailure {
    fn from(error: Error) -> Self {
        MoveFailure { to: None, error }
    }
}

/// A move under way, as `instances.moves()` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoveProgress {
    /// The move's id (empty until it claims the instance).
    pub id: String,
    /// The project.
    pub project: String,
    /// The instance.
    pub name: String,
    /// From.
    pub from: String,
    /// To (empty until placed).
    pub to: String,
    /// `placing`, `stopping`, `packing`, `sending`, `recording`, `starting`.
    pub stage: String,
    /// Bytes received by the target.
    pub done: u64,
    /// Bytes to send.
    pub total: u64,
}

/// Whether a move's record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Landed {
    /// The record is on the target.
    Yes,
    /// The record is not on the target and this move can never put it there.
    No,
    /// Not known: the move's claim could not be ended.
    Unknown,
}

/// What became of a move's record, from how its write ended (`recorded`: `Ok`, refused when
/// applied, or another error), how the release of its claim ended after a write that was not
/// refused (`released`, same spelling; `None` when not tried), and whether the record, read
/// after the release applied, is on the target. IO-free.
pub fn decide_outcome(
    recorded: Result<(), &Error>,
    released: Option<Result<(), &Error>>,
    record_on_target: bool,
) -> Landed {
    match (recorded, released) {
        (Ok(()), _) => Landed::Yes,
        // Applied as refused: the entry is spent.
        (Err(Error::Refused(_)), _) => Landed::No,
        (Err(_), None) => Landed::Unknown,
        // The claim ended before this move's record could apply: it never will.
        (Err(_), Some(Ok(()))) => Landed::No,
        // The claim had ended: by this move's record (then on the target), or by a later
        // claim or a recreate, after which this record can never apply.
        (Err(_), Some(Err(Error::Refused(_)))) if record_on_target => Landed::Yes,
        (Err(_), Some(Err(Error::Refused(_)))) => Landed::No,
        (Err(_), Some(Err(_))) => Landed::Unknown,
    }
}

/// How recording a claimed move ended ([`Member::record_move`]).
#[derive(Debug)]
pub(crate) enum Recorded {
    /// The record is on the target.
    Landed,
    /// It is not, and the move can never put it there.
    NotLanded(Error),
    /// Not known: leave every copy for the records to decide.
    Unknown(Error),
}

/// The placement request of an existing instance (its expanded config and devices).
pub(crate) fn placement_request_of(
    state: &starling_store::ClusterState,
    instance: &Instance,
    reason: Reason,
) -> PlacementRequest {
    let (config, devices) = state.expanded(instance);
    PlacementRequest {
        name: instance.name.clone(),
        project: instance.project.clone(),
        kind: instance.kind.clone(),
        architecture: instance.architecture.clone(),
        source: instance.image.clone(),
        config,
        devices,
        profiles: instance.profiles.clone(),
        ephemeral: instance.ephemeral,
        description: instance.description.clone(),
        reason,
    }
}

impl Member {
    /// `instances.move(name, {target=})`: a member, or `@group` (placed with reason
    /// `relocation`).
    pub(crate) async fn move_instance(
        &self,
        project: &str,
        name: &str,
        target: &str,
    ) -> Result<Value, Error> {
        let target = Target::parse(target).map_err(|error| Error::Refused(error.to_string()))?;
        if target == Target::None {
            return Err(Error::Refused(
                "a move needs a target: a member, or @group".to_string(),
            ));
        }
        let options = MoveOptions {
            reason: Reason::Relocation,
            stop_timeout_s: DEFAULT_STOP_TIMEOUT_S,
            ..MoveOptions::default()
        };
        self.relocate(project, name, &target, options)
            .await
            .map_err(|failure| failure.error)
    }

    /// Moves instance `name` to the member `target` chooses (see the module's doc); answers
    /// `{location, from, bytes, seconds}`.
    pub(crate) async fn relocate(
        &self,
        project: &str,
        name: &str,
        target: &Target,
        options: MoveOptions,
    ) -> Result<Value, MoveFailure> {
        let key = (project.to_string(), name.to_string());
        {
            let mut moves = self.inner.instances.moves.lock().map_err(poisoned)?;
            if moves.contains_key(&key) {
                return Err(
                    Error::Refused(format!("instance \"{name}\" is already being moved")).into(),
                );
            }
            moves.insert(
                key.clone(),
                MoveProgress {
                    id: String::new(),
                    project: project.to_string(),
                    name: name.to_string(),
                    from: String::new(),
                    to: String::new(),
                    stage: "placing".to_string(),
                    done: 0,
                    total: 0,
                },
            );
        }
        let result = self.relocate_steps(project, name, target, &options).await;
        if let Ok(mut moves) = self.inner.instances.moves.lock() {
            moves.remove(&key);
        }
        result
    }

    fn move_stage(&self, project: &str, name: &str, change: impl FnOnce(&mut MoveProgress)) {
        if let Ok(mut moves) = self.inner.instances.moves.lock() {
            if let Some(progress) = moves.get_mut(&(project.to_string(), name.to_string())) {
                change(progress);
            }
        }
    }

    async fn relocate_steps(
        &self,
        project: &str,
        name: &str,
        target: &Target,
        options: &MoveOptions,
    ) -> Result<Value, MoveFailure> {
        let started = Instant::now();
        let instance = self.instance_record(project, name)?;
        if instance.status == InstanceStatus::Creating {
            return Err(
                Error::Refused(format!("instance \"{name}\" is still being created")).into(),
            );
        }
        let from = instance.location.clone();
        let request =
            self.local_state(|state| placement_request_of(state, &instance, options.reason));
        let placed = self
            .place_instance(&request, target, Some(&from), &options.avoid)
            .await?;
        let to = placed.name.clone();
        if to == from {
            return Err(Error::Refused(format!(
                "instance \"{name}\" is already on member \"{from}\""
            ))
            .into());
        }
        self.move_stage(project, name, |progress| {
            progress.from = from.clone();
            progress.to = to.clone();
        });
        let result = self.relocate_to(&instance, &to, options, started).await;
        drop(placed);
        result.map_err(|error| MoveFailure {
            to: Some(to),
            error,
        })
    }

    async fn relocate_to(
        &self,
        instance: &Instance,
        to: &str,
        options: &MoveOptions,
        started: Instant,
    ) -> Result<Value, Error> {
        let (project, name, from) = (&instance.project, &instance.name, &instance.location);
        let key = key_of(instance);
        let id = self.claim_move(instance).await?;
        let was_running = instance.status == InstanceStatus::Running;
        if was_running {
            self.move_stage(project, name, |progress| progress.stage = "stopping".into());
            let stop = LocalOperation::Stop {
                key: key.clone(),
                force: false,
                timeout_s: options.stop_timeout_s,
            };
            match self.on_location(instance, stop).await {
                Ok(_) => {}
                // Stopped on its own meanwhile.
                Err(error)
                    if self.instance_record(project, name)?.status != InstanceStatus::Running =>
                {
                    tracing::debug!(%error, "the instance had stopped already");
                }
                Err(error) => {
                    let _ = self.release_claim(instance, &id).await;
                    return Err(error);
                }
            }
        }
        let start_after = was_running || options.start_after;
        let (bytes, source_stamp) = match self.copy_rootfs(instance, to, &id).await {
            Ok(copied) => copied,
            Err(error) => {
                let _ = self.release_claim(instance, &id).await;
                self.undo_copy(instance, to, &id, start_after).await;
                return Err(error);
            }
        };
        self.move_stage(project, name, |progress| {
            progress.stage = "recording".into()
        });
        match self
            .record_move(instance, &id, to, options.config.clone())
            .await
        {
            Recorded::Landed => {}
            Recorded::NotLanded(error) => {
                self.undo_copy(instance, to, &id, start_after).await;
                return Err(error);
            }
            Recorded::Unknown(error) => {
                tracing::warn!(instance = %key, member = to, move_id = %id, %error, "whether the move landed is unknown: both copies stay for the records to decide");
                return Err(Error::OutcomeUnknown(format!(
                    "the move of instance \"{name}\" to member \"{to}\" may or may not have \
                     been recorded ({error}); instances.get shows where it is"
                )));
            }
        }
        // The record is on the target now: the source's copy is stale.
        let stale = LocalOperation::Discard {
            key: key.clone(),
            stamp: source_stamp,
        };
        if let Err(error) = self.on_location(instance, stale).await {
            tracing::warn!(instance = %key, member = %from, %error, "the moved instance's old copy stays until its member removes it");
        }
        let moved = self.instance_record(project, name)?;
        if start_after {
            self.move_stage(project, name, |progress| progress.stage = "starting".into());
            let config = self.local_state(|state| state.expanded(&moved).0);
            let start = LocalOperation::Start { key, config };
            self.on_location(&moved, start).await?;
        }
        tracing::info!(instance = %name, from = %from, to, bytes, millis = started.elapsed().as_millis() as u64, "instance moved");
        Ok(json!({
            "location": to,
            "from": from,
            "bytes": bytes,
            "seconds": started.elapsed().as_secs_f64(),
        }))
    }

    /// Step 5: records claimed move `id` of `instance` to member `to` with `config`, and when
    /// the write's outcome is not known, settles it ([`decide_outcome`]).
    pub(crate) async fn record_move(
        &self,
        instance: &Instance,
        id: &str,
        to: &str,
        config: BTreeMap<String, Option<String>>,
    ) -> Recorded {
        let command = InstanceCommand::InstanceMoveClaimed {
            project: instance.project.clone(),
            name: instance.name.clone(),
            id: id.to_string(),
            from: instance.location.clone(),
            location: to.to_string(),
            config,
        };
        let recorded = self
            .propose(
                starling_store::Command::Instance(command),
                crate::cluster::join::WRITE_TIMEOUT,
            )
            .await;
        let landed = match &recorded {
            Ok(()) | Err(Error::Refused(_)) => {
                decide_outcome(recorded.as_ref().copied(), None, false)
            }
            Err(_) => {
                let released = self.release_claim(instance, id).await;
                let on_target = self
                    .instance_record(&instance.project, &instance.name)
                    .is_ok_and(|record| record.location == to);
                decide_outcome(
                    recorded.as_ref().copied(),
                    Some(released.as_ref().copied()),
                    on_target,
                )
            }
        };
        match (landed, recorded) {
            (Landed::Yes, _) => Recorded::Landed,
            (Landed::No, Err(error)) => Recorded::NotLanded(error),
            (Landed::No, Ok(())) => Recorded::NotLanded(Error::Internal(
                "a recorded move counted as not landed".into(),
            )),
            (Landed::Unknown, recorded) => Recorded::Unknown(
                recorded
                    .err()
                    .unwrap_or_else(|| Error::Internal("no error for an unknown outcome".into())),
            ),
        }
    }

    /// Step 2: claims `instance`, on its current location, for a move under a fresh id
    /// (shown by `instances.moves()` when this leader runs the move); answers the id.
    pub(crate) async fn claim_move(&self, instance: &Instance) -> Result<String, Error> {
        let id = format!("{:032x}", crate::token::random_u128()?);
        let claim = InstanceCommand::InstanceMoveClaim {
            project: instance.project.clone(),
            name: instance.name.clone(),
            from: instance.location.clone(),
            id: id.clone(),
        };
        self.move_stage(&instance.project, &instance.name, |progress| {
            progress.id = id.clone()
        });
        self.propose(
            starling_store::Command::Instance(claim),
            crate::cluster::join::WRITE_TIMEOUT,
        )
        .await?;
        Ok(id)
    }

    /// Ends the claim of move `id` (see the module's doc); answers how the write ended.
    pub(crate) async fn release_claim(&self, instance: &Instance, id: &str) -> Result<(), Error> {
        self.release(&instance.project, &instance.name, id).await
    }

    /// Ends the claim of move `id` of instance `name` (see the module's doc).
    async fn release(&self, project: &str, name: &str, id: &str) -> Result<(), Error> {
        let release = InstanceCommand::InstanceMoveRelease {
            project: project.to_string(),
            name: name.to_string(),
            id: id.to_string(),
        };
        let released = self
            .propose(
                starling_store::Command::Instance(release),
                crate::cluster::join::WRITE_TIMEOUT,
            )
            .await;
        if let Err(error) = &released {
            tracing::debug!(instance = %name, move_id = id, %error, "the move's claim was not released");
        }
        released
    }

    /// Step 4: the source packs, the target fetches and unpacks. Answers the bytes sent and the
    /// source copy's stamp.
    async fn copy_rootfs(
        &self,
        instance: &Instance,
        to: &str,
        id: &str,
    ) -> Result<(u64, Option<String>), Error> {
        let (project, name) = (&instance.project, &instance.name);
        let key = key_of(instance);
        self.move_stage(project, name, |progress| progress.stage = "packing".into());
        let packed = self
            .on_location(instance, LocalOperation::Export { key: key.clone() })
            .await?;
        let sha256 = packed["sha256"].as_str().unwrap_or_default().to_string();
        let size = packed["size"].as_u64().unwrap_or_default();
        let stamp = packed["stamp"].as_str().map(str::to_string);
        self.move_stage(project, name, |progress| {
            progress.stage = "sending".into();
            progress.total = size;
        });
        let (source, target) = self.local_state(|state| {
            let address = |member: &str| {
                state
                    .members
                    .get(member)
                    .map(|record| record.address.clone())
            };
            (address(&instance.location), address(to))
        });
        let (Some(source), Some(target)) = (source, target) else {
            return Err(Error::Refused(format!(
                "member \"{}\" or \"{to}\" is no longer in the cluster",
                instance.location
            )));
        };
        let receive = Receive {
            key,
            source,
            sha256,
            size,
            move_id: id.to_string(),
        };
        let received = if to == self.name() {
            let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            self.receive_local(&receive, progress).await
        } else {
            let request = Request::InstanceReceive(receive);
            let answers = self.request_stream(&target, &request).await?;
            self.follow_receive(answers, project, name).await
        };
        received.map(|()| (size, stamp))
    }

    /// Reads a receive's progress until the target says it is done.
    async fn follow_receive(
        &self,
        mut answers: starling_transport::ResponseStream,
        project: &str,
        name: &str,
    ) -> Result<(), Error> {
        loop {
            match answers.next::<Reply>(RECEIVE_SILENCE).await {
                Ok(Some(Reply::Progress { done })) => {
                    self.move_stage(project, name, |progress| progress.done = done);
                }
                Ok(Some(Reply::Ack)) => return Ok(()),
                Ok(Some(Reply::Refused(error))) => return Err(error),
                Ok(Some(other)) => {
                    return Err(Error::Internal(format!(
                        "unexpected reply to a receive: {other:?}"
                    )))
                }
                Ok(None) => {
                    return Err(Error::Transport(
                        "the target ended the receive without an answer".to_string(),
                    ))
                }
                Err(error) => return Err(Error::Transport(error.to_string())),
            }
        }
    }

    /// After a move that can no longer land: the target's copy goes if this move brought it,
    /// and the instance starts again on the source if it ran there and is still recorded there.
    async fn undo_copy(&self, instance: &Instance, to: &str, id: &str, start_again: bool) {
        let key = key_of(instance);
        let mut at_target = instance.clone();
        at_target.location = to.to_string();
        let remove = LocalOperation::Discard {
            key: key.clone(),
            stamp: Some(id.to_string()),
        };
        if let Err(error) = self.on_location(&at_target, remove).await {
            tracing::warn!(instance = %key, member = to, %error, "a failed move's copy stays until its member removes it");
        }
        let still_there = self
            .instance_record(&instance.project, &instance.name)
            .is_ok_and(|record| record.location == instance.location);
        if start_again && still_there {
            let config = self.local_state(|state| state.expanded(instance).0);
            let start = LocalOperation::Start {
                key: key.clone(),
                config,
            };
            if let Err(error) = self.on_location(instance, start).await {
                tracing::warn!(instance = %key, %error, "could not start the instance again after a failed move");
            }
        }
    }

    /// On the leader, asked by a member holding a copy of instance `name` stamped with move
    /// `id` while the records place the instance elsewhere: unless that move is under way
    /// here, its claim ends (if it still holds it). Answers `{removable}`: whether the record
    /// is then elsewhere than `member` (or gone), so that the move can never land there and
    /// the copy can go. A move that a former leader still runs is given up this way (its
    /// record is refused, and its clean-up removes only its own copy).
    pub(crate) async fn settle_move(
        &self,
        project: &str,
        name: &str,
        id: &str,
        member: &str,
    ) -> Result<Value, Error> {
        if id.is_empty() || id.len() > starling_store::instances::MOVE_ID_BYTES_MAX {
            return Err(Error::Refused(format!("invalid move id {id:?}")));
        }
        let under_way = self
            .inner
            .instances
            .moves
            .lock()
            .map(|moves| moves.values().any(|progress| progress.id == id))
            .unwrap_or(true);
        if under_way {
            return Ok(json!({"removable": false}));
        }
        match self.release(project, name, id).await {
            // Applied (either way): the state read below includes everything before it.
            Ok(()) | Err(Error::Refused(_)) => {}
            Err(error) => return Err(error),
        }
        let removable = self.local_state(|state| {
            state
                .instances
                .get(&(project.to_string(), name.to_string()))
                .is_none_or(|record| record.location != member)
        });
        if removable {
            tracing::info!(instance = %name, move_id = id, member, "a given-up move's copy can go");
        }
        Ok(json!({ "removable": removable }))
    }

    /// Whether this leader is moving instance `name` (a poisoned table counts as moving: an
    /// ephemeral instance is then kept rather than deleted).
    pub(crate) fn is_moving(&self, project: &str, name: &str) -> bool {
        self.inner
            .instances
            .moves
            .lock()
            .map(|moves| moves.contains_key(&(project.to_string(), name.to_string())))
            .unwrap_or(true)
    }

    /// `instances.moves()`: the moves under way on this leader.
    pub(crate) fn moves_under_way(&self) -> Value {
        let moves = match self.inner.instances.moves.lock() {
            Ok(moves) => moves.values().cloned().collect::<Vec<_>>(),
            Err(_) => Vec::new(),
        };
        serde_json::to_value(moves).unwrap_or(Value::Null)
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::Internal("the moves table lock is poisoned".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a move's copy on the target is removed only once the move can never land, and
    /// kept whenever that is not known.
    /// Method: every way the record's write and the claim's release can end.
    #[test]
    fn a_move_lands_or_not_as_its_writes_say() {
        let refused = Error::Refused("overtaken".into());
        let unknown = Error::OutcomeUnknown("timed out".into());
        let deposed = Error::LeadershipChanged("no longer leads".into());
        assert_eq!(decide_outcome(Ok(()), None, false), Landed::Yes);
        assert_eq!(decide_outcome(Err(&refused), None, false), Landed::No);
        for recorded in [&unknown, &deposed] {
            assert_eq!(decide_outcome(Err(recorded), None, true), Landed::Unknown);
            assert_eq!(
                decide_outcome(Err(recorded), Some(Ok(())), true),
                Landed::No
            );
            assert_eq!(
                decide_outcome(Err(recorded), Some(Err(&refused)), true),
                Landed::Yes
            );
            assert_eq!(
                decide_outcome(Err(recorded), Some(Err(&refused)), false),
                Landed::No
            );
            for released in [&unknown, &deposed] {
                assert_eq!(
                    decide_outcome(Err(recorded), Some(Err(released)), false),
                    Landed::Unknown
                );
            }
        }
    }
}
