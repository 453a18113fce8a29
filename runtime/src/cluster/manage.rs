//! Managing members: edit, rename, remove, hand roles over, and read a member's live state.
//!
//! These run on the leader (see [`crate::execute`]); each ends in one replicated command.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use serde_json::{json, Value};
use starling_store::{
    Command, Member as MemberRecord, MemberChanges, MemberPatch, MemberStatus, NodeId,
};

use crate::cluster::health::{replication_view, require_online};
use crate::cluster::join::WRITE_TIMEOUT;
use crate::member::Member;
use crate::operation::MemberEdit;
use crate::protocol::{Reply, Request};
use crate::view::RaftRoles;
use crate::Error;

/// How long a membership change may take.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one membership change may take to commit once proposed (the cluster had a
/// majority a moment before; a healthy one commits in milliseconds).
const MEMBERSHIP_COMMIT: Duration = Duration::from_secs(3);

/// Where the latest Raft membership stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MembershipState {
    /// Uniform and applied.
    Settled,
    /// Not applied yet: a change is under way.
    Changing,
    /// A joint configuration, applied, whose second step nobody proposed; its new half.
    LeftJoint(BTreeSet<NodeId>),
}

impl Member {
    pub(crate) fn record(&self, name: &str) -> Result<MemberRecord, Error> {
        self.local_state(|state| state.members.get(name).cloned())
            .ok_or_else(|| Error::Refused(format!("member \"{name}\" not found")))
    }

    /// `cluster.edit`: database roles in `edit.roles` must be the ones the member holds.
    pub(crate) async fn edit_member(&self, name: &str, edit: &MemberEdit) -> Result<Value, Error> {
        let record = self.record(name)?;
        let user_roles = match &edit.roles {
            None => None,
            Some(roles) => {
                let current: BTreeSet<String> = RaftRoles::of(self)
                    .roles(&record)
                    .into_iter()
                    .filter(|role| role.starts_with("database"))
                    .collect();
                let asked: BTreeSet<String> = roles
                    .iter()
                    .filter(|role| role.starts_with("database"))
                    .cloned()
                    .collect();
                if asked != current {
                    return Err(Error::Refused(format!(
                        "the database roles are automatic: Starling assigns them (member \"{name}\" has {current:?})"
                    )));
                }
                Some(
                    roles
                        .iter()
                        .filter(|role| !role.starts_with("database"))
                        .cloned()
                        .collect(),
                )
            }
        };
        let changes = MemberChanges {
            description: edit.description.clone(),
            failure_domain: edit.failure_domain.clone(),
            config: edit.config.clone(),
            groups: edit.groups.clone(),
            user_roles,
        };
        self.update_member(name, changes).await
    }

    pub(crate) async fn update_member(
        &self,
        name: &str,
        changes: MemberChanges,
    ) -> Result<Value, Error> {
        starling_store::command::validate_changes(&changes).map_err(Error::Refused)?;
        self.propose(
            Command::MemberUpdate {
                name: name.to_string(),
                changes,
            },
            WRITE_TIMEOUT,
        )
        .await?;
        Ok(Value::Null)
    }

