//! `instances.move`: an instance's root file system goes to another member, on the leader.
//!
//! The steps, each one safe to stop after:
//! 1. placement: a named member, or `@group` with reason `relocation` (an evacuation places
//!    with reason `evacuation`); never the member it is on;
//! 2. a running instance is stopped on its member;
//! 3. the source packs the root file system ([`super::transfer`]) and the target fetches,
//!    verifies and unpacks it;
//! 4. one Raft command moves the record (`InstanceMove`, refused unless the record is still on
//!    the source, so it never applies twice), with any config change (an evacuation's
//!    `volatile.evacuate.origin`);
//! 5. the source deletes its copy; a running instance starts on the target.
//!
//! Until step 4 the record says the source, which still has its container; after it, the
//! target, which has its copy. A failure before step 4 removes the target's copy and starts
//! the instance again on the source if it ran; one after it leaves a stale copy on the source,
//! which that member removes ([`super::watch`]). So one move never runs the instance on two
//! members or loses it. Two moves of the same instance at once are kept apart only on one
//! leader (`InstanceState::moves`): a former leader still moving an instance that its
//! successor moves too can discard the target's copy before the other records the move there,
//! and the instance is then lost (found by `starling-chaos`, seed 7; not fixed yet).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use starling_store::instances::{Instance, InstanceCommand, InstanceStatus};

use super::local::LocalOperation;
use super::ops::{key_of, DEFAULT_STOP_TIMEOUT_S};
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
        let to = self
            .place_instance(&request, target, Some(&from), &options.avoid)
            .await?
            .member;
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
        self.placement_started(&to);
        let result = self.relocate_to(&instance, &to, options, started).await;
        self.placement_done(&to);
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
                Err(error) => return Err(error),
            }
        }
        let start_after = was_running || options.start_after;
        let copied = self.copy_rootfs(instance, to).await;
        let moved = match copied {
            Ok(bytes) => {
                self.move_stage(project, name, |progress| {
                    progress.stage = "recording".into()
                });
                let command = InstanceCommand::InstanceMove {
                    project: project.clone(),
                    name: name.clone(),
                    from: from.clone(),
                    location: to.to_string(),
                    config: options.config.clone(),
                };
                let recorded = self
                    .propose(
                        starling_store::Command::Instance(command),
                        crate::cluster::join::WRITE_TIMEOUT,
                    )
                    .await;
                match recorded {
                    Ok(()) => Ok(bytes),
                    // The outcome of a write that timed out is unknown: the record says.
                    Err(error) => match self.instance_record(project, name) {
                        Ok(record) if record.location == to => Ok(bytes),
                        _ => Err(error),
                    },
                }
            }
            Err(error) => Err(error),
        };
        let bytes = match moved {
            Ok(bytes) => bytes,
            Err(error) => {
                self.undo_copy(instance, to, start_after).await;
                return Err(error);
            }
        };
        // The record is on the target now: the source's copy is stale.
        let stale = LocalOperation::Discard { key: key.clone() };
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

    /// Steps 3: the source packs, the target fetches and unpacks. Answers the bytes sent.
    async fn copy_rootfs(&self, instance: &Instance, to: &str) -> Result<u64, Error> {
        let (project, name) = (&instance.project, &instance.name);
        let key = key_of(instance);
        self.move_stage(project, name, |progress| progress.stage = "packing".into());
        let packed = self
            .on_location(instance, LocalOperation::Export { key: key.clone() })
            .await?;
        let sha256 = packed["sha256"].as_str().unwrap_or_default().to_string();
        let size = packed["size"].as_u64().unwrap_or_default();
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
        let request = Request::InstanceReceive {
            key,
            source,
            sha256,
            size,
        };
        let received = if to == self.name() {
            let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let Request::InstanceReceive {
                key,
                source,
                sha256,
                size,
            } = request
            else {
                unreachable!("built above")
            };
            self.receive_local(&key, &source, &sha256, size, progress)
                .await
        } else {
            let answers = self.request_stream(&target, &request).await?;
            self.follow_receive(answers, project, name).await
        };
        received.map(|()| size)
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

    /// After a failure before the record moved: the target's copy goes, the source's packed
    /// tarball goes, and the instance starts again on the source if it ran.
    async fn undo_copy(&self, instance: &Instance, to: &str, start_again: bool) {
        let key = key_of(instance);
        let mut at_target = instance.clone();
        at_target.location = to.to_string();
        let remove = LocalOperation::Discard { key: key.clone() };
        if let Err(error) = self.on_location(&at_target, remove).await {
            tracing::warn!(instance = %key, member = to, %error, "a failed move's copy stays until its member removes it");
        }
        if start_again {
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