    /// `cluster.set` / `cluster.unset` of one member config key.
    pub(crate) async fn set_member_config(
        &self,
        name: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<Value, Error> {
        let patch = match value {
            Some(value) => MemberPatch::ConfigSet {
                key: key.to_string(),
                value: value.to_string(),
            },
            None => MemberPatch::ConfigUnset {
                key: key.to_string(),
            },
        };
        self.patch_member(name, patch).await
    }

    /// Proposes one change to a member's record, made to the record as it is when applied.
    async fn patch_member(&self, name: &str, patch: MemberPatch) -> Result<Value, Error> {
        self.record(name)?;
        patch.validate().map_err(Error::Refused)?;
        self.propose(
            Command::MemberPatch {
                name: name.to_string(),
                patch,
            },
            WRITE_TIMEOUT,
        )
        .await?;
        Ok(Value::Null)
    }

    /// `cluster.get`: a config key, or the `description` / `failure_domain` property.
    pub(crate) fn member_get(&self, name: &str, key: &str) -> Result<Value, Error> {
        let record = self.record(name)?;
        let value = match key {
            "description" => record.description,
            "failure_domain" => record.failure_domain,
            _ => record.config.get(key).cloned().unwrap_or_default(),
        };
        Ok(Value::String(value))
    }

    /// `cluster.role_add` / `cluster.role_remove`.
    pub(crate) async fn change_role(
        &self,
        name: &str,
        role: &str,
        add: bool,
    ) -> Result<Value, Error> {
        let role = role.to_string();
        let patch = if add {
            MemberPatch::RoleAdd { role }
        } else {
            MemberPatch::RoleRemove { role }
        };
        self.patch_member(name, patch).await
    }

    /// `cluster.remove`: leave Raft, drop the record, revoke the certificates, reset the member.
    pub(crate) async fn remove_member(&self, name: &str, force: bool) -> Result<Value, Error> {
        let record = self.record(name)?;
        // Refused before anything changes: the member stays in Raft and nothing is written.
        self.local_state(|state| state.check_member_removal(name))
            .map_err(Error::Refused)?;
        if !force {
            require_online(&record)
                .map_err(|error| Error::Refused(format!("{error}; remove it with force")))?;
        }
        if record.id == self.id() {
            // The leader cannot remove itself: hand leadership over, then the new leader removes it.
            self.step_down().await?;
            return Err(Error::LeadershipChanged(
                "the leader handed over before removing itself".to_string(),
            ));
        }
        let roles = RaftRoles::of(self);
        if roles.voters.contains(&record.id) || roles.learners.contains(&record.id) {
            // A voter leaves the voters and the nodes in one change; a stand-by just the nodes.
            let id = record.id;
            self.change_membership_when_free(
                &format!("could not take \"{name}\" out of the database"),
                |roles| {
                    if roles.voters.contains(&id) {
                        let voters = roles
                            .voters
                            .iter()
                            .copied()
                            .filter(|voter| *voter != id)
                            .collect();
                        (ChangeMembers::ReplaceAllVoters(voters), false)
                    } else {
                        (ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                    }
                },
            )
            .await?;
        }
        self.propose(
            Command::MemberRemove {
                name: name.to_string(),
            },
            WRITE_TIMEOUT,
        )
        .await?;
        tracing::info!(member = name, force, "member removed");
        // Tell it to reset itself; a forced removal does not wait for a broken member.
        let member = self.clone();
        let address = record.address.clone();
        let notify = async move { member.tell_removed(&address).await };
        if force {
            tokio::spawn(notify);
            return Ok(Value::Null);
        }
        // The removal took effect: not `Refused`, which would say that nothing changed.
        notify.await.map_err(|error| {
            Error::Incomplete(format!(
                "member \"{name}\" was removed from the cluster but did not reset itself ({error}): \
                 stop it and delete its data directory"
            ))
        })?;
        Ok(Value::Null)
    }

    /// Tells a removed member to reset itself, retrying for a few seconds: only an
    /// acknowledgement counts (a spare may need a heartbeat to learn who leads now).
    async fn tell_removed(&self, address: &str) -> Result<(), Error> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let error = match self
                .request(address, &Request::Removed, Duration::from_secs(2))
                .await
            {
                Ok(Reply::Ack) => return Ok(()),
                Ok(Reply::Refused(error)) => error,
                Ok(other) => Error::Internal(format!("unexpected reply to a removal: {other:?}")),
                Err(error) => error,
            };
            if std::time::Instant::now() >= deadline {
                tracing::warn!(%error, address, "removed member did not acknowledge its removal");
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A stand-by that can vote at once: online and caught up with the leader.
    fn ready_standby(&self, excluding: NodeId) -> Option<NodeId> {
        let roles = RaftRoles::of(self);
        let (_, caught_up) = replication_view(self);
        let online: BTreeSet<NodeId> = self.local_state(|state| {
            state
                .members
                .values()
                .filter(|record| record.status == MemberStatus::Online)
                .map(|record| record.id)
                .collect()
        });
        roles
            .learners
            .iter()
            .copied()
            .find(|id| *id != excluding && caught_up.contains(id) && online.contains(id))
    }

    /// Leader only: gives the vote of `id` to a ready stand-by, if there is one.
    pub(crate) async fn hand_over(&self, id: NodeId) -> Result<Value, Error> {
        // A role change like the operator's: the rebalancing must not plan on it half-done.
        let _roles = self.inner.role_lock.lock().await;
        let roles = RaftRoles::of(self);
        if !roles.voters.contains(&id) {
            return Ok(Value::Null);
        }
        let Some(standby) = self.ready_standby(id) else {
            return Ok(json!({"handed_to": null}));
        };
        let mut voters: BTreeSet<NodeId> = roles
            .voters
            .iter()
            .copied()
            .filter(|voter| *voter != id)
            .collect();
        voters.insert(standby);
        self.change_voters(voters).await?;
        tracing::info!(from = id, to = standby, "voter handed its role over");
        Ok(json!({"handed_to": standby}))
    }

    async fn change_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), Error> {
        self.change_membership_when_free("membership change failed", |_| {
            (ChangeMembers::ReplaceAllVoters(voters.clone()), true)
        })
        .await
    }

    /// Runs a membership change, waiting while another one is under way (the leader's own role
    /// rebalancing may have started one): `change` builds it from the current roles each try.
    pub(crate) async fn change_membership_when_free(
        &self,
        what: &str,
        change: impl Fn(&RaftRoles) -> (ChangeMembers<NodeId, openraft::BasicNode>, bool),
    ) -> Result<(), Error> {
        use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
        // Without a majority the change could only wait out its timeout: fail fast instead,
        // as a write does.
        let count = crate::cluster::health::reachable_voters(self).await;
        if !count.quorum() {
            return Err(count.no_quorum());
        }
        let deadline = std::time::Instant::now() + MEMBERSHIP_TIMEOUT;
        loop {
            let (members, retain) = change(&RaftRoles::of(self));
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            let attempt = self.raft().change_membership(members, retain);
            match tokio::time::timeout(remaining.min(MEMBERSHIP_COMMIT), attempt).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                )))) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // Leadership is moving (a transfer, or a leader elected a moment ago that does
                // not take changes yet): wait while this member still leads, else let the
                // request find the new leader.
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))))
                    if std::time::Instant::now() < deadline =>
                {
                    if !self.is_leader() {
                        return Err(Error::LeadershipChanged(format!(
                            "{what}: leadership moved ({forward})"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(Err(error)) => return Err(Error::Refused(format!("{what}: {error}"))),
                // Proposed, not committed in time (the quorum went while it waited).
                Err(_) => {
                    return Err(Error::OutcomeUnknown(format!(
                        "{what}: the change was proposed and did not commit within {} s ({}); \
                         it may still commit",
                        MEMBERSHIP_COMMIT.as_secs(),
                        self.unavailable().await
                    )))
                }
            }
        }
    }

    /// Leader only, with the role lock held (no change of ours under way): waits until the
    /// latest membership is uniform and applied, finishing a joint one left behind.
    pub(crate) async fn settle_membership(&self) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + MEMBERSHIP_TIMEOUT;
        let mut metrics = self.raft().metrics();
        loop {
            match self.membership_state() {
                MembershipState::Settled => return Ok(()),
                MembershipState::LeftJoint(_) if self.is_leader() => {
                    self.finish_left_joint().await?;
                    continue;
                }
                _ => {}
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Internal("the Raft node stopped".to_string())),
                Err(_) => {
                    return Err(Error::Refused(format!(
                        "the membership change under way did not end within {} s",
                        MEMBERSHIP_TIMEOUT.as_secs()
                    )))
                }
            }
        }
    }

    /// Where the latest membership stands.
    pub(crate) fn membership_state(&self) -> MembershipState {
        let metrics = self.raft().metrics();
        let metrics = metrics.borrow_watched();
        let membership = &metrics.membership_config;
        let configs = membership.membership().get_joint_config();
        let applied = membership.log_id() <= &metrics.last_applied;
        match (applied, configs.last()) {
            (false, _) => MembershipState::Changing,
            (true, Some(new_half)) if configs.len() > 1 => {
                MembershipState::LeftJoint(new_half.clone())
            }
            (true, _) => MembershipState::Settled,
        }
    }

    /// Leader only, with the role lock held: a joint configuration that is committed but that
    /// no change is finishing (its second step was cut off by a change of leader) is finished
    /// towards its new half. Nothing to do for any other state.
    pub(crate) async fn finish_left_joint(&self) -> Result<(), Error> {
        if let MembershipState::LeftJoint(voters) = self.membership_state() {
            tracing::info!(?voters, "finishing a joint membership left behind");
            self.change_voters(voters).await?;
        }
        Ok(())
    }

    /// Leader only: hands leadership to the most caught-up voter (openraft's leadership
    /// transfer, no membership change) and waits until it leads.
    pub(crate) async fn step_down(&self) -> Result<(), Error> {
        let view = self.role_view();
        let to = crate::cluster::role_control::transfer_target(&view, None)
            .map_err(|refusal| Error::Refused(refusal.to_string()))?;
        let Some(to) = to else {
            return Ok(());
        };
        self.transfer_to(to).await?;
        tracing::info!(successor = to, "leadership handed over");
        Ok(())
    }

    /// On SIGTERM: a leader hands leadership over; then a voter hands its vote to a ready
    /// stand-by (through the new leader).
    pub async fn leave_gracefully(&self) {
        if self.is_leader() {
            if let Err(error) = self.step_down().await {
                tracing::warn!(%error, "could not hand leadership over before leaving");
            }
        }
        if !RaftRoles::of(self).voters.contains(&self.id()) {
            return;
        }
        let request = self.execute(
            crate::Operation::HandOver { id: self.id() },
            crate::Caller::local(),
        );
        let result = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .unwrap_or_else(|_| Err(Error::Transport("timed out".into())));
        if let Err(error) = result {
            tracing::warn!(%error, "could not hand the vote over before leaving");
        }
    }

    /// `cluster.member_state`: asks the member itself; refused at once if it is not online.
    pub(crate) async fn member_state(&self, name: &str) -> Result<Value, Error> {
        self.ask_member(name, Request::MemberState, || {
            crate::sysinfo::local_state(name)
        })
        .await
    }

    /// Asks member `name` for a JSON answer (`MemberState`, `MemberResources`), or answers
    /// with `here` when it is this member; refused at once if it is not online.
    pub(crate) async fn ask_member(
        &self,
        name: &str,
        request: Request,
        here: impl FnOnce() -> Value,
    ) -> Result<Value, Error> {
        let record = self.record(name)?;
        require_online(&record)?;
        if record.id == self.id() {
            return Ok(here());
        }
        match self
            .request(&record.address, &request, Duration::from_secs(5))
            .await
        {
            Ok(Reply::MemberState(text)) => {
                serde_json::from_str(&text).map_err(|error| Error::Internal(error.to_string()))
            }
            Ok(Reply::Refused(error)) => Err(error),
            Ok(other) => Err(Error::Internal(format!("unexpected reply: {other:?}"))),
            Err(error) => Err(Error::Refused(format!(
                "member \"{name}\" did not answer: {error}"
            ))),
        }
    }

    /// After the leader removed this member: stop, and wipe the data directory so the machine
    /// can join again with a new token.
    pub(crate) async fn reset_after_removal(&self) {
        tracing::warn!(
            "this member was removed from the cluster: stopping and resetting its data directory"
        );
        self.shutdown().await;
        let root = self.dir().root().to_path_buf();
        for entry in ["member.json", "db", "tls"] {
            let path = root.join(entry);
            let result = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(error) = result {
                tracing::warn!(%error, path = %path.display(), "could not reset");
            }
        }
        self.inner.stopped.send_replace(true);
    }
}
